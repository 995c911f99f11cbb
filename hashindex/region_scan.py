"""The lut engine's region scans: the block-transposed layout they read, the fused S_sum of a
region under D_H, and the normalized sum's scales of a region.

A region query sums only its positions (`hashindex.engines.Query.positions`). Over row-major
codes (N, P) that still reads every row's whole cache line; over the block-transposed layout
of `hashindex.fastscan_layout` (one position of 64 rows per cache line) it reads only the
region's columns (`hashindex.region_kernels`), so the cost falls with the region's size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hashindex.distances import BOOKS, region_scale
from hashindex.fastscan_layout import block_transpose
from hashindex.scans import scan_blocked

if TYPE_CHECKING:
    from hashindex.index import HashIndex
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


class BlockedRegionScan:
    """Region sums over the block-transposed layout, for a table-scan engine (`index`, and a
    `region_sums` to fall back on for codes wider than a byte)."""

    index: HashIndex
    _blocked: np.ndarray | None = None  # the block-transposed rows made here, if any

    def layout(self) -> np.ndarray | None:
        """The rows block-transposed, (nblocks, 2P, 64) uint8 (normal positions, then abnormal):
        the stored layout `read` mapped, else one made here on the first region query (as much
        memory as the codes); None for codes wider than a byte."""
        idx = self.index
        if any(idx.codes[b].dtype != np.uint8 for b in BOOKS):
            return None
        if idx._codes_t is not None:  # `add` drops it, so it covers every row
            return idx._codes_t
        blocks = -(-idx.ntotal // 64)
        if self._blocked is None or self._blocked.shape[0] != blocks:
            both = np.concatenate([idx.codes[b] for b in BOOKS], axis=1)
            self._blocked = block_transpose(both)
        return self._blocked

    def region_sums(self, book: str, cols: np.ndarray, tables: list) -> list[np.ndarray]:
        """Per table (C, R), the (N,) sums over the positions ``cols`` of ``book``."""
        layout = self.layout()
        if layout is None:
            return super().region_sums(book, cols, tables)  # type: ignore[misc]
        offset = 0 if book == "normal" else self.index.codes["normal"].shape[1]
        return scan_blocked(layout, self.index.ntotal, cols + offset, tables)

    def region_hamming_sum(self, q_reps: dict, b: int, positions: dict) -> np.ndarray:
        """(N,) float64 S_sum under D_H over a region: both grids' integer sums in one pass."""
        from hashindex.kernels import KERNELS  # numba: imported on first use

        idx = self.index
        tables = [
            idx.tables[book].query_table(q_reps[book][b][positions[book]], "hamming")
            for book in BOOKS
        ]
        layout = self.layout()
        if layout is None:
            out = np.empty(idx.ntotal)
            args = []
            for book, table in zip(BOOKS, tables, strict=True):
                args += [idx.codes[book], positions[book], table]
            KERNELS["lut_scan_cols_int_pair"](*args, out)
            return out
        # both grids' columns as one list, normal first; integer sums, so exactly the sum
        P = idx.codes["normal"].shape[1]
        cols = np.concatenate([positions["normal"], positions["abnormal"] + P])
        table = np.zeros((cols.size, max(t.shape[1] for t in tables)), np.int32)
        table[: tables[0].shape[0], : tables[0].shape[1]] = tables[0]
        table[tables[0].shape[0] :, : tables[1].shape[1]] = tables[1]
        return scan_blocked(layout, idx.ntotal, cols, [table])[0].astype(np.float64)
