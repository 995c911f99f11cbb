"""Per-position K × K tables and the image-level distances built from them.

Every image distance is a sum over the P = h·w grid positions of a per-position quantity
between two code indices, so one query needs only P rows of a table (docs/architecture.md):

- D_H (Hamming) = Σ_p T_H[q_p, r_p], T_H[a, b] = popcount(b*_a xor b*_b) on the optimized bits.
  It equals the Hamming distance of the concatenated packed bits (see `hashindex.packing`).
- D_E (Euclidean) = sqrt(Σ_p ‖e_{q_p} − e_{r_p}‖²): the Euclidean distance between the two
  quantized latent grids flattened to vectors (the square root is taken, in every engine).
- D_A (angular) = arccos(⟨q, r⟩ / (‖q‖·‖r‖)) / π ∈ [0, 1] between the flattened grids, with
  ⟨q, r⟩ = Σ_p ⟨e_{q_p}, e_{r_p}⟩ and ‖r‖² = Σ_p ‖e_{r_p}‖². For all-zero grids: two all-zero
  grids are at distance 0, an all-zero grid and a non-zero one at 0.5 (orthogonal).

Tables are indexed by *representative* (identical code vectors share one id), so grids of
codebooks with ≤ 256 distinct vectors are stored as uint8.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hashindex.binarize import hyperplane_bits, representatives, squared_distances

DISTANCES = ("hamming", "euclidean", "angular")
# S_normal, S_abnormal and their sum S_sum (eq. 17); the two codebooks of an index
MODES = ("normal", "abnormal", "sum")
BOOKS = ("normal", "abnormal")


@dataclass
class CodebookTables:
    """Everything search needs about one codebook.

    vectors: (K, D) float32 rounded codebook; pairs: (E*, 2) kept hyperplanes; packed: (K, nbytes)
    uint8 optimized bits of every code; reps (R,), rep_of (K,); hamming (R, R) int32;
    sqeuclid (R, R) float64; gram (R, R) float64; sqnorm (R,) float64.
    """

    vectors: np.ndarray
    pairs: np.ndarray
    packed: np.ndarray
    reps: np.ndarray
    rep_of: np.ndarray
    hamming: np.ndarray
    sqeuclid: np.ndarray
    gram: np.ndarray
    sqnorm: np.ndarray

    @classmethod
    def build(cls, vectors: np.ndarray, pairs: np.ndarray, sqdist: np.ndarray | None = None):
        sq = squared_distances(vectors) if sqdist is None else sqdist
        reps, rep_of = representatives(vectors)
        packed = hyperplane_bits(sq, pairs[:, 0], pairs[:, 1])
        v = vectors.astype(np.float64)[reps]
        return cls(
            vectors=vectors,
            pairs=pairs,
            packed=packed,
            reps=reps,
            rep_of=rep_of,
            hamming=bit_hamming_table(packed[reps]),
            sqeuclid=sq[np.ix_(reps, reps)],
            gram=v @ v.T,
            sqnorm=np.einsum("rd,rd->r", v, v),
        )

    @property
    def K(self) -> int:
        return self.vectors.shape[0]

    @property
    def n_reps(self) -> int:
        return self.reps.size

    @property
    def live(self) -> np.ndarray:
        """(R,) bool: representatives that are not the zero vector."""
        return self.sqnorm > 0

    @property
    def code_dtype(self):
        return np.uint8 if self.n_reps <= 256 else np.uint16

    def to_reps(self, codes: np.ndarray) -> np.ndarray:
        """(N, h, w) uint16 code indices → (N, P) representative ids (uint8 when R ≤ 256)."""
        return np.ascontiguousarray(
            self.rep_of[codes.reshape(codes.shape[0], _positions(codes))].astype(self.code_dtype)
        )

    def row_sqnorms(self, rep_codes: np.ndarray) -> np.ndarray:
        """(N,) float64 ‖r‖² of every grid, summed in position order."""
        acc = np.zeros(rep_codes.shape[0])
        for p in range(rep_codes.shape[1]):
            acc += self.sqnorm[rep_codes[:, p]]
        return acc

    def query_table(self, q_reps: np.ndarray, distance: str) -> np.ndarray:
        """(P, R) per-position table of one query grid q_reps (P,): int32 or float64."""
        if distance == "hamming":
            return np.ascontiguousarray(self.hamming[q_reps])
        if distance == "euclidean":
            return np.ascontiguousarray(self.sqeuclid[q_reps])
        if distance == "angular":
            return np.ascontiguousarray(self.gram[q_reps])
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")


def bit_hamming_table(packed: np.ndarray, block_elements: int = 1 << 22) -> np.ndarray:
    """(C, C) int32 Hamming distances between packed bit rows (C, nbytes) uint8, in numpy.

    popcount(a xor b) over 64-bit words, a block of rows at a time (at most ``block_elements``
    words in flight). It equals `hashindex.optimize.hamming_table` (a Numba kernel), but needs
    no Numba: opening an index builds this table for the kept bits, and importing Numba would
    cost more than the table (~150 ms).
    """
    C, nbytes = packed.shape
    words = np.zeros((C, -(-nbytes // 8) * 8), np.uint8)
    words[:, :nbytes] = packed
    w = words.view(np.uint64)  # (C, W)
    out = np.empty((C, C), np.int32)
    step = max(1, block_elements // max(1, C * w.shape[1]))
    for start in range(0, C, step):
        xor = w[start : start + step, None, :] ^ w[None, :, :]
        out[start : start + step] = np.bitwise_count(xor).sum(axis=2, dtype=np.int32)
    return out


def _positions(codes: np.ndarray) -> int:
    """h·w of grids (N, h, w), also for N = 0 (where reshape(N, -1) cannot infer it)."""
    return int(np.prod(codes.shape[1:]))


def finish(
    distance: str, acc: np.ndarray, q_sqnorm: float = 0.0, r_sqnorm: np.ndarray | None = None
) -> np.ndarray:
    """Turn per-row accumulated table sums (N,) into distances (N,) float64.

    Shared by every engine so that all of them produce bit-identical numbers.
    """
    if distance == "hamming":
        return acc.astype(np.float64)
    if distance == "euclidean":
        return np.sqrt(np.maximum(acc, 0.0))
    if r_sqnorm is None:
        raise ValueError("the angular distance needs the rows' squared norms")
    denom = np.sqrt(q_sqnorm * r_sqnorm)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.clip(np.where(denom > 0, acc / denom, 0.0), -1.0, 1.0)
    out = np.arccos(cos) / np.pi
    out[(q_sqnorm == 0) & (r_sqnorm == 0)] = 0.0
    return out


def region_scale(distance: str, scale: float, share: float) -> float:
    """The normalized sum's scale of a codebook (the mean distance between random whole grids)
    for grids restricted to a share (0, 1] of their positions: D_H and squared D_E are sums over
    positions, so their mean falls in proportion (D_E with its square root); D_A compares
    directions, which do not shrink with the number of positions."""
    if distance == "hamming":
        return scale * share
    if distance == "euclidean":
        return scale * float(np.sqrt(share))
    return scale


def image_distance(
    distance: str,
    sums: dict[str, np.ndarray],
    q_sqnorm: dict[str, float],
    r_sqnorm: dict[str, np.ndarray],
    scales: dict[str, float] | None = None,
) -> np.ndarray:
    """S_normal, S_abnormal or S_sum from per-codebook table sums (N,): each codebook's sums
    turned into its distance by `finish`, divided by its scale when `scales` are given (the
    normalized S_sum), and added in the order of `sums`. Every engine ends here, so their
    distances agree bit for bit."""
    total = None
    for book, acc in sums.items():
        d = finish(distance, acc, q_sqnorm[book], r_sqnorm[book])
        if scales is not None:
            d = d / scales[book]
        total = d if total is None else total + d
    if total is None:
        raise ValueError("image_distance needs the sums of at least one codebook")
    return total
