"""The ``fastscan`` engine: exact volume-wise search that scans 8-bit lower bounds, then re-ranks.

Every image distance is a monotone function of per-codebook sums Σ_p table[p, code_p] of one
query table (`hashindex.distances`). The engine

1. quantizes each query table to uint8 *lower bounds*: ``q[p, c] = floor((T[p, c] − min_p T) / Δ)``
   with one step Δ for all positions, so ``Σ_p min_p T + Δ · Σ_p q[p, c_p] ≤ Σ_p T[p, c_p]``
   (for D_A the table of dot products is negated first, so the bound is an upper bound on the
   dot product and hence a lower bound on the angle);
2. seeds a threshold θ: the C kernel `hashindex._fastscan.prune_scan` keeps, per query, the rows
   with the smallest bounds among every SAMPLE_STRIDE-th row, and the exact distance of the Q-th
   best volume among them bounds the true Q-th distance from above;
3. scans every row again with `prune_scan`, keeping only rows whose bound is ≤ θ. The kernel
   works in the manner of FAISS's fast-scan: 64 rows per step, with the tables of a few
   positions held in AVX-512 registers (`vpermi2b`) where the CPU has VBMI; it visits each
   query's positions most informative first and leaves a block of 64 rows as soon as its
   partial sums rule all of them out. A batch of queries shares one pass over the codes;
4. computes exact distances, in the reference summation order, for the rows kept, and returns
   the volume-wise top-Q of those rows — for a whole batch at once.

A row left out has a distance above θ, so it can be neither a hit nor the best row of a hit's
volume: the answer equals the brute force's, ties included (distance, then row id). The float
comparisons carry a margin far above rounding error, so rounding can only add rows. How many
rows step 4 evaluates depends on the data: grids of similar slices have tight bounds, uniformly
random codes (the worst case) do not; a query whose rows overflow the kernel's buffers, and
every D_A query (its bound needs each row's norm), sum the bounds of all rows instead
(`_search_full`). FDN_FASTSCAN_PORTABLE=1 forces the portable C loops (tests of that path);
they give the same answers but are slow: at 1M a single S_sum query took 88 ms on them against
67 ms for ``lut`` and 15 ms for VBMI (load 3.4), a batch of 64 ran at 23 queries/s (lut 15).

Limits: at most 256 distinct code vectors per codebook (one byte per code; trained EMA codebooks
have far fewer live codes). Otherwise use ``lut``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from hashindex import _fastscan
from hashindex.distances import image_distance

BLOCK = 64
TABLE = 256
MAX_SUM = 65535  # uint16 accumulators
# θ is seeded from the SEED_ROWS smallest bounds among every SAMPLE_STRIDE-th row.
SEED_ROWS = 64
SAMPLE_STRIDE = 8
FREQ_STRIDE = 256  # code frequencies per position (to order the positions): every 256th row
MARGIN = 1e-9  # relative slack of the float comparisons (rounding is ~1e-15)
QUERY_BYTES = 256 << 20  # integer sums of a chunk of batched queries, per array
CHUNK = 8  # positions scanned between two checks whether a block can be left
COARSE = 64  # steps of the staircase the kernel checks the two sums against
PRUNE_LEVELS = 63  # levels of the pruned scan's tables: 4 positions add up in 8 bits
BATCH = 64  # queries that share one pruned pass over the codes
CAPACITY = 8192  # candidate rows per query and thread; a query with more is rescanned in full
# FDN_FASTSCAN_PORTABLE=1 runs the portable C loops instead of AVX-512 VBMI (for tests)
PORTABLE = os.environ.get("FDN_FASTSCAN_PORTABLE", "") not in ("", "0")

_THREADS = max(1, min(os.cpu_count() or 1, 8))
_pool: ThreadPoolExecutor | None = None


def simd() -> str:
    """The kernel this CPU runs: "avx512-vbmi" or "portable"."""
    return "portable" if PORTABLE else _fastscan.simd_name()


def block_transpose(rep_codes: np.ndarray) -> np.ndarray:
    """(N, P) uint8 representative ids → (ceil(N / 64), P, 64) uint8, rows padded with code 0."""
    if rep_codes.dtype != np.uint8:
        raise TypeError(
            "fastscan needs uint8 codes (at most 256 distinct code vectors); use "
            "engine='lut' for larger codebooks"
        )
    n, p = rep_codes.shape
    nblocks = max(1, -(-n // BLOCK))
    padded = np.zeros((nblocks * BLOCK, p), np.uint8)
    padded[:n] = rep_codes
    return np.ascontiguousarray(padded.reshape(nblocks, BLOCK, p).transpose(0, 2, 1))


@dataclass
class Bounds:
    """Quantized tables of B queries over P positions: uint8 (B, P, 256), and per query the
    offset and step that turn an integer sum L into a bound of the table sum: offset + step·L
    is a lower bound (``negated``: offset − step·L is an upper bound)."""

    tables: np.ndarray
    offset: np.ndarray
    step: np.ndarray
    negated: bool


def quantize(tables: list[np.ndarray], levels: int, *, negate: bool = False) -> list[Bounds]:
    """Quantize query tables (B, P_i, R_i), one per codebook, with one step Δ per query.

    q[p, c] = floor((T[p, c] − min_p T) / Δ) ≤ levels, so offset + Δ·Σ_p q is a lower bound of
    Σ_p T. A shared Δ lets the integer sums of two codebooks be added (S_sum). With ``negate``
    the bounds are built on max_p T − T, so they bound Σ T from above.
    """
    shifted = []
    for t in tables:
        t = t.astype(np.float64)
        if negate:
            t = t.max(axis=2, keepdims=True) - t
        shifted.append(t - t.min(axis=2, keepdims=True))
    step = np.max([sp.max(axis=(1, 2)) for sp in shifted], axis=0) / levels
    step[step <= 0] = 1.0
    out = []
    for t, sp in zip(tables, shifted, strict=True):
        q = np.zeros((*t.shape[:2], TABLE), np.uint8)
        q[:, :, : t.shape[2]] = np.clip(np.floor(sp / step[:, None, None]), 0, levels)
        t = t.astype(np.float64)
        # lower bound: Σ min_p T + Δ·L ≤ Σ T; negated: Σ(max_p − T) ≥ Δ·L, so Σ T ≤ Σ max_p − Δ·L
        offset = t.max(axis=2).sum(axis=1) if negate else t.min(axis=2).sum(axis=1)
        out.append(Bounds(q, offset, step.copy(), negate))
    return out


def integer_sums(
    codes_t: np.ndarray,
    bounds: Bounds,
    first_position: int,
    accumulate_into: np.ndarray | None = None,
) -> np.ndarray:
    """(B, nblocks·64) uint16 sums of the quantized tables over every row, in one pass.

    codes_t: (nblocks, S, 64) uint8; the tables cover positions first_position .. +P-1.
    """
    B, P, _ = bounds.tables.shape
    nblocks, S, _ = codes_t.shape
    out = (
        accumulate_into
        if accumulate_into is not None
        else np.empty((B, nblocks * BLOCK), np.uint16)
    )
    acc = accumulate_into is not None
    tables = np.ascontiguousarray(bounds.tables)

    def run(start: int, end: int) -> None:
        _fastscan.lower_bounds(
            codes_t, tables, out, B, S, first_position, P, start, end, acc, PORTABLE
        )

    threads = 1 if nblocks < 256 else _THREADS
    edges = np.linspace(0, nblocks, threads + 1).astype(int)
    _parallel(lambda t: run(int(edges[t]), int(edges[t + 1])), threads)
    return out


def _parallel(run, threads: int) -> None:
    """run(0) .. run(threads − 1), the last one on the calling thread (one hand-off fewer)."""
    global _pool
    if threads > 1 and _pool is None:
        _pool = ThreadPoolExecutor(_THREADS - 1, thread_name_prefix="fastscan")
    jobs = [_pool.submit(run, t) for t in range(threads - 1)] if _pool is not None else []
    try:
        run(threads - 1)
    finally:
        for job in jobs:
            job.result()


def _row(b: Bounds, i: int) -> Bounds:
    """Query i of a batch of bounds."""
    return Bounds(b.tables[i : i + 1], b.offset[i : i + 1], b.step[i : i + 1], b.negated)


def _take(plan: dict, queries: np.ndarray) -> dict:
    """The scan plan of some queries of a batch."""
    return {
        k: np.ascontiguousarray(v[queries]) if isinstance(v, np.ndarray) else v
        for k, v in plan.items()
    }


def _stack(bounds: list[Bounds]) -> Bounds:
    """The bounds of several queries as one batch."""
    return Bounds(
        np.concatenate([b.tables for b in bounds]),
        np.concatenate([b.offset for b in bounds]),
        np.concatenate([b.step for b in bounds]),
        bounds[0].negated,
    )


def levels_for(positions: int) -> int:
    """Quantization levels per position that keep a sum over `positions` within uint16."""
    return int(min(255, MAX_SUM // max(positions, 1)))


def _threshold(x: float, step: float) -> int:
    """The largest integer sum L with offset + step·L ≤ offset + x, plus one level of margin
    against rounding (an extra level only lets more rows through to the exact check)."""
    if not np.isfinite(x):
        return MAX_SUM
    return int(np.clip(np.floor(x / step * (1 + MARGIN) + MARGIN) + 1, -1, MAX_SUM))


class FastScan:
    """Block-transposed copies of an index's code grids and the search over them.

    tables: per codebook ("normal", "abnormal") its `CodebookTables`; codes: (N, P) uint8
    representative ids per codebook; row_sqnorm: (N,) float64 ‖r‖²; volume_index: (N,) int64
    dense volume number into volume_ids (V,); scales: the index's normalized-sum scales;
    codes_t: the block-transposed layout of both books side by side when it was stored (e.g.
    memory-mapped from the index folder), else it is made here.
    """

    BOOKS = ("normal", "abnormal")

    def __init__(
        self,
        tables: dict,
        codes: dict,
        row_sqnorm: dict,
        volume_index: np.ndarray,
        volume_ids: np.ndarray,
        scales: dict,
        codes_t: np.ndarray | None = None,
    ):
        self.tables, self.codes, self.row_sqnorm = tables, codes, row_sqnorm
        self.volume_index, self.volume_ids, self.scales = volume_index, volume_ids, scales
        self.n = int(volume_index.size)
        self.P = int(codes["normal"].shape[1])
        # both codebooks side by side: positions 0..P-1 normal, P..2P-1 abnormal
        if codes_t is None:
            codes_t = block_transpose(np.concatenate([codes["normal"], codes["abnormal"]], 1))
        expected = (max(1, -(-self.n // BLOCK)), 2 * self.P, BLOCK)
        if codes_t.shape != expected or codes_t.dtype != np.uint8:
            raise ValueError(
                f"codes_t must be uint8 {expected} (block_transpose of both books' codes), "
                f"got {codes_t.dtype} {codes_t.shape}"
            )
        self.codes_t = codes_t
        self.first = {"normal": 0, "abnormal": self.P}
        self._sample_t: np.ndarray | None = None  # every SAMPLE_STRIDE-th row, made on first use
        self._sample_rows = np.zeros(0, np.int64)
        self._freq = np.zeros((2 * self.P, TABLE))

    # ------------------------------------------------------------------ bounds and exact sums
    def _bound_to_distance(
        self,
        book: str,
        b: Bounds,
        L: np.ndarray,
        q_sq: float,
        distance: str,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """Lower bounds of one codebook's distance from its integer sums L (of `rows`)."""
        offset, step = float(b.offset[0]), float(b.step[0])
        L = L.astype(np.float64)
        if distance == "hamming":
            return offset + step * L
        if distance == "euclidean":
            return np.sqrt(np.maximum(offset + step * L, 0.0))
        # angular: Σ⟨q_p, r_p⟩ ≤ offset − Δ·L, so cos ≤ that / (‖q‖‖r‖) and the angle is at least
        # arccos of it; grids of norm zero have exact distances (0 or 0.5, as `finish` says)
        r_sq = self.row_sqnorm[book] if rows is None else self.row_sqnorm[book][rows]
        denom = np.sqrt(q_sq * r_sq)
        with np.errstate(divide="ignore", invalid="ignore"):
            cos_ub = np.where(denom > 0, (offset - step * L) / denom, 0.0)
        lb = np.arccos(np.clip(cos_ub, -1.0, 1.0)) / np.pi
        lb[(q_sq == 0) & (r_sq == 0)] = 0.0
        return lb

    def _exact(
        self, rows: np.ndarray, tables: dict, q_sq: dict, books, distance: str, normalized: bool
    ) -> np.ndarray:
        """Exact distances of `rows`, summed in position order as the reference engines do."""
        sums = {}
        for book in books:
            table = tables[book]
            codes = self.codes[book][rows]
            acc = np.zeros(rows.size, np.int64 if table.dtype == np.int32 else np.float64)
            for p in range(table.shape[0]):
                acc += table[p][codes[:, p]]
            sums[book] = acc
        return image_distance(
            distance,
            sums,
            q_sq,
            {book: self.row_sqnorm[book][rows] for book in books},
            {book: self.scales[f"{book}/{distance}"] for book in books} if normalized else None,
        )

    def _top(
        self, rows: np.ndarray, dist: np.ndarray, topq: int, exclude: int | None, by_volume: bool
    ):
        """Top-Q of evaluated rows ordered by (distance, row): (distances, rows, volume ids).

        by_volume: each volume once, at its first (closest, then smallest) row; else rows."""
        if exclude is not None:
            keep = self.volume_ids[self.volume_index[rows]] != exclude
            rows, dist = rows[keep], dist[keep]
        ok = np.isfinite(dist)
        rows, dist = rows[ok], dist[ok]
        order = np.lexsort((rows, dist))
        rows, dist = rows[order], dist[order]
        vols = self.volume_index[rows]
        if by_volume:
            _, first = np.unique(vols, return_index=True)
            first = np.sort(first)[:topq]
        else:
            first = np.arange(min(topq, rows.size))
        return dist[first], rows[first], self.volume_ids[vols[first]]

    # ------------------------------------------------------------------ search
    def search(
        self,
        q_reps: dict,
        q_sq: dict,
        topq: int,
        mode: str,
        distance: str,
        normalized_sum: bool,
        exclude: np.ndarray | None,
        by_volume: bool = True,
    ):
        """Top-Q of B queries: (B, Q) distances, rows, volume ids (inf / -1 padded), and (B,)
        the number of rows each query evaluated exactly.

        q_reps: per codebook (B, P) representative ids; q_sq: per codebook (B,) ‖q‖²;
        exclude: (B,) volume ids or None; by_volume: volume-wise (4.4.6) or row-wise top-Q.

        D_H and D_E: a batch is answered in two pruned passes of `_fastscan.prune_scan`, each
        block of codes loaded once for every query of the batch: one over a sample of the rows
        seeds θ, one over all rows keeps those whose bound is ≤ θ; both leave a block as soon
        as no row of it can qualify. The rows kept are re-ranked for the whole batch at once.
        """
        books = self.BOOKS if mode == "sum" else (mode,)
        normalized = normalized_sum and mode == "sum"
        B = next(iter(q_reps.values())).shape[0]
        if self.n == 0:  # nothing to find: every slot padded
            return (
                np.full((B, topq), np.inf),
                np.full((B, topq), -1, np.int64),
                np.full((B, topq), -1, np.int64),
                np.zeros(B, np.int64),
            )
        if distance == "angular" or B == 0:
            return self._search_full(
                q_reps, q_sq, topq, mode, distance, normalized_sum, exclude, by_volume
            )
        D = np.full((B, topq), np.inf)
        R = np.full((B, topq), -1, np.int64)
        V = np.full((B, topq), -1, np.int64)
        evaluated = np.zeros(B, np.int64)
        for c0 in range(0, B, BATCH):
            qs = np.arange(c0, min(B, c0 + BATCH))
            out = self._search_pruned(
                {b: q_reps[b][qs] for b in books},
                {b: np.asarray(q_sq[b], np.float64)[qs] for b in books},
                topq,
                books,
                distance,
                normalized,
                None if exclude is None else exclude[qs],
                by_volume,
            )
            D[qs], R[qs], V[qs], evaluated[qs], overflow = out
            if overflow.any():  # too many candidates for the buffers: sum every row's bound
                redo = qs[overflow]
                d, r, v, e = self._search_full(
                    {b: q_reps[b][redo] for b in self.BOOKS},
                    {b: q_sq[b][redo] for b in self.BOOKS},
                    topq,
                    mode,
                    distance,
                    normalized_sum,
                    None if exclude is None else exclude[redo],
                    by_volume,
                )
                D[redo], R[redo], V[redo], evaluated[redo] = d, r, v, e
        return D, R, V, evaluated

    def _search_pruned(self, q_reps, q_sq, topq, books, distance, normalized, exclude, by_volume):
        """`search` of at most BATCH queries by the pruned scan (D_H, D_E): (B, Q) distances,
        rows, volumes, (B,) rows evaluated and (B,) bool, the queries whose candidates
        overflowed (their answers are left to the caller)."""
        B = next(iter(q_reps.values())).shape[0]
        # exact tables (B, P, R) and their 8-bit bounds with one step per query
        tables = {
            b: np.stack([self.tables[b].query_table(q_reps[b][i], distance) for i in range(B)])
            for b in books
        }
        bounds = dict(
            zip(
                books,
                quantize([tables[b] for b in books], PRUNE_LEVELS),
                strict=True,
            )
        )
        # the re-rank's float64 tables, converted once for both passes
        tables = {b: np.ascontiguousarray(tables[b], np.float64) for b in books}
        joint = len(books) == 2 and distance == "hamming" and not normalized
        plan = self._plan(bounds, books, joint)
        # θ: the exact distance of the Q-th best volume among the rows of a sample with the
        # smallest bounds (more of them while fewer than Q volumes are found)
        theta = np.full(B, np.inf)
        evaluated = np.zeros(B, np.int64)
        todo = np.arange(B)
        sample_t, sample_rows = self._sample()
        keep = SEED_ROWS
        while todo.size:
            part = plan if todo.size == B else _take(plan, todo)
            qidx, rows, _ = self._run(sample_t, sample_rows.size, part, keep)
            qidx, rows = todo[qidx], sample_rows[rows]
            dist = self._exact_batch(rows, qidx, tables, q_sq, books, distance, normalized)
            evaluated += np.bincount(qidx, minlength=B)
            d, _, _ = self._top_batch(rows, qidx, dist, B, topq, exclude, by_volume)
            full = np.isfinite(d[todo, topq - 1])
            theta[todo[full]] = d[todo[full], topq - 1]
            if keep >= sample_rows.size:
                break  # the whole sample holds fewer than Q volumes: θ stays infinite
            todo = todo[~full]
            keep *= 8
        lim, room, coarse = self._limits(bounds, books, distance, normalized, theta)
        capacity = int(min(CAPACITY, self.codes_t.shape[0] * BLOCK))
        qidx, rows, overflow = self._run(
            self.codes_t, self.n, dict(plan, lim=lim, room=room, coarse=coarse), capacity
        )
        dist = self._exact_batch(rows, qidx, tables, q_sq, books, distance, normalized)
        D, R, V = self._top_batch(rows, qidx, dist, B, topq, exclude, by_volume)
        evaluated += np.bincount(qidx, minlength=B)
        return D, R, V, evaluated, overflow

    # ------------------------------------------------------------------ pruned scan helpers
    def _sample(self) -> tuple[np.ndarray, np.ndarray]:
        """Every SAMPLE_STRIDE-th row, block-transposed: (layout, (n_sample,) row ids); made on
        first use (never written into codes_t, which may be a read-only memory map)."""
        if self._sample_t is None:
            rows = np.arange(0, self.n, SAMPLE_STRIDE)
            nblocks = max(1, -(-rows.size // BLOCK))
            layout = np.zeros((nblocks, 2 * self.P, BLOCK), np.uint8)
            freq = []
            for book in self.BOOKS:  # strided views of the codes, copied once, transposed
                view = self.codes[book][::SAMPLE_STRIDE]  # (n_sample, P)
                first, full = self.first[book], rows.size // BLOCK
                part = layout[:, first : first + self.P, :]
                part[:full] = view[: full * BLOCK].reshape(full, BLOCK, self.P).transpose(0, 2, 1)
                part[full, :, : rows.size - full * BLOCK] = view[full * BLOCK :].T
                # how often each code occurs at each position, from a sparser sample: it only
                # orders the positions
                sparse = np.asarray(view[:: FREQ_STRIDE // SAMPLE_STRIDE], np.int64)
                counts = np.bincount(
                    (np.arange(self.P) * TABLE + sparse).ravel(), minlength=self.P * TABLE
                )
                freq.append(counts.reshape(self.P, TABLE) / max(sparse.shape[0], 1))
            self._sample_t = layout
            self._freq = np.concatenate(freq)
            self._sample_rows = rows
        return self._sample_t, self._sample_rows

    def _plan(self, bounds: dict, books, joint: bool = False) -> dict:
        """The order in which the scan visits each query's positions: chunks of CHUNK
        positions of one codebook, the chunks whose bounds are expected to grow most (under the
        sample's code frequencies) first, so that blocks are left early.

        Returns tables (B, n_pos, 256) uint8, order (B, n_pos) int32 (positions in codes_t)
        and acc (B, n_pos / CHUNK) uint8 (0: first codebook, 1: second; ``joint``, where the
        bound is one sum over both books: all 0, and the kernel checks one accumulator)."""
        self._sample()
        tabs, pos, score, acc = [], [], [], []
        for a, book in enumerate(books):
            t = bounds[book].tables  # (B, P, 256)
            Bq, P, _ = t.shape
            each = np.arange(Bq)[:, None]
            first = self.first[book]
            freq = self._freq[first : first + P].astype(np.float32)
            gain = np.einsum("bpc,pc->bp", t.astype(np.float32), freq)
            perm = np.argsort(-gain, axis=1, kind="stable")
            t, where, gain = t[each, perm], perm + first, gain[each, perm]
            pad = -P % CHUNK  # zero tables add nothing
            if pad:
                t = np.concatenate([t, np.zeros((Bq, pad, TABLE), np.uint8)], axis=1)
                where = np.concatenate([where, np.full((Bq, pad), first)], axis=1)
                gain = np.concatenate([gain, np.zeros((Bq, pad), np.float32)], axis=1)
            n = (P + pad) // CHUNK
            tabs.append(t.reshape(Bq, n, CHUNK, TABLE))
            pos.append(where.reshape(Bq, n, CHUNK))
            score.append(gain.reshape(Bq, n, CHUNK).sum(axis=2))
            acc.append(np.full((Bq, n), 0 if joint else a, np.uint8))
        t, where, sc, ac = (np.concatenate(x, axis=1) for x in (tabs, pos, score, acc))
        Bq = t.shape[0]
        each = np.arange(Bq)[:, None]
        chunks = np.argsort(-sc, axis=1, kind="stable")
        return {
            "n_codes": max(self.tables[b].n_reps for b in books),
            "tables": np.ascontiguousarray(t[each, chunks].reshape(Bq, -1, TABLE)),
            "order": np.ascontiguousarray(where[each, chunks].reshape(Bq, -1), dtype=np.int32),
            "acc": np.ascontiguousarray(ac[each, chunks]),
        }

    def _run(self, codes_t, n_rows, plan, capacity):
        """One `prune_scan` of `codes_t` (n_rows real rows) for the queries of `plan`, blocks
        split over threads: (query, row) of the rows kept, and (B,) bool, the queries whose
        candidates overflowed. With limits in `plan` (filter mode) every row within them is
        kept (up to `capacity` per query and thread), else (heap mode) about `capacity` rows
        of smallest bound per query: as many per thread as make up `capacity`."""
        filter_mode = "lim" in plan
        B, n_pos = plan["order"].shape
        nblocks, S, _ = codes_t.shape
        threads = 1 if _THREADS == 1 or nblocks < 256 else _THREADS
        edges = np.linspace(0, nblocks, threads + 1).astype(int)
        if filter_mode:
            lim, room, coarse = plan["lim"], plan["room"], plan["coarse"]
            lims = [lim] * threads
        else:  # no limits but the heap's top; each thread keeps its share of `capacity`
            capacity = max(1, min(-(-capacity // threads), n_rows))
            lim = np.full((B, 4), MAX_SUM, np.int32)
            lim[:, 3] = 0
            room = np.zeros((B, 0), np.int32)
            coarse = np.full((B, COARSE), MAX_SUM, np.uint16)
            lims = [lim.copy() for _ in range(threads)]
        rows = np.empty((threads, B, capacity), np.int64)
        keys = np.empty((threads, B, capacity), np.uint32)
        count = np.zeros((threads, B), np.int64)

        def run(t: int) -> None:
            _fastscan.prune_scan(
                codes_t,
                S,
                n_rows,
                plan["n_codes"],
                plan["tables"],
                plan["order"],
                plan["acc"],
                B,
                n_pos,
                lims[t],
                room,
                room.shape[1],
                coarse,
                rows[t],
                keys[t],
                count[t],
                capacity,
                not filter_mode,
                int(edges[t]),
                int(edges[t + 1]),
                PORTABLE,
            )

        _parallel(run, threads)
        kept = np.minimum(count, capacity)
        if B == 1:  # one query: its rows, thread by thread (in row order)
            found = np.concatenate([rows[t, 0, : kept[t, 0]] for t in range(threads)])
            qidx = np.zeros(found.size, np.int64)
        else:
            mask = np.arange(capacity)[None, None, :] < kept[:, :, None]  # (threads, B, capacity)
            qidx = np.broadcast_to(np.arange(B)[None, :, None], mask.shape)[mask]
            found = rows[mask]
        return qidx, found, (count > capacity).any(axis=0)

    def _limits(self, bounds, books, distance, normalized, theta):
        """Per query the integer limits of the filter pass for threshold θ: lim (B, 3) int32
        (L0 max, L1 max, L0 + L1 max) and room (B, L0 max + 1) int32, the largest L1 each L0
        admits. Every row whose float bound is ≤ θ passes (rounding only lets more through)."""
        B = theta.size
        lim = np.full((B, 4), -1, np.int32)
        rooms = []
        joint = len(books) == 2 and distance == "hamming" and not normalized
        for i in range(B):
            th = float(theta[i])
            if joint:  # the bound is offset + Δ·(L0 + L1)
                offset = sum(float(bounds[b].offset[i]) for b in books)
                T = _threshold(th - offset, float(bounds["normal"].step[i]))
                lim[i, :3] = T
                rooms.append(T - np.arange(max(T, -1) + 1))
                continue
            limit = th + MARGIN * (abs(th) + 1.0) if np.isfinite(th) else np.inf
            g = [self._bound_table(b, _row(bounds[b], i), distance, normalized) for b in books]
            if len(books) == 1:
                top = int(np.searchsorted(g[0], limit, side="right")) - 1
                lim[i, :3] = (top, 0, top)
                rooms.append(np.zeros(top + 1, np.int32))
                continue
            room = np.searchsorted(g[1], limit - g[0], side="right") - 1
            top = int(np.count_nonzero(room >= 0)) - 1  # room is non-increasing
            room = room[: top + 1]
            if top >= 0:
                lim[i, :3] = (top, room[0], int((np.arange(top + 1) + room).max()))
            rooms.append(room)
        stride = max(1, max(r.size for r in rooms))
        room = np.full((B, stride), -1, np.int32)
        coarse = np.zeros((B, COARSE), np.uint16)
        for i, r in enumerate(rooms):
            room[i, : r.size] = r
            # the staircase the kernel checks while it scans: step k covers L0 >> shift == k
            # and holds room's largest value there, its first (room is non-increasing)
            shift = max(0, int(r.size - 1).bit_length() - COARSE.bit_length() + 1)
            lim[i, 3] = shift
            if r.size:
                steps = np.minimum(np.arange(COARSE) << shift, r.size - 1)
                coarse[i] = np.clip(r[steps], 0, MAX_SUM)
        return lim, room, coarse

    def _exact_batch(self, rows, qidx, tables, q_sq, books, distance, normalized):
        """Exact distances of rows (M,) to their queries qidx (M,), summed in position order
        as the reference engines do. tables: per codebook (B, P, R); q_sq: per codebook (B,)."""
        sums = {}
        rows = np.ascontiguousarray(rows, np.int64)
        qidx = np.ascontiguousarray(qidx, np.int64)
        for book in books:
            # float64 sums of small integers (D_H) are exact: the same numbers as int64 sums
            table = np.ascontiguousarray(tables[book], np.float64)
            acc = np.empty(rows.size)
            codes = self.codes[book]
            if not (isinstance(codes, np.ndarray) and codes.flags.c_contiguous):
                codes = np.ascontiguousarray(codes)
            _fastscan.exact_sums(codes, self.P, table, table.shape[2], rows, qidx, acc)
            sums[book] = acc
        return image_distance(
            distance,
            sums,
            {book: q_sq[book][qidx] for book in books},
            {book: self.row_sqnorm[book][rows] for book in books},
            {book: self.scales[f"{book}/{distance}"] for book in books} if normalized else None,
        )

    def _top_batch(self, rows, qidx, dist, B, topq, exclude, by_volume):
        """`_top` of every query at once: (B, Q) distances, rows, volume ids (inf / -1 padded)
        of the evaluated rows (M,) of queries qidx (M,)."""
        D = np.full((B, topq), np.inf)
        R = np.full((B, topq), -1, np.int64)
        V = np.full((B, topq), -1, np.int64)
        ok = np.isfinite(dist)
        if exclude is not None:
            ok &= self.volume_ids[self.volume_index[rows]] != exclude[qidx]
        rows, qidx, dist = rows[ok], qidx[ok], dist[ok]
        order = np.lexsort((rows, dist, qidx))
        rows, qidx, dist = rows[order], qidx[order], dist[order]
        vols = self.volume_index[rows]
        if by_volume:  # each (query, volume) once, at its first (closest, then smallest) row
            _, first = np.unique(qidx * self.volume_ids.size + vols, return_index=True)
            first = np.sort(first)
        else:
            first = np.arange(rows.size)
        q = qidx[first]
        rank = np.arange(first.size) - np.searchsorted(q, np.arange(B))[q]
        sel = rank < topq
        first, q, rank = first[sel], q[sel], rank[sel]
        D[q, rank], R[q, rank], V[q, rank] = dist[first], rows[first], self.volume_ids[vols[first]]
        return D, R, V

    # ------------------------------------------------------------------ full sums (D_A, fallback)
    def _search_full(
        self,
        q_reps: dict,
        q_sq: dict,
        topq: int,
        mode: str,
        distance: str,
        normalized_sum: bool,
        exclude: np.ndarray | None,
        by_volume: bool = True,
    ):
        """`search` by the bounds of every row: integer sums of all rows (a chunk of queries
        per pass), then numpy per query. D_A takes this path (its bound needs each row's
        norm), and so does a query whose candidates overflow the pruned scan's buffers."""
        books = self.BOOKS if mode == "sum" else (mode,)
        normalized = normalized_sum and mode == "sum"
        joint = mode == "sum" and not normalized and distance == "hamming"
        B = next(iter(q_reps.values())).shape[0]
        D = np.full((B, topq), np.inf)
        R = np.full((B, topq), -1, np.int64)
        V = np.full((B, topq), -1, np.int64)
        evaluated = np.zeros(B, np.int64)
        chunk = max(1, min(B, QUERY_BYTES // (2 * self.codes_t.shape[0] * BLOCK)))
        for c0 in range(0, B, chunk):
            qs = range(c0, min(B, c0 + chunk))
            tables = [
                {b: self.tables[b].query_table(q_reps[b][i], distance) for b in books} for i in qs
            ]
            bounds = [
                dict(
                    zip(
                        books,
                        quantize(
                            [t[b][None] for b in books],
                            levels_for(self.P * len(books)),
                            negate=distance == "angular",
                        ),
                        strict=True,
                    )
                )
                for t in tables
            ]
            if joint:  # one step Δ for both codebooks: one sum over all 2P positions
                both = _stack(
                    [
                        Bounds(
                            np.concatenate([bd[b].tables for b in books], axis=1),
                            bd["normal"].offset + bd["abnormal"].offset,
                            bd["normal"].step,
                            False,
                        )
                        for bd in bounds
                    ]
                )
                sums = {"both": integer_sums(self.codes_t, both, 0)[:, : self.n]}
            else:
                sums = {
                    b: integer_sums(self.codes_t, _stack([bd[b] for bd in bounds]), self.first[b])[
                        :, : self.n
                    ]
                    for b in books
                }
            for j, i in enumerate(qs):
                L = {} if joint else {b: sums[b][j] for b in books}
                proxy = (
                    sums["both"][j]
                    if joint
                    else (L[books[0]] if len(books) == 1 else L["normal"] + L["abnormal"])
                )
                sq = {b: float(q_sq[b][i]) for b in books}
                ex = None if exclude is None else int(exclude[i])
                d = self._seed_theta(
                    proxy, tables[j], sq, books, distance, normalized, topq, ex, by_volume
                )
                theta = float(d[-1]) if d.size == topq else np.inf
                rows = self._candidates(
                    books, bounds[j], L, proxy, sq, distance, normalized, theta, joint
                )
                dist = self._exact(rows, tables[j], sq, books, distance, normalized)
                d, r, v = self._top(rows, dist, topq, ex, by_volume)
                D[i, : d.size], R[i, : r.size], V[i, : v.size] = d, r, v
                evaluated[i] = rows.size
        return D, R, V, evaluated

    def _seed_theta(
        self, proxy, tables, q_sq, books, distance, normalized, topq, exclude, by_volume
    ):
        """Exact distances of the Q best volumes (or rows) among a few promising rows: the last
        one bounds the true Q-th distance from above, whichever rows were taken.

        The rows are those with the smallest integer sums among every SAMPLE_STRIDE-th row (a
        histogram finds the cut without sorting, and neighbouring slices of a volume look
        alike, so the sample still holds a near-best slice of every volume); more rows are
        taken until Q volumes are found.
        """
        sample_rows = np.arange(0, self.n, SAMPLE_STRIDE)
        sample = proxy[sample_rows]
        cum = np.cumsum(np.bincount(sample, minlength=1))
        want = SEED_ROWS
        while True:
            cut = int(np.searchsorted(cum, min(want, sample.size)))
            seed = sample_rows[sample <= cut]
            d, _, _ = self._top(
                seed,
                self._exact(seed, tables, q_sq, books, distance, normalized),
                topq,
                exclude,
                by_volume,
            )
            if d.size == topq or cut >= cum.size - 1:
                return d
            want *= 8

    def _bound_table(self, book: str, b: Bounds, distance: str, normalized: bool) -> np.ndarray:
        """The lower bound of a codebook's (scaled) distance for every possible integer sum L:
        (P·levels + 1,) float64, non-decreasing (D_H and D_E only)."""
        top = int(b.tables[0].max(axis=1).astype(np.int64).sum())
        g = self._bound_to_distance(book, b, np.arange(top + 1), 0.0, distance)
        return g / self.scales[f"{book}/{distance}"] if normalized else g

    def _candidates(self, books, bounds, L, proxy, q_sq, distance, normalized, theta, joint):
        """Every row whose lower bound is ≤ θ (a superset when rounding is in doubt)."""
        if not np.isfinite(theta):
            return np.arange(self.n)
        limit = theta + MARGIN * (abs(theta) + 1.0)
        if distance == "hamming" and joint:  # the bound is offset + Δ·(L_n + L_a)
            offset = sum(float(bounds[b].offset[0]) for b in books)
            return np.flatnonzero(
                proxy <= _threshold(theta - offset, float(bounds["normal"].step[0]))
            )
        if distance != "angular":
            # bounds are monotone in L: read the largest admissible L off a table of all of them
            g = {b: self._bound_table(b, bounds[b], distance, normalized) for b in books}
            if len(books) == 1:
                (b,) = books
                return np.flatnonzero(L[b] <= np.searchsorted(g[b], limit, side="right") - 1)
            # two codebooks: for every L_n, the largest L_a with g_n(L_n) + g_a(L_a) ≤ θ
            room = np.searchsorted(g["abnormal"], limit - g["normal"], side="right") - 1
            return np.flatnonzero(L["abnormal"].astype(np.int32) <= room[L["normal"]])
        lb = 0.0
        for b in books:
            part = self._bound_to_distance(b, bounds[b], L[b], q_sq[b], distance)
            lb = lb + (part / self.scales[f"{b}/{distance}"] if normalized else part)
        return np.flatnonzero(lb <= limit)
