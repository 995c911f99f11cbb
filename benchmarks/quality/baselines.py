"""Retrieval baselines of the quality benchmark: random, same level, raw pixels, ŷ Dice and
the truth on the code grid.

- Random retrieval: Q distinct volumes drawn uniformly from the reference volumes (the query's
  own excluded), one slice drawn uniformly within each; seeded, repeated ``draws`` times.
- Same-level retrieval: Q distinct random volumes as above, in each the slice at the query's
  axial level (relative position z / (Z - 1) in the volume, nearest slice). Normal Dice is
  dominated by the level of a slice, so this is the baseline S_normal has to beat.
- Raw-pixel retrieval: the preprocessed slice (4, S, S), already z-scored per volume and
  channel, block-averaged to (4, side, side) and compared with the Euclidean distance; the
  volume-wise top-Q is exact (brute force), ties to the smaller row as everywhere else.
- ŷ-Dice retrieval: the lesion Dice between the model's own segmentations ŷ, decoded from
  each row's abnormal codes, brute force. It measures what the model's segmentation alone
  gives S_abnormal, so a gap to the oracle can be put on the segmentation or on the code
  distance. It is no ceiling: the codes hold more than ŷ's argmax (how sure the decoder is,
  the lesion's texture), and a code distance may rank better.
- Grid-truth retrieval: the true lesion labels counted per class in each cell of the model's
  code grid, ranked by the cosine of those counts. It is what a per-cell code distance would
  give if every cell's code held its cell's lesion content exactly and nothing else: a
  reference for the resolution of the grid, not a bound (codes may hold where in its cell a
  lesion lies).
"""

from __future__ import annotations

import numpy as np

from benchmarks.quality.dice import LESION_CLASSES, LabelDice, best_volumes


def downsample_slices(images: np.ndarray, side: int) -> np.ndarray:
    """Block means: images (N, C, S, S) float -> (N, C·side·side) float32 features.

    S must be a multiple of ``side`` (each output pixel averages an (S/side)² block).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be (N, C, S, S), got {images.shape}")
    n, c, s, _ = images.shape
    if side < 1 or s % side:
        raise ValueError(f"side {side} must divide the slice size {s}")
    f = s // side
    blocks = images.reshape(n, c, side, f, side, f).astype(np.float32)
    return np.ascontiguousarray(blocks.mean(axis=(3, 5)).reshape(n, -1))


def raw_pixel_hits(
    features: np.ndarray, query_rows, volume_of_row: np.ndarray, topq: int
) -> list[np.ndarray]:
    """Volume-wise top-Q by Euclidean distance of features (N, F); own volume excluded.

    Returns one (≤ Q,) int64 row array per query row, nearest first.
    """
    features = np.asarray(features, dtype=np.float64)
    sq = np.einsum("nf,nf->n", features, features)
    out = []
    for row in query_rows:
        q = features[row]
        dist2 = np.maximum(sq - 2.0 * features @ q + q @ q, 0.0)  # (N,)
        out.append(best_volumes(-dist2, volume_of_row, topq, int(volume_of_row[row])))
    return out


def segmentation_hits(
    labels: np.ndarray, query_rows, volume_of_row: np.ndarray, topq: int
) -> list[np.ndarray]:
    """Volume-wise top-Q by the lesion Dice of label maps (N, S, S) class 0..3; own volume
    excluded. Dice as `LabelDice` (a map without lesion matches an empty query with 1).

    Returns one (≤ Q,) int64 row array per query row, best first.
    """
    labels = np.asarray(labels, dtype=np.int64)
    dice = LabelDice(labels, LESION_CLASSES)
    out = []
    for row in query_rows:
        scores = dice.against(labels[row])
        out.append(best_volumes(scores, volume_of_row, topq, int(volume_of_row[row])))
    return out


def cell_class_counts(labels: np.ndarray, grid: int) -> np.ndarray:
    """Lesion pixels of each class in each cell of a grid × grid partition: label maps
    (N, S, S) -> (N, grid·grid·len(LESION_CLASSES)) float64. S must be a multiple of grid."""
    labels = np.asarray(labels)
    n, s, _ = labels.shape
    if grid < 1 or s % grid:
        raise ValueError(f"grid {grid} must divide the map size {s}")
    f = s // grid
    per_class = np.stack([labels == c for c in LESION_CLASSES], axis=-1)  # (N, S, S, C)
    cells = per_class.reshape(n, grid, f, grid, f, len(LESION_CLASSES)).sum(axis=(2, 4))
    return cells.reshape(n, -1).astype(np.float64)


def grid_truth_hits(
    labels: np.ndarray, grid: int, query_rows, volume_of_row: np.ndarray, topq: int
) -> list[np.ndarray]:
    """Volume-wise top-Q by the cosine of `cell_class_counts` (a map without lesion scores 0);
    own volume excluded. Returns one (≤ Q,) int64 row array per query row, best first."""
    counts = cell_class_counts(labels, grid)
    norms = np.linalg.norm(counts, axis=1)
    out = []
    for row in query_rows:
        scale = norms * norms[row]
        cosine = np.divide(counts @ counts[row], scale, out=np.zeros_like(scale), where=scale > 0)
        out.append(best_volumes(cosine, volume_of_row, topq, int(volume_of_row[row])))
    return out


def random_hits(
    query_row: int, volume_of_row: np.ndarray, topq: int, rng: np.random.Generator
) -> np.ndarray:
    """One random volume-wise draw for a query: (≤ Q,) int64 rows, distinct volumes, own excluded."""
    volume_of_row = np.asarray(volume_of_row)
    own = volume_of_row[query_row]
    volumes = np.unique(volume_of_row[volume_of_row != own])
    chosen = rng.choice(volumes, size=min(topq, volumes.size), replace=False)
    rows = []
    for v in chosen:
        candidates = np.flatnonzero(volume_of_row == v)
        rows.append(candidates[rng.integers(candidates.size)])
    return np.asarray(rows, dtype=np.int64)


def relative_levels(volume_of_row: np.ndarray, slice_of_row: np.ndarray) -> np.ndarray:
    """Axial level of every row in [0, 1]: z / (Z - 1) within its volume (0 for one slice)."""
    volume_of_row = np.asarray(volume_of_row)
    slice_of_row = np.asarray(slice_of_row, dtype=np.float64)
    levels = np.zeros(volume_of_row.shape, np.float64)
    for v in np.unique(volume_of_row):
        rows = volume_of_row == v
        z = slice_of_row[rows]
        span = z.max() - z.min()
        levels[rows] = (z - z.min()) / span if span else 0.0
    return levels


def same_level_hits(
    query_row: int,
    volume_of_row: np.ndarray,
    level_of_row: np.ndarray,
    topq: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """One same-level draw: (≤ Q,) int64 rows of distinct random volumes (own excluded), in
    each the row whose level is nearest the query's (the lower row on a tie)."""
    volume_of_row = np.asarray(volume_of_row)
    own = volume_of_row[query_row]
    volumes = np.unique(volume_of_row[volume_of_row != own])
    chosen = rng.choice(volumes, size=min(topq, volumes.size), replace=False)
    rows = []
    for v in chosen:
        candidates = np.flatnonzero(volume_of_row == v)
        gaps = np.abs(level_of_row[candidates] - level_of_row[query_row])
        rows.append(candidates[int(np.argmin(gaps))])
    return np.asarray(rows, dtype=np.int64)
