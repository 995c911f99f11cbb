"""An external case as a query: one slice read, checked and preprocessed like an archive case."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fdn.archive_index.query_options import as_int
from fdn.errors import QueryError


def load_query_slice(files: dict[str, Path], size: int, case_id: str, slice_index: int | None):
    """One preprocessed slice of an external case, equal to `load_case_files(...)` at that slice.

    The case is read and validated whole (`read_case`) and z-scored over its whole brain, as
    `preprocess` does, but only the query slice is resized: the resizing of every other slice
    is most of the cost of preprocessing a BraTS-size case. The default slice is chosen on the
    resized lesion labels, as the CLI always did. Returns image (4, S, S) float32, seg and anat
    (S, S) uint8 or None, and the slice number. QueryError for a slice out of range.
    """
    from fdn.data.case import preprocess, read_case, zscore
    from fdn.data.render import default_slice
    from fdn.data.resize import resize_images, resize_labels

    raw = read_case(files, case_id)
    depth = raw.image.shape[3]
    if slice_index is None:
        seg = None if raw.seg is None else resize_labels(np.transpose(raw.seg, (2, 0, 1)), size)
        slice_index = default_slice(None if seg is None else np.moveaxis(seg, 0, -1), depth)
    slice_index = as_int("slice", slice_index)
    if not 0 <= slice_index < depth:
        raise QueryError(
            f"{case_id} has slices 0..{depth - 1}; slice {slice_index} is out of range"
        )
    brain = np.any(raw.image != 0, axis=0)  # (H, W, Z)
    mean, std = zscore(raw.image, brain) if brain.any() else (None, None)
    if mean is None or np.any(std <= 1e-6 * np.maximum(np.abs(mean), 1)):
        preprocess(raw, size)  # raises the archive reader's own error for this case
    assert mean is not None and std is not None  # preprocess raised otherwise
    shift = mean.astype(np.float32).reshape(-1, 1, 1)
    scale = std.astype(np.float32).reshape(-1, 1, 1)
    x = raw.image[..., slice_index]  # (C, H, W)
    z = np.where(brain[..., slice_index], (x - shift) / scale, np.float32(0))
    image = resize_images(z[None], size)[0]

    def labels(y):
        return None if y is None else resize_labels(y[None, :, :, slice_index], size)[0]

    return image, labels(raw.seg), labels(raw.anat), slice_index


def check_nifti_sizes(case_id: str, files: dict[str, Path], max_voxels: int) -> None:
    """Refuse a file whose header declares more than `max_voxels` voxels (or is no NIfTI), before
    its data is read, so that a crafted header cannot make a reader allocate gigabytes."""
    import nibabel as nib

    from fdn.data.case import CaseError

    for key, path in files.items():
        try:
            header: Any = nib.load(path)  # reads the header only
            shape = tuple(int(n) for n in header.shape)
        except Exception as exc:  # nibabel raises many types for a file that is not NIfTI
            raise CaseError(
                case_id,
                Path(Path(path).name),
                f"not a readable NIfTI file ({type(exc).__name__}: "
                f"{exc}); send the {key} sequence as .nii or .nii.gz",
            ) from None
        voxels = int(np.prod(shape, dtype=np.int64)) if shape else 0
        if voxels > max_voxels:
            raise CaseError(
                case_id,
                Path(Path(path).name),
                f"the {key} volume has shape {shape} "
                f"({voxels:,} voxels); at most {max_voxels:,} voxels are accepted",
            )
