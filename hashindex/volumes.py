"""Row-wise top-k and volume-wise top-Q with deterministic tie-breaking (section 4.4.6).

Ties: equal distances put the smaller row id first. Volume-wise, each volume is represented by
its closest row (the smaller row id on ties) and volumes are ordered by (distance, row).
From a full distance vector the answer is computed directly; from a k-NN engine (FAISS) k is
grown until the boundary is strict, which makes the result exact for exact engines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class VolumeHits(NamedTuple):
    """Volume-wise top-Q of a batch: (B, Q) arrays, distances inf and rows/volumes -1 padded."""

    distances: np.ndarray
    rows: np.ndarray
    volumes: np.ndarray

    @classmethod
    def padded(cls, B: int, q: int) -> VolumeHits:
        """B queries without hits yet: (B, q) inf distances, -1 rows and volumes."""
        return cls(
            np.full((B, q), np.inf), np.full((B, q), -1, np.int64), np.full((B, q), -1, np.int64)
        )


def smallest(values: np.ndarray, k: int, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Indices of the k smallest finite values ordered by (value, tiebreak); tiebreak = index."""
    valid = np.flatnonzero(np.isfinite(values))
    k = min(k, valid.size)
    if k <= 0:
        return np.zeros(0, np.int64)
    v = values[valid]
    if k < valid.size:
        kth = np.partition(v, k - 1)[k - 1]
        sel = v <= kth
        valid, v = valid[sel], v[sel]
    tb = valid if tiebreak is None else tiebreak[valid]
    return valid[np.lexsort((tb, v))[:k]]


def topk_rows(dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k of one distance vector (N,): (k,) float64 distances, (k,) int64 rows."""
    rows = smallest(dist, k)
    D = np.full(k, np.inf)
    I = np.full(k, -1, np.int64)
    D[: rows.size] = dist[rows]
    I[: rows.size] = rows
    return D, I


def topq_volumes(
    dist: np.ndarray,
    volume_index: np.ndarray,
    volume_ids: np.ndarray,
    topq: int,
    exclude: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Volume-wise top-Q of one distance vector (N,) (dense ``volume_index`` (N,) into
    ``volume_ids`` (V,)); ``exclude`` is a volume id or None. Returns (Q,) distances, rows, volumes.
    """
    V = volume_ids.size
    best_d = np.empty(V)
    best_r = np.empty(V, np.int64)
    from hashindex.kernels import KERNELS  # numba: imported on first use

    KERNELS["volume_best"](dist, volume_index, V, best_d, best_r)
    if exclude is not None:
        best_d[volume_ids == exclude] = np.inf
    vols = smallest(best_d, topq, best_r)
    D = np.full(topq, np.inf)
    R = np.full(topq, -1, np.int64)
    Vo = np.full(topq, -1, np.int64)
    D[: vols.size] = best_d[vols]
    R[: vols.size] = best_r[vols]
    Vo[: vols.size] = volume_ids[vols]
    return D, R, Vo


KnnFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def _sorted_hits(d: np.ndarray, r: np.ndarray):
    ok = r >= 0
    d, r = d[ok].astype(np.float64), r[ok]
    o = np.lexsort((r, d))
    return d[o], r[o]


def rows_from_knn(knn: KnnFn, B: int, N: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k for B queries from ``knn(query_ids, k) -> (D, I)``, growing k past ties."""
    D = np.full((B, k), np.inf)
    I = np.full((B, k), -1, np.int64)
    pending = np.arange(B)
    kk = min(N, k + 1)
    while pending.size and N > 0:
        Dk, Ik = knn(pending, kk)
        again = []
        for n, b in enumerate(pending):
            d, r = _sorted_hits(Dk[n], Ik[n])
            complete = kk >= N or r.size < kk or r.size <= k or d[k - 1] < d[-1]
            if complete:
                m = min(k, r.size)
                D[b, :m], I[b, :m] = d[:m], r[:m]
            else:
                again.append(b)
        pending = np.array(again, np.int64)
        kk = min(N, 2 * kk)
    return D, I


def volumes_from_knn(
    knn: KnnFn, B: int, N: int, topq: int, volume_of_row: np.ndarray, exclude: np.ndarray | None
) -> VolumeHits:
    """Volume-wise top-Q from a k-NN engine, growing k until Q volumes are certain.

    A result is final when the Q-th volume's distance is strictly below the last distance
    returned (every row at least as close was seen), when k reached N, or when the engine
    returned fewer than k rows (an approximate engine found nothing more).
    """
    D = np.full((B, topq), np.inf)
    R = np.full((B, topq), -1, np.int64)
    Vo = np.full((B, topq), -1, np.int64)
    pending = np.arange(B)
    kk = min(N, max(4 * topq, 32))
    while pending.size and N > 0:
        Dk, Ik = knn(pending, kk)
        again = []
        for n, b in enumerate(pending):
            d, r = _sorted_hits(Dk[n], Ik[n])
            vols = volume_of_row[r]
            if exclude is not None:
                keep = vols != exclude[b]
                dq, rq, vq = d[keep], r[keep], vols[keep]
            else:
                dq, rq, vq = d, r, vols
            _, first = np.unique(vq, return_index=True)
            first = np.sort(first)[:topq]
            complete = kk >= N or r.size < kk or (first.size == topq and dq[first[-1]] < d[-1])
            if complete:
                m = first.size
                D[b, :m], R[b, :m], Vo[b, :m] = dq[first], rq[first], vq[first]
            else:
                again.append(b)
        pending = np.array(again, np.int64)
        kk = min(N, 2 * kk)
    return VolumeHits(D, R, Vo)
