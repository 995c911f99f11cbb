"""Reading the listed files of an index directory safely, and the checksums they are read by.

Every reader here opens a name of the fixed list in `hashindex.files` inside its folder only,
never through a symbolic link, and compares what it read with the size and checksum
hashindex.json records before anything trusts it. Nothing here imports faiss until a FAISS file
is read.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from crashsafe import CheckedReadError, check_content, open_regular
from crashsafe.checked_read import MISSING, NOT_REGULAR, SIZE, UNREADABLE
from hashindex.errors import IndexFormatError
from hashindex.files import META_FILE

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


# numpy parses every .npy header with ast.literal_eval. CPython 3.11 keeps the AST
# constructor's recursion depth in interpreter-wide state (python/cpython#106905): when a
# garbage collection inside one parse runs a finaliser and the GIL passes to a thread that
# parses too, either raises "SystemError: AST constructor recursion depth mismatch", and a
# sound file was reported corrupt (shards are opened in threads). Parsing one at a time costs
# microseconds per file.
NUMPY_HEADER_LOCK = threading.Lock()


def load_npy(source) -> np.ndarray:
    """np.load of one .npy (a path or a file object), safe to call from several threads."""
    with NUMPY_HEADER_LOCK:
        return np.load(source, allow_pickle=False)


def load_npz(source, names=None) -> dict[str, np.ndarray]:
    """The arrays of an .npz (all, or `names`), read whole; safe from several threads."""
    with NUMPY_HEADER_LOCK, np.load(source, allow_pickle=False) as npz:
        return {name: npz[name] for name in (npz.files if names is None else names)}


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def file_entry(data: bytes, *, fast: bool = False) -> dict:
    """size and sha256 of a file's bytes; ``fast``: also its `sum64` (what `read` checks)."""
    entry = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    if fast:
        entry["sum64"] = sum64(data)
    return entry


def check_bytes(path: Path, data: bytes, entry: dict, verify: bool, fix: str) -> bytes:
    """``data`` (read from ``path``) if it has the size and sha256 hashindex.json records."""
    try:
        return check_content(path, data, entry["size"], entry["sha256"] if verify else None)
    except CheckedReadError as exc:
        raise _format_error(exc, fix) from None


def _format_error(exc: CheckedReadError, fix: str) -> IndexFormatError:
    """A checked read's fault in hashindex's words: what differs from hashindex.json, and the fix."""
    path, found, expected = exc.path, exc.found, exc.expected
    if exc.fault == MISSING:
        listed = "" if path.name == META_FILE else f" ({META_FILE} lists it)"
        return IndexFormatError(f"{path}: missing{listed}; {fix}")
    if exc.fault == UNREADABLE:
        return IndexFormatError(f"{path}: cannot read it ({found}); {fix}")
    if exc.fault == NOT_REGULAR:
        return IndexFormatError(f"{path}: not a regular file; {fix}")
    if exc.fault == SIZE:
        return IndexFormatError(
            f"{path}: {found} bytes, {META_FILE} records {expected}; the file was "
            f"truncated or changed after it was written; {fix}"
        )
    return IndexFormatError(
        f"{path}: sha256 {found[:16]}…, {META_FILE} records {expected[:16]}…; the "
        f"file was damaged or changed after it was written; {fix}"
    )


def read_faiss_checked(f, path: Path, entry: dict, verify: bool, fix: str):
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


def open_listed(d: Path, name: str, fix: str):
    """An open binary file of the listed file ``name`` in ``d`` (never through a symlink)."""
    try:
        return open_regular(d / name)
    except CheckedReadError as exc:
        raise _format_error(exc, fix) from None


def map_npy(d: Path, name: str, entry: dict, verify: bool, fix: str) -> np.ndarray:
    """The .npy file ``name`` as a read-only array on a memory map of the file.

    Size, and (``verify``) `sum64`, as hashindex.json records; a plain C-order array whose
    data fills the rest of the file. The caller checks dtype and shape. The map holds the file
    that was opened, so a later replacement of the file (a new build renames) changes nothing.
    """
    path = d / name
    with open_listed(d, name, fix) as f:
        size = os.fstat(f.fileno()).st_size
        if size != entry["size"]:
            raise IndexFormatError(
                f"{path}: {size} bytes, {META_FILE} records {entry['size']}; the file was "
                f"truncated or changed after it was written; {fix}"
            )
        try:
            version = np.lib.format.read_magic(f)
            with NUMPY_HEADER_LOCK:
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
