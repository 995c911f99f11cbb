"""Reading, validating and preprocessing one case (four sequences plus optional label maps).

Preprocessing follows the paper (4.2): stack T1, T1Gd, T2, FLAIR as 4 channels,
z-score each channel over the brain voxels of the volume (brain = nonzero in any sequence, at
the original resolution; voxels outside the brain are set to 0, the brain mean), then resize
every axial slice (the last NIfTI axis) to size × size: bilinear for images, nearest neighbour
for labels. Array axes after preprocessing are (Z, C, X, Y): slice z, channel, then the first
and second NIfTI axes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fdn.data.labels import OPTIONAL_FILES, SEG_LABELS, SEQUENCES
from fdn.data.nifti import NiftiError, read_nifti
from fdn.data.resize import resize_labels, resize_slices_transposed
from fdn.errors import ArchiveError

log = logging.getLogger(__name__)

AFFINE_TOLERANCE_MM = 1e-3


class CaseError(ArchiveError):
    """A case is bad: `case` names it, `file` the faulty file (None if not one file), `fault`
    says what is wrong."""

    def __init__(self, case: str, file: Path | None, fault: str):
        self.case, self.file, self.fault = case, file, fault
        where = f"case {case!r}" + (f", file {file}" if file is not None else "")
        super().__init__(f"{where}: {fault}")

    @classmethod
    def from_report(cls, case: str, message: str) -> CaseError:
        """The CaseError whose message a worker reported (a Dask task returns it as text)."""
        error = cls(case, None, message)
        error.args = (message,)
        return error


class Volume(NamedTuple):
    """One preprocessed case.

    image: (Z, 4, size, size) float32, z-scored per channel over brain voxels.
    brain: (Z, size, size) bool, the brain mask used for the z-score.
    seg: (Z, size, size) uint8 in {0, 1, 2, 4}, or None.
    anat: (Z, size, size) uint8 in 0..6, or None.
    pseudohealthy: (Z, 4, size, size) float32 normalised with the image's mean/std, or None.
    files: the source files; shape: the original (H, W, Z).
    """

    case: str
    image: np.ndarray
    brain: np.ndarray
    seg: np.ndarray | None
    anat: np.ndarray | None
    pseudohealthy: np.ndarray | None
    files: dict[str, Path]
    shape: tuple[int, int, int]


class Slice(NamedTuple):
    """One axial slice: image (4, size, size) float32; seg, anat (size, size) uint8 or None."""

    case: str
    index: int  # type: ignore[assignment]  # shadows tuple.index: the slice number reads best
    image: np.ndarray
    seg: np.ndarray | None
    anat: np.ndarray | None


class RawCase(NamedTuple):
    """A validated case at its original resolution.

    image: (4, H, W, Z) float32; seg, anat: (H, W, Z) uint8 or None;
    pseudohealthy: (4, H, W, Z) float32 or None; affine: (4, 4).
    image and pseudohealthy are views of (4, Z, W, H) C-contiguous memory: NIfTI stores voxels
    in Fortran order, so each slice is contiguous and `preprocess` never reorders the volume.
    """

    case: str
    image: np.ndarray
    seg: np.ndarray | None
    anat: np.ndarray | None
    pseudohealthy: np.ndarray | None
    affine: np.ndarray
    files: dict[str, Path]


def _read(case: str, key: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one NIfTI file fully: (data float32, affine); any read failure is a CaseError.

    `fdn.data.nifti.read_nifti` checks the header's sizes before allocating and every gzip
    trailer (CRC-32, length), so a damaged file fails here rather than reading as wrong voxels.
    """
    try:
        return read_nifti(path)
    except NiftiError as error:
        raise CaseError(case, path, f"unreadable or truncated {key} file: {error.fault}") from None


def _check_finite(case: str, path: Path, data: np.ndarray) -> None:
    if not np.isfinite(data).all():
        n_bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise CaseError(case, path, f"{n_bad} NaN or inf values; fix or drop the file")


def _as_labels(
    case: str, path: Path, key: str, data: np.ndarray, allowed: tuple[int, ...]
) -> np.ndarray:
    values = np.unique(data)
    bad = [v for v in values.tolist() if v not in allowed]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:8]) + (" …" if len(bad) > 8 else "")
        raise CaseError(
            case, path, f"{key} labels must be in {{{', '.join(map(str, allowed))}}}, found {shown}"
        )
    return data.astype(np.uint8)


def read_case(files: dict[str, Path], case_id: str) -> RawCase:
    """Read and validate every file of a case; no resizing, no normalisation.

    files: keys among SEQUENCES + ("seg", "anat", "pseudohealthy"); every sequence required.
    Raises CaseError naming the case, the file and the fault.
    """
    files = {key: Path(path) for key, path in files.items()}
    unknown = sorted(set(files) - set(SEQUENCES) - set(OPTIONAL_FILES))
    if unknown:
        raise ValueError(f"unknown file keys {unknown}; expected {SEQUENCES + OPTIONAL_FILES}")
    for key in SEQUENCES:
        if key not in files:
            raise CaseError(
                case_id,
                None,
                f"missing the {key} sequence (expected {case_id}_{key}.nii.gz); add it",
            )

    channels = []
    reference_key: str | None = None
    reference_shape: tuple | None = None
    reference_affine: Any = None
    raw: dict[str, np.ndarray] = {}
    for key in (*SEQUENCES, *[k for k in OPTIONAL_FILES if k in files]):
        path = files[key]
        data, affine = _read(case_id, key, path)
        expected_ndim = 4 if key == "pseudohealthy" else 3
        if data.ndim != expected_ndim or (key == "pseudohealthy" and data.shape[3] != 4):
            want = "H×W×Z×4" if key == "pseudohealthy" else "3-D H×W×Z"
            raise CaseError(case_id, path, f"expected a {want} volume, found shape {data.shape}")
        if reference_shape is None:
            reference_key, reference_shape, reference_affine = key, data.shape[:3], affine
        elif data.shape[:3] != reference_shape:
            raise CaseError(
                case_id,
                path,
                f"shape {data.shape[:3]} disagrees with the "
                f"{reference_key} shape {reference_shape}; resample it onto the "
                f"{reference_key} grid",
            )
        elif not np.allclose(affine, reference_affine, atol=AFFINE_TOLERANCE_MM):
            raise CaseError(
                case_id,
                path,
                f"affine disagrees with the {reference_key} affine "
                f"(max difference {np.abs(affine - reference_affine).max():.3g}); "
                "the sequences must be co-registered on one grid",
            )
        _check_finite(case_id, path, data)
        if key in SEQUENCES:
            channels.append(data)
        else:
            raw[key] = data

    seg = anat = pseudo = None
    if "seg" in raw:
        seg = _as_labels(case_id, files["seg"], "seg", raw["seg"], SEG_LABELS)
    if "anat" in raw:
        anat = _as_labels(case_id, files["anat"], "anat", raw["anat"], tuple(range(7)))
    if "pseudohealthy" in raw:
        pseudo = np.moveaxis(raw["pseudohealthy"], 3, 0)
    # (H, W, Z) Fortran-ordered -> .T is (Z, W, H) C-contiguous: stacking is a plain copy.
    image = np.stack([c.T for c in channels]).transpose(0, 3, 2, 1)  # (4, H, W, Z) view
    return RawCase(case_id, image, seg, anat, pseudo, reference_affine, files)


def zscore(image: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over brain voxels.

    image: (C, H, W, Z) float32; brain: (H, W, Z) bool. Returns mean, std: (C,) float64.
    """
    voxels = image[:, brain].astype(np.float64)  # (C, N)
    return voxels.mean(axis=1), voxels.std(axis=1)


def preprocess(raw: RawCase, size: int) -> Volume:
    """Z-score over brain voxels, move slices first, resize in-plane to size × size."""
    if not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    brain = np.any(raw.image != 0, axis=0)  # (H, W, Z)
    if not brain.any():
        raise CaseError(
            raw.case,
            raw.files["t1"],
            "every sequence is zero everywhere: no brain voxels to normalise",
        )
    mean, std = zscore(raw.image, brain)
    flat = [SEQUENCES[c] for c in np.flatnonzero(std <= 1e-6 * np.maximum(np.abs(mean), 1))]
    if flat:
        raise CaseError(
            raw.case,
            raw.files[flat[0]],
            "the sequence is constant over the brain; it cannot be z-scored",
        )
    shift = mean.astype(np.float32)
    scale = std.astype(np.float32)

    outside = ~brain.T  # (Z, W, H)

    def normalise(x: np.ndarray) -> np.ndarray:
        # (C, H, W, Z) -> (Z, C, size, size); outside the brain = 0 (the brain mean).
        # Worked in the (C, Z, W, H) order the voxels are stored in (RawCase), with the same
        # float32 operations per voxel as np.where(brain, (x - shift) / scale, 0).
        z = np.empty((x.shape[0], x.shape[3], x.shape[2], x.shape[1]), np.float32)
        np.subtract(np.transpose(x, (0, 3, 2, 1)), shift.reshape(-1, 1, 1, 1), out=z)
        np.divide(z, scale.reshape(-1, 1, 1, 1), out=z)
        np.copyto(z, np.float32(0), where=outside)
        c, n_z, w, h = z.shape
        resized = resize_slices_transposed(z.reshape(c * n_z, w, h), size)  # (C·Z, size, size)
        return np.ascontiguousarray(resized.reshape(c, n_z, size, size).transpose(1, 0, 2, 3))

    def labels(y: np.ndarray | None) -> np.ndarray | None:
        return (
            None
            if y is None
            else np.ascontiguousarray(resize_labels(np.transpose(y, (2, 0, 1)), size))
        )

    brain_mask = labels(brain)
    assert brain_mask is not None
    return Volume(
        case=raw.case,
        image=normalise(raw.image),
        brain=brain_mask,
        seg=labels(raw.seg),
        anat=labels(raw.anat),
        pseudohealthy=None if raw.pseudohealthy is None else normalise(raw.pseudohealthy),
        files=dict(raw.files),
        shape=(int(raw.image.shape[1]), int(raw.image.shape[2]), int(raw.image.shape[3])),
    )


def load_case_files(files: dict[str, Path], size: int, case_id: str) -> Volume:
    """Validate and preprocess one case given its files (an archive case or loose NIfTIs)."""
    return preprocess(read_case(files, case_id), size)


def volume_slices(volume: Volume) -> list[Slice]:
    """The axial slices of a volume, in order."""
    return [
        Slice(
            volume.case,
            z,
            volume.image[z],
            None if volume.seg is None else volume.seg[z],
            None if volume.anat is None else volume.anat[z],
        )
        for z in range(volume.image.shape[0])
    ]
