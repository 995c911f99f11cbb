"""A NIfTI case → one DICOM MR study (one series of 2-D slices per sequence), with pydicom.

Used by the tests and benchmarks to make realistic DICOM from a synthetic archive: every series
gets its own number, description, protocol and sequence attributes (EchoTime, RepetitionTime,
InversionTime, ContrastBolusAgent), per-slice ImagePositionPatient, an optional rotation of the
whole study in patient space (an oblique ImageOrientationPatient), and RescaleSlope/Intercept.

Layout of the NIfTI voxels in DICOM (see `fdn.dicom.geometry`): NIfTI axis 0 runs along a row
(columns), axis 1 down a column (rows), axis 2 across slices, so a faithful importer gives back
the NIfTI array itself, with the affine ``rotation @ affine``.

    python -m fdn.dicom.export ARCHIVE OUT [--rotate 8 -12 15]

writes OUT/<CASE>/<series>/<n>.dcm for every case of ARCHIVE.
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from fdn.data.labels import SEQUENCES
from fdn.dicom.geometry import LPS_TO_RAS

# Series headers per sequence: description, protocol, ScanningSequence, TE, TR, TI, agent.
SERIES = {
    "t1": ("T1 SE AX", "t1_se_tra", "SE", 12.0, 550.0, None, None),
    "t1ce": ("T1 SE AX POST GD", "t1_se_tra_gd", "SE", 12.0, 550.0, None, "Gadobutrol"),
    "t2": ("T2 TSE AX", "t2_tse_tra", "SE", 95.0, 4800.0, None, None),
    "flair": ("FLAIR AX", "t2_tirm_tra_dark-fluid", "IR", 120.0, 9000.0, 2500.0, None),
}
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, as generate_uid uses


@dataclass
class ExportedStudy:
    """What `export_case` wrote: the study's folder and UIDs, series folder per sequence."""

    folder: Path
    study_uid: str
    series_uids: dict[str, str] = field(default_factory=dict)
    series_dirs: dict[str, Path] = field(default_factory=dict)
    affine_ras: np.ndarray | None = None  # voxel → RAS of every exported series


def rotation(degrees: tuple[float, float, float]) -> np.ndarray:
    """(3, 3) rotation: about x, then y, then z (RAS axes), angles in degrees."""
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rotated_affine(affine: np.ndarray, shape, degrees) -> np.ndarray:
    """`affine` turned by `rotation(degrees)` about the centre of the volume (RAS)."""
    centre = affine @ np.r_[(np.asarray(shape[:3]) - 1) / 2.0, 1.0]
    turn = np.eye(4)
    turn[:3, :3] = rotation(degrees)
    turn[:3, 3] = centre[:3] - turn[:3, :3] @ centre[:3]
    return turn @ affine


def _uid(*parts) -> str:
    return generate_uid(UID_ROOT, entropy_srcs=[str(p) for p in parts])


def _ds_number(value: float | np.floating) -> str:
    """A DS value: at most 16 characters."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if len(text) <= 16 else f"{value:.10g}"[:16]


def export_series(
    volume: np.ndarray,
    affine_ras: np.ndarray,
    folder: Path,
    *,
    sequence: str,
    study: dict,
    series_number: int,
    series_uid: str,
    slope: float = 0.5,
    intercept: float = -16.0,
) -> None:
    """Write a 3-D volume (i, j, k) as one DICOM file per slice k into `folder`.

    Stored value = rint((value − intercept) / slope) as uint16 (ValueError if out of range),
    so the importer recovers values within slope/2, exactly when they lie on that grid.
    """
    description, protocol, scanning, te, tr, ti, agent = SERIES[sequence]
    stored = np.rint((np.asarray(volume, dtype=np.float64) - intercept) / slope)
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError(
            f"{sequence}: values {volume.min()}..{volume.max()} do not fit uint16 "
            f"with slope {slope}, intercept {intercept}"
        )
    stored = stored.astype(np.uint16)
    lps = LPS_TO_RAS @ affine_ras  # LPS_TO_RAS is its own inverse
    dc, dr = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    row_dir, col_dir = lps[:3, 0] / dc, lps[:3, 1] / dr
    thickness = float(np.linalg.norm(lps[:3, 2]))
    folder.mkdir(parents=True, exist_ok=True)
    nx, ny, nz = stored.shape
    for k in range(nz):
        sop_uid: Any = _uid(series_uid, k)  # a str that pydicom takes as a UID
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop_uid
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        for key, value in study.items():
            setattr(ds, key, value)
        ds.Modality = "MR"
        ds.Manufacturer = "fdn-index synthetic"
        ds.MagneticFieldStrength = "3"
        ds.BodyPartExamined = "BRAIN"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.ProtocolName = protocol
        ds.ScanningSequence = scanning
        ds.SequenceVariant = "SK"
        ds.MRAcquisitionType = "2D"
        ds.EchoTime, ds.RepetitionTime = _ds_number(te), _ds_number(tr)
        if ti is not None:
            ds.InversionTime = _ds_number(ti)
        if agent is not None:
            ds.ContrastBolusAgent = agent
        ds.InstanceNumber = k + 1
        position = lps @ np.array([0.0, 0.0, k, 1.0])
        ds.ImagePositionPatient = [_ds_number(v) for v in position[:3]]
        ds.ImageOrientationPatient = [_ds_number(v) for v in np.r_[row_dir, col_dir]]
        ds.PixelSpacing = [_ds_number(dr), _ds_number(dc)]
        ds.SliceThickness = ds.SpacingBetweenSlices = _ds_number(thickness)
        ds.SliceLocation = _ds_number(float(position[:3] @ np.cross(row_dir, col_dir)))
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = _ds_number(slope), _ds_number(intercept)
        ds.RescaleType = "US"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # (rows, cols)
        ds.save_as(folder / f"IM{k + 1:04d}.dcm", enforce_file_format=True)


def export_case(
    files: dict[str, Path],
    out: str | Path,
    *,
    patient_id: str,
    rotate_deg: tuple[float, float, float] = (8.0, -12.0, 15.0),
    slope: float = 0.5,
    intercept: float = -16.0,
    seed: int = 0,
    sequences: tuple[str, ...] = SEQUENCES,
) -> ExportedStudy:
    """Export the sequences of one NIfTI case (files keyed t1, t1ce, t2, flair) to `out`.

    Every series shares the study's FrameOfReferenceUID and the rotated affine. UIDs are a
    function of (patient_id, seed), so an export is reproducible.
    """
    out = Path(out)
    study_uid = _uid("study", patient_id, seed)
    digest = int(hashlib.sha1(f"{patient_id}:{seed}".encode()).hexdigest(), 16)
    date = f"2026{1 + digest % 12:02d}15"
    study = {
        "PatientName": f"SYNTHETIC^{patient_id}",
        "PatientID": patient_id,
        "PatientBirthDate": "19700101",
        "PatientSex": "O",
        "StudyInstanceUID": study_uid,
        "StudyDate": date,
        "StudyTime": "101500",
        "StudyID": "1",
        "AccessionNumber": f"ACC{digest % 10**8:08d}",
        "StudyDescription": "MR BRAIN WITH AND WITHOUT CONTRAST",
        "FrameOfReferenceUID": _uid("for", patient_id, seed),
        "SeriesDate": date,
    }
    exported = ExportedStudy(out, study_uid)
    for number, sequence in enumerate(sequences, start=1):
        image: Any = nib.load(files[sequence])  # a Nifti1Image
        volume = np.asarray(image.dataobj, dtype=np.float32)
        affine = rotated_affine(image.affine, volume.shape, rotate_deg)
        series_uid = _uid("series", patient_id, seed, sequence)
        folder = out / f"S{number * 100:04d}_{sequence}"
        export_series(
            volume,
            affine,
            folder,
            sequence=sequence,
            study=study,
            series_number=number * 100,
            series_uid=series_uid,
            slope=slope,
            intercept=intercept,
        )
        exported.series_uids[sequence] = series_uid
        exported.series_dirs[sequence] = folder
        exported.affine_ras = affine
    return exported


def export_archive(archive: str | Path, out: str | Path, **options) -> list[ExportedStudy]:
    """Export every case of a BraTS-layout archive: OUT/<CASE>/<series>/IMnnnn.dcm."""
    from fdn.data import Archive

    source = Archive(archive)
    return [
        export_case(source.case_files(case), Path(out) / case, patient_id=case, **options)
        for case in source.case_ids
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("archive", help="a BraTS-layout archive (e.g. from `fdn-index synth`)")
    parser.add_argument("out", help="output folder of DICOM files")
    parser.add_argument(
        "--rotate",
        nargs=3,
        type=float,
        default=(8.0, -12.0, 15.0),
        metavar=("X", "Y", "Z"),
        help="rotation of the study, degrees",
    )
    args = parser.parse_args(argv)
    export_archive(args.archive, args.out, rotate_deg=tuple(args.rotate))


if __name__ == "__main__":
    main()
