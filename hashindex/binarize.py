"""Separating-hyperplane binarization of a codebook (paper section 3.2.1, eq. 14–16).

Bit (i, j) of code k is ``sgn[H_ij(e_k)] >= 0``, i.e. 1 iff ``‖e_k − e_i‖² ≤ ‖e_k − e_j‖²``
(2·H_ij(x) = ‖x − e_j‖² − ‖x − e_i‖²): e_k is at least as close to e_i as to e_j. With
K codes there are E = K(K−1)/2 pairs i < j, ordered lexicographically.

Code vectors whose L2 norm is below 1e-5 are rounded to the zero vector first (section 4.3.2).
Identical code vectors (typically all those zero vectors) are grouped: the first index of each
group is its *representative*; the group's codes have identical bits, distances and tables.
"""

from __future__ import annotations

import numpy as np

ZERO_NORM = 1e-5


def check_codebook(codebook: np.ndarray, name: str = "codebook") -> None:
    """Raise TypeError/ValueError unless ``codebook`` is a finite (K, D) float32 array, K ≥ 2."""
    if not isinstance(codebook, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(codebook).__name__}")
    if codebook.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {codebook.dtype}")
    if codebook.ndim != 2 or codebook.shape[0] < 2 or codebook.shape[1] < 1:
        raise ValueError(f"{name} must have shape (K, D) with K >= 2, got {codebook.shape}")
    if not np.isfinite(codebook).all():
        raise ValueError(f"{name} contains NaN or inf")


def round_small_norms(codebook: np.ndarray, eps: float = ZERO_NORM) -> np.ndarray:
    """Return a float32 copy of ``codebook`` (K, D) with rows of L2 norm < eps set to zero."""
    out = np.array(codebook, dtype=np.float32, copy=True)
    norms = np.linalg.norm(out.astype(np.float64), axis=1)
    out[norms < eps] = 0.0
    return out


def representatives(codebook: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group identical code vectors.

    Returns
    -------
    reps : (R,) int64
        Smallest original index of every distinct vector, ascending.
    rep_of : (K,) int64
        For every code, the position (0..R-1) of its representative in ``reps``.
    """
    _, first, inverse = np.unique(codebook, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # representatives in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return first[order].astype(np.int64), rank[inverse.reshape(-1)].astype(np.int64)


def squared_distances(codebook: np.ndarray) -> np.ndarray:
    """(K, K) float64 matrix of ‖e_a − e_b‖², computed from differences (exact zeros on ties)."""
    e = codebook.astype(np.float64)
    out = np.empty((e.shape[0], e.shape[0]))
    for a in range(e.shape[0]):
        diff = e - e[a]
        out[a] = np.einsum("kd,kd->k", diff, diff)
    return out


def pair_indices(K: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs i < j of 0..K−1 in lexicographic order: two (K(K−1)/2,) int64 arrays."""
    i, j = np.triu_indices(K, k=1)
    return i.astype(np.int64), j.astype(np.int64)


def hyperplane_bits(
    sqdist: np.ndarray,
    pair_i: np.ndarray,
    pair_j: np.ndarray,
    codes: np.ndarray | None = None,
    chunk: int = 64,
) -> np.ndarray:
    """Packed bits ``[‖e_k − e_i‖² ≤ ‖e_k − e_j‖²]`` for the given pairs.

    Parameters
    ----------
    sqdist : (K, K) float64
        Output of `squared_distances`.
    pair_i, pair_j : (E,) int64
        The hyperplanes (pairs) to evaluate, in bit order.
    codes : (C,) int64, optional
        The codes k whose bits are wanted (default: all K).

    Returns
    -------
    (C, ceil(E / 8)) uint8
        Little-endian packed bits, zero-padded to whole bytes. Rows are computed ``chunk`` at a
        time so that at most chunk × E booleans exist at once.
    """
    codes = np.arange(sqdist.shape[0]) if codes is None else np.asarray(codes)
    nbytes = (pair_i.size + 7) // 8
    out = np.zeros((codes.size, nbytes), np.uint8)
    for start in range(0, codes.size, chunk):
        rows = sqdist[codes[start : start + chunk]]
        bits = rows[:, pair_i] <= rows[:, pair_j]
        out[start : start + chunk] = np.packbits(bits, axis=1, bitorder="little")
    return out
