"""The ``torch`` engine: exact search on a GPU (CUDA), or with torch on the CPU without one.

Why torch and not FAISS's GPU indexes: torch is already a dependency of the project, while the
faiss-gpu wheel (135 MB plus the CUDA 12 runtime) cannot be installed everywhere; FAISS stays an
option through ``faiss-flat``. `hashindex` imports torch only when this engine is first used.

Two passes, the pattern of the fastscan engine on the CPU:

1. **Bounds, on the device.** The code grids live there position-major, (P, N) per codebook, so
   one coalesced read of position p serves every query of a batch. One pass sums each row's
   float32 table entries for a batch of queries. Rounding the float64 tables to float32 and
   adding P of them in any order errs by at most ``(P + 1)·u·M`` (u = 2⁻²⁴, M = Σ_p max_k
   |table[p, k]|, Higham's γ bound); twice that is taken. Through `finish`'s monotone steps (√ for
   D_E, arccos for D_A) and a relative slack for the float32 roundings after the sum, every row
   gets an interval [lo, hi] holding its exact distance.
2. **Exact re-rank.** Volume-wise: the Q-th smallest per-volume ``hi`` is a θ that the exact Q-th
   best volume cannot exceed, so only rows with ``lo ≤ θ`` can be hits or tie with one (row-wise:
   the k-th smallest ``hi``). Those rows' sums are recomputed in float64 (int64 for D_H) in
   position order from position 0's entry, the additions of the `lut` kernel, turned into
   distances by `hashindex.distances.image_distance` on the host, and selected with the tie rules
   of `hashindex.volumes`: the answers are lut's, bit for bit, ties included.

Two implementations of both passes: Triton kernels (`hashindex.torch_kernels`: one launch per
pass, the per-volume minimum by atomics) on CUDA, and torch operations (pass 1) and numpy (pass 2)
elsewhere. ``FDN_TORCH_KERNEL`` forces one: ``triton`` or ``torch`` (default: Triton on CUDA where
it imports); with ``TRITON_INTERPRET=1`` the Triton kernels run on the CPU, which is how a machine
without a GPU tests them.
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
HOST_PAIRS = 1 << 16  # (query, row) pairs re-ranked at a time on the host: P × 8 bytes each
FLOAT32_MAX = float(np.finfo(np.float32).max)
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
def _triton_kernels():
    """`hashindex.torch_kernels`, or None where Triton is not installed."""
    try:
        import hashindex.torch_kernels as torch_kernels
    except ImportError:
        return None
    return torch_kernels


class TorchScan:
    """An index's code grids on a torch device, and exact row- and volume-wise search over them.

    codes: per codebook (N, P) uint8/uint16 representative ids; row_sqnorm: per codebook (N,)
    float64; volume_index: (N,) int64 dense volume numbers into volume_ids (V,), sorted.
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
        self.row_zero = {b: put((s == 0).astype(np.int8)) for b, s in row_sqnorm.items()}
        self.volume_index = put(volume_index.astype(np.int64))
        self.volume_index32 = self.volume_index.to(torch.int32)

    def _choose_kernel(self) -> str:
        asked = os.environ.get(KERNEL_ENV, "")
        if asked not in ("", "triton", "torch"):
            raise ValueError(f"{KERNEL_ENV} must be triton or torch, got {asked!r}")
        runs_here = self.device.type == "cuda" or _interpreting()
        if asked == "triton":
            if _triton_kernels() is None or not runs_here:
                raise RuntimeError(
                    f"{KERNEL_ENV}=triton: Triton needs a CUDA device (or TRITON_INTERPRET=1) "
                    f"and the triton package; device {self.device}"
                )
            return "triton"
        if asked == "torch" or not runs_here or _triton_kernels() is None:
            return "torch"
        return "triton"

    # --- pass 1: distance intervals on the device ---------------------------------------------

    def _book_inputs(self, book: str, table: np.ndarray, q_sq: np.ndarray, scale: float) -> dict:
        """One codebook's device inputs for a batch: its exact table (int32 / float64), the
        float32 copy, the error bound of float32 sums, the queries' norms and zero flags."""
        torch = _torch()
        P = table.shape[1]
        magnitude = np.abs(table.astype(np.float64)).max(axis=2).sum(axis=1)  # (b,) M
        err = 2.0 * (P + 1) * U32 * magnitude * (1 + 4 * U32)  # ≥ the bound after rounding
        exact = torch.from_numpy(np.ascontiguousarray(table)).to(self.device)
        return {
            "codes_t": self.codes_t[book],
            "exact": exact,
            "table": exact.to(torch.float32),
            "err": torch.from_numpy(err.astype(np.float32)).to(self.device),
            "q": torch.from_numpy(q_sq.astype(np.float32)).to(self.device),
            "q_zero": torch.from_numpy((q_sq == 0).astype(np.int8)).to(self.device),
            "r": self.row_sqnorm32[book],
            "r_zero": self.row_zero[book],
            "scale": scale,
        }

    def _torch_bounds(self, books: list, distance: str):
        """(b, N) float32 lo ≤ exact distance ≤ hi, with torch operations."""
        torch = _torch()
        lo_total = hi_total = None
        for book in books:
            codes_t, t32 = book["codes_t"], book["table"]
            y = torch.zeros(t32.shape[0], self.n, dtype=torch.float32, device=self.device)
            for p in range(codes_t.shape[0]):
                y += t32[:, p, :][:, codes_t[p].long()]
            err = book["err"][:, None]
            if distance == "hamming":
                lo, hi = y - err, y + err
            elif distance == "euclidean":
                lo, hi = torch.sqrt(torch.clamp(y - err, min=0)), torch.sqrt(y + err)
            else:
                lo, hi = self._angular_bounds(book, y, err)
            lo, hi = lo / book["scale"], hi / book["scale"]
            lo_total = lo if lo_total is None else lo_total + lo
            hi_total = hi if hi_total is None else hi_total + hi
        assert lo_total is not None and hi_total is not None
        lo_total -= lo_total.abs() * AFTER_SUM_SLACK
        hi_total += hi_total.abs() * AFTER_SUM_SLACK
        return lo_total, hi_total

    def _angular_bounds(self, book: dict, y, err):
        """D_A = arccos(clip(acc / √(q·r), -1, 1)) / π (`finish`) over acc ∈ [y - err, y + err];
        a row or query of zero norm has cos 0 (D_A = 0.5), or D_A = 0 when both are zero."""
        torch = _torch()
        denom = torch.sqrt(book["q"][:, None] * book["r"][None, :])
        safe = torch.where(denom > 0, denom, 1.0)
        # √(q·r) in float32 is off by a few u relative: widen the numerator by as much
        slack = (y.abs() + err) * AFTER_SUM_SLACK
        cos_lo = ((y - err - slack) / safe).clamp(-1.0, 1.0)
        cos_hi = ((y + err + slack) / safe).clamp(-1.0, 1.0)
        lo, hi = torch.arccos(cos_hi) / math.pi, torch.arccos(cos_lo) / math.pi
        q_zero, r_zero = book["q_zero"][:, None] != 0, book["r_zero"][None, :] != 0
        fixed = torch.where(q_zero & r_zero, 0.0, 0.5)
        degenerate = q_zero | r_zero
        lost = (denom == 0) & ~degenerate  # float32 norms underflowed: any distance
        lo = torch.where(degenerate, fixed, torch.where(lost, 0.0, lo))
        hi = torch.where(degenerate, fixed, torch.where(lost, 1.0, hi))
        return lo, hi

    def _volume_race(self, books: list, distance: str, excluded, allowed=None):
        """lo (b, N), with the excluded volume's rows (and the rows outside ``allowed``, (N,)
        bool on the device) at +inf, and upper (b, V): the smallest hi of each volume's rows."""
        torch = _torch()
        b = excluded.shape[0]
        upper = torch.full((b, self.n_volumes), math.inf, device=self.device)
        if self.kernel == "triton" and allowed is None:
            lo = torch.empty(b, self.n, dtype=torch.float32, device=self.device)
            bits = upper.view(torch.int32)
            _triton_kernels().bounds(
                books, self.volume_index32, excluded, lo, None, bits, distance,
                AFTER_SUM_SLACK, _interpreting(),
            )  # fmt: skip
            return lo, upper
        # with a row mask the Triton kernel's per-volume minimum would count rows outside it,
        # so its row bounds are masked here before the minimum is taken
        lo, hi = self._row_race(books, distance)
        out = self.volume_index[None, :] == excluded.long()[:, None]
        if allowed is not None:
            out |= ~allowed[None, :]
        lo.masked_fill_(out, math.inf)
        hi.masked_fill_(out, math.inf)
        upper.scatter_reduce_(1, self.volume_index.expand(b, -1), hi, reduce="amin")
        return lo, upper

    def _row_race(self, books: list, distance: str):
        """lo and hi (b, N)."""
        torch = _torch()
        if self.kernel == "triton":
            b = books[0]["table"].shape[0]
            lo = torch.empty(b, self.n, dtype=torch.float32, device=self.device)
            hi = torch.empty_like(lo)
            none = torch.full((b,), -1, dtype=torch.int32, device=self.device)
            _triton_kernels().bounds(
                books, self.volume_index32, none, lo, hi, None, distance, AFTER_SUM_SLACK,
                _interpreting(),
            )  # fmt: skip
            return lo, hi
        return self._torch_bounds(books, distance)

    # --- pass 2: exact sums of the rows that can still win ----------------------------------

    def _exact_distances(self, books, tables, pairs, q_sq, query_ids, distance, normalized):
        """(C,) float64 exact distances of (query, row) pairs; pairs (2, C) device int64, the
        query as an index into the batch."""
        torch = _torch()
        pair_query, pair_row = (a.cpu().numpy() for a in pairs)
        sums = {}
        for name, book in zip(tables, books, strict=True):
            table = tables[name]
            if self.kernel == "triton":
                dtype = torch.int64 if table.dtype == np.int32 else torch.float64
                out = torch.empty(pair_row.size, dtype=dtype, device=self.device)
                _triton_kernels().exact_sums(book["codes_t"], book["exact"], *pairs, out)
                sums[name] = out.cpu().numpy()
            else:
                sums[name] = self._host_sums(name, table, pair_query, pair_row)
        return (
            pair_query,
            pair_row,
            image_distance(
                distance,
                sums,
                {name: q_sq[name][query_ids[pair_query]] for name in tables},
                {name: self.row_sqnorm_host[name][pair_row] for name in tables},
                {name: self.scales[f"{name}/{distance}"] for name in tables}
                if normalized
                else None,
            ),
        )

    def _host_sums(self, book: str, table: np.ndarray, pair_query, pair_row) -> np.ndarray:
        """Pass 2 in numpy: ``np.add.accumulate`` adds along a row one position after another."""
        b, P, R = table.shape
        flat = table.reshape(b, P * R)
        out = np.empty(pair_row.size, np.int64 if table.dtype == np.int32 else np.float64)
        offsets = np.arange(P) * R
        for s in range(0, pair_row.size, HOST_PAIRS):
            rows, queries = pair_row[s : s + HOST_PAIRS], pair_query[s : s + HOST_PAIRS]
            terms = flat[queries[:, None], self.codes_host[book][rows].astype(np.intp) + offsets]
            out[s : s + rows.size] = np.add.accumulate(terms.astype(out.dtype), axis=1)[:, -1]
        return out

    # --- the searches -------------------------------------------------------------------------

    def _batches(self, n_queries: int):
        step = max(1, min(MAX_BATCH, MAX_BATCH_ELEMENTS // max(self.n, 1)))
        for start in range(0, n_queries, step):
            yield np.arange(start, min(n_queries, start + step))

    def _inputs(self, q_reps, q_sq, ids, mode, distance, normalized):
        tables = {
            book: np.stack([self.tables[book].query_table(q_reps[book][i], distance) for i in ids])
            for book in BOOKS_OF_MODE[mode]
        }
        books = [
            self._book_inputs(
                book,
                table,
                q_sq[book][ids],
                float(self.scales[f"{book}/{distance}"]) if normalized else 1.0,
            )
            for book, table in tables.items()
        ]
        return tables, books

    def _dense_volumes(self, volume_ids: np.ndarray | None, b: int) -> np.ndarray:
        """(b,) int32 dense numbers of volume ids (sorted `self.volume_ids`), -1 where absent."""
        dense = np.full(b, -1, np.int32)
        if volume_ids is None:
            return dense
        at = np.minimum(np.searchsorted(self.volume_ids, volume_ids), self.n_volumes - 1)
        found = self.volume_ids[at] == volume_ids
        dense[found] = at[found]
        return dense

    def search(
        self,
        q_reps: dict,
        q_sq: dict,
        topq: int,
        mode: str,
        distance: str,
        normalized_sum: bool,
        exclude: np.ndarray | None,
        allowed: np.ndarray | None = None,
    ):
        """Volume-wise top-Q of B queries: (B, Q) distances, rows, volume ids (inf/-1 padded).

        Each volume is represented by its closest row (the smaller row on ties), volumes are
        ordered by (distance, row), and the volume ``exclude[i]`` is left out for query i.
        allowed: (N,) bool, the only rows that may be returned, or None."""
        torch = _torch()
        B = next(iter(q_reps.values())).shape[0]
        D = np.full((B, topq), np.inf)
        R = np.full((B, topq), -1, np.int64)
        V = np.full((B, topq), -1, np.int64)
        if self.n == 0:
            return D, R, V
        normalized = normalized_sum and mode == "sum"
        allowed_t = self._on_device(allowed)
        for ids in self._batches(B):
            tables, books = self._inputs(q_reps, q_sq, ids, mode, distance, normalized)
            excluded = self._dense_volumes(None if exclude is None else exclude[ids], ids.size)
            excluded_t = torch.from_numpy(excluded).to(self.device)
            lo, upper = self._volume_race(books, distance, excluded_t, allowed_t)
            k = min(topq, self.n_volumes)
            theta = torch.topk(upper, k, dim=1, largest=False).values[:, -1:]
            # a finite θ: rows out of the race (lo = +inf) never pass, even when fewer volumes
            # than Q are left (θ = +inf)
            theta = theta.clamp(max=FLOAT32_MAX)
            pairs = torch.nonzero(lo <= theta).T.contiguous()
            pair_query, pair_row, dist = self._exact_distances(
                books, tables, pairs, q_sq, ids, distance, normalized
            )
            # (query, distance, row) order; then each volume's first pair is its best row
            order = np.lexsort((pair_row, dist, pair_query))
            pair_query, pair_row, dist = pair_query[order], pair_row[order], dist[order]
            key = pair_query * self.n_volumes + self.volume_index_host[pair_row]
            _, first = np.unique(key, return_index=True)
            first.sort()  # back to (query, distance, row) order
            self._fill(D, R, ids, topq, pair_query[first], dist[first], pair_row[first])
            V[ids] = np.where(R[ids] >= 0, self.volume_ids[self.volume_index_host[R[ids]]], -1)
        return D, R, V

    def _on_device(self, allowed: np.ndarray | None):
        """A (N,) bool row mask on the device, or None."""
        if allowed is None:
            return None
        return _torch().from_numpy(np.ascontiguousarray(allowed, bool)).to(self.device)

    def search_rows(
        self,
        q_reps: dict,
        q_sq: dict,
        k: int,
        mode: str,
        distance: str,
        normalized_sum: bool,
        allowed: np.ndarray | None = None,
    ):
        """Row-wise top-k of B queries: (B, k) distances and rows (inf/-1 padded), ordered by
        (distance, row); allowed: (N,) bool, the only rows that may be returned, or None."""
        torch = _torch()
        B = next(iter(q_reps.values())).shape[0]
        D = np.full((B, k), np.inf)
        R = np.full((B, k), -1, np.int64)
        if self.n == 0:
            return D, R
        normalized = normalized_sum and mode == "sum"
        allowed_t = self._on_device(allowed)
        for ids in self._batches(B):
            tables, books = self._inputs(q_reps, q_sq, ids, mode, distance, normalized)
            lo, hi = self._row_race(books, distance)
            if allowed_t is not None:
                lo.masked_fill_(~allowed_t[None, :], math.inf)
                hi.masked_fill_(~allowed_t[None, :], math.inf)
            theta = torch.topk(hi, min(k, self.n), dim=1, largest=False).values[:, -1:]
            # finite, as in `search`: with fewer allowed rows than k, θ is +inf
            theta = theta.clamp(max=FLOAT32_MAX)
            pairs = torch.nonzero(lo <= theta).T.contiguous()
            pair_query, pair_row, dist = self._exact_distances(
                books, tables, pairs, q_sq, ids, distance, normalized
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
