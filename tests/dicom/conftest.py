"""Fixtures of the DICOM import tests: DICOM studies exported from the small synthetic archive,
their import, a tiny model, a real Orthanc PACS, and helpers to damage a study on purpose.

Every export rotates the study by (8, -12, 15) degrees (an oblique ImageOrientationPatient)
and stores values with RescaleSlope 0.5 and RescaleIntercept -16 (`fdn.dicom.export`).
"""

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from fdn.data import Archive
from fdn.dicom.export import export_case
from fdn.dicom.importer import import_dicom
from tests.pipeline.conftest import make_model_dir

ORTHANC = Path("/usr/sbin/Orthanc")
ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")
DICOMWEB_PLUGIN = ORTHANC_PLUGINS / "libOrthancDicomWeb.so"
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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("dicom-model") / "model", seed=0)


@pytest.fixture
def one_study(small_archive, tmp_path):
    """A fresh copy of one exported study (4 series folders) to damage: ExportedStudy."""
    case = Archive(small_archive).case_ids[0]
    return export_study(small_archive, case, tmp_path / "source" / case)


def case_dirs(archive: Path) -> list[Path]:
    """Every folder in an archive, hidden (temporary) ones included (the only file an import
    leaves besides the cases is its empty lock file, `.import.lock`)."""
    if not archive.exists():
        return []
    assert {p.name for p in archive.iterdir() if not p.is_dir()} <= {".import.lock"}
    return sorted(p for p in archive.iterdir() if p.is_dir())


# ------------------------------------------------------------------------------------ Orthanc


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OrthancServer:
    """A running Orthanc on 127.0.0.1 with its own storage folder; `url` is its REST root."""

    def __init__(self, folder: Path, users: dict | None = None):
        if not ORTHANC.exists() or not DICOMWEB_PLUGIN.exists():
            pytest.skip(
                "Orthanc with its DICOMweb plugin is not installed (Debian packages "
                "orthanc and orthanc-dicomweb; `make system-deps` installs them) and "
                "could not be installed here"
            )
        folder.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.auth = None
        config = {
            "Name": "fdn-test",
            "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"),
            "HttpPort": self.port,
            "DicomPort": _free_port(),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(users),
            "Plugins": [str(ORTHANC_PLUGINS)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        if users:
            config["RegisteredUsers"] = users
            self.auth = next(iter(users.items()))
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "wb")
        self.process = subprocess.Popen(
            [str(ORTHANC), str(folder / "orthanc.json")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{self.url}/system", auth=self.auth, timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Orthanc did not start; see {folder / 'orthanc.log'}")
            time.sleep(0.1)

    def upload(self, folder: Path) -> int:
        """POST every file under `folder` to /instances; the number uploaded."""
        files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
        for path in files:
            response = requests.post(
                f"{self.url}/instances", data=path.read_bytes(), auth=self.auth, timeout=30
            )
            response.raise_for_status()
        return len(files)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a second: its storage is a temporary folder anyway."""
        self.process.terminate()
        try:
            self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def orthanc(tmp_path):
    server = OrthancServer(tmp_path / "orthanc")
    yield server
    server.stop()


@pytest.fixture
def orthanc_with_auth(tmp_path):
    server = OrthancServer(tmp_path / "orthanc-auth", users={"radiologist": "s3cret-Pa55"})
    yield server
    server.stop()


def copy_study(study, target: Path) -> Path:
    shutil.copytree(study.folder, target)
    return target
