"""Region queries: the part of the query slice a query compares, as grid positions.

A region is marked on the query slice in its voxel coordinates, before any resizing: a box
``x0,y0,x1,y1`` (voxels x0..x1 along the NIfTI's first axis and y0..y1 along its second, both
ends included) or a mask file (NIfTI; nonzero voxels are the region): a volume of the query
case's shape (its query slice is used) or one slice of it (H × W or H × W × 1).

**From voxels to grid positions.** Preprocessing resizes the whole H × W slice to S × S, and
the model's h × w grid tiles that square evenly, so grid cell (i, j) stands for the voxel
rectangle [i·H/h, (i+1)·H/h) × [j·W/w, (j+1)·W/w). Each cell's *cover* is the share of that
rectangle inside the region (voxel i covering [i, i+1)), computed exactly. A cell is a
position of the query when the region covers at least half of it (`MIN_COVER`); a region too
small to cover any cell by half uses the cells it covers most (a 10-voxel box inside one cell
uses that cell). The normal and abnormal grids are resolved separately with their own shapes.

**Alignment and the brain's edge.** Only the chosen positions count in the image distance, and
they are compared with the *same* positions of every stored slice (the paper's alignment: the
grids are compared position by position). Cells are chosen by the region alone, not by the
brain: a cell at the brain's edge that the region covers is compared whole, background
included, so a hit must also have its brain edge (or background) where the query has it.

The result of a region query echoes the region and the positions it used (`Region.to_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fdn.errors import QueryError

MIN_COVER = 0.5  # share of a cell the region must cover for the cell to count
BOOKS = ("normal", "abnormal")


@dataclass(frozen=True)
class RegionSpec:
    """A region as the user gave it: a box (x0, y0, x1, y1) in voxels, ends included, or the
    path of a mask file; exactly one of them."""

    box: tuple[int, int, int, int] | None = None
    mask: str | None = None

    def __post_init__(self) -> None:
        if (self.box is None) == (self.mask is None):
            raise QueryError("a region is either a box or a mask file: give exactly one")
        if self.box is not None:
            object.__setattr__(self, "box", parse_box(self.box))


def parse_box(value) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) from "x0,y0,x1,y1" or four integers; QueryError otherwise."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        numbers = [int(str(p).strip()) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) != 4:
        raise QueryError(
            f"region must be four integers x0,y0,x1,y1 (voxels of the query slice); got {value!r}"
        )
    x0, y0, x1, y1 = numbers
    if min(numbers) < 0 or x1 < x0 or y1 < y0:
        raise QueryError(
            f"region {x0},{y0},{x1},{y1}: need 0 <= x0 <= x1 and 0 <= y0 <= y1 (voxels, ends "
            "included)"
        )
    return x0, y0, x1, y1


@dataclass(frozen=True)
class Region:
    """A region resolved on a query slice of shape (H, W): per codebook the (h, w) share of
    each cell it covers and the (h, w) bool positions a query compares."""

    spec: RegionSpec
    slice_shape: tuple[int, int]
    cover: dict[str, np.ndarray] = field(repr=False)
    positions: dict[str, np.ndarray] = field(repr=False)

    def to_dict(self) -> dict:
        """What the query's JSON echoes: the region as given, and the positions used."""
        return {
            "box": None if self.spec.box is None else list(self.spec.box),
            "mask": self.spec.mask,
            "slice_shape": list(self.slice_shape),
            "min_cover": MIN_COVER,
            "positions": {
                book: [[int(i), int(j)] for i, j in zip(*np.nonzero(m), strict=True)]
                for book, m in self.positions.items()
            },
            "grid": {book: list(m.shape) for book, m in self.positions.items()},
            "share": {book: float(m.mean()) for book, m in self.positions.items()},
        }


def axis_overlap(n_voxels: int, n_cells: int) -> np.ndarray:
    """(n_cells, n_voxels) float64: the share of cell c's extent that voxel v covers (cell c
    spans [c·n/cells, (c+1)·n/cells), voxel v spans [v, v+1)); each row sums to 1."""
    width = n_voxels / n_cells
    lo = np.arange(n_cells)[:, None] * width
    v = np.arange(n_voxels)[None, :]
    return np.clip(np.minimum(v + 1, lo + width) - np.maximum(v, lo), 0.0, None) / width


def cell_cover(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(h, w) float64: the share of each grid cell's voxel rectangle inside ``mask`` (H, W)."""
    H, W = mask.shape
    return axis_overlap(H, grid[0]) @ mask.astype(np.float64) @ axis_overlap(W, grid[1]).T


def positions_from_cover(cover: np.ndarray) -> np.ndarray:
    """(h, w) bool: the cells covered by at least MIN_COVER, else those covered most."""
    chosen = cover >= MIN_COVER - 1e-12
    if not chosen.any():
        chosen = cover >= cover.max() - 1e-12
    return chosen


def resolve_region(
    spec: RegionSpec,
    slice_shape: tuple[int, int],
    grids: dict[str, tuple[int, int]],
    slice_index: int,
) -> Region:
    """The region ``spec`` on a query slice (H, W) (slice ``slice_index`` of its volume, for a
    mask volume), as positions of each grid; QueryError for a region outside the slice, a mask
    of another shape, or a region that covers nothing."""
    H, W = slice_shape
    if spec.box is not None:
        x0, y0, x1, y1 = spec.box
        if x1 >= H or y1 >= W:
            raise QueryError(
                f"region {x0},{y0},{x1},{y1} reaches past the query slice, whose voxels are "
                f"x 0..{H - 1} and y 0..{W - 1}"
            )
        mask = np.zeros((H, W), bool)
        mask[x0 : x1 + 1, y0 : y1 + 1] = True
    else:
        assert spec.mask is not None
        mask = read_region_mask(Path(spec.mask), (H, W), slice_index)
    cover = {book: cell_cover(mask, grid) for book, grid in grids.items()}
    return Region(
        spec,
        (H, W),
        cover,
        {book: positions_from_cover(c) for book, c in cover.items()},
    )


def read_region_mask(path: Path, slice_shape: tuple[int, int], slice_index: int) -> np.ndarray:
    """(H, W) bool: the nonzero voxels of a mask file at the query slice; QueryError naming the
    file for a shape that is not the query case's, or a mask without a nonzero voxel there."""
    from fdn.data.nifti import read_nifti

    data, _ = read_nifti(path)
    H, W = slice_shape
    if data.ndim == 3 and data.shape[:2] == (H, W) and data.shape[2] > 1:
        if not 0 <= slice_index < data.shape[2]:
            raise QueryError(
                f"{path}: the mask has {data.shape[2]} slices; the query is slice {slice_index}"
            )
        plane = data[:, :, slice_index]
    elif data.shape[:2] == (H, W) and data.ndim in (2, 3):
        plane = data.reshape(H, W)
    else:
        raise QueryError(
            f"{path}: a region mask must be on the query case's grid, {H} x {W} voxels in plane "
            f"(a volume of it, or one slice); found shape {data.shape}"
        )
    mask = plane != 0
    if not mask.any():
        raise QueryError(f"{path}: the mask has no nonzero voxel on query slice {slice_index}")
    return mask


def query_slice_shape(files: dict[str, Path]) -> tuple[int, int]:
    """(H, W) of a case's slices, from the header of one of its image files (no voxels read)."""
    from typing import Any

    import nibabel as nib

    path = files.get("flair") or next(iter(files.values()))
    try:
        image: Any = nib.load(path)  # reads the header only
        shape = tuple(int(n) for n in image.shape)
    except Exception as exc:  # nibabel raises many types for a file that is not NIfTI
        raise QueryError(f"{path}: cannot read its NIfTI header ({exc})") from None
    if len(shape) < 2:
        raise QueryError(f"{path}: expected a volume H x W x Z, found shape {shape}")
    return shape[0], shape[1]
