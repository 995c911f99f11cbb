"""The ``torch`` engine: exact search on a GPU (CUDA), or with torch on the CPU without one.

Why torch and not FAISS's GPU indexes: torch is already a dependency of the project, while the
faiss-gpu wheel (135 MB plus the CUDA 12 runtime) cannot be installed everywhere; FAISS stays an
option through ``faiss-flat``. `hashindex` imports torch only when this engine is first used.

Two passes, the pattern of the fastscan engine on the CPU:

1. **Bounds, on the device.** The code grids live there position-major, (P, N) per codebook, so
   one coalesced read of position p serves every query of a batch. One fused pass (a Triton
   kernel on CUDA; torch gathers elsewhere) sums each row's float32 table entries for a batch of
   queries. Rounding the float64 tables to float32 and adding P of them in any order errs by at
   most ``(P + 1)·u·M`` (u = 2⁻²⁴, M = Σ_p max_k |table[p, k]|, Higham's γ bound); twice that is
   taken. Through `finish`'s monotone steps (√ for D_E, arccos for D_A) and a relative slack for
   the float32 roundings after the sum, every row gets an interval [lo, hi] holding its exact
   distance.
2. **Exact re-rank, on the host.** Volume-wise: the Q-th smallest per-volume ``hi`` is a θ that the
   exact Q-th best volume cannot exceed, so only rows with ``lo ≤ θ`` can be hits or tie with one
   (row-wise: the k-th smallest ``hi``). Those rows' sums are recomputed from the host's codes in
   float64 in position order (the same additions as the `lut` scan), turned into distances by
   `hashindex.distances.image_distance`, and selected with the same tie rules as
   `hashindex.volumes`: the answers are lut's, bit for bit, ties included.

``FDN_TORCH_KERNEL`` forces the bound pass: ``triton`` or ``torch`` (default: Triton on CUDA when
it imports, else torch); with ``TRITON_INTERPRET=1`` the Triton kernel also runs on the CPU, which
is how a machine without a GPU tests it.
"""

from __future__ import annotations

import math
import os
from functools import cache

import numpy as np

from hashindex.distances import image_distance

U32 = 2.0**-24  # unit roundoff of float32
# relative slack for the float32 roundings after the sum (√, arccos, ÷ π, ÷ scale, the S_sum +,
# and for D_A the norms' product): each costs at most a few units of u
AFTER_SUM_SLACK = 16 * U32
MAX_BATCH = 64  # queries per bound pass
MAX_BATCH_ELEMENTS = 1 << 27  # queries × rows of one float32 array in flight (512 MB)
KERNEL_ENV = "FDN_TORCH_KERNEL"
BOOKS_OF_MODE = {"normal": ("normal",), "abnormal": ("abnormal",), "sum": ("normal", "abnormal")}


def _torch():
    import torch

    return torch


def default_device() -> str:
    """ "cuda" when torch sees a GPU, else "cpu"."""
    return "cuda" if _torch().cuda.is_available() else "cpu"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@cache
def _triton_table_sums(interpret: bool = False):
    """The Triton bound kernel as ``f(codes_t, tables, out)``, or None where Triton is missing.

    On a GPU the tile width and warps are tuned on first use per (N, P, queries) shape; the
    interpreter (no GPU to time) runs one fixed tile."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def table_sums(
        codes_ptr, table_ptr, out_ptr, N, P, R, B, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr
    ):
        # out[b, n] = Σ_p table[b, p, codes[p, n]] for a (BLOCK_B queries × BLOCK_N rows) tile:
        # each code is read once for all the tile's queries; the tables stay in L1/L2
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        queries = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
        row_ok = rows < N
        tile_ok = (queries < B)[:, None] & row_ok[None, :]
        code_ptrs = codes_ptr + rows  # advanced by N per position: 64-bit pointer arithmetic
        table_ptrs = table_ptr + queries[:, None].to(tl.int64) * P * R  # advanced by R
        acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        for _ in range(0, P):
            codes = tl.load(code_ptrs, mask=row_ok, other=0).to(tl.int32)
            acc += tl.load(table_ptrs + codes[None, :], mask=tile_ok, other=0.0)
            code_ptrs += N
            table_ptrs += R
        out = out_ptr + queries[:, None].to(tl.int64) * N + rows[None, :]
        tl.store(out, acc, mask=tile_ok)

    fixed = {"BLOCK_N": 256}
    kernel = table_sums
    if not interpret:
        configs = [
            triton.Config({"BLOCK_N": n}, num_warps=w)
            for n, w in ((256, 4), (512, 4), (512, 8), (1024, 4), (1024, 8))
        ]
        kernel = triton.autotune(configs=configs, key=["N", "P", "BLOCK_B"])(table_sums)
        fixed = {}

    def run(codes_t, tables, out):
        P, N = codes_t.shape
        B, _, R = tables.shape
        block_b = min(16, triton.next_power_of_2(B))

        def grid(meta):
            return (triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(B, block_b))

        kernel[grid](codes_t, tables, out, N, P, R, B, BLOCK_B=block_b, **fixed)

    return run


class TorchScan:
    """An index's code grids on a torch device, and exact row- and volume-wise search over them.

    codes: per codebook (N, P) uint8/uint16 representative ids; row_sqnorm: per codebook (N,)
    float64; volume_index: (N,) int64 dense volume numbers into volume_ids (V,).
    """

    def __init__(
        self,
        tables: dict,
        codes: dict,
        row_sqnorm: dict,
        volume_index: np.ndarray,
        volume_ids: np.ndarray,
        scales: dict,
        device: str | None = None,
    ):
        torch = _torch()
        self.device = torch.device(device or default_device())
        self.tables, self.scales = tables, scales
        self.codes_host, self.row_sqnorm_host = codes, row_sqnorm
        self.volume_index_host, self.volume_ids = volume_index, volume_ids
        self.n = int(volume_index.size)
        self.n_volumes = int(volume_ids.size)
        self.kernel = self._choose_kernel()

        def put(a: np.ndarray):
            # int16 holds any representative id (torch has no uint16 on CUDA; ids < 32,768
            # always suffice for K ≤ 65,536 as stored by hashindex); a copy, since torch wants
            # writable arrays and `HashIndex.read` maps them read-only
            if a.dtype == np.uint16:
                a = a.astype(np.int16)
            return torch.from_numpy(np.require(a, requirements=["C", "W"])).to(self.device)

        self.codes_t = {b: put(np.ascontiguousarray(c.T)) for b, c in codes.items()}  # (P, N)
        self.row_sqnorm32 = {b: put(s.astype(np.float32)) for b, s in row_sqnorm.items()}
        self.row_zero = {b: put(s == 0) for b, s in row_sqnorm.items()}
        self.volume_index = put(volume_index.astype(np.int64))

    def _choose_kernel(self) -> str:
        asked = os.environ.get(KERNEL_ENV, "")
        if asked not in ("", "triton", "torch"):
            raise ValueError(f"{KERNEL_ENV} must be triton or torch, got {asked!r}")
        runs_here = self.device.type == "cuda" or _interpreting()
        if asked == "triton":
            if _triton_table_sums(_interpreting()) is None or not runs_here:
                raise RuntimeError(
                    f"{KERNEL_ENV}=triton: Triton needs a CUDA device (or TRITON_INTERPRET=1) "
                    f"and the triton package; device {self.device}"
                )
            return "triton"
        if asked == "torch" or not runs_here or _triton_table_sums(_interpreting()) is None:
            return "torch"
        return "triton"

    # --- pass 1: float32 sums and distance intervals on the device -------------------------

    def _table_sums(self, book: str, tables32):
        """(b, N) float32 Σ_p tables32[:, p, codes[n, p]]; tables32 (b, P, R) on the device."""
        torch = _torch()
        codes_t = self.codes_t[book]
        out = torch.zeros(tables32.shape[0], self.n, dtype=torch.float32, device=self.device)
        if self.n == 0:
            return out
        if self.kernel == "triton":
            _triton_table_sums(_interpreting())(codes_t, tables32, out)
            return out
        for p in range(codes_t.shape[0]):
            out += tables32[:, p, :][:, codes_t[p].long()]
        return out

    def _bounds(self, tables: dict, q_sq: dict, distance: str, normalized: bool):
        """(b, N) float32 lo ≤ exact distance ≤ hi for a batch; tables: per book (b, P, R)."""
        torch = _torch()
        lo_total = hi_total = None
        for book, table in tables.items():
            P = table.shape[1]
            magnitude = np.abs(table.astype(np.float64)).max(axis=2).sum(axis=1)  # (b,) M
            err = 2.0 * (P + 1) * U32 * magnitude * (1 + 4 * U32)  # rounding err ≥ float32(err)
            err = torch.from_numpy(err.astype(np.float32)).to(self.device)[:, None]
            t32 = torch.from_numpy(table.astype(np.float32)).to(self.device)
            y = self._table_sums(book, t32)
            if distance == "hamming":
                lo, hi = y - err, y + err
            elif distance == "euclidean":
                lo, hi = torch.sqrt(torch.clamp(y - err, min=0)), torch.sqrt(y + err)
            else:
                lo, hi = self._angular_bounds(book, y, err, q_sq[book])
            if normalized:
                scale = float(self.scales[f"{book}/{distance}"])
                lo, hi = lo / scale, hi / scale
            lo_total = lo if lo_total is None else lo_total + lo
            hi_total = hi if hi_total is None else hi_total + hi
        assert lo_total is not None and hi_total is not None
        lo_total -= lo_total.abs() * AFTER_SUM_SLACK
        hi_total += hi_total.abs() * AFTER_SUM_SLACK
        return lo_total, hi_total

    def _angular_bounds(self, book: str, y, err, q_sq: np.ndarray):
        """D_A = arccos(clip(acc / √(q·r), -1, 1)) / π (`finish`) over acc ∈ [y - err, y + err];
        a row or query of zero norm has cos 0 (D_A = 0.5), or D_A = 0 when both are zero."""
        torch = _torch()
        q = torch.from_numpy(q_sq.astype(np.float32)).to(self.device)[:, None]
        denom = torch.sqrt(q * self.row_sqnorm32[book][None, :])
        safe = torch.where(denom > 0, denom, 1.0)
        # √(q·r) in float32 is off by a few u relative: widen the numerator by as much
        slack = (y.abs() + err) * AFTER_SUM_SLACK
        cos_lo = ((y - err - slack) / safe).clamp(-1.0, 1.0)
        cos_hi = ((y + err + slack) / safe).clamp(-1.0, 1.0)
        lo, hi = torch.arccos(cos_hi) / math.pi, torch.arccos(cos_lo) / math.pi
        q_zero = torch.from_numpy(q_sq == 0).to(self.device)[:, None]
        r_zero = self.row_zero[book][None, :]
        fixed = torch.where(q_zero & r_zero, 0.0, 0.5)
        degenerate = q_zero | r_zero
        return torch.where(degenerate, fixed, lo), torch.where(degenerate, fixed, hi)

    # --- pass 2: exact sums of the surviving rows, on the host --------------------------------

    def _exact_distances(self, tables, pair_query, pair_row, q_sq, query_ids, distance, normalized):
        """(C,) float64 exact distances of (query, row) pairs; pair_query indexes the batch."""
        sums = {}
        for book, table in tables.items():
            codes = self.codes_host[book]
            acc_dtype = np.int64 if table.dtype == np.int32 else np.float64
            acc = np.zeros(pair_row.size, acc_dtype)
            for p in range(table.shape[1]):  # position order: lut's additions
                acc += table[pair_query, p, codes[pair_row, p]]
            sums[book] = acc
        books = list(tables)
        return image_distance(
            distance,
            sums,
            {book: q_sq[book][query_ids[pair_query]] for book in books},
            {book: self.row_sqnorm_host[book][pair_row] for book in books},
            {book: self.scales[f"{book}/{distance}"] for book in books} if normalized else None,
        )

    def _batches(self, n_queries: int):
        step = max(1, min(MAX_BATCH, MAX_BATCH_ELEMENTS // max(self.n, 1)))
        for start in range(0, n_queries, step):
            yield np.arange(start, min(n_queries, start + step))

    def _prepare(self, q_reps, query_ids, mode, distance):
        return {
            book: np.stack([self.tables[book].query_table(q_reps[book][i], distance) for i in query_ids])
            for book in BOOKS_OF_MODE[mode]
        }  # fmt: skip

    @staticmethod
    def _pairs(mask):
        """Host (query, row) arrays of a (b, N) device mask, ordered by query, then row."""
        pairs = _torch().nonzero(mask).cpu().numpy()
        return pairs[:, 0], pairs[:, 1]

    def search(
        self,
        q_reps: dict,
        q_sq: dict,
        topq: int,
        mode: str,
        distance: str,
        normalized_sum: bool,
        exclude: np.ndarray | None,
    ):
        """Volume-wise top-Q of B queries: (B, Q) distances, rows, volume ids (inf/-1 padded).

        Each volume is represented by its closest row (the smaller row on ties), volumes are
        ordered by (distance, row), and the volume ``exclude[i]`` is left out for query i."""
        torch = _torch()
        B = next(iter(q_reps.values())).shape[0]
        D = np.full((B, topq), np.inf)
        R = np.full((B, topq), -1, np.int64)
        V = np.full((B, topq), -1, np.int64)
        if self.n == 0:
            return D, R, V
        normalized = normalized_sum and mode == "sum"
        for ids in self._batches(B):
            tables = self._prepare(q_reps, ids, mode, distance)
            lo, hi = self._bounds(tables, {b: q_sq[b][ids] for b in tables}, distance, normalized)
            # dense number of each query's excluded volume (-1: none), its rows out of the race
            excluded = np.full(ids.size, -1, np.int64)
            if exclude is not None:
                for j, i in enumerate(ids):
                    hit = np.flatnonzero(self.volume_ids == exclude[i])
                    excluded[j] = hit[0] if hit.size else -1
            excluded_t = torch.from_numpy(excluded).to(self.device)[:, None]
            out = self.volume_index[None, :] == excluded_t
            hi.masked_fill_(out, math.inf)
            upper = torch.full((ids.size, self.n_volumes), math.inf, device=self.device)
            upper.scatter_reduce_(1, self.volume_index.expand(ids.size, -1), hi, reduce="amin")
            k = min(topq, self.n_volumes)
            theta = torch.topk(upper, k, dim=1, largest=False).values[:, -1:]
            pair_query, pair_row = self._pairs((lo <= theta) & ~out)
            dist = self._exact_distances(
                tables, pair_query, pair_row, q_sq, ids, distance, normalized
            )
            # (query, distance, row) order; then each volume's first pair is its best row
            order = np.lexsort((pair_row, dist, pair_query))
            pair_query, pair_row, dist = pair_query[order], pair_row[order], dist[order]
            pair_volume = self.volume_index_host[pair_row]
            key = pair_query * self.n_volumes + pair_volume
            _, first = np.unique(key, return_index=True)
            first.sort()  # back to (query, distance, row) order
            self._fill(D, R, ids, topq, pair_query[first], dist[first], pair_row[first])
            V[ids] = np.where(R[ids] >= 0, self.volume_ids[self.volume_index_host[R[ids]]], -1)
        return D, R, V

    def search_rows(
        self, q_reps: dict, q_sq: dict, k: int, mode: str, distance: str, normalized_sum: bool
    ):
        """Row-wise top-k of B queries: (B, k) distances and rows (inf/-1 padded), ordered by
        (distance, row)."""
        torch = _torch()
        B = next(iter(q_reps.values())).shape[0]
        D = np.full((B, k), np.inf)
        R = np.full((B, k), -1, np.int64)
        if self.n == 0:
            return D, R
        normalized = normalized_sum and mode == "sum"
        for ids in self._batches(B):
            tables = self._prepare(q_reps, ids, mode, distance)
            lo, hi = self._bounds(tables, {b: q_sq[b][ids] for b in tables}, distance, normalized)
            theta = torch.topk(hi, min(k, self.n), dim=1, largest=False).values[:, -1:]
            pair_query, pair_row = self._pairs(lo <= theta)
            dist = self._exact_distances(
                tables, pair_query, pair_row, q_sq, ids, distance, normalized
            )
            order = np.lexsort((pair_row, dist, pair_query))
            self._fill(D, R, ids, k, pair_query[order], dist[order], pair_row[order])
        return D, R

    @staticmethod
    def _fill(D, R, ids, width, pair_query, dist, rows):
        """The first `width` pairs of each batch query (pairs sorted by query) into D and R."""
        starts = np.searchsorted(pair_query, np.arange(ids.size))
        ends = np.searchsorted(pair_query, np.arange(ids.size), side="right")
        for j, i in enumerate(ids):
            m = min(width, ends[j] - starts[j])
            D[i, :m] = dist[starts[j] : starts[j] + m]
            R[i, :m] = rows[starts[j] : starts[j] + m]
