"""DICOM geometry: one series of 2-D slices → a 3-D volume with a RAS affine, and resampling.

Conventions (DICOM PS3.3 C.7.6.2; README.md, "DICOM in"):

* Patient space is LPS (x to the patient's Left, y to Posterior, z to Superior); NIfTI world
  space is RAS. ``LPS_TO_RAS`` = diag(-1, -1, 1, 1) converts one to the other, both ways.
* ``ImageOrientationPatient`` = (r, c): r is the direction along a row (increasing column
  index), c the direction down a column (increasing row index).
* ``PixelSpacing`` = (Δrow, Δcol): the distance between rows, then between columns.
* ``ImagePositionPatient`` is the centre of the first transmitted pixel (row 0, column 0).

A volume here has axes (i, j, k) = (column, row, slice): ``pixel_array`` (rows, cols) is
transposed, and slices are sorted by their position along the normal n = r × c. So voxel
(i, j, k) lies at  P_k + i·Δcol·r + j·Δrow·c  (LPS), and the LPS affine is

    [ r·Δcol | c·Δrow | (P_last − P_first)/(K − 1) | P_first ]

The functions raise `GeometryError` with the fault; the importer adds study and series.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Tolerances of a consistent stack (mm, or unitless for direction cosines).
ORIENTATION_TOLERANCE = 1e-4  # max difference between two slices' direction cosines
POSITION_TOLERANCE_MM = 1e-2  # off-normal drift of slice positions, duplicate-position gap
SPACING_TOLERANCE = 0.05  # max relative deviation of one slice gap from the median gap
GRID_TOLERANCE_MM = 1e-3  # two grids whose affines agree to this are the same grid


class GeometryError(ValueError):
    """A series' slices do not form one regular volume: the message says why; `index` is the
    input position of the offending slice when one slice is at fault."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


class SliceHeader(NamedTuple):
    """The geometry of one 2-D image: position (3,) LPS mm, row and column directions (3,),
    spacing (Δrow, Δcol) mm, and its size (rows, cols)."""

    position: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    spacing: tuple[float, float]
    shape: tuple[int, int]


class Stack(NamedTuple):
    """Slices sorted along the normal: `order` indexes the input slices, `affine_lps` (4, 4)."""

    order: np.ndarray
    affine_lps: np.ndarray


def _numbers(dataset, name: str, count: int) -> np.ndarray:
    """(count,) float64 values of a multi-valued numeric attribute; GeometryError naming it
    when it holds another number of values, text that is not a number, NaN or infinity."""
    value = dataset.get(name)
    iterable = hasattr(value, "__iter__") and not isinstance(value, (str, bytes))
    values = list(value) if iterable else [value]
    try:
        numbers = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise GeometryError(f"{name} {str(value)[:60]!r} is not a list of numbers") from None
    if numbers.shape != (count,):
        raise GeometryError(f"{name} needs {count} values, found {len(numbers)}")
    if not np.isfinite(numbers).all():
        kind = "NaN" if np.isnan(numbers).any() else "infinite"
        raise GeometryError(
            f"{name} is {kind} ({numbers.tolist()}): the slice cannot be placed in space"
        )
    return numbers


def slice_header(dataset) -> SliceHeader:
    """The geometry of a pydicom Dataset; GeometryError if an attribute is missing or odd."""
    missing = [
        name
        for name in (
            "ImagePositionPatient",
            "ImageOrientationPatient",
            "PixelSpacing",
            "Rows",
            "Columns",
        )
        if dataset.get(name) is None
    ]
    if missing:
        raise GeometryError(f"missing {', '.join(missing)}: the slice cannot be placed in space")
    position = _numbers(dataset, "ImagePositionPatient", 3)
    cosines = _numbers(dataset, "ImageOrientationPatient", 6)
    spacing = _numbers(dataset, "PixelSpacing", 2).tolist()
    if min(spacing) <= 0:
        raise GeometryError(f"PixelSpacing {spacing} must be positive")
    row_dir, col_dir = cosines[:3], cosines[3:]
    norms = np.linalg.norm(row_dir), np.linalg.norm(col_dir)
    if abs(norms[0] - 1) > 1e-3 or abs(norms[1] - 1) > 1e-3 or abs(row_dir @ col_dir) > 1e-3:
        raise GeometryError(
            f"ImageOrientationPatient {cosines.tolist()} is not two orthogonal unit vectors"
        )
    return SliceHeader(
        position,
        row_dir / norms[0],
        col_dir / norms[1],
        (spacing[0], spacing[1]),
        (int(dataset.Rows), int(dataset.Columns)),
    )


def stack_slices(headers: list[SliceHeader], thickness: float | None = None) -> Stack:
    """Sort slices along the normal and check that they form one regular grid.

    The slice step is (P_last − P_first)/(K − 1); a single slice has no step, so `thickness`
    (SliceThickness, 1 mm when absent) along the normal stands in for it.

    Raises GeometryError on mixed orientation, pixel spacing or size, on two slices at one
    position (duplicate), on positions that drift off the normal, and on uneven gaps
    (a missing slice).
    """
    if not headers:
        raise GeometryError("no slice")
    first = headers[0]
    for n, h in enumerate(headers[1:], start=1):
        if (
            np.abs(h.row_dir - first.row_dir).max() > ORIENTATION_TOLERANCE
            or np.abs(h.col_dir - first.col_dir).max() > ORIENTATION_TOLERANCE
        ):
            raise GeometryError(
                f"mixed orientation: slice {n} has ImageOrientationPatient "
                f"{np.r_[h.row_dir, h.col_dir].round(4).tolist()}, slice 0 has "
                f"{np.r_[first.row_dir, first.col_dir].round(4).tolist()}",
                index=n,
            )
        if not np.allclose(h.spacing, first.spacing, rtol=1e-4):
            raise GeometryError(f"mixed PixelSpacing: {list(h.spacing)} and {list(first.spacing)}")
        if h.shape != first.shape:
            raise GeometryError(f"mixed image sizes: {h.shape} and {first.shape}")
    normal = np.cross(first.row_dir, first.col_dir)
    positions = np.stack([h.position for h in headers])  # (K, 3)
    along = positions @ normal  # (K,)
    order = np.argsort(along, kind="stable")
    positions, along = positions[order], along[order]
    gaps = np.diff(along)
    if len(gaps) and gaps.min() < POSITION_TOLERANCE_MM:
        k = int(np.argmin(gaps))
        raise GeometryError(
            f"duplicate position: two slices at {positions[k].round(3).tolist()} "
            "(a repeated acquisition or a duplicated file)",
            index=int(order[k + 1]),
        )
    offsets = positions - np.outer(along - along[0], normal) - positions[0]
    if np.abs(offsets).max() > POSITION_TOLERANCE_MM * 10:
        raise GeometryError(
            "slice positions do not lie on a line along the slice normal "
            f"(off by up to {np.abs(offsets).max():.3g} mm)"
        )
    if len(gaps) > 1:
        step = float(np.median(gaps))
        worst = int(np.argmax(np.abs(gaps - step)))
        if abs(gaps[worst] - step) > SPACING_TOLERANCE * step:
            missing = round(gaps[worst] / step) - 1
            what = f"{missing} missing slice(s)" if missing >= 1 else "uneven slice spacing"
            raise GeometryError(
                f"{what}: gap of {gaps[worst]:.3f} mm after the slice at "
                f"{positions[worst].round(3).tolist()}, the other gaps are {step:.3f} mm"
            )
    dr, dc = first.spacing
    if len(headers) > 1:
        slice_step = (positions[-1] - positions[0]) / (len(headers) - 1)
    else:
        usable = thickness is not None and np.isfinite(thickness) and thickness > 0
        slice_step = normal * (thickness if usable else 1.0)
    affine = np.eye(4)
    affine[:3, 0] = first.row_dir * dc
    affine[:3, 1] = first.col_dir * dr
    affine[:3, 2] = slice_step
    affine[:3, 3] = positions[0]
    return Stack(order, affine)


def volume_from_slices(pixels: list[np.ndarray], stack: Stack) -> np.ndarray:
    """Stack rescaled 2-D images (rows, cols) in `stack.order` into (cols, rows, K) float32."""
    planes = [np.asarray(pixels[n], dtype=np.float32).T for n in stack.order]  # (cols, rows)
    return np.stack(planes, axis=-1)


def same_grid(shape_a, affine_a, shape_b, affine_b) -> bool:
    """Whether two (shape, affine) pairs describe the same voxel grid."""
    return tuple(shape_a) == tuple(shape_b) and np.allclose(
        affine_a, affine_b, atol=GRID_TOLERANCE_MM
    )


def resample(
    volume: np.ndarray, affine: np.ndarray, ref_shape: tuple[int, int, int], ref_affine: np.ndarray
) -> np.ndarray:
    """Trilinear resampling of `volume` (3-D, voxel→world `affine`) onto the reference grid.

    Both affines map voxels to the same world space (one frame of reference; no registration).
    Reference voxels outside `volume` get 0. Returns (ref_shape) float32; the input itself
    (as float32) when the grids are the same.
    """
    if same_grid(volume.shape, affine, ref_shape, ref_affine):
        return np.asarray(volume, dtype=np.float32)
    to_source = np.linalg.inv(affine) @ ref_affine  # ref voxel -> source voxel
    return ndimage.affine_transform(
        np.asarray(volume, dtype=np.float32),
        to_source[:3, :3],
        offset=to_source[:3, 3],
        output_shape=tuple(ref_shape),
        order=1,
        mode="constant",
        cval=0.0,
    )
