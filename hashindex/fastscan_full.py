"""The fastscan engine's search by the bounds of every row: D_A (its bound needs each row's norm)
and the queries whose candidates overflow the pruned scan's buffers."""

from __future__ import annotations

import numpy as np

from hashindex.distances import image_distance
from hashindex.fastscan_kernels import integer_sums
from hashindex.fastscan_layout import (
    BLOCK,
    MARGIN,
    Bounds,
    FastScanRows,
    levels_for,
    quantize,
    stack,
    threshold,
)
from hashindex.fastscan_pruned import SAMPLE_STRIDE, SEED_ROWS
from hashindex.volumes import VolumeHits

QUERY_BYTES = 256 << 20  # integer sums of a chunk of batched queries, per array


class FullScan(FastScanRows):
    """`FastScan`'s search by the integer sums of all rows (a chunk of queries per pass)."""

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
        allowed: np.ndarray | None = None,
    ):
        """`search` by the bounds of every row: integer sums of all rows (a chunk of queries
        per pass), then numpy per query. D_A takes this path (its bound needs each row's
        norm), and so does a query whose candidates overflow the pruned scan's buffers.
        allowed: (n,) bool, the only rows θ is seeded from and candidates are taken from."""
        books = self.BOOKS if mode == "sum" else (mode,)
        normalized = normalized_sum and mode == "sum"
        joint = mode == "sum" and not normalized and distance == "hamming"
        B = next(iter(q_reps.values())).shape[0]
        D, R, V = VolumeHits.padded(B, topq)
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
                both = stack(
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
                    b: integer_sums(self.codes_t, stack([bd[b] for bd in bounds]), self.first[b])[
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
                    proxy, tables[j], sq, books, distance, normalized, topq, ex, by_volume, allowed
                )
                theta = float(d[-1]) if d.size == topq else np.inf
                rows = self._candidates(
                    books, bounds[j], L, proxy, sq, distance, normalized, theta, joint
                )
                if allowed is not None:
                    rows = rows[allowed[rows]]
                dist = self._exact(rows, tables[j], sq, books, distance, normalized)
                d, r, v = self._top(rows, dist, topq, ex, by_volume)
                D[i, : d.size], R[i, : r.size], V[i, : v.size] = d, r, v
                evaluated[i] = rows.size
        return D, R, V, evaluated

    def _seed_theta(
        self, proxy, tables, q_sq, books, distance, normalized, topq, exclude, by_volume, allowed
    ):
        """Exact distances of the Q best volumes (or rows) among a few promising rows: the last
        one bounds the true Q-th distance from above, whichever rows were taken.

        The rows are those with the smallest integer sums among every SAMPLE_STRIDE-th row (a
        histogram finds the cut without sorting, and neighbouring slices of a volume look
        alike, so the sample still holds a near-best slice of every volume); more rows are
        taken until Q volumes are found. Only ``allowed`` rows (if not None) are sampled.
        """
        sample_rows = np.arange(0, self.n, SAMPLE_STRIDE)
        if allowed is not None:
            sample_rows = sample_rows[allowed[sample_rows]]
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

    def _candidates(self, books, bounds, L, proxy, q_sq, distance, normalized, theta, joint):
        """Every row whose lower bound is ≤ θ (a superset when rounding is in doubt)."""
        if not np.isfinite(theta):
            return np.arange(self.n)
        limit = theta + MARGIN * (abs(theta) + 1.0)
        if distance == "hamming" and joint:  # the bound is offset + Δ·(L_n + L_a)
            offset = sum(float(bounds[b].offset[0]) for b in books)
            return np.flatnonzero(
                proxy <= threshold(theta - offset, float(bounds["normal"].step[0]))
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
