"""Label-map Dice and the brute-force Dice oracle of the quality benchmark (paper 4.4.6).

Multi-class Dice of two label maps a, b (S, S) over a set of classes C::

    Dice(a, b) = mean over c in C present in a or b of 2|a=c ∩ b=c| / (|a=c| + |b=c|)

A class absent from both maps is skipped (its Dice is 0/0). When no class of C is present in
either map the two maps agree everywhere on C and the Dice is defined as 1; a query of the
protocol always has lesion and anatomy labels, so this case never enters the reported means.
A healthy slice retrieved for a lesion query therefore scores 0 on lesion Dice, and an empty
(no-brain) slice 0 on normal Dice.

Label sets: normal anatomy = the six `_anat` labels 1..6; lesion = the three classes of
`fdn.data.seg_to_classes` (1 NET, 2 ED, 3 ET).

The oracle ("brutal search" of 4.4.6) ranks every reference slice by a Dice score against the
query's ground truth, keeps each volume's best slice and returns the Q best volumes: the
volume-wise top-Q that maximises that score, hence an upper bound of any volume-wise method on
it.
"""

from __future__ import annotations

import numpy as np

NORMAL_CLASSES = (1, 2, 3, 4, 5, 6)
LESION_CLASSES = (1, 2, 3)


def multiclass_dice(a: np.ndarray, b: np.ndarray, classes) -> float:
    """Mean Dice over the classes present in ``a`` or ``b`` (two (S, S) integer maps); 1.0 if none."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    scores = []
    for c in classes:
        in_a, in_b = a == c, b == c
        denom = int(in_a.sum()) + int(in_b.sum())
        if denom:
            scores.append(2.0 * int(np.logical_and(in_a, in_b).sum()) / denom)
    return float(np.mean(scores)) if scores else 1.0


class LabelDice:
    """Dice of one query map against every row of a stack of label maps, vectorised.

    maps: (N, S, S) integer label maps (one per index row). Per-class pixel counts of every row
    are computed once, so one query costs O(N × query pixels of each class).
    """

    def __init__(self, maps: np.ndarray, classes):
        maps = np.asarray(maps)
        if maps.ndim != 3:
            raise ValueError(f"label maps must be (N, S, S), got {maps.shape}")
        self.classes = tuple(int(c) for c in classes)
        self.flat = np.ascontiguousarray(maps.reshape(maps.shape[0], -1))  # (N, P)
        self.counts = {c: np.count_nonzero(self.flat == c, axis=1) for c in self.classes}

    @property
    def n_rows(self) -> int:
        return self.flat.shape[0]

    def against(self, query: np.ndarray) -> np.ndarray:
        """(N,) float64 multi-class Dice between ``query`` (S, S) and every row."""
        q = np.asarray(query).reshape(-1)
        if q.size != self.flat.shape[1]:
            raise ValueError(f"query has {q.size} pixels, the rows {self.flat.shape[1]}")
        total = np.zeros(self.n_rows)
        present = np.zeros(self.n_rows, np.int64)
        for c in self.classes:
            where = np.flatnonzero(q == c)
            denom = self.counts[c] + where.size
            inter = np.count_nonzero(self.flat[:, where] == c, axis=1)
            has = denom > 0
            total[has] += 2.0 * inter[has] / denom[has]
            present += has
        out = np.ones(self.n_rows)
        some = present > 0
        out[some] = total[some] / present[some]
        return out


def best_volumes(
    scores: np.ndarray, volume_of_row: np.ndarray, topq: int, exclude_volume: int | None = None
) -> np.ndarray:
    """Volume-wise top-Q maximising ``scores``: rows (≤ Q,) int64, best first.

    scores: (N,) float per row; volume_of_row: (N,) int volume id per row. Each volume is
    represented by its highest-scoring row (the smaller row on ties); volumes are ordered by
    (score descending, row ascending); ``exclude_volume`` is left out.
    """
    scores = np.asarray(scores, dtype=np.float64)
    volume_of_row = np.asarray(volume_of_row)
    if scores.shape != volume_of_row.shape or scores.ndim != 1:
        raise ValueError(
            f"scores {scores.shape} and volume_of_row {volume_of_row.shape} must "
            "be equal-length vectors"
        )
    if topq < 1:
        raise ValueError(f"topq must be >= 1, got {topq}")
    rows = np.arange(scores.size)
    keep = rows if exclude_volume is None else rows[volume_of_row != exclude_volume]
    order = keep[np.lexsort((keep, -scores[keep]))]  # best first, smaller row on ties
    _, first = np.unique(volume_of_row[order], return_index=True)
    return order[np.sort(first)][:topq].astype(np.int64)
