"""Persistence of a `HashIndex`: `write` and `read` of its directory, the rows checked on read.

The names of the files are the fixed list of `hashindex.files`; hashindex.json and its checks
are `hashindex.index_meta`; the checked reads and checksums are `hashindex.checked_files`.
Other packages read the list through `hashindex.index_files()`.

`read` needs nothing but the folder: the small files are read and verified (sha256), the row
arrays memory-mapped and verified with `sum64`, a FAISS file hashed while faiss reads it when
an engine first needs it. Nothing here imports faiss until a FAISS file is read or written.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Self

import numpy as np

from crashsafe import atomic_write
from hashindex.binarize import hyperplane_bits
from hashindex.checked_files import (
    check_bytes,
    file_entry,
    load_npy,
    load_npz,
    map_npy,
    npy_bytes,
    npz_bytes,
    open_listed,
    read_faiss_checked,
)
from hashindex.distances import BOOKS, MODES, CodebookTables
from hashindex.errors import IndexFormatError
from hashindex.faiss_binary import FaissHamming
from hashindex.fastscan_layout import BLOCK
from hashindex.files import (
    ARRAY_FILES,
    BITS_FILES,
    CODEBOOK_FILES,
    CODES_FILES,
    FASTSCAN_FILE,
    FLAT_FILES,
    IVF_FILES,
    META_FILE,
    SQNORM_FILES,
    VOLUME_FILES,
)
from hashindex.index_meta import FORMAT_VERSION, check_meta
from hashindex.state import IndexState

# Rows of every stored array compared with the rows they derive from when an index is read.
SPOT_CHECK_ROWS = 1024
# What bits_*.npz holds: the kept hyperplanes, the packed bits and the tables of `CodebookTables`
TABLE_ARRAYS = ("pairs", "packed", "reps", "rep_of", "hamming", "sqeuclid", "gram", "sqnorm")
# Representatives whose tables `read` computes again from the codebook and compares.
SPOT_CHECK_CODES = 16


def _spot_rows(n: int, k: int = SPOT_CHECK_ROWS) -> np.ndarray:
    """Up to k rows spread over 0..n-1, the first and last included, increasing.

    Not np.unique, which imports numpy.ma (~10 ms of a new process's first query)."""
    rows = np.linspace(0, n - 1, min(n, k)).astype(np.int64)
    return rows[np.diff(rows, prepend=-1) != 0]


class IndexStorage(IndexState):
    """`HashIndex.write` / `HashIndex.read` and the lazy loading of FAISS files."""

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
        import faiss

        with self._pending_lock:
            widths = {}
            if self.grid is not None:
                P = self.grid[0] * self.grid[1]
                widths = {b: self.tables[b].packed.shape[1] * P for b in BOOKS}
                widths["sum"] = widths["normal"] + widths["abnormal"]
            todo = (
                sorted(self._pending) if names is None else [n for n in names if n in self._pending]
            )
            for name in todo:
                f, entry, verify, fix = self._pending[name]
                path = Path(f.name) if isinstance(f.name, str) else Path(name)
                with f:
                    raw = read_faiss_checked(f, path, entry, verify, fix)
                ivf = name in IVF_FILES.values()
                mode = next(m for m in MODES if name in (FLAT_FILES[m], IVF_FILES[m]))
                if isinstance(raw, faiss.IndexBinaryIVF) != ivf:
                    raise IndexFormatError(
                        f"{path}: expected a{'n IVF' if ivf else ' flat'} "
                        f"binary index, found {type(raw).__name__}; {fix}"
                    )
                if raw.ntotal != self.ntotal or raw.code_size != widths.get(mode):
                    raise IndexFormatError(
                        f"{path}: FAISS ntotal {raw.ntotal} and {raw.code_size} bytes per code, "
                        f"expected {self.ntotal} (= len(codes)) and {widths.get(mode)}; {fix}"
                    )
                if ivf:
                    self.ivf[mode] = FaissHamming(raw.code_size, nlist=self.ivf_nlist, index=raw)
                else:
                    self.flat[mode] = FaissHamming(raw.code_size, index=raw)
                del self._pending[name]

    def _fastscan_layout(self) -> bool:
        """Whether the stored rows fit the fastscan engine (one byte per code in both books)."""
        return self.grid is not None and all(self.tables[b].n_reps <= 256 for b in BOOKS)

    def write(self, directory: str | Path) -> None:
        """Write codebooks, bit tables, the stored rows, FAISS indexes and hashindex.json.

        Every file goes through `crashsafe.atomic_write`; hashindex.json, written last,
        records the size and sha256 of each (and the `sum64` of the row arrays), and `read`
        trusts nothing else. The rows are everything a search needs, so `read` takes nothing
        but the folder.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        files = {}

        def put(name: str, data: bytes) -> None:
            atomic_write(d / name, data)
            files[name] = file_entry(data, fast=name in ARRAY_FILES)

        for book in BOOKS:
            t = self.tables[book]
            put(CODEBOOK_FILES[book], npy_bytes(t.vectors))
            # the tables too: computing them again from the codebook costs ~100 ms per book
            put(
                BITS_FILES[book],
                npz_bytes(**{name: getattr(t, name) for name in TABLE_ARRAYS}),
            )
        if self.grid is not None:
            for book in BOOKS:
                put(CODES_FILES[book], npy_bytes(self.codes[book]))
                put(SQNORM_FILES[book], npy_bytes(self.row_sqnorm[book]))
            put(VOLUME_FILES["volume_ids"], npy_bytes(self.volume_ids))
            put(VOLUME_FILES["volume_index"], npy_bytes(self._vol_index))
            put(VOLUME_FILES["volume_unique"], npy_bytes(self._vol_unique))
            if self._fastscan_layout():
                put(FASTSCAN_FILE, npy_bytes(self._fastscan().codes_t))
        if self._faiss_files():
            import faiss

            for name, idx in self._faiss_files().items():
                put(name, faiss.serialize_index_binary(idx.cpu).tobytes())
        meta = {
            "format": "hashindex",
            "format_version": FORMAT_VERSION,
            "K": {b: self.tables[b].K for b in BOOKS},
            "D": {b: int(self.tables[b].vectors.shape[1]) for b in BOOKS},
            "E_star": {b: int(self.tables[b].pairs.shape[0]) for b in BOOKS},
            "grid": list(self.grid) if self.grid else None,
            "ntotal": self.ntotal,
            "n_volumes": int(self._vol_unique.size) if self.grid is not None else 0,
            "fastscan_layout": self._fastscan_layout(),
            "ivf_nlist": self.ivf_nlist,
            "seed": self.seed,
            "faiss_indexes": self.faiss_indexes,
            "faiss_files": sorted(self._faiss_files()),
            "scales": self.scales,
            "engines": list(self.available_engines()),
            "report": self._report,
            "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "files": files,
        }
        atomic_write(d / META_FILE, json.dumps(meta, indent=1).encode())

    @classmethod
    def read(cls, directory: str | Path, *, verify: bool = True) -> Self:
        """Load an index written by `write`: everything a search needs comes from the folder.

        The small files are read and checked against the size and sha256 hashindex.json
        records; the row arrays are memory-mapped (read-only, paged in as searches touch them)
        and checked against their size and `sum64`; the FAISS files are opened now and
        checked on their first use (so a later replacement of the files does not change this
        index). ``verify=False`` checks sizes and structure only. File names come from a fixed
        list, never from hashindex.json.

        Raises IndexFormatError (naming the file, expected vs found, and the fix) on a missing
        or corrupt file, another format version (an index written before version 3 must be
        rebuilt), codebook/bit-table/grid/K/D mismatches, stored rows that disagree with each
        other, or a FAISS index whose ntotal differs from the stored rows'.
        """
        d = Path(directory)
        fix = "rebuild the index directory (fdn-index build)"
        meta_path = d / META_FILE
        try:
            with open_listed(d, META_FILE, fix) as f:
                meta = json.loads(f.read())
        except (OSError, ValueError, RecursionError) as exc:
            raise IndexFormatError(f"{meta_path}: cannot read ({str(exc)[:80]}); {fix}") from None
        meta = check_meta(meta, meta_path, fix)

        def load(name, reader):
            with open_listed(d, name, fix) as f:
                data = check_bytes(d / name, f.read(), meta["files"][name], verify, fix)
            try:
                return reader(io.BytesIO(data))
            except Exception as exc:  # numpy and zipfile raise many kinds on damaged data
                raise IndexFormatError(
                    f"{d / name}: corrupt ({type(exc).__name__}: {str(exc)[:80]}); {fix}"
                ) from None

        tables = {}
        for book in BOOKS:
            cb_path, bits_path = d / CODEBOOK_FILES[book], d / BITS_FILES[book]
            vectors = load(CODEBOOK_FILES[book], load_npy)
            exp = (meta["K"][book], meta["D"][book])
            if vectors.dtype != np.float32 or vectors.shape != tuple(exp):
                raise IndexFormatError(
                    f"{cb_path}: expected float32 {tuple(exp)}, found {vectors.dtype} "
                    f"{vectors.shape}; {fix}"
                )
            if not np.all(np.isfinite(vectors)):
                raise IndexFormatError(f"{cb_path}: holds NaN or infinite values; {fix}")
            arrays = load(BITS_FILES[book], lambda b: load_npz(b, TABLE_ARRAYS))
            pairs, packed = arrays["pairs"], arrays["packed"]
            E = meta["E_star"][book]
            if (
                pairs.shape != (E, 2)
                or packed.shape != (exp[0], (E + 7) // 8)
                or not np.issubdtype(pairs.dtype, np.integer)
                or packed.dtype != np.uint8
            ):
                raise IndexFormatError(
                    f"{bits_path}: expected integer pairs ({E}, 2) and uint8 packed ({exp[0]}, "
                    f"{(E + 7) // 8}), found {pairs.dtype} {pairs.shape} and {packed.dtype} "
                    f"{packed.shape}; {fix}"
                )
            if pairs.size and (pairs.min() < 0 or pairs.max() >= exp[0]):
                raise IndexFormatError(f"{bits_path}: pair indices outside 0..{exp[0] - 1}; {fix}")
            arrays["pairs"] = pairs.astype(np.int64)
            tables[book] = _checked_tables(vectors, arrays, bits_path, cb_path.name, fix)
        idx = cls(
            tables,
            meta["report"],
            ivf_nlist=meta["ivf_nlist"],
            seed=meta["seed"],
            faiss_indexes=meta["faiss_indexes"],
        )
        if meta["grid"] is not None:
            idx.grid = (int(meta["grid"][0]), int(meta["grid"][1]))
            _read_rows(idx, d, meta, verify, fix)
            # The scales were estimated at build time and stored: estimating them again would
            # cost seconds on every open.
            idx.scales = meta["scales"]
        for name in meta["faiss_files"]:  # validated against FLAT_FILES / IVF_FILES
            idx._pending[name] = (open_listed(d, name, fix), meta["files"][name], verify, fix)
        return idx


def _checked_tables(
    vectors: np.ndarray, arrays: dict, path: Path, codebook: str, fix: str
) -> CodebookTables:
    """The `CodebookTables` stored in a bits file, checked against the codebook ``vectors``.

    Shapes and dtypes; every code has its representative's vector; and for `SPOT_CHECK_CODES`
    representatives the bits, Hamming, squared-distance and Gram rows computed again from the
    codebook as `CodebookTables.build` does (floats up to rounding: another CPU may round a
    sum differently). Computing every table again would cost ~100 ms per codebook.
    """
    K = vectors.shape[0]
    reps, rep_of = arrays["reps"], arrays["rep_of"]
    R = reps.shape[0] if reps.ndim == 1 else 0
    expected = {
        "reps": ((R,), np.int64),
        "rep_of": ((K,), np.int64),
        "hamming": ((R, R), np.int32),
        "sqeuclid": ((R, R), np.float64),
        "gram": ((R, R), np.float64),
        "sqnorm": ((R,), np.float64),
    }
    for name, (shape, dtype) in expected.items():
        a = arrays[name]
        if a.shape != shape or a.dtype != dtype:
            raise IndexFormatError(
                f"{path}: {name} should be {np.dtype(dtype)} {shape} (K = {K}, {R} "
                f"representatives), found {a.dtype} {a.shape}; {fix}"
            )

    def bad(what: str) -> IndexFormatError:
        return IndexFormatError(f"{path}: {what} ({codebook} is another codebook?); {fix}")

    if R < 1 or np.any(np.diff(reps) <= 0) or reps[0] < 0 or reps[-1] >= K:
        raise bad(f"the representatives are not increasing codes of 0..{K - 1}")
    if rep_of.min() < 0 or rep_of.max() >= R or not np.array_equal(rep_of[reps], np.arange(R)):
        raise bad("rep_of does not map every representative to itself")
    if not np.array_equal(vectors[reps[rep_of]], vectors):
        raise bad("a code's vector differs from its representative's")
    t = CodebookTables(vectors=vectors, **{n: arrays[n] for n in TABLE_ARRAYS})
    if not np.array_equal(t.packed, t.packed[reps[rep_of]]):
        raise bad("identical codes have different bits")
    e = vectors.astype(np.float64)
    v = e[reps]
    for i in _spot_rows(R, SPOT_CHECK_CODES).tolist():
        diff = e - e[reps[i]]  # as binarize.squared_distances computes row reps[i]
        row = np.einsum("kd,kd->k", diff, diff)
        bits = hyperplane_bits(row[None], t.pairs[:, 0], t.pairs[:, 1], codes=np.zeros(1, int))
        if not np.array_equal(bits[0], t.packed[reps[i]]):
            raise bad(f"the stored bits of code {reps[i]} do not match its hyperplanes")
        ham = np.bitwise_count(t.packed[reps[i]] ^ t.packed[reps]).sum(axis=1)
        if not np.array_equal(ham, t.hamming[i]):
            raise bad(f"Hamming table row {i} does not match the bits")
        for name, found, expect in (
            ("sqeuclid", t.sqeuclid[i], row[reps]),
            ("gram", t.gram[i], v @ v[i]),
            ("sqnorm", t.sqnorm[i : i + 1], v[i : i + 1] @ v[i]),
        ):
            if not np.allclose(found, expect, rtol=1e-9, atol=1e-12):
                raise bad(f"{name} row {i} does not match the codebook")
    return t


def _read_rows(idx: IndexStorage, d: Path, meta: dict, verify: bool, fix: str) -> None:
    """Map the stored rows of ``d`` into ``idx`` (whose tables and grid are set), checked.

    Beyond size and `sum64`: dtypes and shapes, representative ids within the codebook, and on
    `SPOT_CHECK_ROWS` rows the agreement of every derived array (row norms, volume ids, the
    fastscan layout) with the codes, so that files of another index, consistently listed, are
    refused too. The full scans this would take (the layout alone is 0.8 s at 1M rows) are
    what storing the arrays saves.
    """
    assert idx.grid is not None
    n, n_vol = meta["ntotal"], meta["n_volumes"]
    P = idx.grid[0] * idx.grid[1]

    def mapped(name: str, dtype, shape: tuple) -> np.ndarray:
        array = map_npy(d, name, meta["files"][name], verify, fix)
        if array.dtype != dtype or array.shape != shape:
            raise IndexFormatError(
                f"{d / name}: expected {np.dtype(dtype)} {shape} ({META_FILE}: ntotal {n}, "
                f"grid {list(idx.grid or ())}), found {array.dtype} {array.shape}; {fix}"
            )
        return array

    def bad(name: str, what: str) -> IndexFormatError:
        return IndexFormatError(f"{d / name}: {what}; {fix}")

    spot = _spot_rows(n)
    for book in BOOKS:
        t = idx.tables[book]
        codes = mapped(CODES_FILES[book], t.code_dtype, (n, P))
        if codes.size and int(codes.max()) >= t.n_reps:
            raise bad(
                CODES_FILES[book],
                f"representative id {int(codes.max())}, the {book} codebook has {t.n_reps}",
            )
        sq = mapped(SQNORM_FILES[book], np.float64, (n,))
        if not np.array_equal(sq[spot], t.row_sqnorms(codes[spot])):
            raise bad(SQNORM_FILES[book], f"the row norms do not match {CODES_FILES[book]}")
        idx.codes[book], idx.row_sqnorm[book] = codes, sq
    ids = mapped(VOLUME_FILES["volume_ids"], np.int64, (n,))
    dense = mapped(VOLUME_FILES["volume_index"], np.int64, (n,))
    unique = mapped(VOLUME_FILES["volume_unique"], np.int64, (n_vol,))
    if n_vol and np.any(np.diff(unique) <= 0):
        raise bad(VOLUME_FILES["volume_unique"], "volume ids not strictly increasing")
    if n and (int(dense.min()) < 0 or int(dense.max()) >= n_vol):
        raise bad(VOLUME_FILES["volume_index"], f"volume numbers outside 0..{n_vol - 1}")
    if n and not np.array_equal(unique[dense[spot]], ids[spot]):
        raise bad(VOLUME_FILES["volume_ids"], "the volume ids do not match volume_index.npy")
    idx.volume_ids, idx._vol_index, idx._vol_unique = ids, dense, unique
    if meta["fastscan_layout"]:
        if any(idx.tables[b].n_reps > 256 for b in BOOKS):
            raise bad(FASTSCAN_FILE, "a codebook has more than 256 distinct vectors")
        layout = mapped(FASTSCAN_FILE, np.uint8, (max(1, -(-n // BLOCK)), 2 * P, BLOCK))
        both = np.concatenate([idx.codes[b][spot] for b in BOOKS], axis=1)
        if n and not np.array_equal(layout[spot // BLOCK, :, spot % BLOCK], both):
            raise bad(FASTSCAN_FILE, f"the layout does not match {', '.join(CODES_FILES.values())}")
        idx._codes_t = layout
