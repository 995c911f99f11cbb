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

    def _bound_table(self, book: str, b: Bounds, distance: str, normalized: bool) -> np.ndarray:
        """The lower bound of a codebook's (scaled) distance for every possible integer sum L:
        (P·levels + 1,) float64, non-decreasing (D_H and D_E only)."""
        top = int(b.tables[0].max(axis=1).astype(np.int64).sum())
        g = self._bound_to_distance(book, b, np.arange(top + 1), 0.0, distance)
        return g / self.scales[f"{book}/{distance}"] if normalized else g
