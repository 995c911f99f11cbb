"""`HashIndex`: binarized codebooks, code grids and engines behind a faiss-like API.

This module builds an index and adds rows to it; `hashindex.search` answers queries and
`hashindex.storage` writes and reads its files.

Semantics (all engines):

- Image distances D_E, D_A, D_H are defined in `hashindex.distances` (D_E is the true Euclidean
  distance, with the square root; D_A is arccos(cos)/π; D_H counts differing optimized bits).
- ``mode``: "normal" → S_normal = D(normal grids); "abnormal" → S_abnormal; "sum" → eq. 17,
  D_normal + D_abnormal. With ``normalized_sum=True`` each term is divided by its scale: the
  mean distance between two random grids of the index's shape whose positions are drawn
  uniformly and independently from the distinct non-zero codes (2,048 pairs, seed fixed at
  build time), computed at the first `add` and stored in hashindex.json.
- Ties: equal distances → smaller row id first. Volume-wise top-Q keeps each volume's closest
  row (smaller row on ties) and orders volumes by (distance, row); ``exclude_volumes[b]`` drops
  query b's own volume.
- ``allowed_rows`` ((ntotal,) bool or None): the search runs as if only those rows were stored
  (docs/engines.md, "The row mask"); every exact engine takes it, "faiss-ivf" refuses it.
- Exact engines ("lut", "numpy", "faiss-flat") return identical results for Hamming;
  "faiss-flat"/"faiss-ivf" support only Hamming, and S_sum there is the Hamming distance of the
  concatenated bit strings (the plain sum), so ``normalized_sum`` needs "lut" or "numpy".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from hashindex.binarize import check_codebook, hyperplane_bits, round_small_norms
from hashindex.concordance import concordance
from hashindex.distances import BOOKS, DISTANCES, MODES, CodebookTables, _positions, finish
from hashindex.faiss_binary import FaissHamming
from hashindex.index_meta import FORMAT_VERSION
from hashindex.optimize import apply_bit_budget, hamming_table, optimize_codebook
from hashindex.packing import pack_grids
from hashindex.scans import SCANS
from hashindex.search import IndexSearch, _check_codes
from hashindex.storage import IndexStorage

log = logging.getLogger(__name__)

# Re-exported: the index directory contract of `fdn` names these files (until it calls
# `hashindex.index_files()`, the public list).
__all__ = ["FORMAT_VERSION", "MODES", "HashIndex"]

SCALE_PAIRS = 2048
IVF_TRAIN_PER_LIST = 40


def _say(progress, msg: str) -> None:
    if progress is None:
        return
    if callable(progress):
        progress(msg)
    elif hasattr(progress, "set_description"):
        progress.set_description(msg)


def _codebook_report(tables: CodebookTables, opt, sqdist: np.ndarray) -> dict:
    """K, live codes, E, E*, E*/E, seconds and concordance on b and b* (live and all K)."""
    K = tables.K
    full_pairs = np.stack(np.triu_indices(K, k=1), axis=1)
    reps, live = tables.reps, tables.live
    full_rep = hamming_table(hyperplane_bits(sqdist, full_pairs[:, 0], full_pairs[:, 1], reps))
    star_rep = tables.hamming
    ro = tables.rep_of
    conc = {}
    for name, ham in (("b", full_rep), ("b_star", star_rep)):
        conc[f"{name}_all"] = concordance(sqdist, ham[np.ix_(ro, ro)].astype(np.float64))
        lv = np.flatnonzero(live)
        conc[f"{name}_live"] = concordance(
            sqdist[np.ix_(reps[lv], reps[lv])], ham[np.ix_(lv, lv)].astype(np.float64)
        )
    rep = {
        "K": K,
        "D": int(tables.vectors.shape[1]),
        "distinct": int(tables.n_reps),
        "live": int(live.sum()),
        "E": opt.E,
        "E_distinct": opt.E_distinct,
        "E_star_faithful": opt.E_star,
        "E_star": int(tables.pairs.shape[0]),
        "compression": float(tables.pairs.shape[0] / opt.E),
        "seconds": round(opt.seconds, 3),
        "concordance": conc,
    }
    if opt.budget is not None:
        rep["bit_budget"] = opt.budget
        rep["bit_budget_curve"] = opt.budget_curve
    return rep


ROWS_PER_BLOCK = 16384


def _to_reps(t: CodebookTables, codes: np.ndarray) -> np.ndarray:
    """`t.to_reps(codes)` in blocks of rows: the same (N, P) ids, 4x faster at 1M rows (the
    indices of one block fit in cache instead of a 64M-entry intp copy)."""
    flat = codes.reshape(codes.shape[0], _positions(codes))
    rep_of = t.rep_of.astype(t.code_dtype)
    out = np.empty(flat.shape, t.code_dtype)
    for start in range(0, flat.shape[0], ROWS_PER_BLOCK):
        np.take(
            rep_of, flat[start : start + ROWS_PER_BLOCK], out=out[start : start + ROWS_PER_BLOCK]
        )
    return out


def _row_sqnorms(t: CodebookTables, rep_codes: np.ndarray) -> np.ndarray:
    """`t.row_sqnorms(rep_codes)` with the compiled scan: the same sums in position order."""
    if rep_codes.shape[0] == 0 or rep_codes.shape[1] == 0:
        return t.row_sqnorms(rep_codes)
    table = np.ascontiguousarray(np.broadcast_to(t.sqnorm, (rep_codes.shape[1], t.n_reps)))
    return SCANS["lut"](rep_codes, table)


class HashIndex(IndexSearch, IndexStorage):
    """Exact and approximate volume-wise search over pairs of code grids (normal, abnormal).

    Build with `HashIndex.build`, fill with `add`, query with `search` / `search_volumes`,
    persist with `write` / `HashIndex.read`. Row ids are 0..ntotal-1 in order of addition.
    """

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        codebook_normal: np.ndarray,
        codebook_abnormal: np.ndarray,
        *,
        bit_budget: int | None = None,
        ivf_nlist: int | None = None,
        seed: int = 0,
        progress: Callable[[str], None] | Any = None,
        faiss_indexes: bool = True,
    ) -> HashIndex:
        """Binarize and optimize both codebooks (K, D) float32.

        ``bit_budget``: shorten each codebook's optimized bits to this many bits per position
        (a multiple of 8) after Algorithm A.1. ``ivf_nlist``: also keep IndexBinaryIVF indexes
        with this many lists. ``faiss_indexes=False`` skips the FAISS copies (the packed bits of
        a faithful optimization can be kilobytes per image). ``progress``: callable(str) or a
        tqdm bar.
        """
        if bit_budget is not None and (bit_budget < 8 or bit_budget % 8):
            raise ValueError(f"bit_budget must be a positive multiple of 8, got {bit_budget}")
        if ivf_nlist is not None and ivf_nlist < 1:
            raise ValueError(f"ivf_nlist must be >= 1, got {ivf_nlist}")
        tables, report = {}, {}
        for book, cb in zip(BOOKS, (codebook_normal, codebook_abnormal), strict=True):
            check_codebook(cb, f"codebook_{book}")
            vectors = round_small_norms(cb)
            _say(progress, f"optimizing the {book} codebook")
            opt, extra = optimize_codebook(vectors, progress=progress)
            if bit_budget is not None:
                live = np.linalg.norm(vectors[extra["reps"]].astype(np.float64), axis=1) > 0
                opt = apply_bit_budget(opt, extra["sqdist"], extra["reps"], live, bit_budget)
            tables[book] = CodebookTables.build(vectors, opt.pairs, extra["sqdist"])
            report[book] = _codebook_report(tables[book], opt, extra["sqdist"])
        return cls(tables, report, ivf_nlist=ivf_nlist, seed=seed, faiss_indexes=faiss_indexes)

    def faiss_bytes(self, n_rows: int, positions: int) -> int:
        """Bytes the flat FAISS copies of ``n_rows`` grids of ``positions`` positions would take
        (the packed bits of each mode; S_sum holds both books' bits again)."""
        per_position = sum(int(self.tables[book].packed.shape[1]) for book in BOOKS)
        return 2 * per_position * positions * int(n_rows)

    def skip_faiss(self) -> None:
        """Keep no FAISS copies (as ``faiss_indexes=False`` at `build`); before `add` only."""
        if self.ntotal:
            raise ValueError("skip_faiss() must come before the first add()")
        self.faiss_indexes = False

    def _packed_modes(self, codes_n: np.ndarray, codes_a: np.ndarray) -> dict:
        """Packed bit strings of grids (N, h, w) for each mode (S_sum: concatenation)."""
        pn = pack_grids(self.tables["normal"].packed, codes_n)
        pa = pack_grids(self.tables["abnormal"].packed, codes_a)
        return {"normal": pn, "abnormal": pa, "sum": np.concatenate([pn, pa], axis=1)}

    def _stored_as_codes(self, book: str) -> np.ndarray:
        """(N, h, w) original-index grids equivalent to the stored rows (via representatives)."""
        t = self.tables[book]
        assert self.grid is not None, "no rows stored yet"
        return t.reps[self.codes[book]].reshape(-1, *self.grid).astype(np.uint16)

    def reconstruct(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """The stored grids of ``rows`` (int or (B,) ints): (normal, abnormal), each (h, w) or
        (B, h, w) uint16.

        Each code is its representative's index (the smallest index of an identical code
        vector), so the grids can differ from those `add` was given but every distance to them
        is the same: searching with them gives the same answer.
        """
        if self.grid is None:
            raise ValueError("the index is empty: add rows before reconstructing them")
        rows = np.asarray(rows)
        if not np.issubdtype(rows.dtype, np.integer):
            raise TypeError(f"rows must be integers, got {rows.dtype}")
        if rows.size and (int(rows.min()) < 0 or int(rows.max()) >= self.ntotal):
            raise ValueError(f"rows must be in 0..{self.ntotal - 1}")
        out = []
        for book in BOOKS:
            t = self.tables[book]
            out.append(t.reps[self.codes[book][rows]].reshape(*rows.shape, *self.grid))
        return out[0].astype(np.uint16), out[1].astype(np.uint16)

    def add(
        self, codes_normal: np.ndarray, codes_abnormal: np.ndarray, volume_ids: np.ndarray
    ) -> None:
        """Append N rows: codes (N, h, w) uint16 each, volume_ids (N,) int64."""
        self._load_faiss()
        self._append(codes_normal, codes_abnormal, volume_ids)
        if self.faiss_indexes:
            packed = self._packed_modes(codes_normal, codes_abnormal)
            for mode in MODES:
                if mode not in self.flat:
                    self.flat[mode] = FaissHamming(packed[mode].shape[1])
                self.flat[mode].add(packed[mode])
            if self.ivf_nlist is not None:
                if self.ivf:
                    for mode in MODES:
                        self.ivf[mode].add(packed[mode])
                elif self.ntotal >= self.ivf_nlist:
                    self.train_ivf()
                else:
                    log.warning(
                        "IVF not trained yet: %d rows < nlist=%d; call train_ivf()",
                        self.ntotal,
                        self.ivf_nlist,
                    )

    def _append(self, codes_normal, codes_abnormal, volume_ids, *, estimate_scales=True) -> None:
        tn, ta = self.tables["normal"], self.tables["abnormal"]
        _check_codes(codes_normal, "codes_normal", tn.K, self.grid)
        _check_codes(codes_abnormal, "codes_abnormal", ta.K, codes_normal.shape[1:])
        if not isinstance(volume_ids, np.ndarray) or volume_ids.dtype != np.int64:
            raise TypeError("volume_ids must be an int64 numpy array")
        if codes_abnormal.shape[0] != codes_normal.shape[0] or volume_ids.shape != (
            codes_normal.shape[0],
        ):
            raise ValueError(
                f"codes_normal {codes_normal.shape}, codes_abnormal {codes_abnormal.shape} and "
                f"volume_ids {volume_ids.shape} must agree on N"
            )
        if self.grid is None:
            self.grid = (int(codes_normal.shape[1]), int(codes_normal.shape[2]))
        for book, codes in (("normal", codes_normal), ("abnormal", codes_abnormal)):
            t = self.tables[book]
            rc = _to_reps(t, codes)
            self.codes[book] = (
                rc if self.codes[book] is None else np.concatenate([self.codes[book], rc])
            )
            sq = _row_sqnorms(t, rc)
            self.row_sqnorm[book] = (
                sq if self.row_sqnorm[book] is None else np.concatenate([self.row_sqnorm[book], sq])
            )
        self._codes_t = None  # the stored layout no longer covers every row
        self.volume_ids = np.concatenate([self.volume_ids, volume_ids])
        self._vol_unique, self._vol_index = np.unique(self.volume_ids, return_inverse=True)
        self._vol_index = self._vol_index.astype(np.int64)
        if estimate_scales and not self.scales:
            self.scales = self._estimate_scales()

    def _estimate_scales(self) -> dict:
        """Mean distance between random grids of live codes, per codebook and distance."""
        rng = np.random.default_rng(self.seed)
        assert self.grid is not None, "scales are estimated after the first add"
        P = self.grid[0] * self.grid[1]
        scales = {}
        for book in BOOKS:
            t = self.tables[book]
            pool = np.flatnonzero(t.live)
            pool = pool if pool.size else np.arange(t.n_reps)
            a = pool[rng.integers(0, pool.size, (SCALE_PAIRS, P))].astype(t.code_dtype)
            b = pool[rng.integers(0, pool.size, (SCALE_PAIRS, P))].astype(t.code_dtype)
            for dist in DISTANCES:
                vals = np.empty(SCALE_PAIRS)
                sq_b = t.row_sqnorms(b)
                for n in range(SCALE_PAIRS):
                    table = t.query_table(a[n], dist)
                    acc = SCANS["numpy"](b[n : n + 1], table)
                    qn = float(t.row_sqnorms(a[n : n + 1])[0])
                    vals[n] = finish(dist, acc, qn, sq_b[n : n + 1])[0]
                m = float(vals.mean())
                scales[f"{book}/{dist}"] = m if m > 0 else 1.0
        return scales

    def train_ivf(self, nlist: int | None = None) -> None:
        """Train (or retrain) the IndexBinaryIVF indexes on all stored rows and add them."""
        if nlist is not None:
            self.ivf_nlist = nlist
        if self.ivf_nlist is None:
            raise ValueError("train_ivf needs nlist (or ivf_nlist at build time)")
        if self.ntotal < self.ivf_nlist:
            raise ValueError(f"IVF needs at least nlist={self.ivf_nlist} rows, have {self.ntotal}")
        self._load_faiss()
        packed = self._packed_modes(
            self._stored_as_codes("normal"), self._stored_as_codes("abnormal")
        )
        # faiss trains binary IVF centroids on float copies of the vectors (d floats each), so
        # train on at most IVF_TRAIN_PER_LIST rows per list, drawn with the index's seed.
        n_train = min(self.ntotal, IVF_TRAIN_PER_LIST * self.ivf_nlist)
        sample = np.sort(
            np.random.default_rng(self.seed).choice(self.ntotal, n_train, replace=False)
        )
        for mode in MODES:
            ivf = FaissHamming(packed[mode].shape[1], nlist=self.ivf_nlist)
            ivf.train(packed[mode][sample])
            ivf.add(packed[mode])
            self.ivf[mode] = ivf
