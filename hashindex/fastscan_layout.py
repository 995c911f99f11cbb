"""The fastscan layout of an index's rows and the 8-bit lower bounds of query tables over it.

Rows are stored block-transposed, 64 rows per block and one byte per code (`block_transpose`);
a query table is quantized to uint8 steps whose integer sums bound the exact table sums from
below (`quantize`). `FastScanRows` holds the layout with the rows it derives from and turns
integer sums back into bounds of distances; the two searches over it are in
`hashindex.fastscan_pruned` and `hashindex.fastscan_full`; `hashindex.fastscan` explains the
method.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK = 64
TABLE = 256
GROUPS = 16  # the AVX2 kernel's groups of codes per position: one 4-bit code, one pshufb table
# of which the codes outside the 8 most frequent at a position share 8 (by distance): measured at
# 200k rows (K = 512, S_sum, D_H / D_E ms a query): 1 → 28.5 / 31.8, 4 → 24.5 / 26.7,
# 8 → 10.4 / 15.5, 12 → 16.7 / 15.0, 16 (no code alone) → 37.6 / 26.0
RARE_GROUPS = 8
MAX_SUM = 65535  # uint16 accumulators
MARGIN = 1e-9  # relative slack of the float comparisons (rounding is ~1e-15)


def block_transpose(rep_codes: np.ndarray) -> np.ndarray:
    """(N, P) uint8 representative ids → (ceil(N / 64), P, 64) uint8, rows padded with code 0."""
    if rep_codes.dtype != np.uint8:
        raise TypeError(
            "fastscan needs uint8 codes (at most 256 distinct code vectors); use "
            "engine='lut' for larger codebooks"
        )
    n, p = rep_codes.shape
    nblocks = max(1, -(-n // BLOCK))
    padded = np.zeros((nblocks * BLOCK, p), np.uint8)
    padded[:n] = rep_codes
    return np.ascontiguousarray(padded.reshape(nblocks, BLOCK, p).transpose(0, 2, 1))


def code_groups(
    dist: np.ndarray,
    freq: np.ndarray | None = None,
    rare_groups: int = RARE_GROUPS,
    groups: int = GROUPS,
) -> np.ndarray:
    """(256,) uint8 group (0..groups-1) of each of R codes whose pairwise distances are dist
    (R, R); entries past R are 0.

    A group's table entry is the smallest of its codes' entries, so a code's entry is
    underestimated by at most its distance to the farthest member of its group (for a metric;
    |d(q, a) − d(q, b)| ≤ d(a, b)), and a code alone in its group is exact. With ``freq`` (R,),
    how often each code occurs at the position, the groups - rare_groups most frequent codes get a
    group each and the others share the last rare_groups groups; without it all codes share them.
    Shared groups come from Gonzalez's farthest-point k-center (a 2-approximation of the smallest
    largest radius): each code joins its nearest centre. Deterministic: the first centre is the
    lowest code and ties go to the lowest index.
    """
    R = dist.shape[0]
    out = np.zeros(TABLE, np.uint8)
    if R <= groups:  # one code per group: the 4-bit tables are the 8-bit ones
        out[:R] = np.arange(R)
        return out
    dist = np.asarray(dist, np.float64)
    if freq is None:
        alone = np.zeros(0, np.int64)
    else:
        ranked = np.argsort(-np.asarray(freq[:R], np.float64), kind="stable")
        alone = ranked[: groups - rare_groups][freq[ranked[: groups - rare_groups]] > 0]
    rest = np.setdiff1d(np.arange(R), alone)
    out[alone] = np.arange(alone.size)
    shared = groups - alone.size
    d = dist[np.ix_(rest, rest)]
    centres = [0]
    nearest = d[0].copy()
    while len(centres) < shared:
        far = int(np.argmax(nearest))
        if nearest[far] <= 0:
            break  # the rest coincide with a centre
        centres.append(far)
        nearest = np.minimum(nearest, d[far])
    out[rest] = alone.size + np.argmin(d[np.asarray(centres)], axis=0)
    return out


def _group_kind(distance: str) -> str:
    """The distance between codes that groups them: Hamming for D_H, Euclidean for the others."""
    return "hamming" if distance == "hamming" else "euclidean"


def nibble_layout(codes_t: np.ndarray, groups: np.ndarray, blocks_per_step: int = 2048):
    """The AVX2 kernel's 4-bit copy of a layout: (nblocks, S, 32) uint8 whose byte i at position
    s holds the group of row i's code (low nibble) and of row 32 + i's (high nibble).

    codes_t: (nblocks, S, 64) uint8; groups: (S, 256) uint8 < 16, the group of each code at
    each position. Made a few thousand blocks at a time (the gathered groups are a temporary
    twice the output's size).
    """
    nblocks, S, _ = codes_t.shape
    flat = np.ascontiguousarray(groups, np.uint8).ravel()
    base = (np.arange(S, dtype=np.intp) * TABLE)[None, :, None]
    out = np.empty((nblocks, S, BLOCK // 2), np.uint8)
    for b0 in range(0, nblocks, blocks_per_step):
        g = flat[base + codes_t[b0 : b0 + blocks_per_step]]  # (n, S, 64)
        out[b0 : b0 + blocks_per_step] = g[:, :, : BLOCK // 2] | (g[:, :, BLOCK // 2 :] << 4)
    return out


@dataclass
class Bounds:
    """Quantized tables of B queries over P positions: uint8 (B, P, 256), and per query the
    offset and step that turn an integer sum L into a bound of the table sum: offset + step·L
    is a lower bound (``negated``: offset − step·L is an upper bound)."""

    tables: np.ndarray
    offset: np.ndarray
    step: np.ndarray
    negated: bool


def quantize(tables: list[np.ndarray], levels: int, *, negate: bool = False) -> list[Bounds]:
    """Quantize query tables (B, P_i, R_i), one per codebook, with one step Δ per query.

    q[p, c] = floor((T[p, c] − min_p T) / Δ) ≤ levels, so offset + Δ·Σ_p q is a lower bound of
    Σ_p T. A shared Δ lets the integer sums of two codebooks be added (S_sum). With ``negate``
    the bounds are built on max_p T − T, so they bound Σ T from above.
    """
    shifted = []
    for t in tables:
        t = t.astype(np.float64)
        if negate:
            t = t.max(axis=2, keepdims=True) - t
        shifted.append(t - t.min(axis=2, keepdims=True))
    step = np.max([sp.max(axis=(1, 2)) for sp in shifted], axis=0) / levels
    step[step <= 0] = 1.0
    out = []
    for t, sp in zip(tables, shifted, strict=True):
        q = np.zeros((*t.shape[:2], TABLE), np.uint8)
        q[:, :, : t.shape[2]] = np.clip(np.floor(sp / step[:, None, None]), 0, levels)
        t = t.astype(np.float64)
        # lower bound: Σ min_p T + Δ·L ≤ Σ T; negated: Σ(max_p − T) ≥ Δ·L, so Σ T ≤ Σ max_p − Δ·L
        offset = t.max(axis=2).sum(axis=1) if negate else t.min(axis=2).sum(axis=1)
        out.append(Bounds(q, offset, step.copy(), negate))
    return out


def row_of(b: Bounds, i: int) -> Bounds:
    """Query i of a batch of bounds."""
    return Bounds(b.tables[i : i + 1], b.offset[i : i + 1], b.step[i : i + 1], b.negated)


def stack(bounds: list[Bounds]) -> Bounds:
    """The bounds of several queries as one batch."""
    return Bounds(
        np.concatenate([b.tables for b in bounds]),
        np.concatenate([b.offset for b in bounds]),
        np.concatenate([b.step for b in bounds]),
        bounds[0].negated,
    )


def levels_for(positions: int) -> int:
    """Quantization levels per position that keep a sum over `positions` within uint16."""
    return int(min(255, MAX_SUM // max(positions, 1)))


def threshold(x: float, step: float) -> int:
    """The largest integer sum L with offset + step·L ≤ offset + x, plus one level of margin
    against rounding (an extra level only lets more rows through to the exact check)."""
    if not np.isfinite(x):
        return MAX_SUM
    return int(np.clip(np.floor(x / step * (1 + MARGIN) + MARGIN) + 1, -1, MAX_SUM))


class FastScanRows:
    """Block-transposed copies of an index's code grids, and bounds of distances to them.

    tables: per codebook ("normal", "abnormal") its `CodebookTables`; codes: (N, P) uint8
    representative ids per codebook; row_sqnorm: (N,) float64 ‖r‖²; volume_index: (N,) int64
    dense volume number into volume_ids (V,); scales: the index's normalized-sum scales;
    codes_t: the block-transposed layout of both books side by side when it was stored (e.g.
    memory-mapped from the index folder), else it is made here.
    """

    BOOKS: tuple[str, ...] = ("normal", "abnormal")

    def __init__(
        self,
        tables: dict,
        codes: dict,
        row_sqnorm: dict,
        volume_index: np.ndarray,
        volume_ids: np.ndarray,
        scales: dict,
        codes_t: np.ndarray | None = None,
    ):
        self.tables, self.codes, self.row_sqnorm = tables, codes, row_sqnorm
        self.volume_index, self.volume_ids, self.scales = volume_index, volume_ids, scales
        self.n = int(volume_index.size)
        self.P = int(codes["normal"].shape[1])
        # both codebooks side by side: positions 0..P-1 normal, P..2P-1 abnormal
        if codes_t is None:
            codes_t = block_transpose(np.concatenate([codes["normal"], codes["abnormal"]], 1))
        expected = (max(1, -(-self.n // BLOCK)), 2 * self.P, BLOCK)
        if codes_t.shape != expected or codes_t.dtype != np.uint8:
            raise ValueError(
                f"codes_t must be uint8 {expected} (block_transpose of both books' codes), "
                f"got {codes_t.dtype} {codes_t.shape}"
            )
        self.codes_t = codes_t
        self.first = {"normal": 0, "abnormal": self.P}
        # the pruned scan's sample of every SAMPLE_STRIDE-th row and its code frequencies, made
        # on its first query
        self._sample_t: np.ndarray | None = None
        self._sample_rows = np.zeros(0, np.int64)
        self._freq = np.zeros((2 * self.P, TABLE))
        # the AVX2 kernel's groups (S, 256) and 4-bit layouts, per distance, made on first use
        self._groups: dict[str, np.ndarray] = {}
        self._nibbles: dict[tuple[str, int], np.ndarray] = {}
        self._norms: dict[str, tuple[float, float, bool]] = {}  # `_norm_range`

    def groups(self, distance: str) -> np.ndarray:
        """(2P, 256) uint8: the group of each code at each position of codes_t under `distance`:
        `code_groups` of the codebook's distances between its codes (Hamming for D_H, Euclidean
        for D_E and D_A, which share one layout), weighted by how often each code occurs at the
        position in the sample (`PrunedScan._sample` counts them)."""
        kind = _group_kind(distance)
        if kind not in self._groups:
            per_position = []
            for book in self.BOOKS:
                t = self.tables[book]
                d = t.hamming if kind == "hamming" else np.sqrt(np.maximum(t.sqeuclid, 0))
                first = self.first[book]
                for p in range(self.P):
                    per_position.append(code_groups(d, self._freq[first + p, : t.n_reps]))
            self._groups[kind] = np.stack(per_position)
        return self._groups[kind]

    def nibbles(self, layout: np.ndarray, distance: str) -> tuple[np.ndarray, np.ndarray]:
        """The AVX2 kernel's (codes4, groups) of `layout` (codes_t or the sample's copy),
        made on first use and kept."""
        key = (_group_kind(distance), id(layout))
        if key not in self._nibbles:
            self._nibbles[key] = nibble_layout(layout, self.groups(distance))
        return self._nibbles[key], self.groups(distance)

    def _bound_to_distance(
        self,
        book: str,
        b: Bounds,
        L: np.ndarray,
        q_sq: float,
        distance: str,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """Lower bounds of one codebook's distance from its integer sums L (of `rows`)."""
        offset, step = float(b.offset[0]), float(b.step[0])
        L = L.astype(np.float64)
        if distance == "hamming":
            return offset + step * L
        if distance == "euclidean":
            return np.sqrt(np.maximum(offset + step * L, 0.0))
        # angular: Σ⟨q_p, r_p⟩ ≤ offset − Δ·L, so cos ≤ that / (‖q‖‖r‖) and the angle is at least
        # arccos of it; grids of norm zero have exact distances (0 or 0.5, as `finish` says)
        r_sq = self.row_sqnorm[book] if rows is None else self.row_sqnorm[book][rows]
        denom = np.sqrt(q_sq * r_sq)
        with np.errstate(divide="ignore", invalid="ignore"):
            cos_ub = np.where(denom > 0, (offset - step * L) / denom, 0.0)
        lb = np.arccos(np.clip(cos_ub, -1.0, 1.0)) / np.pi
        lb[(q_sq == 0) & (r_sq == 0)] = 0.0
        return lb

    def _bound_table(
        self, book: str, b: Bounds, distance: str, normalized: bool, q_sq: float = 0.0
    ) -> np.ndarray:
        """The lower bound of a codebook's (scaled) distance for every possible integer sum L:
        (P·levels + 1,) float64, non-decreasing; for D_A one that holds for every row whatever
        its norm (`_angle_bound`), q_sq: the query's ‖q‖² in this codebook."""
        top = int(b.tables[0].max(axis=1).astype(np.int64).sum())
        L = np.arange(top + 1)
        if distance == "angular":
            g = self._angle_bound(book, b, L, q_sq)
        else:
            g = self._bound_to_distance(book, b, L, 0.0, distance)
        return g / self.scales[f"{book}/{distance}"] if normalized else g

    def _angle_bound(self, book: str, b: Bounds, L: np.ndarray, q_sq: float) -> np.ndarray:
        """A lower bound of the angle D_A of every row with integer sum L, from the codebook's
        range of non-zero row norms [r_min, r_max]: Σ⟨q_p, r_p⟩ ≤ U = offset − Δ·L, so
        cos ≤ U / (‖q‖ r_min) where U ≥ 0 and ≤ U / (‖q‖ r_max) where U < 0, for any row of non-zero
        norm; a row of norm zero has the angle `finish` gives it exactly (0.5, or 0 beside a
        zero query), so the bound is at most that where the index holds such rows. The cosine
        bound gets 1e-9 of slack: arccos is steep near ±1, and rounding must only lower it."""
        r_min, r_max, zeros = self._norm_range(book)
        if q_sq == 0:  # every non-zero row is at 0.5, zero rows at 0
            g = np.full(L.size, 0.5 if r_max > 0 else np.inf)
            return np.minimum(g, 0.0) if zeros else g
        g = np.full(L.size, np.inf)
        if r_max > 0:
            U = float(b.offset[0]) - float(b.step[0]) * L.astype(np.float64)
            cos_ub = U / (np.sqrt(q_sq) * np.where(U >= 0, r_min, r_max)) + 1e-9
            g = np.arccos(np.clip(cos_ub, -1.0, 1.0)) / np.pi
        return np.minimum(g, 0.5) if zeros else g

    def _norm_range(self, book: str) -> tuple[float, float, bool]:
        """(smallest, largest) non-zero row norm ‖r‖ of a codebook (0, 0 when none) and whether
        some row has norm zero; computed once."""
        if book not in self._norms:
            norms = np.sqrt(np.asarray(self.row_sqnorm[book], np.float64))
            live = norms[norms > 0]
            lo, hi = (float(live.min()), float(live.max())) if live.size else (0.0, 0.0)
            self._norms[book] = (lo, hi, bool(live.size < norms.size))
        return self._norms[book]
