"""Concordance of nearest-neighbour sets between two code-to-code distances (section 4.4.5).

For every code, the top-Q closest *other* codes are taken under each distance (ties broken by
the smaller code index, so every set has exactly Q members); the concordance is the mean
Jaccard similarity of the two sets over all codes.
"""

from __future__ import annotations

import numpy as np

QS = (1, 5, 10)


def top_q_sets(dist: np.ndarray, q: int) -> np.ndarray:
    """(C, q) indices of the q closest other codes of each code in a (C, C) distance matrix."""
    d = np.array(dist, dtype=np.float64, copy=True)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :q]


def concordance(reference: np.ndarray, other: np.ndarray, qs=QS) -> dict:
    """Mean Jaccard of top-Q sets under ``reference`` and ``other`` ((C, C) each), per Q.

    Returns ``{"top1": ..., "top5": ..., "top10": ...}``; Q is capped at C − 1 and a
    codebook with fewer than two codes gives NaN.
    """
    C = reference.shape[0]
    out = {}
    for q in qs:
        qq = min(q, C - 1)
        if qq < 1:
            out[f"top{q}"] = float("nan")
            continue
        a = top_q_sets(reference, qq)
        b = top_q_sets(other, qq)
        inter = np.array([np.intersect1d(x, y).size for x, y in zip(a, b, strict=True)])
        out[f"top{q}"] = float(np.mean(inter / (2 * qq - inter)))
    return out
