"""Why a hit is close: the per-position contributions to its image distance.

Every image distance of `hashindex.distances` is built from per-position quantities, but only
D_H and squared D_E are plain sums over positions. Each position p of the compared positions
(the whole grid, or a region's) gets a contribution c_p ≥ 0, defined so that the contributions
of the codebooks of a mode add up to the distance the engines report:

- D_H: c_p = T_H[q_p, r_p], the Hamming distance of the two codes' optimized bits.
- D_E: c_p = ‖e_{q_p} − e_{r_p}‖² / D_E (0 when D_E = 0). Σ_p c_p = D_E² / D_E = D_E.
- D_A: 1 − cos θ = Σ_p u_p with u_p = ½‖q_p/‖q‖ − r_p/‖r‖‖² ≥ 0 (each grid scaled to unit
  norm; a grid of norm 0 contributes 0 there), so c_p = D_A · u_p / Σ u: the angle shared in
  proportion to where the two normalized grids differ (spread evenly when Σ u rounds to 0).

With the normalized sum each codebook's contributions are divided by its scale, as its
distance is. Positions outside the region contribute 0. The distances are summed in position
order exactly as the table scans sum them, so `Explanation.distance` is bit for bit the
distance the lut and numpy engines report; the contributions add up to it up to rounding
(relative error of the order of the number of positions × 2⁻⁵³).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from hashindex.distances import BOOKS, DISTANCES, MODES, finish, image_distance, region_scale

if TYPE_CHECKING:
    from hashindex.index import HashIndex


@dataclass(frozen=True)
class BookExplanation:
    """One codebook's term of the distance and where it comes from.

    distance: the codebook's distance (divided by its scale under the normalized sum);
    contributions: (h, w) float64, c_p at each compared position, 0 elsewhere, Σ = distance.
    """

    distance: float
    contributions: np.ndarray


@dataclass(frozen=True)
class Explanation:
    """The distance of one (query, hit) pair in one mode, and its codebooks' contributions."""

    mode: str
    distance_name: str
    distance: float
    books: dict[str, BookExplanation]

    def contributions(self) -> np.ndarray:
        """(h, w) float64: the codebooks' contributions added position by position (their sum
        is the distance)."""
        maps = [b.contributions for b in self.books.values()]
        return np.sum(maps, axis=0) if len(maps) > 1 else maps[0].copy()

    def to_dict(self) -> dict:
        """Plain JSON: the distance, and per codebook its term and its (h, w) contributions."""
        return {
            "mode": self.mode,
            "distance_name": self.distance_name,
            "distance": self.distance,
            "books": {
                book: {"distance": b.distance, "contributions": b.contributions.tolist()}
                for book, b in self.books.items()
            },
        }


def _sequential_sum(values: np.ndarray) -> float | int:
    """Σ values in index order (numpy's pairwise sum would differ from the scans' order)."""
    acc = values.dtype.type(0)
    for v in values:
        acc += v
    return acc.item()


def explain(
    index: HashIndex,
    query: tuple[np.ndarray, np.ndarray],
    hit: tuple[np.ndarray, np.ndarray],
    *,
    mode: str,
    distance: str,
    normalized_sum: bool = False,
    positions: np.ndarray | dict[str, np.ndarray] | None = None,
) -> Explanation:
    """The contributions of each grid position to the distance between two pairs of grids.

    query, hit: (normal, abnormal) code grids, each (h, w) uint16 of the index's grid (a hit's
    from `HashIndex.reconstruct`); mode, distance, normalized_sum: as `HashIndex.search`;
    positions: the region, as `HashIndex.search` takes it, or None for the whole grid.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    if index.grid is None:
        raise ValueError("the index is empty: add rows before explaining a hit")
    grids = dict(zip(BOOKS, query, strict=True)), dict(zip(BOOKS, hit, strict=True))
    for which, pair in zip(("query", "hit"), grids, strict=True):
        for book, grid in pair.items():
            if not isinstance(grid, np.ndarray) or grid.shape != index.grid:
                raise ValueError(
                    f"the {which}'s {book} grid must be an array of shape {index.grid}"
                )
    cols = index._positions(positions)
    books = BOOKS if mode == "sum" else (mode,)
    P = int(np.prod(index.grid))
    sums, q_norms, r_norms, parts = {}, {}, {}, {}
    for book in books:
        tables = index.tables[book]
        q = tables.to_reps(grids[0][book][None].astype(np.uint16))[0]
        r = tables.to_reps(grids[1][book][None].astype(np.uint16))[0]
        c = np.arange(P) if cols is None else cols[book]
        q, r = q[c].astype(np.intp), r[c].astype(np.intp)
        if distance == "hamming":
            entries = tables.hamming[q, r].astype(np.int64)
        elif distance == "euclidean":
            entries = tables.sqeuclid[q, r]
        else:
            entries = tables.gram[q, r]
        sums[book] = np.array([_sequential_sum(entries)])
        q_norms[book] = float(_sequential_sum(tables.sqnorm[q]))
        r_norms[book] = np.array([_sequential_sum(tables.sqnorm[r])])
        parts[book] = (c, q, r, entries)
    scales = dict.fromkeys(books, 1.0)
    if normalized_sum and mode == "sum":
        for book in books:
            fraction = parts[book][0].size / P
            scales[book] = region_scale(distance, index.scales[f"{book}/{distance}"], fraction)
    explained = {}
    for book in books:
        d = float(finish(distance, sums[book], q_norms[book], r_norms[book])[0])
        c, q, r, entries = parts[book]
        share = _shares(distance, d, entries, index.tables[book].sqnorm, q, r, q_norms[book])
        grid = np.zeros(P)
        grid[c] = share / scales[book]
        explained[book] = BookExplanation(d / scales[book], grid.reshape(index.grid))
    total = image_distance(
        distance,
        sums,
        q_norms,
        r_norms,
        scales if normalized_sum and mode == "sum" else None,
    )
    return Explanation(mode, distance, float(total[0]), explained)


def _shares(distance, d, entries, sqnorm, q, r, q_norm) -> np.ndarray:
    """(C,) contributions c_p of one codebook, Σ = d (see the module docstring)."""
    if distance == "hamming":
        return entries.astype(np.float64)
    if distance == "euclidean":
        return entries / d if d > 0 else np.zeros(entries.size)
    r_norm = float(sqnorm[r].sum())
    u = np.zeros(entries.size)
    if q_norm > 0:
        u += 0.5 * sqnorm[q] / q_norm
    if r_norm > 0:
        u += 0.5 * sqnorm[r] / r_norm
    if q_norm > 0 and r_norm > 0:
        u -= entries / np.sqrt(q_norm * r_norm)
    u = np.maximum(u, 0.0)  # rounding only: each u_p is half a squared distance
    total = u.sum()
    if total > 0:
        return d * u / total
    return np.full(entries.size, d / entries.size)
