"""The search engines behind one interface (`hashindex.engine_base`): lut, numpy, fastscan, torch.

Each engine is one class: what it supports as class attributes (modes, distances, the
normalized sum, nprobe, a per-position mask, a row mask), `Engine.check_index` for what the
index must hold, and
`search` (row-wise top-k) / `search_volumes` (volume-wise top-Q), both with the semantics of
`hashindex.index`. `hashindex.registry` names them; a `HashIndex` looks an engine up by name
once and keeps the instance, so that copies of the rows an engine makes (the fastscan layout,
the torch device copy) are made on first use only.

Adding an engine means one class (here, or in a module of its own such as
`hashindex.faiss_engines`) and one entry in `hashindex.registry.REGISTRY` (docs/engines.md).

The two table scans return raw per-row sums; `hashindex.distances.finish` turns them into
distances for every engine, so lut and numpy agree bit for bit. faiss, torch and the Numba
kernels are imported on first use, so a process that queries with ``fastscan`` never loads them.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hashindex.distances import BOOKS, DISTANCES, image_distance
from hashindex.engine_base import Engine, Query
from hashindex.faiss_binary import gpu_available
from hashindex.fastscan import FastScan
from hashindex.fastscan_kernels import FASTER_THAN_LUT, kernel
from hashindex.fastscan_layout import TABLE
from hashindex.region_scan import region_hamming_sum, region_scales
from hashindex.scans import SCANS, SCANS_TWO
from hashindex.volumes import (
    VolumeHits,
    topk_rows,
    topq_volumes,
)

if TYPE_CHECKING:
    from hashindex.state import IndexState

# gpu_available and SCANS: benchmarks import them from here
__all__ = ["SCANS", "Engine", "Query", "gpu_available"]


class RowDistanceEngine(Engine):
    """An engine that computes each query's distance to every row; the top rows or volumes are
    then selected on the host (`hashindex.volumes`). Rows outside `Query.allowed_rows` get an
    infinite distance, which the selection never returns."""

    @abstractmethod
    def row_distances(self, q_reps: dict, q_sq: dict, b: int, query: Query) -> np.ndarray:
        """(N,) float64 distances of query b to every row."""

    def _masked_distances(self, q_reps: dict, q_sq: dict, b: int, query: Query) -> np.ndarray:
        dist = self.row_distances(q_reps, q_sq, b, query)
        if query.allowed_rows is not None:
            dist[~query.allowed_rows] = np.inf
        return dist

    def search(self, query: Query, k: int) -> tuple[np.ndarray, np.ndarray]:
        q_reps, q_sq = self._prepare(query)
        D = np.full((query.B, k), np.inf)
        I = np.full((query.B, k), -1, np.int64)
        for b in range(query.B):
            D[b], I[b] = topk_rows(self._masked_distances(q_reps, q_sq, b, query), k)
        return D, I

    def search_volumes(self, query: Query, topq: int, exclude: np.ndarray | None) -> VolumeHits:
        q_reps, q_sq = self._prepare(query)
        hits = VolumeHits.padded(query.B, topq)
        for b in range(query.B):
            dist = self._masked_distances(q_reps, q_sq, b, query)
            ex = None if exclude is None else int(exclude[b])
            hit = topq_volumes(dist, self.index._vol_index, self.index._vol_unique, topq, ex)
            hits.distances[b], hits.rows[b], hits.volumes[b] = hit
        return hits


class TableScanEngine(RowDistanceEngine):
    """Sums of per-position table entries over the (N, P) representative ids (`scan`), turned
    into distances by `hashindex.distances.image_distance`. A region query (`Query.positions`)
    sums its positions only: the table's rows of those positions, and for D_A the squared
    norms of the grids restricted to them."""

    scan: ClassVar[str]  # the name of its kernel in `hashindex.scans.SCANS`
    supports_position_mask = True

    def row_distances(self, q_reps: dict, q_sq: dict, b: int, query: Query) -> np.ndarray:
        idx, distance = self.index, query.distance
        books = BOOKS if query.mode == "sum" else (query.mode,)
        scan = SCANS[self.scan]
        sums, q_norms, r_norms = {}, {}, {}
        for book in books:
            tables, q = idx.tables[book], q_reps[book][b]
            cols = None if query.positions is None else query.positions[book]
            table = tables.query_table(q if cols is None else q[cols], distance)
            q_norms[book], r_norms[book] = q_sq[book][b], idx.row_sqnorm[book]
            if cols is None:
                sums[book] = scan(idx.codes[book], table)
            elif distance == "angular":
                # with the norms of the grids restricted to the region, in position order
                q_norms[book] = float(tables.sqnorm[q[cols]].sum())
                norms = np.ascontiguousarray(np.broadcast_to(tables.sqnorm, table.shape))
                sums[book], r_norms[book] = self.region_sums(book, cols, [table, norms])
            else:
                (sums[book],) = self.region_sums(book, cols, [table])
        scales = None
        if query.normalized_sum and query.mode == "sum":
            scales = region_scales(idx, distance, books, query.positions)
        return image_distance(distance, sums, q_norms, r_norms, scales)

    def region_sums(self, book: str, cols: np.ndarray, tables: list) -> list[np.ndarray]:
        """Per table (C, R), the (N,) sums over the region's positions ``cols`` of ``book``."""
        codes = self.index.codes[book]
        if len(tables) == 2:
            return list(SCANS_TWO[self.scan](codes, tables[0], tables[1], cols))
        return [SCANS[self.scan](codes, tables[0], cols)]


class LutEngine(TableScanEngine):
    """Exact, compiled (Numba) scan of the (N, P) representative-id grids summing per-position
    table entries; cost independent of E*. The plain reference scan."""

    name = "lut"
    scan = "lut"
    default_for = DISTANCES  # exact on every index: the fallback

    def row_distances(self, q_reps: dict, q_sq: dict, b: int, query: Query) -> np.ndarray:
        if query.distance != "hamming" or query.mode != "sum" or query.normalized_sum:
            return super().row_distances(q_reps, q_sq, b, query)
        # fused single pass; integer sums, so identical to adding the two distances
        if query.positions is not None:
            return region_hamming_sum(self.index, q_reps, b, query.positions)
        from hashindex.kernels import KERNELS  # numba: imported on first use

        idx, out = self.index, np.empty(self.index.ntotal)
        tables = [idx.tables[book].query_table(q_reps[book][b], "hamming") for book in BOOKS]
        KERNELS["lut_scan_int_pair"](
            idx.codes["normal"], tables[0], idx.codes["abnormal"], tables[1], out
        )
        return out


class NumpyEngine(TableScanEngine):
    """The same sums as ``lut`` written in plain numpy (reference, slow but obvious)."""

    name = "numpy"
    scan = "numpy"


class RowCopyEngine(Engine):
    """An engine that searches its own copy of the stored rows (a layout, a device copy), made
    on first use and again once `add` has changed the rows. The copy's ``search`` answers the
    volume-wise top-Q: (q_reps, q_sq, topq, mode, distance, normalized_sum, exclude,
    allowed=) -> (B, Q) distances, rows, volume ids, and possibly more."""

    _copy: Any = None

    @abstractmethod
    def make_copy(self) -> Any:
        """The copy of the index's stored rows this engine searches."""

    def copy(self) -> Any:
        if self._copy is None or self._copy.n != self.index.ntotal:
            self._copy = self.make_copy()
        return self._copy

    def search_volumes(self, query: Query, topq: int, exclude: np.ndarray | None) -> VolumeHits:
        q_reps, q_sq = self._prepare(query)
        D, R, V = self.copy().search(
            q_reps,
            q_sq,
            topq,
            query.mode,
            query.distance,
            query.normalized_sum,
            exclude,
            allowed=query.allowed_rows,
        )[:3]
        return VolumeHits(D, R, V)


class FastScanEngine(RowCopyEngine):
    """Exact; scans 8-bit lower bounds held in SIMD registers, then re-ranks the few rows that
    can still win (`hashindex.fastscan`); codebooks of at most 256 distinct vectors."""

    name = "fastscan"
    # Not D_A: its bound needs each row's norm. Summed over every row it re-ranked 40-90 % of the
    # rows of a built index's codes, about 5x slower than lut (benchmarks/results/scale-from-index);
    # it is pruned now with the codebook's range of row norms, but not yet measured on those codes
    default_for = ("hamming", "euclidean")
    default_rank = 1

    @classmethod
    def available(cls, index: IndexState) -> bool:
        return all(index.tables[b].n_reps <= TABLE for b in BOOKS)

    @classmethod
    def is_default_for(cls, distance: str, index: IndexState) -> bool:
        """Only where the kernel this CPU runs (or FDN_FASTSCAN_KERNEL forces) was measured
        faster than lut for the distance (`fastscan_kernels.FASTER_THAN_LUT`): the portable
        C loops are not, so on a CPU with neither VBMI nor AVX2 lut answers by default."""
        return super().is_default_for(distance, index) and distance in FASTER_THAN_LUT[kernel()]

    def check_index(self, mode: str) -> None:
        wide = [b for b in BOOKS if self.index.tables[b].n_reps > TABLE]
        if wide:
            raise ValueError(
                f"engine 'fastscan' stores one byte per code and the {wide[0]} codebook has "
                f"{self.index.tables[wide[0]].n_reps} distinct vectors (> 256); use engine='lut'"
            )

    def make_copy(self) -> FastScan:
        """On the layout `read` mapped from the index folder, else on block-transposed codes
        made here."""
        idx = self.index
        return FastScan(
            idx.tables,
            idx.codes,
            idx.row_sqnorm,
            idx._vol_index,
            idx._vol_unique,
            idx.scales,
            codes_t=idx._codes_t,
        )

    def search(self, query: Query, k: int) -> tuple[np.ndarray, np.ndarray]:
        q_reps, q_sq = self._prepare(query)
        D, I, _, _ = self.copy().search(
            q_reps,
            q_sq,
            k,
            query.mode,
            query.distance,
            query.normalized_sum,
            None,
            by_volume=False,
            allowed=query.allowed_rows,
        )
        return D, I


class TorchEngine(RowCopyEngine):
    """Exact; float32 bounds on a CUDA GPU (Triton) or with torch on the CPU, then an exact
    re-rank of the rows that can still win (`hashindex.torch_engine`): lut's answers."""

    name = "torch"

    def make_copy(self) -> Any:
        from hashindex.torch_engine import TorchScan  # torch: imported on first use

        idx = self.index
        return TorchScan(
            idx.tables, idx.codes, idx.row_sqnorm, idx._vol_index, idx._vol_unique, idx.scales
        )

    def search(self, query: Query, k: int) -> tuple[np.ndarray, np.ndarray]:
        q_reps, q_sq = self._prepare(query)
        return self.copy().search_rows(
            q_reps,
            q_sq,
            k,
            query.mode,
            query.distance,
            query.normalized_sum,
            allowed=query.allowed_rows,
        )
