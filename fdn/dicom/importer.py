"""DICOM files → cases of a BraTS-layout archive (`fdn-index import-dicom SOURCE ARCHIVE`).

1. Scan: every file under SOURCE is read up to its pixel data (any folder layout). Files that
   are not DICOM, or whose header cannot be read, are listed and left out. Instances are
   grouped by StudyInstanceUID, then SeriesInstanceUID.
2. Plan each study: non-MR series are left out; each MR series is identified as t1, t1ce, t2
   or flair (`fdn.dicom.sequences`). A study needs exactly one series of each; otherwise it
   is listed as skipped with the reason (missing sequence, two series claiming one).
3. Load the four series: pixel data decoded by pydicom, RescaleSlope/Intercept applied, the
   slices stacked along their normal with the checks of `fdn.dicom.geometry` (missing,
   duplicate, mixed orientation). All four must share one FrameOfReferenceUID; t1ce, t2 and
   flair are resampled (trilinear) onto the **t1 grid** in patient space. There is no
   registration: a patient who moved between series stays misaligned.
4. Write: the four NIfTI files (float32, RAS affine) and ``CASE_dicom.json`` into a temporary
   folder inside ARCHIVE, renamed into place at the end, so a case is whole or absent.

The case id is ``<PatientID>_<first 8 hex digits of sha1(StudyInstanceUID)>`` (characters
outside ``A-Za-z0-9._-`` become ``-``), stable across runs. A study already in ARCHIVE (same
StudyInstanceUID in a sidecar) is not imported again, so re-running an import is cheap.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from fdn import __version__
from fdn.data.labels import SEQUENCES
from fdn.dicom.archive_writer import archive_lock, clean_partial, write_case
from fdn.dicom.geometry import (
    LPS_TO_RAS,
    GeometryError,
    resample,
    slice_header,
    stack_slices,
    volume_from_slices,
)
from fdn.dicom.provenance import imported_studies
from fdn.dicom.sequences import identify
from fdn.errors import DicomImportError

log = logging.getLogger(__name__)

REFERENCE = "t1"  # the grid every sequence is resampled onto
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
class SeriesVolume:
    """A loaded series: (cols, rows, slices) float32 volume, its RAS affine, and its header."""

    data: np.ndarray
    affine: np.ndarray
    header: pydicom.Dataset


@dataclass
class ImportReport:
    """What an import did; every list item is a dict ready for JSON."""

    archive: str
    imported: list[dict] = field(default_factory=list)  # case, study_uid, series_uids
    already: list[dict] = field(default_factory=list)  # study_uid, case
    skipped: list[dict] = field(default_factory=list)  # study_uid, series_uid, file, reason
    bad_files: list[dict] = field(default_factory=list)  # file, reason
    ignored_series: list[dict] = field(default_factory=list)  # study_uid, series_uid, reason
    bytes_read: int = 0  # of the imported studies' files (from a PACS: their pixel data)

    @property
    def failed(self) -> bool:
        """True when nothing was imported and something was wrong or nothing was found."""
        if self.imported:
            return False
        return bool(self.skipped or self.bad_files) or not self.already


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


def where(instance: Path | pydicom.Dataset) -> str:
    """A file's path, or ``instance SOPInstanceUID`` for a dataset in memory."""
    if isinstance(instance, pydicom.Dataset):
        return f"instance {instance.get('SOPInstanceUID', '?')}"
    return str(instance)


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
            header = (
                path
                if isinstance(path, pydicom.Dataset)
                else pydicom.dcmread(path, stop_before_pixels=True)
            )
        except InvalidDicomError:
            bad.append({"file": str(path), "reason": "not a DICOM file (no DICM preamble)"})
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


def case_id_of(study: StudyFiles) -> str:
    """``<PatientID>_<sha1(StudyInstanceUID)[:8]>``, safe as a folder and file name."""
    patient = re.sub(r"[^A-Za-z0-9._-]+", "-", study.patient_id).strip("-.") or "study"
    return f"{patient[:48]}_{hashlib.sha1(study.uid.encode()).hexdigest()[:8]}"


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


def _decoder_fault(dataset) -> str | None:
    """Why pydicom cannot decode `dataset`'s pixel data, or None if it can."""
    from pydicom.pixels import get_decoder

    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None:
        return None  # no file meta: pydicom assumes a syntax, and decoding says the rest
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return f"transfer syntax {syntax.name} ({syntax}) has no pixel data decoder in pydicom"
    if not decoder.is_available:
        plugins = "; ".join(getattr(decoder, "missing_dependencies", []))
        return (
            f"transfer syntax {syntax.name} ({syntax}) cannot be decoded here: no decoder "
            f"plugin installed{f' ({plugins})' if plugins else ''}; convert the study to "
            "an uncompressed transfer syntax, or install one of those plugins"
        )
    return None


def load_series(
    files: list[Path | pydicom.Dataset], *, study: str | None = None, series: str | None = None
) -> SeriesVolume:
    """Decode, rescale and stack one series' files (or datasets) into a volume with its RAS
    affine. Raises DicomImportError naming study, series, file and fault.
    """
    headers, pixels, first = [], [], None
    for item in files:
        path = where(item)
        try:
            dataset = item if isinstance(item, pydicom.Dataset) else pydicom.dcmread(item)
        except Exception as error:
            raise DicomImportError(
                f"corrupt file ({type(error).__name__}: {error})",
                study=study,
                series=series,
                file=path,
            ) from None
        if "PixelData" not in dataset:
            raise DicomImportError(
                "no pixel data (not an image)", study=study, series=series, file=path
            )
        if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
            raise DicomImportError(
                "multi-frame (enhanced) image: only series of single-frame images are "
                "supported; convert it to classic single-frame MR",
                study=study,
                series=series,
                file=path,
            )
        if int(dataset.get("SamplesPerPixel", 1)) != 1:
            raise DicomImportError(
                "colour image: an MR series must be grey-scale",
                study=study,
                series=series,
                file=path,
            )
        fault = _decoder_fault(dataset)
        if fault:
            raise DicomImportError(fault, study=study, series=series, file=path)
        try:
            raw = dataset.pixel_array
        except Exception as error:
            raise DicomImportError(
                f"corrupt pixel data ({type(error).__name__}: {error})",
                study=study,
                series=series,
                file=path,
            ) from None
        try:
            headers.append(slice_header(dataset))
        except GeometryError as error:
            raise DicomImportError(str(error), study=study, series=series, file=path) from None
        slope = float(dataset.get("RescaleSlope", 1) or 1)
        intercept = float(dataset.get("RescaleIntercept", 0) or 0)
        pixels.append(raw.astype(np.float64) * slope + intercept)  # (rows, cols)
        if first is None:
            first = dataset
    assert first is not None, "a series has at least one instance"
    thickness = first.get("SliceThickness")
    try:
        stack = stack_slices(headers, float(thickness) if thickness else None)
    except GeometryError as error:
        file = None if error.index is None else where(files[error.index])
        raise DicomImportError(str(error), study=study, series=series, file=file) from None
    first.PixelData = b""  # keep the header, not the pixels
    return SeriesVolume(volume_from_slices(pixels, stack), LPS_TO_RAS @ stack.affine_lps, first)


def load_study(study: StudyFiles, chosen: dict[str, SeriesFiles]) -> tuple[dict, np.ndarray]:
    """The four sequences on the reference (t1) grid: ({sequence: volume}, RAS affine)."""
    loaded = {
        seq: load_series(chosen[seq].files, study=study.uid, series=chosen[seq].uid)
        for seq in SEQUENCES
    }
    frames = {seq: str(v.header.get("FrameOfReferenceUID", "") or "") for seq, v in loaded.items()}
    if len({f for f in frames.values() if f}) > 1:
        raise DicomImportError(
            "the series lie in different frames of reference "
            f"({', '.join(f'{s}: {f}' for s, f in frames.items())}); they would need "
            "registration, which fdn-index does not do",
            study=study.uid,
        )
    reference = loaded[REFERENCE]
    volumes = {
        seq: resample(v.data, v.affine, reference.data.shape, reference.affine)
        for seq, v in loaded.items()
    }
    return volumes, reference.affine


def import_study(
    study: StudyFiles, archive: Path, mapping=None, source: str = ""
) -> tuple[str, dict, list[dict]]:
    """Import one scanned study into `archive`: (case id, its provenance, series left out)."""
    chosen, ignored = plan_study(study, mapping)
    volumes, affine = load_study(study, chosen)
    case = case_id_of(study)
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
                "instances": len(chosen[seq].files),
            }
            for seq in SEQUENCES
        },
        "source": source,
        "fdn_index_version": __version__,
    }
    write_case(archive, case, volumes, affine, provenance)
    return case, provenance, ignored


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
            case, provenance, ignored = import_study(study, archive, mapping, source)
        except DicomImportError as error:
            log.warning("skipping %s", error)
            report.skipped.append(skip_entry(uid, error))
            continue
        report.imported.append(
            {"case": case, "study_uid": uid, "series_uids": provenance["series_uids"]}
        )
        report.ignored_series.extend(ignored)
        report.bytes_read += study.nbytes
        if on_study is not None:
            on_study(uid)


def import_dicom(
    source: str | Path, archive: str | Path, *, mapping=None, progress=None
) -> ImportReport:
    """Import every complete MR study found under `source` into `archive` (created if needed).

    mapping: rules from `fdn.dicom.sequences.load_mapping`, or None for the default rules.
    progress: a tqdm-like callable (iterable, desc=, unit=) for progress bars, or None.
    Bad studies and files are listed in the report, never raised; DicomImportError only when
    `source` itself is missing.
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
    return report
