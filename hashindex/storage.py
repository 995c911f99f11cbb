"""Persistence of a `HashIndex`: its files, their checksums, and reading them back safely.

An index directory holds ``hashindex.json`` (written last: format, shapes, scales, and the size
and sha256 of every other file), the codebooks (``codebook_*.npy``), the kept hyperplanes and
packed bits (``bits_*.npz``) and the FAISS indexes (``faiss_*.index``). Names come from the
fixed list `INDEX_FILES`, never from a file's content. The small files are verified when the
index is read; a FAISS file when an engine first needs it, hashed while faiss reads it.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import time
from pathlib import Path
from typing import Any, Self

import faiss
import numpy as np

from hashindex.distances import BOOKS, DISTANCES, MODES, CodebookTables
from hashindex.engines import ENGINES, FaissHamming
from hashindex.errors import IndexFormatError
from hashindex.fileio import atomic_write
from hashindex.state import IndexState

# 2: hashindex.json lists the size and sha256 of every file ("files"); FAISS files serialized.
FORMAT_VERSION = 2
# The file names of an index: a fixed list, so that no name read from a file is ever opened.
META_FILE = "hashindex.json"
CODEBOOK_FILES = {b: f"codebook_{b}.npy" for b in BOOKS}
BITS_FILES = {b: f"bits_{b}.npz" for b in BOOKS}
FLAT_FILES = {m: f"faiss_{m}.index" for m in MODES}
IVF_FILES = {m: f"faiss_ivf_{m}.index" for m in MODES}
INDEX_FILES = (
    META_FILE,
    *CODEBOOK_FILES.values(),
    *BITS_FILES.values(),
    *FLAT_FILES.values(),
    *IVF_FILES.values(),
)


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
            f"{FORMAT_VERSION}; {fix} with this version of hashindex"
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
    unlisted = [
        n
        for n in (*CODEBOOK_FILES.values(), *BITS_FILES.values(), *names)
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

    def write(self, directory: str | Path) -> None:
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
            "format": "hashindex",
            "format_version": FORMAT_VERSION,
            "K": {b: self.tables[b].K for b in BOOKS},
            "D": {b: int(self.tables[b].vectors.shape[1]) for b in BOOKS},
            "E_star": {b: int(self.tables[b].pairs.shape[0]) for b in BOOKS},
            "grid": list(self.grid) if self.grid else None,
            "ntotal": self.ntotal,
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
    def read(
        cls,
        directory: str | Path,
        codes_normal: np.ndarray,
        codes_abnormal: np.ndarray,
        volume_ids: np.ndarray,
        *,
        verify: bool = True,
    ) -> Self:
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
                raise IndexFormatError(
                    f"{d / name}: corrupt ({type(exc).__name__}: {str(exc)[:80]}); {fix}"
                ) from None

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
                    f"{vectors.shape}; {fix}"
                )
            if not np.all(np.isfinite(vectors)):
                raise IndexFormatError(f"{cb_path}: holds NaN or infinite values; {fix}")
            pairs, packed = load(BITS_FILES[book], read_bits)
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
            t = CodebookTables.build(vectors, pairs.astype(np.int64))
            if not np.array_equal(t.packed, packed):
                raise IndexFormatError(
                    f"{bits_path}: the stored bits do not match {cb_path.name} (expected the "
                    f"hyperplane bits of that codebook); {fix}"
                )
            tables[book] = t
        idx = cls(
            tables,
            meta["report"],
            ivf_nlist=meta["ivf_nlist"],
            seed=meta["seed"],
            faiss_indexes=meta["faiss_indexes"],
        )
        n = volume_ids.shape[0] if isinstance(volume_ids, np.ndarray) else -1
        if n != meta["ntotal"]:
            raise IndexFormatError(
                f"{meta_path}: ntotal {meta['ntotal']}, but {n} volume ids / code rows were "
                f"given; pass the codes.zarr arrays this index was built from, or {fix}"
            )
        if meta["grid"] is not None:
            idx.grid = tuple(meta["grid"])
            # The scales were estimated at build time and stored: estimating them again would
            # cost seconds on every open.
            idx._append(codes_normal, codes_abnormal, volume_ids, estimate_scales=False)
            idx.scales = meta["scales"]
        for name in meta["faiss_files"]:  # validated against FLAT_FILES / IVF_FILES
            idx._pending[name] = (_open_listed(d, name, fix), meta["files"][name], verify, fix)
        return idx
