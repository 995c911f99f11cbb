"""The fastscan engine's pruned search (D_H, D_E, D_A): a batch of queries in two passes of the
`prune_scan` kernel, the first over a sample of the rows to seed the threshold θ, the second
over all rows to keep those whose bound is ≤ θ; the rows kept are re-ranked exactly."""

from __future__ import annotations

import numpy as np

import hashindex._fastscan as _fastscan
from hashindex.distances import image_distance
from hashindex.fastscan_kernels import CHUNK, COARSE, allowed_words, prune_scan
from hashindex.fastscan_layout import (
    BLOCK,
    MARGIN,
    MAX_SUM,
    TABLE,
    FastScanRows,
    quantize,
    row_of,
    threshold,
)
from hashindex.volumes import VolumeHits

# θ is seeded from the SEED_ROWS smallest bounds among every SAMPLE_STRIDE-th row.
SEED_ROWS = 64
SAMPLE_STRIDE = 8
FREQ_STRIDE = 256  # code frequencies per position (to order the positions): every 256th row
PRUNE_LEVELS = 63  # levels of the pruned scan's tables: 4 positions add up in 8 bits
CAPACITY = 8192  # candidate rows per query and thread; a query with more is rescanned in full


def _take(plan: dict, queries: np.ndarray) -> dict:
    """The scan plan of some queries of a batch."""
    return {
        k: np.ascontiguousarray(v[queries]) if isinstance(v, np.ndarray) else v
        for k, v in plan.items()
    }


class PrunedScan(FastScanRows):
    """`FastScan`'s search by the pruned scan; its state is `FastScanRows`'s and the sample."""

    def _search_pruned(
        self, q_reps, q_sq, topq, books, distance, normalized, exclude, by_volume, allowed=None
    ):
        """`search` of at most BATCH queries by the pruned scan: (B, Q) distances,
        rows, volumes, (B,) rows evaluated and (B,) bool, the queries whose candidates
        overflowed (their answers are left to the caller). allowed: (n,) bool, the only rows
        the kernel may keep (θ is seeded from them too, else it could rule them all out), or
        None."""
        B = next(iter(q_reps.values())).shape[0]
        # exact tables (B, P, R) and their 8-bit bounds with one step per query
        tables = {
            b: np.stack([self.tables[b].query_table(q_reps[b][i], distance) for i in range(B)])
            for b in books
        }
        bounds = dict(
            zip(
                books,
                quantize([tables[b] for b in books], PRUNE_LEVELS, negate=distance == "angular"),
                strict=True,
            )
        )
        # the re-rank's float64 tables, converted once for both passes
        tables = {b: np.ascontiguousarray(tables[b], np.float64) for b in books}
        joint = len(books) == 2 and distance == "hamming" and not normalized
        plan = self._plan(bounds, books, joint)
        # θ: the exact distance of the Q-th best volume among the rows of a sample with the
        # smallest bounds (more of them while fewer than Q volumes are found)
        theta = np.full(B, np.inf)
        evaluated = np.zeros(B, np.int64)
        todo = np.arange(B)
        sample_t, sample_rows = self._sample()
        sample_words = words = None
        if allowed is not None:
            sample_words = allowed_words(allowed[sample_rows], sample_t.shape[0])
            words = allowed_words(allowed, self.codes_t.shape[0])
        keep = SEED_ROWS
        while todo.size:
            part = plan if todo.size == B else _take(plan, todo)
            qidx, rows, _ = prune_scan(
                sample_t,
                sample_rows.size,
                part,
                keep,
                sample_words,
                lambda: self.nibbles(sample_t, distance),
            )
            qidx, rows = todo[qidx], sample_rows[rows]
            dist = self._exact_batch(rows, qidx, tables, q_sq, books, distance, normalized)
            evaluated += np.bincount(qidx, minlength=B)
            d, _, _ = self._top_batch(rows, qidx, dist, B, topq, exclude, by_volume)
            full = np.isfinite(d[todo, topq - 1])
            theta[todo[full]] = d[todo[full], topq - 1]
            if keep >= sample_rows.size:
                break  # the whole sample holds fewer than Q volumes: θ stays infinite
            todo = todo[~full]
            keep *= 8
        lim, room, coarse = self._limits(bounds, books, distance, normalized, theta, q_sq)
        capacity = int(min(CAPACITY, self.codes_t.shape[0] * BLOCK))
        qidx, rows, overflow = prune_scan(
            self.codes_t,
            self.n,
            dict(plan, lim=lim, room=room, coarse=coarse),
            capacity,
            words,
            lambda: self.nibbles(self.codes_t, distance),
        )
        dist = self._exact_batch(rows, qidx, tables, q_sq, books, distance, normalized)
        D, R, V = self._top_batch(rows, qidx, dist, B, topq, exclude, by_volume)
        evaluated += np.bincount(qidx, minlength=B)
        return D, R, V, evaluated, overflow

    # ------------------------------------------------------------------ pruned scan helpers
    def _sample(self) -> tuple[np.ndarray, np.ndarray]:
        """Every SAMPLE_STRIDE-th row, block-transposed: (layout, (n_sample,) row ids); made on
        first use (never written into codes_t, which may be a read-only memory map)."""
        if self._sample_t is None:
            rows = np.arange(0, self.n, SAMPLE_STRIDE)
            nblocks = max(1, -(-rows.size // BLOCK))
            layout = np.zeros((nblocks, 2 * self.P, BLOCK), np.uint8)
            freq = []
            for book in self.BOOKS:  # strided views of the codes, copied once, transposed
                view = self.codes[book][::SAMPLE_STRIDE]  # (n_sample, P)
                first, full = self.first[book], rows.size // BLOCK
                part = layout[:, first : first + self.P, :]
                part[:full] = view[: full * BLOCK].reshape(full, BLOCK, self.P).transpose(0, 2, 1)
                part[full, :, : rows.size - full * BLOCK] = view[full * BLOCK :].T
                # how often each code occurs at each position, from a sparser sample: it only
                # orders the positions
                sparse = np.asarray(view[:: FREQ_STRIDE // SAMPLE_STRIDE], np.int64)
                counts = np.bincount(
                    (np.arange(self.P) * TABLE + sparse).ravel(), minlength=self.P * TABLE
                )
                freq.append(counts.reshape(self.P, TABLE) / max(sparse.shape[0], 1))
            self._sample_t = layout
            self._freq = np.concatenate(freq)
            self._sample_rows = rows
        return self._sample_t, self._sample_rows

    def _plan(self, bounds: dict, books, joint: bool = False) -> dict:
        """The order in which the scan visits each query's positions: chunks of CHUNK
        positions of one codebook, the chunks whose bounds are expected to grow most (under the
        sample's code frequencies) first, so that blocks are left early.

        Returns tables (B, n_pos, 256) uint8, order (B, n_pos) int32 (positions in codes_t)
        and acc (B, n_pos / CHUNK) uint8 (0: first codebook, 1: second; ``joint``, where the
        bound is one sum over both books: all 0, and the kernel checks one accumulator)."""
        self._sample()
        tabs, pos, score, acc = [], [], [], []
        for a, book in enumerate(books):
            t = bounds[book].tables  # (B, P, 256)
            Bq, P, _ = t.shape
            each = np.arange(Bq)[:, None]
            first = self.first[book]
            freq = self._freq[first : first + P].astype(np.float32)
            gain = np.einsum("bpc,pc->bp", t.astype(np.float32), freq)
            perm = np.argsort(-gain, axis=1, kind="stable")
            t, where, gain = t[each, perm], perm + first, gain[each, perm]
            pad = -P % CHUNK  # zero tables add nothing
            if pad:
                t = np.concatenate([t, np.zeros((Bq, pad, TABLE), np.uint8)], axis=1)
                where = np.concatenate([where, np.full((Bq, pad), first)], axis=1)
                gain = np.concatenate([gain, np.zeros((Bq, pad), np.float32)], axis=1)
            n = (P + pad) // CHUNK
            tabs.append(t.reshape(Bq, n, CHUNK, TABLE))
            pos.append(where.reshape(Bq, n, CHUNK))
            score.append(gain.reshape(Bq, n, CHUNK).sum(axis=2))
            acc.append(np.full((Bq, n), 0 if joint else a, np.uint8))
        t, where, sc, ac = (np.concatenate(x, axis=1) for x in (tabs, pos, score, acc))
        Bq = t.shape[0]
        each = np.arange(Bq)[:, None]
        chunks = np.argsort(-sc, axis=1, kind="stable")
        return {
            "n_codes": max(self.tables[b].n_reps for b in books),
            "tables": np.ascontiguousarray(t[each, chunks].reshape(Bq, -1, TABLE)),
            "order": np.ascontiguousarray(where[each, chunks].reshape(Bq, -1), dtype=np.int32),
            "acc": np.ascontiguousarray(ac[each, chunks]),
        }

    def _limits(self, bounds, books, distance, normalized, theta, q_sq):
        """Per query the integer limits of the filter pass for threshold θ: lim (B, 3) int32
        (L0 max, L1 max, L0 + L1 max) and room (B, L0 max + 1) int32, the largest L1 each L0
        admits. Every row whose float bound is ≤ θ passes (rounding only lets more through).
        q_sq: per codebook (B,) ‖q‖² (the D_A bound needs it)."""
        B = theta.size
        lim = np.full((B, 4), -1, np.int32)
        rooms = []
        joint = len(books) == 2 and distance == "hamming" and not normalized
        for i in range(B):
            th = float(theta[i])
            if joint:  # the bound is offset + Δ·(L0 + L1)
                offset = sum(float(bounds[b].offset[i]) for b in books)
                T = threshold(th - offset, float(bounds["normal"].step[i]))
                lim[i, :3] = T
                rooms.append(T - np.arange(max(T, -1) + 1))
                continue
            limit = th + MARGIN * (abs(th) + 1.0) if np.isfinite(th) else np.inf
            g = [
                self._bound_table(b, row_of(bounds[b], i), distance, normalized, float(q_sq[b][i]))
                for b in books
            ]
            if len(books) == 1:
                top = int(np.searchsorted(g[0], limit, side="right")) - 1
                lim[i, :3] = (top, 0, top)
                rooms.append(np.zeros(top + 1, np.int32))
                continue
            room = np.searchsorted(g[1], limit - g[0], side="right") - 1
            top = int(np.count_nonzero(room >= 0)) - 1  # room is non-increasing
            room = room[: top + 1]
            if top >= 0:
                lim[i, :3] = (top, room[0], int((np.arange(top + 1) + room).max()))
            rooms.append(room)
        stride = max(1, max(r.size for r in rooms))
        room = np.full((B, stride), -1, np.int32)
        coarse = np.zeros((B, COARSE), np.uint16)
        for i, r in enumerate(rooms):
            room[i, : r.size] = r
            # the staircase the kernel checks while it scans: step k covers L0 >> shift == k
            # and holds room's largest value there, its first (room is non-increasing)
            shift = max(0, int(r.size - 1).bit_length() - COARSE.bit_length() + 1)
            lim[i, 3] = shift
            if r.size:
                steps = np.minimum(np.arange(COARSE) << shift, r.size - 1)
                coarse[i] = np.clip(r[steps], 0, MAX_SUM)
        return lim, room, coarse

    def _exact_batch(self, rows, qidx, tables, q_sq, books, distance, normalized):
        """Exact distances of rows (M,) to their queries qidx (M,), summed in position order
        as the reference engines do. tables: per codebook (B, P, R); q_sq: per codebook (B,)."""
        sums = {}
        rows = np.ascontiguousarray(rows, np.int64)
        qidx = np.ascontiguousarray(qidx, np.int64)
        for book in books:
            # float64 sums of small integers (D_H) are exact: the same numbers as int64 sums
            table = np.ascontiguousarray(tables[book], np.float64)
            acc = np.empty(rows.size)
            codes = self.codes[book]
            if not (isinstance(codes, np.ndarray) and codes.flags.c_contiguous):
                codes = np.ascontiguousarray(codes)
            _fastscan.exact_sums(codes, self.P, table, table.shape[2], rows, qidx, acc)
            sums[book] = acc
        return image_distance(
            distance,
            sums,
            {book: q_sq[book][qidx] for book in books},
            {book: self.row_sqnorm[book][rows] for book in books},
            {book: self.scales[f"{book}/{distance}"] for book in books} if normalized else None,
        )

    def _top_batch(self, rows, qidx, dist, B, topq, exclude, by_volume):
        """`_top` of every query at once: (B, Q) distances, rows, volume ids (inf / -1 padded)
        of the evaluated rows (M,) of queries qidx (M,)."""
        D, R, V = VolumeHits.padded(B, topq)
        ok = np.isfinite(dist)
        if exclude is not None:
            ok &= self.volume_ids[self.volume_index[rows]] != exclude[qidx]
        rows, qidx, dist = rows[ok], qidx[ok], dist[ok]
        order = np.lexsort((rows, dist, qidx))
        rows, qidx, dist = rows[order], qidx[order], dist[order]
        vols = self.volume_index[rows]
        if by_volume:  # each (query, volume) once, at its first (closest, then smallest) row
            _, first = np.unique(qidx * self.volume_ids.size + vols, return_index=True)
            first = np.sort(first)
        else:
            first = np.arange(rows.size)
        q = qidx[first]
        rank = np.arange(first.size) - np.searchsorted(q, np.arange(B))[q]
        sel = rank < topq
        first, q, rank = first[sel], q[sel], rank[sel]
        D[q, rank], R[q, rank], V[q, rank] = dist[first], rows[first], self.volume_ids[vols[first]]
        return D, R, V
