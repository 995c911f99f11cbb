"""`HashIndex`: binarized codebooks, code grids and engines behind a faiss-like API.

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
- Exact engines ("lut", "numpy", "faiss-flat") return identical results for Hamming;
  "faiss-flat"/"faiss-ivf" support only Hamming, and S_sum there is the Hamming distance of the
  concatenated bit strings (the plain sum), so ``normalized_sum`` needs "lut" or "numpy".
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from hashindex.binarize import check_codebook, hyperplane_bits, round_small_norms
from hashindex.concordance import concordance
from hashindex.distances import DISTANCES, CodebookTables, finish
from hashindex.engines import ENGINES, SCANS, FaissHamming
from hashindex.errors import IndexFormatError
from hashindex.kernels import KERNELS
from hashindex.optimize import apply_bit_budget, hamming_table, optimize_codebook
from hashindex.packing import pack_grids
from hashindex.volumes import (
    VolumeHits,
    rows_from_knn,
    topk_rows,
    topq_volumes,
    volumes_from_knn,
)

log = logging.getLogger(__name__)

MODES = ("normal", "abnormal", "sum")
FORMAT_VERSION = 1
BOOKS = ("normal", "abnormal")
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
        conc[f"{name}_live"] = concordance(sqdist[np.ix_(reps[lv], reps[lv])],
                                           ham[np.ix_(lv, lv)].astype(np.float64))
    rep = {
        "K": K, "D": int(tables.vectors.shape[1]), "distinct": int(tables.n_reps),
        "live": int(live.sum()), "E": opt.E, "E_distinct": opt.E_distinct,
        "E_star_faithful": opt.E_star, "E_star": int(tables.pairs.shape[0]),
        "compression": float(tables.pairs.shape[0] / opt.E), "seconds": round(opt.seconds, 3),
        "concordance": conc,
    }
    if opt.budget is not None:
        rep["bit_budget"] = opt.budget
        rep["bit_budget_curve"] = opt.budget_curve
    return rep


def _check_codes(codes, name: str, K: int, shape=None) -> None:
    if not isinstance(codes, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(codes).__name__}")
    if codes.dtype != np.uint16:
        raise TypeError(f"{name} must be uint16 code indices, got {codes.dtype}")
    if codes.ndim != 3:
        raise ValueError(f"{name} must have shape (N, h, w), got {codes.shape}")
    if shape is not None and codes.shape[1:] != shape:
        raise ValueError(f"{name} grids are {codes.shape[1:]}, the index holds {shape}")
    if codes.size and int(codes.max()) >= K:
        raise ValueError(f"{name} holds code {int(codes.max())} but the codebook has K={K}")


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same directory, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _save_npy(path, array) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def _save_npz(path, **arrays) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


class HashIndex:
    """Exact and approximate volume-wise search over pairs of code grids (normal, abnormal).

    Build with `HashIndex.build`, fill with `add`, query with `search` / `search_volumes`,
    persist with `write` / `HashIndex.read`. Row ids are 0..ntotal-1 in order of addition.
    """

    def __init__(self, tables: dict, report: dict, *, ivf_nlist=None, seed=0, faiss_indexes=True):
        self.tables: dict[str, CodebookTables] = tables
        self._report = report
        self.ivf_nlist = ivf_nlist
        self.seed = seed
        self.faiss_indexes = faiss_indexes
        self.grid: tuple[int, int] | None = None
        self.codes = {b: None for b in BOOKS}       # (N, P) representative ids
        self.row_sqnorm = {b: None for b in BOOKS}  # (N,) float64
        self.volume_ids = np.zeros(0, np.int64)
        self.scales: dict[str, float] = {}
        self.flat: dict[str, FaissHamming] = {}
        self.ivf: dict[str, FaissHamming] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, codebook_normal: np.ndarray, codebook_abnormal: np.ndarray, *,
              bit_budget: int | None = None, ivf_nlist: int | None = None, seed: int = 0,
              progress=None, faiss_indexes: bool = True) -> HashIndex:
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

    @property
    def ntotal(self) -> int:
        return int(self.volume_ids.size)

    @property
    def report(self) -> dict:
        return self._report

    def _packed_modes(self, codes_n: np.ndarray, codes_a: np.ndarray) -> dict:
        """Packed bit strings of grids (N, h, w) for each mode (S_sum: concatenation)."""
        pn = pack_grids(self.tables["normal"].packed, codes_n)
        pa = pack_grids(self.tables["abnormal"].packed, codes_a)
        return {"normal": pn, "abnormal": pa, "sum": np.concatenate([pn, pa], axis=1)}

    def _stored_as_codes(self, book: str) -> np.ndarray:
        """(N, h, w) original-index grids equivalent to the stored rows (via representatives)."""
        t = self.tables[book]
        return t.reps[self.codes[book]].reshape(-1, *self.grid).astype(np.uint16)

    def add(self, codes_normal: np.ndarray, codes_abnormal: np.ndarray,
            volume_ids: np.ndarray) -> None:
        """Append N rows: codes (N, h, w) uint16 each, volume_ids (N,) int64."""
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
                    log.warning("IVF not trained yet: %d rows < nlist=%d; call train_ivf()",
                                self.ntotal, self.ivf_nlist)

    def _append(self, codes_normal, codes_abnormal, volume_ids, *, estimate_scales=True) -> None:
        tn, ta = self.tables["normal"], self.tables["abnormal"]
        _check_codes(codes_normal, "codes_normal", tn.K, self.grid)
        _check_codes(codes_abnormal, "codes_abnormal", ta.K, codes_normal.shape[1:])
        if not isinstance(volume_ids, np.ndarray) or volume_ids.dtype != np.int64:
            raise TypeError("volume_ids must be an int64 numpy array")
        if codes_abnormal.shape[0] != codes_normal.shape[0] or volume_ids.shape != (
                codes_normal.shape[0],):
            raise ValueError(
                f"codes_normal {codes_normal.shape}, codes_abnormal {codes_abnormal.shape} and "
                f"volume_ids {volume_ids.shape} must agree on N")
        if self.grid is None:
            self.grid = tuple(int(s) for s in codes_normal.shape[1:])
        for book, codes in (("normal", codes_normal), ("abnormal", codes_abnormal)):
            t = self.tables[book]
            rc = t.to_reps(codes)
            self.codes[book] = rc if self.codes[book] is None else np.concatenate(
                [self.codes[book], rc])
            sq = t.row_sqnorms(rc)
            self.row_sqnorm[book] = sq if self.row_sqnorm[book] is None else np.concatenate(
                [self.row_sqnorm[book], sq])
        self.volume_ids = np.concatenate([self.volume_ids, volume_ids])
        self._vol_unique, self._vol_index = np.unique(self.volume_ids, return_inverse=True)
        self._vol_index = self._vol_index.astype(np.int64)
        if estimate_scales and not self.scales:
            self.scales = self._estimate_scales()

    def _estimate_scales(self) -> dict:
        """Mean distance between random grids of live codes, per codebook and distance."""
        rng = np.random.default_rng(self.seed)
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
                    acc = SCANS["numpy"](b[n:n + 1], table)
                    qn = float(t.row_sqnorms(a[n:n + 1])[0])
                    vals[n] = finish(dist, acc, qn, sq_b[n:n + 1])[0]
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
        packed = self._packed_modes(self._stored_as_codes("normal"),
                                    self._stored_as_codes("abnormal"))
        # faiss trains binary IVF centroids on float copies of the vectors (d floats each), so
        # train on at most IVF_TRAIN_PER_LIST rows per list, drawn with the index's seed.
        n_train = min(self.ntotal, IVF_TRAIN_PER_LIST * self.ivf_nlist)
        sample = np.sort(np.random.default_rng(self.seed).choice(self.ntotal, n_train,
                                                                 replace=False))
        for mode in MODES:
            ivf = FaissHamming(packed[mode].shape[1], nlist=self.ivf_nlist)
            ivf.train(packed[mode][sample])
            ivf.add(packed[mode])
            self.ivf[mode] = ivf

    # ------------------------------------------------------------------ search
    def _check_query(self, q_normal, q_abnormal, mode, distance, engine, normalized_sum):
        if self.grid is None:
            raise ValueError("the index is empty: add rows before searching")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        _check_codes(q_normal, "q_normal", self.tables["normal"].K, self.grid)
        _check_codes(q_abnormal, "q_abnormal", self.tables["abnormal"].K, self.grid)
        if q_normal.shape[0] != q_abnormal.shape[0]:
            raise ValueError("q_normal and q_abnormal must hold the same number of queries")
        if engine.startswith("faiss"):
            if distance != "hamming":
                raise ValueError(f"engine {engine!r} supports only distance='hamming'; use "
                                 f"engine='lut' for {distance!r}")
            if normalized_sum and mode == "sum":
                raise ValueError("normalized_sum needs engine='lut' or 'numpy' (FAISS adds "
                                 "the plain Hamming distances of the concatenated bits)")
            if not self.faiss_indexes:
                raise ValueError("this index was built with faiss_indexes=False")
            if engine == "faiss-ivf" and not self.ivf:
                raise ValueError("no IVF index: build with ivf_nlist=... or call train_ivf()")

    def _row_distances(self, b, q_reps, q_sq, mode, distance, engine, normalized_sum):
        """(N,) float64 distances of query b to every row (lut / numpy engines)."""
        books = BOOKS if mode == "sum" else (mode,)
        if engine == "lut" and distance == "hamming" and mode == "sum" and not normalized_sum:
            # fused single pass; integer sums, so identical to adding the two distances
            out = np.empty(self.ntotal)
            tn, ta = self.tables["normal"], self.tables["abnormal"]
            KERNELS["lut_scan_int_pair"](
                self.codes["normal"], tn.query_table(q_reps["normal"][b], distance),
                self.codes["abnormal"], ta.query_table(q_reps["abnormal"][b], distance), out)
            return out
        total = None
        for book in books:
            t = self.tables[book]
            acc = SCANS[engine](self.codes[book], t.query_table(q_reps[book][b], distance))
            d = finish(distance, acc, q_sq[book][b], self.row_sqnorm[book])
            if normalized_sum and mode == "sum":
                d = d / self.scales[f"{book}/{distance}"]
            total = d if total is None else total + d
        return total

    def _prepare(self, q_normal, q_abnormal):
        q_reps, q_sq = {}, {}
        for book, q in (("normal", q_normal), ("abnormal", q_abnormal)):
            t = self.tables[book]
            q_reps[book] = t.to_reps(q)
            q_sq[book] = t.row_sqnorms(q_reps[book])
        return q_reps, q_sq

    def _faiss_knn(self, engine, mode, q_normal, q_abnormal, nprobe):
        index = (self.flat if engine == "faiss-flat" else self.ivf)[mode]
        x = self._packed_modes(q_normal, q_abnormal)[mode]

        def knn(ids, k):
            D, I = index.search(x[ids], k, nprobe=nprobe)
            return D.astype(np.float64), I.astype(np.int64)

        return knn

    def search(self, q_normal, q_abnormal, k: int, *, mode="sum", distance="hamming",
               engine="lut", normalized_sum=False, nprobe=None):
        """Row-wise top-k: D (B, k) float64, I (B, k) int64 row ids (-1 / inf padded)."""
        self._check_query(q_normal, q_abnormal, mode, distance, engine, normalized_sum)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        B = q_normal.shape[0]
        if engine.startswith("faiss"):
            knn = self._faiss_knn(engine, mode, q_normal, q_abnormal, nprobe)
            return rows_from_knn(knn, B, self.ntotal, k)
        q_reps, q_sq = self._prepare(q_normal, q_abnormal)
        D = np.full((B, k), np.inf)
        I = np.full((B, k), -1, np.int64)
        for b in range(B):
            dist = self._row_distances(b, q_reps, q_sq, mode, distance, engine, normalized_sum)
            D[b], I[b] = topk_rows(dist, k)
        return D, I

    def search_volumes(self, q_normal, q_abnormal, topq: int, *, mode="sum",
                       distance="hamming", engine="lut", exclude_volumes=None,
                       normalized_sum=False, nprobe=None) -> VolumeHits:
        """Volume-wise top-Q (section 4.4.6): each hit is a different volume's closest row."""
        self._check_query(q_normal, q_abnormal, mode, distance, engine, normalized_sum)
        if topq < 1:
            raise ValueError(f"topq must be >= 1, got {topq}")
        B = q_normal.shape[0]
        if exclude_volumes is not None:
            if not isinstance(exclude_volumes, np.ndarray) or exclude_volumes.dtype != np.int64:
                raise TypeError("exclude_volumes must be an int64 numpy array")
            if exclude_volumes.shape != (B,):
                raise ValueError(f"exclude_volumes must have shape ({B},), "
                                 f"got {exclude_volumes.shape}")
        if engine.startswith("faiss"):
            knn = self._faiss_knn(engine, mode, q_normal, q_abnormal, nprobe)
            return volumes_from_knn(knn, B, self.ntotal, topq, self.volume_ids, exclude_volumes)
        q_reps, q_sq = self._prepare(q_normal, q_abnormal)
        D = np.full((B, topq), np.inf)
        R = np.full((B, topq), -1, np.int64)
        V = np.full((B, topq), -1, np.int64)
        for b in range(B):
            dist = self._row_distances(b, q_reps, q_sq, mode, distance, engine, normalized_sum)
            ex = None if exclude_volumes is None else int(exclude_volumes[b])
            D[b], R[b], V[b] = topq_volumes(dist, self._vol_index, self._vol_unique, topq, ex)
        return VolumeHits(D, R, V)

    # ------------------------------------------------------------------ persistence
    def _faiss_files(self) -> dict:
        files = {f"faiss_{m}.index": self.flat[m] for m in self.flat}
        files.update({f"faiss_ivf_{m}.index": self.ivf[m] for m in self.ivf})
        return files

    def write(self, directory) -> None:
        """Write codebooks, bit tables, FAISS indexes and hashindex.json into ``directory``.

        Every file goes through a temporary name and a rename; hashindex.json, written last,
        is what `read` trusts, so an interrupted write never yields a loadable mix.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for book in BOOKS:
            t = self.tables[book]
            _atomic_write(d / f"codebook_{book}.npy", lambda p, t=t: _save_npy(p, t.vectors))
            _atomic_write(d / f"bits_{book}.npz",
                          lambda p, t=t: _save_npz(p, pairs=t.pairs, packed=t.packed))
        for name, idx in self._faiss_files().items():
            _atomic_write(d / name, lambda p, idx=idx: faiss.write_index_binary(idx.cpu, p))
        meta = {
            "format": "hashindex", "format_version": FORMAT_VERSION,
            "K": {b: self.tables[b].K for b in BOOKS},
            "D": {b: int(self.tables[b].vectors.shape[1]) for b in BOOKS},
            "E_star": {b: int(self.tables[b].pairs.shape[0]) for b in BOOKS},
            "grid": list(self.grid) if self.grid else None, "ntotal": self.ntotal,
            "ivf_nlist": self.ivf_nlist, "seed": self.seed, "faiss_indexes": self.faiss_indexes,
            "faiss_files": sorted(self._faiss_files()), "scales": self.scales,
            "engines": [e for e in ENGINES if not e.startswith("faiss")
                        or (e == "faiss-flat" and self.flat) or (e == "faiss-ivf" and self.ivf)],
            "report": self._report, "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        _atomic_write(d / "hashindex.json",
                      lambda p: Path(p).write_text(json.dumps(meta, indent=1)))

    @classmethod
    def read(cls, directory, codes_normal, codes_abnormal, volume_ids) -> HashIndex:
        """Load an index written by `write`, with the caller's code grids and volume ids.

        Raises IndexFormatError (naming the file, expected vs found, and the fix) on a missing
        or corrupt file, another format version, codebook/bit-table/grid/K/D mismatches, or a
        FAISS index whose ntotal differs from len(codes).
        """
        d = Path(directory)
        fix = "rebuild the index directory (fdn-index build)"
        meta_path = d / "hashindex.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"{meta_path}: cannot read ({exc}); {fix}") from exc
        if meta.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(
                f"{meta_path}: format version {meta.get('format_version')!r}, expected "
                f"{FORMAT_VERSION}; {fix} with this version of hashindex")
        tables = {}
        for book in BOOKS:
            cb_path, bits_path = d / f"codebook_{book}.npy", d / f"bits_{book}.npz"
            try:
                vectors = np.load(cb_path)
            except (OSError, ValueError, EOFError) as exc:
                raise IndexFormatError(f"{cb_path}: corrupt or missing ({exc}); {fix}") from exc
            exp = (meta["K"][book], meta["D"][book])
            if vectors.dtype != np.float32 or vectors.shape != tuple(exp):
                raise IndexFormatError(
                    f"{cb_path}: expected float32 {tuple(exp)}, found {vectors.dtype} "
                    f"{vectors.shape}; {fix}")
            try:
                with np.load(bits_path) as z:
                    pairs, packed = z["pairs"], z["packed"]
            except (OSError, ValueError, KeyError, EOFError) as exc:
                raise IndexFormatError(f"{bits_path}: corrupt or missing ({exc}); {fix}") from exc
            E = meta["E_star"][book]
            if pairs.shape != (E, 2) or packed.shape != (exp[0], (E + 7) // 8):
                raise IndexFormatError(
                    f"{bits_path}: expected pairs ({E}, 2) and packed ({exp[0]}, {(E + 7) // 8})"
                    f", found {pairs.shape} and {packed.shape}; {fix}")
            if pairs.size and (pairs.min() < 0 or pairs.max() >= exp[0]):
                raise IndexFormatError(f"{bits_path}: pair indices outside 0..{exp[0] - 1}; {fix}")
            t = CodebookTables.build(vectors, pairs.astype(np.int64))
            if not np.array_equal(t.packed, packed):
                raise IndexFormatError(
                    f"{bits_path}: the stored bits do not match {cb_path.name} (expected the "
                    f"hyperplane bits of that codebook); {fix}")
            tables[book] = t
        idx = cls(tables, meta["report"], ivf_nlist=meta["ivf_nlist"], seed=meta["seed"],
                  faiss_indexes=meta["faiss_indexes"])
        n = volume_ids.shape[0] if isinstance(volume_ids, np.ndarray) else -1
        if n != meta["ntotal"]:
            raise IndexFormatError(
                f"{meta_path}: ntotal {meta['ntotal']}, but {n} volume ids / code rows were "
                f"given; pass the codes.zarr arrays this index was built from, or {fix}")
        if meta["grid"] is not None:
            idx.grid = tuple(meta["grid"])
            # The scales were estimated at build time and stored: estimating them again would
            # cost seconds on every open.
            idx._append(codes_normal, codes_abnormal, volume_ids, estimate_scales=False)
            idx.scales = meta["scales"]
        for name in meta["faiss_files"]:
            path = d / name
            try:
                raw = faiss.read_index_binary(str(path))
            except RuntimeError as exc:
                raise IndexFormatError(f"{path}: corrupt or missing FAISS index ({exc}); "
                                       f"{fix}") from exc
            if raw.ntotal != n:
                raise IndexFormatError(
                    f"{path}: FAISS ntotal {raw.ntotal}, expected {n} (= len(codes)); {fix}")
            mode = name.removesuffix(".index").split("_")[-1]
            if name.startswith("faiss_ivf_"):
                h = FaissHamming(raw.code_size, nlist=meta["ivf_nlist"], index=raw)
                idx.ivf[mode] = h
            else:
                idx.flat[mode] = FaissHamming(raw.code_size, index=raw)
        return idx
