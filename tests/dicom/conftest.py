"""Fixtures of the DICOM import tests: DICOM studies exported from the small synthetic archive,
their import, a real Orthanc PACS, and helpers to damage a study on purpose.

Every export rotates the study by (8, -12, 15) degrees (an oblique ImageOrientationPatient)
and stores values with RescaleSlope 0.5 and RescaleIntercept -16 (`fdn.dicom.export`).
"""

import shutil
from pathlib import Path

import pytest

from benchmarks.orthanc import MISSING, OrthancServer, available
from fdn.data import Archive
from fdn.dicom.export import export_case
from fdn.dicom.importer import import_dicom

SLOPE, INTERCEPT = 0.5, -16.0
ROTATE = (8.0, -12.0, 15.0)


def export_study(archive_root, case, out, **options):
    """Export one case of a NIfTI archive as one DICOM study under `out`."""
    files = Archive(archive_root).case_files(case)
    return export_case(
        files, out, patient_id=case, rotate_deg=ROTATE, slope=SLOPE, intercept=INTERCEPT, **options
    )


@pytest.fixture(scope="session")
def dicom_source(small_archive, tmp_path_factory):
    """The small archive's cases as DICOM studies: (folder, {case: ExportedStudy})."""
    root = tmp_path_factory.mktemp("dicom") / "source"
    studies = {
        case: export_study(small_archive, case, root / case)
        for case in Archive(small_archive).case_ids
    }
    return root, studies


@pytest.fixture(scope="session")
def imported_archive(dicom_source, tmp_path_factory):
    """`dicom_source` imported: (archive folder, ImportReport)."""
    archive = tmp_path_factory.mktemp("imported") / "archive"
    report = import_dicom(dicom_source[0], archive)
    return archive, report


@pytest.fixture
def one_study(small_archive, tmp_path):
    """A fresh copy of one exported study (4 series folders) to damage: ExportedStudy."""
    case = Archive(small_archive).case_ids[0]
    return export_study(small_archive, case, tmp_path / "source" / case)


def case_dirs(archive: Path) -> list[Path]:
    """Every folder in an archive, hidden (temporary) ones included (the only files an import
    leaves besides the cases are its empty lock file, `.import.lock`, the record of its
    failures, `.import-failures.json`, and the key of its case ids, `.pseudonym-key`)."""
    if not archive.exists():
        return []
    assert {p.name for p in archive.iterdir() if not p.is_dir()} <= {
        ".import.lock",
        ".import-failures.json",
        ".pseudonym-key",
    }
    return sorted(p for p in archive.iterdir() if p.is_dir())


# ------------------------------------------------------------------------------------ Orthanc


def _server(folder: Path, users: dict | None = None) -> OrthancServer:
    if not available():
        pytest.skip(MISSING)
    return OrthancServer(folder, users)


@pytest.fixture
def orthanc(tmp_path):
    server = _server(tmp_path / "orthanc")
    yield server
    server.stop()


@pytest.fixture
def orthanc_with_auth(tmp_path):
    server = _server(tmp_path / "orthanc-auth", users={"radiologist": "s3cret-Pa55"})
    yield server
    server.stop()


def copy_study(study, target: Path) -> Path:
    shutil.copytree(study.folder, target)
    return target
