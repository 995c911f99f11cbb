"""Persistence of a `HashIndex`: its files, their checksums, and reading them back safely.

An index directory holds ``hashindex.json`` (written last: format, shapes, scales, and the size
and checksums of every other file), the codebooks (``codebook_*.npy``), the kept hyperplanes and
packed bits (``bits_*.npz``), the stored rows (`ARRAY_FILES`: representative ids, row norms,
volumes and, for codebooks of at most 256 distinct vectors, the fastscan engine's
block-transposed layout) and the FAISS indexes (``faiss_*.index``). Names come from the fixed
list `INDEX_FILES`, never from a file's content.

`read` needs nothing but the folder: the small files are read and verified (sha256), the row
arrays memory-mapped and verified with `sum64`, a FAISS file hashed while faiss reads it when
an engine first needs it. Nothing here imports faiss until a FAISS file is read or written.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import mmap
import os
import stat
import time
from pathlib import Path
from typing import Any, Self

import numpy as np

from crashsafe import atomic_write
from hashindex.binarize import hyperplane_bits
from hashindex.distances import BOOKS, DISTANCES, MODES, CodebookTables
from hashindex.engines import ENGINES, FaissHamming
from hashindex.errors import IndexFormatError
from hashindex.fastscan import BLOCK
from hashindex.state import IndexState

# 3: the stored rows are files of the index (ARRAY_FILES, memory-mapped, checked by sum64), so
#    `read` takes no code arrays. 2: hashindex.json lists the size and sha256 of every file.
FORMAT_VERSION = 3
# The file names of an index: a fixed list, so that no name read from a file is ever opened.
META_FILE = "hashindex.json"
CODEBOOK_FILES = {b: f"codebook_{b}.npy" for b in BOOKS}
BITS_FILES = {b: f"bits_{b}.npz" for b in BOOKS}
# (N, P) representative ids per codebook, uint8 (at most 256 distinct vectors) or uint16
CODES_FILES = {b: f"codes_{b}.npy" for b in BOOKS}
# (N,) float64 squared norm of every stored grid, per codebook (the angular distance needs them)
SQNORM_FILES = {b: f"row_sqnorm_{b}.npy" for b in BOOKS}
# (N,) int64 volume id of each row; (N,) int64 its dense number; (V,) int64 the sorted volume ids
VOLUME_FILES = {
    "volume_ids": "volume_ids.npy",
    "volume_index": "volume_index.npy",
    "volume_unique": "volume_unique.npy",
}
# (ceil(N / 64), 2P, 64) uint8: `hashindex.fastscan.block_transpose` of both books side by side;
# written only when both codebooks fit one byte per code
FASTSCAN_FILE = "fastscan_codes_t.npy"
ARRAY_FILES = (
    *CODES_FILES.values(),
    *SQNORM_FILES.values(),
    *VOLUME_FILES.values(),
    FASTSCAN_FILE,
)
FLAT_FILES = {m: f"faiss_{m}.index" for m in MODES}
IVF_FILES = {m: f"faiss_ivf_{m}.index" for m in MODES}
INDEX_FILES = (
    META_FILE,
    *CODEBOOK_FILES.values(),
    *BITS_FILES.values(),
    *ARRAY_FILES,
    *FLAT_FILES.values(),
    *IVF_FILES.values(),
)
# Rows of every stored array compared with the rows they derive from when an index is read.
SPOT_CHECK_ROWS = 1024
# What bits_*.npz holds: the kept hyperplanes, the packed bits and the tables of `CodebookTables`
TABLE_ARRAYS = ("pairs", "packed", "reps", "rep_of", "hamming", "sqeuclid", "gram", "sqnorm")
# Representatives whose tables `read` computes again from the codebook and compares.
SPOT_CHECK_CODES = 16

# Integrity of the row arrays. sha256 runs at ~1.8 GB/s on this project's CPUs: ~150 ms for the
# ~290 MB of a 1M-slice index on every open, half the 300 ms a cold query may take. `sum64`
# reads the same bytes at memory speed (~30 GB/s; measured 33 ms for 290 MB memory-mapped in a
# fresh process, page faults included, 10 ms once mapped) and still detects any change within
# one 32 KiB block (a flipped byte or bit always). It is checked at open, not lazily: the
# fastscan engine's first query reads the whole layout anyway, so the pass mostly pre-faults
# pages the query would fault in, and a damaged file is refused before any answer. It guards
# against damage, not against a forger: sha256 would not either, as whoever can change a file
# can rewrite hashindex.json (a build's manifest also records each file's sha256).
SUM64_BLOCK = 4096  # 64-bit words per block


def sum64(buffer) -> str:
    """Checksum of a byte buffer: Σ_b (2b + 1) · Σ_{w in block b} w (mod 2^64), as 16 hex digits.

    Blocks b are `SUM64_BLOCK` little-endian 64-bit words (the last shorter; trailing bytes are
    one zero-padded word). A change confined to one block changes that block's sum by δ ≠ 0
    mod 2^64 unless its words' changes cancel; the odd weight keeps δ · (2b + 1) ≠ 0, so any
    flipped bit or byte is detected, as is a swap of blocks whose sums differ.
    """
    data = np.frombuffer(buffer, np.uint8)
    n_words = data.size // 8
    words = data[: n_words * 8].view(np.uint64)
    tail = data[n_words * 8 :]
    if tail.size:
        padded = np.zeros(8, np.uint8)
        padded[: tail.size] = tail
        words = np.concatenate([words, padded.view(np.uint64)])
    full = words.size // SUM64_BLOCK * SUM64_BLOCK
    sums = words[:full].reshape(-1, SUM64_BLOCK).sum(axis=1, dtype=np.uint64)
    if full < words.size:
        sums = np.append(sums, words[full:].sum(dtype=np.uint64))
    weights = np.arange(1, 2 * sums.size, 2, dtype=np.uint64)
    return f"{int((sums * weights).sum(dtype=np.uint64)):016x}"


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


def _file_entry(data: bytes, *, fast: bool = False) -> dict:
    """size and sha256 of a file's bytes; ``fast``: also its `sum64` (what `read` checks)."""
    entry = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    if fast:
        entry["sum64"] = sum64(data)
    return entry


def _check_bytes(path: Path, data: bytes, entry: dict, verify: bool, fix: str) -> bytes:
    """``data`` (read from ``path``) if it has the size and sha256 hashindex.json records."""
    if len(data) != entry["size"]:
        raise IndexFormatError(
            f"{path}: {len(data)} bytes, {META_FILE} records {entry['size']}; the file was "
            f"truncated or changed after it was written; {fix}"
        )
    if verify:
        found = hashlib.sha256(data).hexdigest()
        if found != entry["sha256"]:
            raise IndexFormatError(
                f"{path}: sha256 {found[:16]}…, {META_FILE} records {entry['sha256'][:16]}…; the "
                f"file was damaged or changed after it was written; {fix}"
            )
    return data


def _read_faiss_checked(f, path: Path, entry: dict, verify: bool, fix: str):
    """The FAISS binary index in the open file ``f``, hashed while faiss reads it (one pass)."""
    size = os.fstat(f.fileno()).st_size
    if size != entry["size"]:
        raise IndexFormatError(
            f"{path}: {size} bytes, {META_FILE} records {entry['size']}; the file was "
            f"truncated or changed after it was written; {fix}"
        )
    import faiss

    digest = hashlib.sha256()

    def read(n):
        chunk = f.read(n)
        digest.update(chunk)
        return chunk

    try:
        reader: Any = vars(faiss)["PyCallbackIOReader"]  # a SWIG class, not in the stubs
        raw = faiss.read_index_binary(reader(read))
    except Exception as exc:  # faiss raises RuntimeError and others on bad input
        raise IndexFormatError(f"{path}: corrupt FAISS index ({str(exc)[:80]}); {fix}") from None
    digest.update(f.read())
    if verify and digest.hexdigest() != entry["sha256"]:
        raise IndexFormatError(
            f"{path}: sha256 {digest.hexdigest()[:16]}…, {META_FILE} records "
            f"{entry['sha256'][:16]}…; the file was damaged or changed after it was written; "
            f"{fix}"
        )
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


def _map_npy(d: Path, name: str, entry: dict, verify: bool, fix: str) -> np.ndarray:
    """The .npy file ``name`` as a read-only array on a memory map of the file.

    Size, and (``verify``) `sum64`, as hashindex.json records; a plain C-order array whose
    data fills the rest of the file. The caller checks dtype and shape. The map holds the file
    that was opened, so a later replacement of the file (a new build renames) changes nothing.
    """
    path = d / name
    with _open_listed(d, name, fix) as f:
        size = os.fstat(f.fileno()).st_size
        if size != entry["size"]:
            raise IndexFormatError(
                f"{path}: {size} bytes, {META_FILE} records {entry['size']}; the file was "
                f"truncated or changed after it was written; {fix}"
            )
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        except Exception as exc:  # numpy raises ValueError and others on a damaged header
            raise IndexFormatError(
                f"{path}: corrupt .npy header ({type(exc).__name__}: {str(exc)[:80]}); {fix}"
            ) from None
        offset = f.tell()
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if fortran or dtype.hasobject or offset + nbytes != size:
            raise IndexFormatError(
                f"{path}: expected a C-order array of {nbytes} bytes after a {offset}-byte "
                f"header, found a {size}-byte file (fortran_order={fortran}, {dtype}); {fix}"
            )
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    if verify and sum64(buffer) != entry["sum64"]:
        raise IndexFormatError(
            f"{path}: sum64 {sum64(buffer)}, {META_FILE} records {entry['sum64']}; the file was "
            f"damaged or changed after it was written; {fix}"
        )
    if nbytes == 0:
        return np.zeros(shape, dtype)
    return np.frombuffer(buffer, dtype, count=nbytes // dtype.itemsize, offset=offset).reshape(
        shape
    )


def _spot_rows(n: int, k: int = SPOT_CHECK_ROWS) -> np.ndarray:
    """Up to k rows spread over 0..n-1, the first and last included, increasing.

    Not np.unique, which imports numpy.ma (~10 ms of a new process's first query)."""
    rows = np.linspace(0, n - 1, min(n, k)).astype(np.int64)
    return rows[np.diff(rows, prepend=-1) != 0]


_SHA256_HEX = frozenset("0123456789abcdef")
_SUM64_HEX = frozenset("0123456789abcdef")


def _check_meta(meta, path: Path, fix: str) -> dict:
    """hashindex.json's content, every field checked; IndexFormatError naming the first fault."""

    def bad(what):
        return IndexFormatError(f"{path}: {what}; {fix}")

    if not isinstance(meta, dict):
        raise bad(f"expected a JSON object, found a JSON {type(meta).__name__}")
    if meta.get("format_version") != FORMAT_VERSION or not _is_int(meta.get("format_version")):
        raise IndexFormatError(
            f"{path}: format version {str(meta.get('format_version'))[:20]}, expected "
            f"{FORMAT_VERSION} (an index of an older version lacks the stored rows this version "
            f"reads); {fix} with this version of hashindex"
        )
    for key in ("K", "D", "E_star"):
        value = meta.get(key)
        if not isinstance(value, dict) or not all(
            _is_int(value.get(b)) and value[b] >= (0 if key == "E_star" else 1) for b in BOOKS
        ):
            raise bad(
                f"{key!r} should map normal and abnormal to integers, found {str(value)[:60]!r}"
            )
    grid = meta.get("grid")
    if grid is not None and not (
        isinstance(grid, list) and len(grid) == 2 and all(_is_int(g) and g >= 1 for g in grid)
    ):
        raise bad(f"'grid' should be null or two positive integers, found {str(grid)[:60]!r}")
    checks = {
        "ntotal": lambda v: _is_int(v) and v >= 0,
        "n_volumes": lambda v: _is_int(v) and v >= 0,
        "fastscan_layout": lambda v: isinstance(v, bool),
        "ivf_nlist": lambda v: v is None or (_is_int(v) and v >= 1),
        "seed": _is_int,
        "faiss_indexes": lambda v: isinstance(v, bool),
        "faiss_files": lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
        "scales": lambda v: (
            isinstance(v, dict)
            and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) and x > 0
                for x in v.values()
            )
        ),
        "report": lambda v: isinstance(v, dict),
        "files": lambda v: (
            isinstance(v, dict)
            and all(
                n in INDEX_FILES
                and isinstance(e, dict)
                and isinstance(e.get("sha256"), str)
                and len(e["sha256"]) == 64
                and set(e["sha256"]) <= _SHA256_HEX
                and _is_int(e.get("size"))
                and e["size"] >= 0
                and (
                    n not in ARRAY_FILES
                    or (
                        isinstance(e.get("sum64"), str)
                        and len(e["sum64"]) == 16
                        and set(e["sum64"]) <= _SUM64_HEX
                    )
                )
                for n, e in v.items()
            )
        ),
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
    allowed: list[list[str]] = [[]]
    if meta["faiss_indexes"] and grid is not None:
        allowed = [flat] + ([sorted(flat + ivf)] if meta["ivf_nlist"] is not None else [])
    if sorted(names) not in allowed:
        raise bad(
            f"'faiss_files' lists {str(names)[:120]}, expected "
            f"{' or '.join(str(a) for a in allowed)} for faiss_indexes="
            f"{meta['faiss_indexes']}, ivf_nlist={meta['ivf_nlist']}"
        )
    arrays: list[str] = []
    if grid is not None:
        arrays = [*CODES_FILES.values(), *SQNORM_FILES.values(), *VOLUME_FILES.values()]
        arrays += [FASTSCAN_FILE] if meta["fastscan_layout"] else []
    elif meta["ntotal"] or meta["n_volumes"] or meta["fastscan_layout"]:
        raise bad("an index without a grid holds no rows (ntotal 0, n_volumes 0, no layout)")
    unlisted = [
        n
        for n in (*CODEBOOK_FILES.values(), *BITS_FILES.values(), *arrays, *names)
        if n not in meta["files"]
    ]
    if unlisted:
        raise bad(f"'files' lacks the checksums of {', '.join(unlisted)}")
    return meta


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
                    raw = _read_faiss_checked(f, path, entry, verify, fix)
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

        Every file goes through `hashindex.fileio.atomic_write`; hashindex.json, written last,
        records the size and sha256 of each (and the `sum64` of the row arrays), and `read`
        trusts nothing else. The rows are everything a search needs, so `read` takes nothing
        but the folder.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        files = {}

        def put(name: str, data: bytes) -> None:
            atomic_write(d / name, data)
            files[name] = _file_entry(data, fast=name in ARRAY_FILES)

        for book in BOOKS:
            t = self.tables[book]
            put(CODEBOOK_FILES[book], _npy_bytes(t.vectors))
            # the tables too: computing them again from the codebook costs ~100 ms per book
            put(
                BITS_FILES[book],
                _npz_bytes(**{name: getattr(t, name) for name in TABLE_ARRAYS}),
            )
        if self.grid is not None:
            for book in BOOKS:
                put(CODES_FILES[book], _npy_bytes(self.codes[book]))
                put(SQNORM_FILES[book], _npy_bytes(self.row_sqnorm[book]))
            put(VOLUME_FILES["volume_ids"], _npy_bytes(self.volume_ids))
            put(VOLUME_FILES["volume_index"], _npy_bytes(self._vol_index))
            put(VOLUME_FILES["volume_unique"], _npy_bytes(self._vol_unique))
            if self._fastscan_layout():
                put(FASTSCAN_FILE, _npy_bytes(self._fastscan().codes_t))
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
            "engines": [
                e
                for e in ENGINES
                if not e.startswith("faiss")
                or (e == "faiss-flat" and self.flat)
                or (e == "faiss-ivf" and self.ivf)
            ],
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
                raise IndexFormatError(
                    f"{d / name}: corrupt ({type(exc).__name__}: {str(exc)[:80]}); {fix}"
                ) from None

        def read_bits(buffer):
            with np.load(buffer, allow_pickle=False) as z:
                return {name: z[name] for name in TABLE_ARRAYS}

        tables = {}
        for book in BOOKS:
            cb_path, bits_path = d / CODEBOOK_FILES[book], d / BITS_FILES[book]
            vectors = load(CODEBOOK_FILES[book], lambda b: np.load(b, allow_pickle=False))
            exp = (meta["K"][book], meta["D"][book])
            if vectors.dtype != np.float32 or vectors.shape != tuple(exp):
                raise IndexFormatError(
                    f"{cb_path}: expected float32 {tuple(exp)}, found {vectors.dtype} "
                    f"{vectors.shape}; {fix}"
                )
            if not np.all(np.isfinite(vectors)):
                raise IndexFormatError(f"{cb_path}: holds NaN or infinite values; {fix}")
            arrays = load(BITS_FILES[book], read_bits)
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
            idx._pending[name] = (_open_listed(d, name, fix), meta["files"][name], verify, fix)
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
        array = _map_npy(d, name, meta["files"][name], verify, fix)
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
