"""What the table-scan engines add for a region query (`hashindex.engines.Query.positions`):
the normalized sum's scales of a region, and the lut engine's fused S_sum under D_H over it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hashindex.distances import BOOKS, region_scale

if TYPE_CHECKING:
    from hashindex.state import IndexState


def region_scales(
    index: IndexState, distance: str, books, positions: dict[str, np.ndarray] | None
) -> dict[str, float]:
    """The normalized sum's scale of each codebook, for the region's share of its positions
    (`hashindex.distances.region_scale`)."""
    scales = {}
    for book in books:
        scale = index.scales[f"{book}/{distance}"]
        if positions is not None:
            share = positions[book].size / index.codes[book].shape[1]
            scale = region_scale(distance, scale, share)
        scales[book] = scale
    return scales


def region_hamming_sum(index: IndexState, q_reps: dict, b: int, positions: dict) -> np.ndarray:
    """(N,) float64 S_sum under D_H over a region: both grids' integer table sums over their
    positions in one pass (`lut_scan_cols_int_pair`)."""
    from hashindex.kernels import KERNELS  # numba: imported on first use

    out = np.empty(index.ntotal)
    args = []
    for book in BOOKS:
        table = index.tables[book].query_table(q_reps[book][b][positions[book]], "hamming")
        args += [index.codes[book], positions[book], table]
    KERNELS["lut_scan_cols_int_pair"](*args, out)
    return out
