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
random codes (the worst case) do not; a query whose rows overflow the kernel's buffers sums the
bounds of all rows instead (`_search_full`). D_A's bound of the angle needs each row's norm: the
limits use the codebook's range of non-zero row norms (the smallest where the dot-product bound
is positive, the largest where it is negative) and the exact angle of zero-norm rows, so they
hold for every row and prune as much as the norms are alike (`FastScanRows._angle_bound`).

Kernels (`hashindex.fastscan_kernels.kernel`): AVX-512 VBMI where the CPU has it, else AVX2 (a
4-bit copy of the rows, each code replaced by one of 16 groups per position, scanned with
16-entry `pshufb` tables whose entries are the smallest of their group's; the rows that survive
get their exact 8-bit sums), else the portable C loops. FDN_FASTSCAN_KERNEL=vbmi|avx2|portable
forces one (a kernel the CPU lacks is refused); all give the same answers. At 1M a single S_sum
query took 88 ms on the portable loops against 67 ms for ``lut`` and 15 ms for VBMI (load 3.4).

Limits: at most 256 distinct code vectors per codebook (one byte per code; trained EMA codebooks
have far fewer live codes). Otherwise use ``lut``.

The layout and the bounds are `hashindex.fastscan_layout`, the C kernels run over threads
`hashindex.fastscan_kernels`, steps 2-4 `hashindex.fastscan_pruned` and the sums of every row
`hashindex.fastscan_full`; `FastScan` here chooses between the two searches.
"""

from __future__ import annotations

import numpy as np

from hashindex.fastscan_full import FullScan
from hashindex.fastscan_pruned import PrunedScan
from hashindex.volumes import VolumeHits

__all__ = ["FastScan"]

BATCH = 64  # queries that share one pruned pass over the codes


class FastScan(PrunedScan, FullScan):
    """Block-transposed copies of an index's code grids (`FastScanRows`) and the search over
    them: the pruned scan (`PrunedScan`) where it applies, else the sums of every row
    (`FullScan`)."""

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
        allowed: np.ndarray | None = None,
    ):
        """Top-Q of B queries: (B, Q) distances, rows, volume ids (inf / -1 padded), and (B,)
        the number of rows each query evaluated exactly.

        q_reps: per codebook (B, P) representative ids; q_sq: per codebook (B,) ‖q‖²;
        exclude: (B,) volume ids or None; by_volume: volume-wise (4.4.6) or row-wise top-Q;
        allowed: (n,) bool, the only rows that may be returned (the kernel skips the others), or
        None for every row.

        D_H and D_E: a batch is answered in two pruned passes of `_fastscan.prune_scan`, each
        block of codes loaded once for every query of the batch: one over a sample of the rows
        seeds θ, one over all rows keeps those whose bound is ≤ θ; both leave a block as soon
        as no row of it can qualify. The rows kept are re-ranked for the whole batch at once.
        """
        books = self.BOOKS if mode == "sum" else (mode,)
        normalized = normalized_sum and mode == "sum"
        B = next(iter(q_reps.values())).shape[0]
        if self.n == 0:  # nothing to find: every slot padded
            return (*VolumeHits.padded(B, topq), np.zeros(B, np.int64))
        if B == 0:
            return self._search_full(
                q_reps, q_sq, topq, mode, distance, normalized_sum, exclude, by_volume, allowed
            )
        D, R, V = VolumeHits.padded(B, topq)
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
                allowed,
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
                    allowed,
                )
                D[redo], R[redo], V[redo], evaluated[redo] = d, r, v, e
        return D, R, V, evaluated
