"""Length optimization of binarized codebooks (paper section 3.2.2, Algorithm A.1) and a bit budget.

Duplicate codes. Identical code vectors (after rounding norms < 1e-5 to zero, usually many zero
vectors) have identical bits, so the greedy checks nearest sets on the R distinct vectors only
(their representatives, one row each). Its candidate bits are all K(K−1)/2 hyperplanes except
those between two identical vectors, which give every code the bit 1 and so never change a
distance (they are removed up front). Hyperplanes (i', j) with i' a duplicate of i are kept as
separate bits, so the Hamming distances are exactly those over all K codes. Over all K codes
the nearest set of a code with duplicates is its duplicate group (distance 0); the greedy keeps
that by refusing any bit whose loss brings another distinct code to distance 0 from it. For a
code without duplicates, its nearest set over all K is the union of the groups of its nearest
representatives. So "every code's nearest set over all K codes stays the same" holds exactly.

Bit budget. `apply_bit_budget` goes on past the faithful result down to L bits per code: it
ranks the kept bits by a first-order estimate of what their loss costs the top-10 concordance
with Euclidean distance (fraction of far pairs the bit separates minus fraction of top-10 pairs
it separates: a bit that splits true neighbours as often as strangers carries no ranking
information) and drops the least useful first, measuring the real concordance at each length.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from hashindex.binarize import hyperplane_bits, pair_indices, representatives, squared_distances
from hashindex.concordance import concordance

log = logging.getLogger(__name__)


@dataclass
class OptimizedBits:
    """The optimized bit table of one codebook.

    pairs: (E*, 2) int64 kept hyperplanes (i, j), i < j, as indices of the original K codes.
    E: K(K−1)/2; E_distinct: hyperplanes between non-identical vectors (the candidates); E_star: len(pairs)
    after Algorithm A.1; budget: final length when a bit budget was applied (else None).
    """

    pairs: np.ndarray
    E: int
    E_distinct: int
    E_star: int
    seconds: float
    budget: int | None = None
    budget_curve: list[dict] = field(default_factory=list)


def _to_words(packed: np.ndarray) -> np.ndarray:
    """(R, nbytes) uint8 → (R, W) uint64, zero-padded to whole words."""
    nbytes = packed.shape[1]
    pad = (-nbytes) % 8
    if pad:
        packed = np.concatenate([packed, np.zeros((packed.shape[0], pad), np.uint8)], axis=1)
    return np.ascontiguousarray(packed).view("<u8")


def _columns(sq_rows: np.ndarray, pi: np.ndarray, pj: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Column bit sets (E, ceil(R/64)) uint64: bit r of row e = bit e of representative r.

    ``sq_rows`` (R, K) holds the squared distances of the representatives to all K codes.
    """
    R = sq_rows.shape[0]
    W = (R + 63) // 64
    out = np.zeros((pi.size, W), np.uint64)
    for s in range(0, pi.size, chunk):
        bits = (sq_rows[:, pi[s : s + chunk]] <= sq_rows[:, pj[s : s + chunk]]).T  # (chunk, R)
        packed = np.packbits(bits, axis=1, bitorder="little")
        out[s : s + chunk] = _to_words(packed)
    return out


def _neighbour_masks(dist: np.ndarray, has_dups: np.ndarray):
    """Nearest sets N_k (as bit sets) and their distances m_k from a distance matrix."""
    R = dist.shape[0]
    W = (R + 63) // 64
    d = dist.astype(np.int64)
    np.fill_diagonal(d, np.iinfo(np.int64).max)
    mins = np.where(has_dups, 0, d.min(axis=1) if R > 1 else 0).astype(np.int32)
    near_bool = (d == mins[:, None]) & ~has_dups[:, None]

    def pack(b):
        return _to_words(np.packbits(b, axis=1, bitorder="little"))[:, :W].copy()

    return pack(near_bool), mins


def optimize_codebook(codebook: np.ndarray, progress=None) -> tuple[OptimizedBits, dict]:
    """Run Algorithm A.1 on a rounded codebook (K, D) float32.

    Returns the kept pairs and a dict of intermediate arrays reused by the caller
    (``sqdist`` (K, K), ``reps``, ``rep_of``).
    """
    t0 = time.perf_counter()
    K = codebook.shape[0]
    sq = squared_distances(codebook)
    reps, rep_of = representatives(codebook)
    R = reps.size
    counts = np.bincount(rep_of, minlength=R)
    has_dups = counts > 1
    pi, pj = pair_indices(K)
    distinct = rep_of[pi] != rep_of[pj]  # hyperplanes between identical vectors are constant
    pi, pj = pi[distinct], pj[distinct]
    if R < 2:
        kept = np.zeros((0, 2), np.int64)
    else:
        sq_rows = sq[reps]  # (R, K): identical vectors have identical bits, keep one row each
        cols = _columns(sq_rows, pi, pj)
        rows = _to_words(hyperplane_bits(sq, pi, pj, codes=reps))
        from hashindex.kernels import KERNELS  # numba: imported on first use

        dist = np.empty((R, R), np.int32)
        KERNELS["hamming_matrix"](rows, dist)
        near, mins = _neighbour_masks(dist, has_dups)
        keep = np.ones(pi.size, np.bool_)
        if progress is not None:
            progress(f"optimizing {pi.size} hyperplanes over {R} distinct codes")
        KERNELS["greedy_bit_removal"](cols, dist, near, mins, has_dups, keep)
        kept = np.stack([pi[keep], pj[keep]], axis=1)
    seconds = time.perf_counter() - t0
    log.info("Algorithm A.1: K=%d, distinct=%d, E*=%d in %.2fs", K, R, len(kept), seconds)
    result = OptimizedBits(
        pairs=kept, E=K * (K - 1) // 2, E_distinct=int(pi.size), E_star=len(kept), seconds=seconds
    )
    return result, {"sqdist": sq, "reps": reps, "rep_of": rep_of}


def hamming_table(packed: np.ndarray) -> np.ndarray:
    """(C, C) int32 Hamming distances between packed bit rows (C, nbytes) uint8."""
    from hashindex.kernels import KERNELS  # numba: imported on first use

    words = _to_words(packed)
    out = np.empty((packed.shape[0], packed.shape[0]), np.int32)
    KERNELS["hamming_matrix"](words, out)
    return out


def apply_bit_budget(
    result: OptimizedBits, sqdist: np.ndarray, reps: np.ndarray, live: np.ndarray, length: int
) -> OptimizedBits:
    """Shorten ``result`` to ``length`` bits (a multiple of 8), least useful bits first.

    ``live`` (R,) bool marks the non-zero representatives; usefulness and the reported curve
    are measured over them (all representatives when fewer than two are live).
    """
    if length < 8 or length % 8:
        raise ValueError(f"bit_budget must be a positive multiple of 8, got {length}")
    pairs = result.pairs
    idx = reps[live] if live.sum() >= 2 else reps
    sq = sqdist[np.ix_(idx, idx)]
    n = idx.size
    if pairs.shape[0] <= length or n < 2:
        result.budget = length
        return result
    # bits of the used codes on the kept hyperplanes: (n, E*) bool
    bits = sqdist[idx][:, pairs[:, 0]] <= sqdist[idx][:, pairs[:, 1]]
    q = min(10, n - 1)
    d = sq.copy()
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")[:, :q]
    near = np.zeros((n, n), bool)
    near[np.arange(n)[:, None], order] = True
    far = ~near
    np.fill_diagonal(far, False)
    # separated[k, j, e] is bits[k, e] != bits[j, e]; sum over near / far pairs per bit.
    b = bits.astype(np.float64)
    ones = b.sum(axis=0)
    nf = near.astype(np.float64)
    near_sep = (b * (nf @ (1 - b))).sum(axis=0) + ((1 - b) * (nf @ b)).sum(axis=0)
    all_sep = 2 * ones * (n - ones)
    far_sep = all_sep - near_sep
    score = far_sep / max(far.sum(), 1) - near_sep / max(near.sum(), 1)
    ranking = np.argsort(-score, kind="stable")  # most useful first
    curve = []
    lengths = [pairs.shape[0]]
    L = 1 << int(np.floor(np.log2(pairs.shape[0])))
    while L > length:
        if L < pairs.shape[0]:
            lengths.append(L)
        L //= 2
    lengths.append(length)
    for L in lengths:
        keep = np.sort(ranking[:L])
        packed = np.packbits(bits[:, keep], axis=1, bitorder="little")
        ham = hamming_table(packed).astype(np.float64)
        c = concordance(sq, ham)
        curve.append({"length": int(L), **c})
    keep = np.sort(ranking[:length])
    result.pairs = pairs[keep]
    result.budget = length
    result.budget_curve = curve
    return result
