"""DICOM files → cases of a BraTS-layout archive (`fdn-index import-dicom SOURCE ARCHIVE`).

1. Scan: every file under SOURCE is read up to its pixel data (any folder layout). Files that
   are not DICOM, or whose header cannot be read, are listed and left out. Instances are
   grouped by StudyInstanceUID, then SeriesInstanceUID.
2. Plan each study: non-MR series are left out; each MR series is identified as t1, t1ce, t2
   or flair (`fdn.dicom.sequences`). A study needs exactly one series of each; otherwise it
   is listed as skipped with the reason (missing sequence, two series claiming one).
3. Load the four series (`fdn.dicom.loading`): pixel data decoded by pydicom,
   RescaleSlope/Intercept applied, the slices stacked along their normal with the checks of
   `fdn.dicom.geometry` (missing, NaN or infinite values, duplicate position, mixed
   orientation); a file copied twice (same SOPInstanceUID, same image) is dropped with a note.
   All four must share one FrameOfReferenceUID; t1ce, t2 and flair are resampled (trilinear)
   onto the **t1 grid** in patient space. There is no registration: a patient who moved
   between series stays misaligned.
4. Write: the four NIfTI files (float32, RAS affine) and ``CASE_dicom.json`` into a temporary
   folder inside ARCHIVE, renamed into place at the end, so a case is whole or absent.

The case id is a pseudonym, ``P<10 hex>_<8 hex>``: keyed hashes of the PatientID and the
StudyInstanceUID under the archive's own key (`fdn.dicom.pseudonyms`), stable across runs; only
the case's sidecar in the archive maps it back to the PatientID. A study already in ARCHIVE (same
StudyInstanceUID in a sidecar) is not imported again, so re-running an import is cheap.
Headers are read without inflating pixel data (`fdn.dicom.reading`). One study's fault, whatever
it is, skips that study only. A study or file that failed the same way in the previous run is
marked ``known`` (`fdn.dicom.failures`), and a run whose only failures are known has not failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from fdn import __version__
from fdn.data.labels import SEQUENCES
from fdn.dicom.archive_writer import archive_lock, clean_partial, write_case
from fdn.dicom.case_metadata import study_metadata
from fdn.dicom.failures import mark_known
from fdn.dicom.loading import REFERENCE, load_series, load_study, where
from fdn.dicom.provenance import imported_studies
from fdn.dicom.pseudonyms import archive_key, pseudonymous_case_id
from fdn.dicom.reading import DicomReadError, read_header
from fdn.dicom.sequences import identify
from fdn.errors import DicomImportError

__all__ = ["ImportReport", "import_dicom", "import_studies", "load_series", "scan"]

log = logging.getLogger(__name__)

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


@dataclass
class SeriesFiles:
    """One series found by the scan: its UID, first header (no pixels) and instances: file
    paths, or datasets already in memory (received from a PACS)."""

    uid: str
    header: pydicom.Dataset
    files: list[Path | pydicom.Dataset] = field(default_factory=list)

    @property
    def label(self) -> str:
        """``UID (#number 'description')`` for messages."""
        number = self.header.get("SeriesNumber", "?")
        return f"{self.uid} (#{number} {str(self.header.get('SeriesDescription', '')).strip()!r})"


@dataclass
class StudyFiles:
    """One study found by the scan: its UID, PatientID and series by UID."""

    uid: str
    patient_id: str
    series: dict[str, SeriesFiles] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of its files; for datasets in memory, of their pixel data."""
        return sum(
            p.stat().st_size if isinstance(p, Path) else len(p.get("PixelData") or b"")
            for s in self.series.values()
            for p in s.files
        )


@dataclass
class ImportReport:
    """What an import did; every list item is a dict ready for JSON."""

    archive: str
    imported: list[dict] = field(default_factory=list)  # case, study_uid, series_uids
    already: list[dict] = field(default_factory=list)  # study_uid, case
    # study_uid, series_uid, file, reason, known (and transient: true for a failure that may
    # pass by itself, a PACS retrieve or an unexpected error)
    skipped: list[dict] = field(default_factory=list)
    bad_files: list[dict] = field(default_factory=list)  # file, reason, known
    ignored_series: list[dict] = field(default_factory=list)  # study_uid, series_uid, reason
    duplicates: list[dict] = field(default_factory=list)  # study_uid, series_uid, file, same_as
    bytes_read: int = 0  # of the imported studies' files (from a PACS: their pixel data)

    @property
    def new_failures(self) -> list[dict]:
        """Skipped studies and bad files that the previous run did not report the same way."""
        return [e for e in [*self.skipped, *self.bad_files] if not e.get("known", False)]

    @property
    def failed(self) -> bool:
        """True when nothing was imported and something new was wrong or nothing was found.
        Failures already reported by the previous run (``known``) do not fail a re-run."""
        if self.imported:
            return False
        return bool(self.new_failures) or not (self.already or self.skipped or self.bad_files)


def no_progress(iterable, **_):
    """The `progress` of a run without bars: the iterable itself."""
    return iterable


def list_files(source: Path) -> list[Path]:
    """Every regular file under `source` (or `source` itself), sorted; hidden ones too."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise DicomImportError(f"{source} does not exist; pass a folder of DICOM files")
    return sorted(p for p in source.rglob("*") if p.is_file())


def scan(
    files: Iterable[Path | pydicom.Dataset], progress=None
) -> tuple[dict[str, StudyFiles], list[dict]]:
    """Read the headers of `files` (paths, or datasets in memory) and group them:
    (studies by UID, bad files with reasons)."""
    files = list(files)
    progress = progress or no_progress
    studies: dict[str, StudyFiles] = {}
    bad = []
    for path in progress(files, desc="scan", unit="file"):
        try:
            header = path if isinstance(path, pydicom.Dataset) else read_header(path)
        except InvalidDicomError:
            bad.append({"file": str(path), "reason": "not a DICOM file (no DICM preamble)"})
            continue
        except DicomReadError as error:
            bad.append({"file": str(path), "reason": str(error)})
            continue
        except Exception as error:  # pydicom raises many types for a damaged header
            bad.append(
                {
                    "file": str(path),
                    "reason": f"corrupt DICOM header ({type(error).__name__}: {error})",
                }
            )
            continue
        meta = getattr(header, "file_meta", None)
        if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == DICOMDIR_CLASS:
            continue  # a DICOMDIR index, not an image
        study_uid = str(header.get("StudyInstanceUID", "") or "")
        series_uid = str(header.get("SeriesInstanceUID", "") or "")
        if not study_uid or not series_uid:
            bad.append({"file": where(path), "reason": "no StudyInstanceUID or SeriesInstanceUID"})
            continue
        study = studies.setdefault(
            study_uid, StudyFiles(study_uid, str(header.get("PatientID", "") or ""))
        )
        series = study.series.setdefault(series_uid, SeriesFiles(series_uid, header))
        series.files.append(path if isinstance(path, pydicom.Dataset) else Path(path))
    return studies, bad


def plan_study(study: StudyFiles, mapping=None) -> tuple[dict[str, SeriesFiles], list[dict]]:
    """The series of each sequence, and the series left out with reasons.

    Raises DicomImportError when the study is not MR, lacks a sequence or has two series
    claiming one.
    """
    chosen: dict[str, SeriesFiles] = {}
    ignored = []
    modalities = set()
    for series in study.series.values():
        modality = str(series.header.get("Modality", "") or "?")
        modalities.add(modality)
        if modality != "MR":
            ignored.append(
                {
                    "study_uid": study.uid,
                    "series_uid": series.uid,
                    "reason": f"modality {modality}, not MR",
                }
            )
            continue
        sequence, reason = identify(series.header, mapping)
        if sequence is None:
            ignored.append({"study_uid": study.uid, "series_uid": series.uid, "reason": reason})
            continue
        if sequence in chosen:
            other = chosen[sequence]
            raise DicomImportError(
                f"two series claim the {sequence} sequence: {other.label} and {series.label}; "
                'map one of them to another sequence or to "ignore" in a --mapping file',
                study=study.uid,
                series=series.uid,
            )
        chosen[sequence] = series
        log.debug("study %s: series %s is %s (%s)", study.uid, series.label, sequence, reason)
    if "MR" not in modalities:
        raise DicomImportError(
            f"modality {', '.join(sorted(modalities))}, not MR: fdn-index indexes brain MR "
            "studies only",
            study=study.uid,
            series=", ".join(s.uid for s in study.series.values()),
        )
    missing = [s for s in SEQUENCES if s not in chosen]
    if missing:
        role = {i["series_uid"]: f"left out, {i['reason']}" for i in ignored}
        role.update({s.uid: f"is {sequence}" for sequence, s in chosen.items()})
        found = "; ".join(f"{s.label} {role[s.uid]}" for s in study.series.values())
        raise DicomImportError(
            f"missing sequence(s) {', '.join(missing)}; the study's series are: {found}. "
            "Name the right series in a --mapping file, or leave this study out",
            study=study.uid,
        )
    return chosen, ignored


def import_study(
    study: StudyFiles, archive: Path, mapping=None, source: str = ""
) -> tuple[str, dict, list[dict], list[dict]]:
    """Import one scanned study into `archive`: (case id, its provenance, series left out,
    duplicate files dropped)."""
    chosen, ignored = plan_study(study, mapping)
    volumes, affine, loaded = load_study(study, chosen)
    case = pseudonymous_case_id(archive_key(archive), study.patient_id, study.uid)
    provenance = {
        "study_uid": study.uid,
        "series_uids": {seq: chosen[seq].uid for seq in SEQUENCES},
        "patient_id": study.patient_id,
        "reference_grid": REFERENCE,
        "series": {
            seq: {
                "uid": chosen[seq].uid,
                "number": str(chosen[seq].header.get("SeriesNumber", "")),
                "description": str(chosen[seq].header.get("SeriesDescription", "")),
                "instances": int(loaded[seq].data.shape[2]),
            }
            for seq in SEQUENCES
        },
        "source": source,
        "fdn_index_version": __version__,
        # sex, age, study date, scanner: what `--where` filters on (no direct identifiers)
        "metadata": study_metadata(chosen[REFERENCE].header),
    }
    write_case(archive, case, volumes, affine, provenance)
    duplicates = [
        {"study_uid": study.uid, "series_uid": chosen[seq].uid, **d}
        for seq in SEQUENCES
        for d in loaded[seq].duplicates
    ]
    return case, provenance, ignored, duplicates


def skip_entry(study_uid: str, error: DicomImportError) -> dict:
    return {
        "study_uid": study_uid,
        "series_uid": error.series,
        "file": error.file,
        "reason": error.fault,
    }


def import_studies(
    studies: dict[str, StudyFiles],
    archive: Path,
    report: ImportReport,
    mapping=None,
    source: str = "",
    progress=None,
    on_study: Callable[[str], None] | None = None,
) -> None:
    """Import scanned studies into `archive`, filling `report` (skips are recorded, not raised)."""
    progress = progress or no_progress
    done = imported_studies(archive)
    for uid in progress(sorted(studies), desc="import", unit="study"):
        study = studies[uid]
        if uid in done:
            report.already.append({"study_uid": uid, "case": done[uid]})
            continue
        try:
            case, provenance, ignored, duplicates = import_study(study, archive, mapping, source)
        except DicomImportError as error:
            log.warning("skipping %s", error)
            report.skipped.append(skip_entry(uid, error))
            continue
        except Exception as error:  # a fault no check foresaw: this study only, named
            log.warning("skipping study %s: unexpected %r", uid, error, exc_info=True)
            report.skipped.append(
                {
                    "study_uid": uid,
                    "series_uid": None,
                    "file": None,
                    "reason": f"unexpected error ({type(error).__name__}: {str(error)[:300]}); "
                    "the study is left out, the others are imported",
                    "transient": True,
                }
            )
            continue
        report.imported.append(
            {"case": case, "study_uid": uid, "series_uids": provenance["series_uids"]}
        )
        report.ignored_series.extend(ignored)
        report.duplicates.extend(duplicates)
        report.bytes_read += study.nbytes
        if on_study is not None:
            on_study(uid)


def import_dicom(
    source: str | Path, archive: str | Path, *, mapping=None, progress=None
) -> ImportReport:
    """Import every complete MR study found under `source` into `archive` (created if needed).

    mapping: rules from `fdn.dicom.sequences.load_mapping`, or None for the default rules.
    progress: a tqdm-like callable (iterable, desc=, unit=) for progress bars, or None.
    Bad studies and files are listed in the report, never raised (each marked ``known`` when
    the previous run reported it the same way); DicomImportError only when `source` itself is
    missing.
    """
    source, archive = Path(source), Path(archive)
    files = list_files(source)
    with archive_lock(archive):
        clean_partial(archive)
        report = ImportReport(archive=str(archive))
        studies, report.bad_files = scan(files, progress)
        import_studies(
            studies, archive, report, mapping, source=str(source.resolve()), progress=progress
        )
        mark_known(archive, report)
    return report
