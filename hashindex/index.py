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

import errno
import hashlib
import io
import json
import logging
import os
import stat
import threading
import time
from pathlib import Path

import faiss
import numpy as np

from hashindex.binarize import check_codebook, hyperplane_bits, round_small_norms
from hashindex.concordance import concordance
from hashindex.distances import DISTANCES, CodebookTables, finish
from hashindex.engines import ENGINES, SCANS, FaissHamming
from hashindex.errors import IndexFormatError
from hashindex.fastscan import FastScan
from hashindex.fileio import atomic_write
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
# 2: hashindex.json lists the size and sha256 of every file ("files"); FAISS files serialized.
FORMAT_VERSION = 2
BOOKS = ("normal", "abnormal")
# The file names of an index: a fixed list, so that no name read from a file is ever opened.
META_FILE = "hashindex.json"
CODEBOOK_FILES = {b: f"codebook_{b}.npy" for b in BOOKS}
BITS_FILES = {b: f"bits_{b}.npz" for b in BOOKS}
FLAT_FILES = {m: f"faiss_{m}.index" for m in MODES}
IVF_FILES = {m: f"faiss_ivf_{m}.index" for m in MODES}
INDEX_FILES = (META_FILE, *CODEBOOK_FILES.values(), *BITS_FILES.values(), *FLAT_FILES.values(),
               *IVF_FILES.values())
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


ROWS_PER_BLOCK = 16384


def _to_reps(t: CodebookTables, codes: np.ndarray) -> np.ndarray:
    """`t.to_reps(codes)` in blocks of rows: the same (N, P) ids, 4x faster at 1M rows (the
    indices of one block fit in cache instead of a 64M-entry intp copy)."""
    flat = codes.reshape(codes.shape[0], -1)
    rep_of = t.rep_of.astype(t.code_dtype)
    out = np.empty(flat.shape, t.code_dtype)
    for start in range(0, flat.shape[0], ROWS_PER_BLOCK):
        np.take(rep_of, flat[start:start + ROWS_PER_BLOCK], out=out[start:start + ROWS_PER_BLOCK])
    return out


def _row_sqnorms(t: CodebookTables, rep_codes: np.ndarray) -> np.ndarray:
    """`t.row_sqnorms(rep_codes)` with the compiled scan: the same sums in position order."""
    if rep_codes.shape[0] == 0 or rep_codes.shape[1] == 0:
        return t.row_sqnorms(rep_codes)
    table = np.ascontiguousarray(np.broadcast_to(t.sqnorm, (rep_codes.shape[1], t.n_reps)))
    return SCANS["lut"](rep_codes, table)


def _check_codes(codes, name: str, K: int, shape=None) -> None:
    if not isinstance(codes, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(codes).__name__}")
    if codes.dtype != np.uint16:
        raise TypeError(f"{name} must be uint16 code indices, got {codes.dtype}")
    if codes.ndim != 3 or codes.shape[1] < 1 or codes.shape[2] < 1:
        raise ValueError(f"{name} must have shape (N, h, w) with h, w >= 1, got {codes.shape}")
    if shape is not None and codes.shape[1:] != shape:
        raise ValueError(f"{name} grids are {codes.shape[1:]}, the index holds {shape}")
    if codes.size and int(codes.max()) >= K:
        raise ValueError(f"{name} holds code {int(codes.max())} but the codebook has K={K}")


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _file_entry(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _check_bytes(path: Path, data: bytes, entry: dict, verify: bool, fix: str) -> bytes:
    """``data`` (read from ``path``) if it has the size and sha256 hashindex.json records."""
    if len(data) != entry["size"]:
        raise IndexFormatError(
            f"{path}: {len(data)} bytes, {META_FILE} records {entry['size']}; the file was "
            f"truncated or changed after it was written; {fix}")
    if verify:
        found = hashlib.sha256(data).hexdigest()
        if found != entry["sha256"]:
            raise IndexFormatError(
                f"{path}: sha256 {found[:16]}…, {META_FILE} records {entry['sha256'][:16]}…; the "
                f"file was damaged or changed after it was written; {fix}")
    return data


def _read_faiss_checked(f, path: Path, entry: dict, verify: bool, fix: str):
    """The FAISS binary index in the open file ``f``, hashed while faiss reads it (one pass)."""
    size = os.fstat(f.fileno()).st_size
    if size != entry["size"]:
        raise IndexFormatError(
            f"{path}: {size} bytes, {META_FILE} records {entry['size']}; the file was "
            f"truncated or changed after it was written; {fix}")
    digest = hashlib.sha256()

    def read(n):
        chunk = f.read(n)
        digest.update(chunk)
        return chunk

    try:
        raw = faiss.read_index_binary(faiss.PyCallbackIOReader(read))
    except Exception as exc:  # faiss raises RuntimeError and others on bad input
        raise IndexFormatError(f"{path}: corrupt FAISS index ({str(exc)[:80]}); {fix}") from None
    digest.update(f.read())
    if verify and digest.hexdigest() != entry["sha256"]:
        raise IndexFormatError(
            f"{path}: sha256 {digest.hexdigest()[:16]}…, {META_FILE} records "
            f"{entry['sha256'][:16]}…; the file was damaged or changed after it was written; "
            f"{fix}")
    return raw


def _open_listed(d: Path, name: str, fix: str):
    """An open binary file of the listed file ``name`` in ``d`` (never through a symlink)."""
    path = d / name
    try:
        # O_NONBLOCK: a FIFO put in place of a file must not hang the reader
        f = os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb")
    except FileNotFoundError:
        listed = "" if name == META_FILE else f" ({META_FILE} lists it)"
        raise IndexFormatError(f"{path}: missing{listed}; {fix}") from None
    except OSError as exc:
        what = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise IndexFormatError(f"{path}: cannot read it ({what}); {fix}") from None
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise IndexFormatError(f"{path}: not a regular file; {fix}")
    return f


_SHA256_HEX = frozenset("0123456789abcdef")


def _check_meta(meta, path: Path, fix: str) -> dict:
    """hashindex.json's content, every field checked; IndexFormatError naming the first fault."""
    def bad(what):
        return IndexFormatError(f"{path}: {what}; {fix}")

    if not isinstance(meta, dict):
        raise bad(f"expected a JSON object, found a JSON {type(meta).__name__}")
    if meta.get("format_version") != FORMAT_VERSION or not _is_int(meta.get("format_version")):
        raise IndexFormatError(
            f"{path}: format version {str(meta.get('format_version'))[:20]}, expected "
            f"{FORMAT_VERSION}; {fix} with this version of hashindex")
    for key in ("K", "D", "E_star"):
        value = meta.get(key)
        if not isinstance(value, dict) or not all(
                _is_int(value.get(b)) and value[b] >= (0 if key == "E_star" else 1) for b in BOOKS):
            raise bad(f"{key!r} should map normal and abnormal to integers, found "
                      f"{str(value)[:60]!r}")
    grid = meta.get("grid")
    if grid is not None and not (isinstance(grid, list) and len(grid) == 2
                                 and all(_is_int(g) and g >= 1 for g in grid)):
        raise bad(f"'grid' should be null or two positive integers, found {str(grid)[:60]!r}")
    checks = {
        "ntotal": lambda v: _is_int(v) and v >= 0,
        "ivf_nlist": lambda v: v is None or (_is_int(v) and v >= 1),
        "seed": _is_int,
        "faiss_indexes": lambda v: isinstance(v, bool),
        "faiss_files": lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
        "scales": lambda v: isinstance(v, dict) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) and x > 0
            for x in v.values()),
        "report": lambda v: isinstance(v, dict),
        "files": lambda v: isinstance(v, dict) and all(
            n in INDEX_FILES and isinstance(e, dict) and isinstance(e.get("sha256"), str)
            and len(e["sha256"]) == 64 and set(e["sha256"]) <= _SHA256_HEX
            and _is_int(e.get("size")) and e["size"] >= 0 for n, e in v.items()),
    }
    for key, check in checks.items():
        if key not in meta or not check(meta[key]):
            raise bad(f"{key!r} is missing or malformed (found {str(meta.get(key))[:60]!r})")
    if grid is not None:
        missing = [f"{b}/{d}" for b in BOOKS for d in DISTANCES if f"{b}/{d}" not in meta["scales"]]
        if missing:
            raise bad(f"'scales' lacks {', '.join(missing)}")
    names = meta["faiss_files"]
    flat, ivf = sorted(FLAT_FILES.values()), sorted(IVF_FILES.values())
    allowed = [[]]
    if meta["faiss_indexes"] and grid is not None:
        allowed = [flat] + ([sorted(flat + ivf)] if meta["ivf_nlist"] is not None else [])
    if sorted(names) not in allowed:
        raise bad(f"'faiss_files' lists {str(names)[:120]}, expected "
                  f"{' or '.join(str(a) for a in allowed)} for faiss_indexes="
                  f"{meta['faiss_indexes']}, ivf_nlist={meta['ivf_nlist']}")
    unlisted = [n for n in (*CODEBOOK_FILES.values(), *BITS_FILES.values(), *names)
                if n not in meta["files"]]
    if unlisted:
        raise bad(f"'files' lacks the checksums of {', '.join(unlisted)}")
    return meta


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
        self._fast: FastScan | None = None  # built by the first fastscan query
        self._torch = None  # TorchScan, built by the first torch query (imports torch)
        self.flat: dict[str, FaissHamming] = {}
        self.ivf: dict[str, FaissHamming] = {}
        # FAISS files opened by `read` and loaded on first use: name -> (open file, entry, verify)
        self._pending: dict[str, tuple] = {}
        self._pending_lock = threading.Lock()

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
            rc = _to_reps(t, codes)
            self.codes[book] = rc if self.codes[book] is None else np.concatenate(
                [self.codes[book], rc])
            sq = _row_sqnorms(t, rc)
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
        self._load_faiss()
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
    def _check_query(self, q_normal, q_abnormal, mode, distance, engine, normalized_sum,
                     nprobe=None):
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
            files = FLAT_FILES if engine == "faiss-flat" else IVF_FILES
            self._load_faiss([files[mode]] if mode in files else None)
            if engine == "faiss-ivf" and not self.ivf:
                raise ValueError("no IVF index: build with ivf_nlist=... or call train_ivf()")
        if engine == "fastscan":
            wide = [b for b in BOOKS if self.tables[b].n_reps > 256]
            if wide:
                raise ValueError(
                    f"engine 'fastscan' stores one byte per code and the {wide[0]} codebook has "
                    f"{self.tables[wide[0]].n_reps} distinct vectors (> 256); use engine='lut'")
        if nprobe is not None:
            if engine != "faiss-ivf":
                raise ValueError(f"nprobe (lists probed) applies only to engine='faiss-ivf'; "
                                 f"engine {engine!r} scans every row, so leave nprobe out")
            if not _is_int(nprobe) or not 1 <= nprobe <= self.ivf_nlist:
                raise ValueError(f"nprobe must be an integer from 1 to nlist={self.ivf_nlist}, "
                                 f"got {nprobe!r}")

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

    def _fastscan(self) -> FastScan:
        """The fastscan engine's block-transposed codes, made on first use after an add."""
        if self._fast is None or self._fast.n != self.ntotal:
            self._fast = FastScan(self.tables, self.codes, self.row_sqnorm, self._vol_index,
                                  self._vol_unique, self.scales)
        return self._fast

    def _torchscan(self):
        """The torch engine's copy of the code grids on its device, made on first use."""
        from hashindex.torch_engine import TorchScan

        if self._torch is None or self._torch.n != self.ntotal:
            self._torch = TorchScan(self.tables, self.codes, self.row_sqnorm, self._vol_index,
                                    self._vol_unique, self.scales)
        return self._torch

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
        self._check_query(q_normal, q_abnormal, mode, distance, engine, normalized_sum, nprobe)
        if not _is_int(k):
            raise TypeError(f"k must be an integer, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        # Never more columns than rows: k is the caller's, the memory is ours.
        k = int(min(k, max(self.ntotal, 1)))
        B = q_normal.shape[0]
        if engine.startswith("faiss"):
            knn = self._faiss_knn(engine, mode, q_normal, q_abnormal, nprobe)
            return rows_from_knn(knn, B, self.ntotal, k)
        q_reps, q_sq = self._prepare(q_normal, q_abnormal)
        if engine == "fastscan":
            D, I, _, _ = self._fastscan().search(q_reps, q_sq, k, mode, distance, normalized_sum,
                                                 None, by_volume=False)
            return D, I
        if engine == "torch":
            D = np.full((B, k), np.inf)
            I = np.full((B, k), -1, np.int64)
            scan = self._torchscan()
            for b in range(B):
                dist = scan.distances({m: q_reps[m][b] for m in BOOKS},
                                      {m: q_sq[m][b] for m in BOOKS}, mode, distance,
                                      normalized_sum)
                D[b], I[b] = topk_rows(dist.cpu().numpy(), k)
            return D, I
        D = np.full((B, k), np.inf)
        I = np.full((B, k), -1, np.int64)
        for b in range(B):
            dist = self._row_distances(b, q_reps, q_sq, mode, distance, engine, normalized_sum)
            D[b], I[b] = topk_rows(dist, k)
        return D, I

    def search_volumes(self, q_normal, q_abnormal, topq: int, *, mode="sum",
                       distance="hamming", engine="lut", exclude_volumes=None,
                       normalized_sum=False, nprobe=None) -> VolumeHits:
        """Volume-wise top-Q (section 4.4.6): each hit is a different volume's closest row.

        The result has min(topq, number of volumes) columns, -1 / inf padded where fewer
        volumes qualify (the query's own volume excluded, or an approximate engine).
        """
        self._check_query(q_normal, q_abnormal, mode, distance, engine, normalized_sum, nprobe)
        if not _is_int(topq):
            raise TypeError(f"topq must be an integer, got {type(topq).__name__}")
        if topq < 1:
            raise ValueError(f"topq must be >= 1, got {topq}")
        # Q can never exceed the number of volumes: cap it before allocating (B, Q) arrays.
        topq = int(min(topq, self._vol_unique.size))
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
        if engine == "fastscan":
            D, R, V, _ = self._fastscan().search(q_reps, q_sq, topq, mode, distance,
                                                 normalized_sum, exclude_volumes)
            return VolumeHits(D, R, V)
        if engine == "torch":
            return VolumeHits(*self._torchscan().search(q_reps, q_sq, topq, mode, distance,
                                                        normalized_sum, exclude_volumes))
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
        self._load_faiss()
        files = {FLAT_FILES[m]: self.flat[m] for m in self.flat}
        files.update({IVF_FILES[m]: self.ivf[m] for m in self.ivf})
        return files

    def _load_faiss(self, names=None) -> None:
        """Load the FAISS files `read` opened (all, or those of ``names``) on first use.

        Each file is read once, through faiss, while its sha256 is computed on the way; the
        index is used only if size and checksum match hashindex.json.
        """
        if not self._pending:
            return
        with self._pending_lock:
            widths = {}
            if self.grid is not None:
                P = self.grid[0] * self.grid[1]
                widths = {b: self.tables[b].packed.shape[1] * P for b in BOOKS}
                widths["sum"] = widths["normal"] + widths["abnormal"]
            todo = sorted(self._pending) if names is None else [n for n in names
                                                               if n in self._pending]
            for name in todo:
                f, entry, verify, fix = self._pending[name]
                path = Path(f.name) if isinstance(f.name, str) else Path(name)
                with f:
                    raw = _read_faiss_checked(f, path, entry, verify, fix)
                ivf = name in IVF_FILES.values()
                mode = next(m for m in MODES if name in (FLAT_FILES[m], IVF_FILES[m]))
                if isinstance(raw, faiss.IndexBinaryIVF) != ivf:
                    raise IndexFormatError(f"{path}: expected a{'n IVF' if ivf else ' flat'} "
                                           f"binary index, found {type(raw).__name__}; {fix}")
                if raw.ntotal != self.ntotal or raw.code_size != widths.get(mode):
                    raise IndexFormatError(
                        f"{path}: FAISS ntotal {raw.ntotal} and {raw.code_size} bytes per code, "
                        f"expected {self.ntotal} (= len(codes)) and {widths.get(mode)}; {fix}")
                if ivf:
                    self.ivf[mode] = FaissHamming(raw.code_size, nlist=self.ivf_nlist, index=raw)
                else:
                    self.flat[mode] = FaissHamming(raw.code_size, index=raw)
                del self._pending[name]

    def write(self, directory) -> None:
        """Write codebooks, bit tables, FAISS indexes and hashindex.json into ``directory``.

        Every file goes through `hashindex.fileio.atomic_write`; hashindex.json, written last,
        records the size and sha256 of each, and `read` trusts nothing else.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        files = {}

        def put(name: str, data: bytes) -> None:
            atomic_write(d / name, data)
            files[name] = _file_entry(data)

        for book in BOOKS:
            t = self.tables[book]
            put(CODEBOOK_FILES[book], _npy_bytes(t.vectors))
            put(BITS_FILES[book], _npz_bytes(pairs=t.pairs, packed=t.packed))
        for name, idx in self._faiss_files().items():
            put(name, faiss.serialize_index_binary(idx.cpu).tobytes())
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
            "files": files,
        }
        atomic_write(d / META_FILE, json.dumps(meta, indent=1).encode())

    @classmethod
    def read(cls, directory, codes_normal, codes_abnormal, volume_ids, *,
             verify: bool = True) -> HashIndex:
        """Load an index written by `write`, with the caller's code grids and volume ids.

        Every file is checked against the size and sha256 hashindex.json records (``verify``:
        the sha256 too), the codebooks and bit tables now, the FAISS files on their first use
        (they are opened now, so a later replacement of the files does not change this index).
        File names come from a fixed list, never from hashindex.json.

        Raises IndexFormatError (naming the file, expected vs found, and the fix) on a missing
        or corrupt file, another format version, codebook/bit-table/grid/K/D mismatches, or a
        FAISS index whose ntotal differs from len(codes).
        """
        d = Path(directory)
        fix = "rebuild the index directory (fdn-index build)"
        meta_path = d / META_FILE
        try:
            with _open_listed(d, META_FILE, fix) as f:
                meta = json.loads(f.read())
        except (OSError, ValueError, RecursionError) as exc:
            raise IndexFormatError(f"{meta_path}: cannot read ({str(exc)[:80]}); {fix}") from None
        meta = _check_meta(meta, meta_path, fix)

        def load(name, reader):
            with _open_listed(d, name, fix) as f:
                data = _check_bytes(d / name, f.read(), meta["files"][name], verify, fix)
            try:
                return reader(io.BytesIO(data))
            except Exception as exc:  # numpy and zipfile raise many kinds on damaged data
                raise IndexFormatError(f"{d / name}: corrupt ({type(exc).__name__}: "
                                       f"{str(exc)[:80]}); {fix}") from None

        def read_bits(buffer):
            with np.load(buffer, allow_pickle=False) as z:
                return z["pairs"], z["packed"]

        tables = {}
        for book in BOOKS:
            cb_path, bits_path = d / CODEBOOK_FILES[book], d / BITS_FILES[book]
            vectors = load(CODEBOOK_FILES[book], lambda b: np.load(b, allow_pickle=False))
            exp = (meta["K"][book], meta["D"][book])
            if vectors.dtype != np.float32 or vectors.shape != tuple(exp):
                raise IndexFormatError(
                    f"{cb_path}: expected float32 {tuple(exp)}, found {vectors.dtype} "
                    f"{vectors.shape}; {fix}")
            if not np.all(np.isfinite(vectors)):
                raise IndexFormatError(f"{cb_path}: holds NaN or infinite values; {fix}")
            pairs, packed = load(BITS_FILES[book], read_bits)
            E = meta["E_star"][book]
            if pairs.shape != (E, 2) or packed.shape != (exp[0], (E + 7) // 8) or \
                    not np.issubdtype(pairs.dtype, np.integer) or packed.dtype != np.uint8:
                raise IndexFormatError(
                    f"{bits_path}: expected integer pairs ({E}, 2) and uint8 packed ({exp[0]}, "
                    f"{(E + 7) // 8}), found {pairs.dtype} {pairs.shape} and {packed.dtype} "
                    f"{packed.shape}; {fix}")
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
        for name in meta["faiss_files"]:  # validated against FLAT_FILES / IVF_FILES
            idx._pending[name] = (_open_listed(d, name, fix), meta["files"][name], verify, fix)
        return idx
