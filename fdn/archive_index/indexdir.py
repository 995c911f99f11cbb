"""The index directory: its file names, its manifest, its locks, and how it is read safely.

An index directory (the output of `fdn-index build`) holds, by the names docs/architecture.md fixes:

    manifest.json           format name and version, build status, model checksum, counts, and
                            the size and sha256 of every other file of the index (written last)
    model/                  the model's config.json and weights, so queries encode with the same model
    codes.zarr/             arrays `normal` and `abnormal`, (N, h, w) uint16, chunked along N
    slices.parquet          row i describes row i of the code arrays
    slice_arrays.npz        the columns of slices.parquet a query reads, derived from it at
                            build time (see "slice arrays" below), so a query reads no Parquet
    codebook_*.npy, bits_*.npz, codes_*.npy, row_sqnorm_*.npy, volume_*.npy,
    fastscan_codes_t.npy, hashindex.json, faiss_*.index   written by `hashindex`: a query
                            reads these (memory-mapped), never codes.zarr
    encoded/<case>.npz      the build journal: one file per encoded case (see `fdn.archive_index.build`)
    build_plan.json         the cases of this index in row order, and the model they are encoded with
    .build.lock, .swap.lock the lock files (see below)

Trust. A reader trusts nothing but the manifest: every file it lists is checked for its size,
and for its sha256 before it is used (the slice table, slice_arrays.npz and hashindex.json
when the index is opened; the FAISS files, the model weights and codes.zarr on first use, as
only some queries need them). hashindex.json, itself checked so, records the checksums by
which `HashIndex.read` checks the hash index's files (a fast `sum64` for its large row arrays).
Names come from a fixed list (`is_index_file`), never from a file's content, so no file can
send a reader out of the folder.

Locks (fcntl.flock on two empty files). A build holds `.build.lock` exclusively for its whole
run, so a second build of the same directory fails at once. It assembles the new files in a
staging folder, then takes `.swap.lock` exclusively for the short swap: the manifest says
"building", the new files are renamed into place, the new manifest is written last. Readers
take `.swap.lock` shared while they read the manifest and open the files, so they see the last
complete index, never a mix; what they opened stays theirs after a later swap.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from crashsafe import (
    CheckedReadError,
    atomic_write_json,
    checked_read,
    exclusive_lock,
    read_checked,
    sha256_hex,
)
from fdn.errors import IndexDirError
from hashindex.index import INDEX_FILES as HASHINDEX_FILES
from hashindex.storage import ARRAY_FILES as HASHINDEX_ARRAYS
from hashindex.storage import FASTSCAN_FILE

if TYPE_CHECKING:  # pyarrow is imported where a slice table is parsed (~0.1 s)
    import pyarrow as pa

log = logging.getLogger(__name__)

FORMAT_NAME = "fdn-index"
# 2: the manifest lists every file with its size and sha256 ("files").
FORMAT_VERSION = 2

MANIFEST = "manifest.json"
PLAN = "build_plan.json"
CODES = "codes.zarr"
SLICES = "slices.parquet"
SLICE_ARRAYS = "slice_arrays.npz"
MODEL_DIR = "model"
MODEL_FILES = (f"{MODEL_DIR}/config.json", f"{MODEL_DIR}/weights.pt")
ENCODED_DIR = "encoded"
BUILD_LOCK = ".build.lock"
SWAP_LOCK = ".swap.lock"

STATUS_BUILDING = "building"
STATUS_COMPLETE = "complete"

# Files every complete index lists in its manifest (FAISS files only when built, the fastscan
# layout only for codebooks of at most 256 distinct vectors).
REQUIRED_FILES = (
    SLICES,
    *MODEL_FILES,
    *(n for n in HASHINDEX_FILES if not n.startswith("faiss_") and n != FASTSCAN_FILE),
    f"{CODES}/zarr.json",
    f"{CODES}/normal/zarr.json",
    f"{CODES}/abnormal/zarr.json",
)
_TOP_FILES = frozenset((SLICES, SLICE_ARRAYS, *MODEL_FILES, *HASHINDEX_FILES))
_ZARR_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
MAX_ZARR_DEPTH = 8


def fix_for(index_dir: Path) -> str:
    """The usual remedy for a damaged or inconsistent index directory."""
    return (
        f"Run `fdn-index build ARCHIVE --model MODEL --index {index_dir}` again: it re-assembles "
        f"the index from its build journal ({ENCODED_DIR}/), re-encoding what is missing"
    )


def is_index_file(name: str) -> bool:
    """Whether `name` (relative, '/'-separated) may appear in a manifest: a fixed list of names,
    or a plain path of at most a few segments inside codes.zarr/ (no '..', no hidden names)."""
    if not isinstance(name, str):
        return False
    if name in _TOP_FILES:
        return True
    parts = name.split("/")
    return (
        len(parts) >= 2
        and len(parts) <= MAX_ZARR_DEPTH
        and parts[0] == CODES
        and all(_ZARR_SEGMENT.match(p) for p in parts[1:])
    )


@dataclass
class Manifest:
    """What `manifest.json` says about an index directory."""

    model_checksum: str
    preset: str
    input_size: int
    grid: tuple[int, int]
    n_slices: int
    n_cases: int
    status: str = STATUS_BUILDING
    skipped_cases: list[str] = field(default_factory=list)
    # The archive folders (absolute) the cases were read from: readers of source images (the
    # montage) stay inside them, whatever the slice table names.
    archive_roots: list[str] = field(default_factory=list)
    hashindex: dict = field(default_factory=dict)
    # name (relative to the index directory) -> {"sha256": hex digest, "size": bytes}
    files: dict[str, dict] = field(default_factory=dict)
    fdn_index_version: str = ""
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _valid_files(value) -> bool:
    return isinstance(value, dict) and all(
        is_index_file(name)
        and isinstance(entry, dict)
        and isinstance(entry.get("sha256"), str)
        and _SHA256.match(entry["sha256"]) is not None
        and _is_int(entry.get("size"))
        and entry["size"] >= 0
        for name, entry in value.items()
    )


# field -> (required, check, what it should be)
_FIELDS = {
    "model_checksum": (
        True,
        lambda v: isinstance(v, str) and _SHA256.match(v),
        "a sha256 hex digest",
    ),
    "preset": (True, lambda v: isinstance(v, str), "a string"),
    "input_size": (True, lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "grid": (
        True,
        lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(s) and s >= 1 for s in v),
        "a list of two positive integers",
    ),
    "n_slices": (True, lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "n_cases": (True, lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "status": (True, lambda v: v in (STATUS_BUILDING, STATUS_COMPLETE), "'building' or 'complete'"),
    "skipped_cases": (False, _is_str_list, "a list of case ids"),
    "archive_roots": (False, _is_str_list, "a list of folders"),
    "hashindex": (False, lambda v: isinstance(v, dict), "an object"),
    "files": (True, _valid_files, "an object mapping index file names to {sha256, size}"),
    "fdn_index_version": (False, lambda v: isinstance(v, str), "a string"),
}


def parse_manifest(data, path: Path) -> Manifest:
    """The Manifest a decoded `manifest.json` describes; IndexDirError for anything else."""
    fix = fix_for(path.parent)
    if not isinstance(data, dict):
        raise IndexDirError(
            f"{path}: expected a JSON object (an fdn-index manifest), found a JSON "
            f"{type(data).__name__}. {fix}."
        )
    if data.get("format") != FORMAT_NAME:
        raise IndexDirError(
            f"{path}: not an fdn-index manifest (format={str(data.get('format'))[:40]!r}, "
            f"expected {FORMAT_NAME!r}). Pass the directory written by `fdn-index build`."
        )
    if data.get("format_version") != FORMAT_VERSION or not _is_int(data.get("format_version")):
        raise IndexDirError(
            f"{path}: index format version {str(data.get('format_version'))[:20]}, this fdn-index "
            f"reads version {FORMAT_VERSION}. Rebuild the index with this version of fdn-index "
            f"(a new --index directory, or delete this one first)."
        )
    values = {}
    for name, (required, check, what) in _FIELDS.items():
        if name not in data:
            if required:
                raise IndexDirError(f"{path}: the manifest has no {name!r} ({what}). {fix}.")
            continue
        if not check(data[name]):
            raise IndexDirError(
                f"{path}: {name!r} should be {what}, found {str(data[name])[:60]!r}. {fix}."
            )
        values[name] = data[name]
    values["grid"] = tuple(values["grid"])
    manifest = Manifest(**values)
    if manifest.status == STATUS_COMPLETE:
        missing = [name for name in REQUIRED_FILES if name not in manifest.files]
        if missing and set(missing) <= set(HASHINDEX_ARRAYS):
            raise IndexDirError(
                f"{path}: an index written before the hash index stored its rows (it lists no "
                f"{', '.join(missing)}); this version opens it without reading codes.zarr. "
                f"{fix}."
            )
        if missing:
            raise IndexDirError(
                f"{path}: the manifest lists no {', '.join(missing)}; a complete index lists "
                f"every file with its checksum. {fix}."
            )
        weights = manifest.files[MODEL_FILES[1]]["sha256"]
        if weights != manifest.model_checksum:
            raise IndexDirError(
                f"{path}: model_checksum {manifest.model_checksum[:12]}… but the listed "
                f"{MODEL_FILES[1]} has sha256 {weights[:12]}…. {fix}."
            )
    return manifest


def write_manifest(index_dir: Path, manifest: Manifest) -> None:
    data = asdict(manifest)
    data["grid"] = list(manifest.grid)
    atomic_write_json(Path(index_dir) / MANIFEST, data)


def looks_like_archive(folder: Path) -> bool:
    """Whether `folder` holds case folders of NIfTI files (an archive, not an index)."""
    try:
        for sub in list(folder.iterdir())[:50]:
            if sub.is_dir() and any(sub.glob(f"{sub.name}_*.nii*")):
                return True
    except OSError:
        return False
    return False


def read_manifest(index_dir: Path, *, require_complete: bool = True) -> Manifest:
    """Read and check `manifest.json`; raise IndexDirError saying what is wrong and the fix."""
    index_dir = Path(index_dir)
    path = index_dir / MANIFEST
    if not index_dir.is_dir():
        raise IndexDirError(
            f"{index_dir}: no index directory here. Build one with `fdn-index build ARCHIVE "
            f"--index {index_dir}`."
        )
    if not path.is_file():
        if looks_like_archive(index_dir):
            raise IndexDirError(
                f"{index_dir}: looks like an image archive (case folders of NIfTI files), not "
                f"an index. Build an index of it with `fdn-index build {index_dir} --index "
                f"INDEX_DIR` and pass --index INDEX_DIR."
            )
        if not (index_dir / PLAN).is_file():
            raise IndexDirError(
                f"{index_dir}: not an fdn-index directory (no {MANIFEST}, no {PLAN}). Pass the "
                f"directory written by `fdn-index build ARCHIVE --index DIR`."
            )
        raise IndexDirError(
            f"{path}: missing. {index_dir} is not a finished index (an interrupted build?). "
            f"Run `fdn-index build` again with the same arguments to resume it."
        )
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        raise IndexDirError(
            f"{path}: unreadable JSON ({type(exc).__name__}: {str(exc)[:80]}). "
            f"{fix_for(index_dir)}."
        ) from None
    manifest = parse_manifest(data, path)
    if require_complete and manifest.status != STATUS_COMPLETE:
        raise IndexDirError(
            f"{path}: status is {manifest.status!r}, the build did not finish. Run `fdn-index "
            f"build` again with the same arguments to resume it."
        )
    return manifest


# ---------------------------------------------------------------------------- checksums


def file_entries(folder: Path, prefix: str = "") -> dict[str, dict]:
    """{relative name: {sha256, size}} of every regular file under `folder` (sorted)."""
    entries = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            name = prefix + path.relative_to(folder).as_posix()
            entries[name] = {"sha256": sha256_hex(data), "size": len(data)}
    return entries


def read_listed(index_dir: Path, manifest: Manifest, name: str, *, verify: bool) -> bytes:
    """The content of the listed file `name`, checked against the manifest (its size before
    it is read, and with ``verify`` its sha256); IndexDirError naming the fault and the fix."""
    path = index_dir / name
    entry = manifest.files.get(name)
    fix = fix_for(index_dir)
    if entry is None:
        raise IndexDirError(f"{index_dir / MANIFEST}: does not list {name}. {fix}.")
    try:
        return read_checked(path, entry["size"], entry["sha256"] if verify else None)
    except CheckedReadError as exc:
        raise IndexDirError(_listed_fault(exc, entry, fix)) from None


def _listed_fault(exc: CheckedReadError, entry: dict, fix: str) -> str:
    path = exc.path
    if exc.fault == checked_read.MISSING:
        return f"{path}: missing; the manifest lists it ({entry['size']} bytes). {fix}."
    if exc.fault == checked_read.UNREADABLE:
        return f"{path}: cannot read it ({exc.found}). {fix}."
    if exc.fault == checked_read.NOT_REGULAR:
        return f"{path}: not a regular file. {fix}."
    if exc.fault == checked_read.SIZE:
        return (
            f"{path}: {exc.found} bytes, the manifest records {exc.expected}; the file was "
            f"truncated or changed after the build. {fix}."
        )
    return (
        f"{path}: sha256 {exc.found[:16]}…, the manifest records {exc.expected[:16]}…; "
        f"the file was damaged or changed after the build. {fix}."
    )


# ---------------------------------------------------------------------------- locks


@contextlib.contextmanager
def build_lock(index_dir: Path) -> Iterator[None]:
    """Hold the directory's build lock (exclusive, non-blocking) for the duration."""
    path = Path(index_dir) / BUILD_LOCK
    with exclusive_lock(
        path,
        held=lambda: IndexDirError(
            f"{index_dir}: another build holds this index directory (lock {path}). Wait for "
            f"it to finish, then run this build again."
        ),
    ):
        yield


@contextlib.contextmanager
def swap_lock(index_dir: Path, *, shared: bool) -> Iterator[None]:
    """Readers (shared) see no swap in progress; the build (exclusive) waits for readers.

    A reader in a directory without a lock file (or one it may not open) reads unlocked:
    no build ever ran there, or the directory is read-only.
    """
    path = Path(index_dir) / SWAP_LOCK
    try:
        if shared:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError:
        if not shared:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- slice table


def _is_text(t: pa.DataType) -> bool:
    """Strings, plain or dictionary-encoded (as `read_slice_table` reads the repetitive ones)."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_integer(t: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t)


def _is_integer_or_null(t: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_null(t)


# column -> (what it holds, type check)
SLICE_COLUMNS = {
    "row": ("integers", _is_integer),
    "case": ("strings", _is_text),
    "slice": ("integers", _is_integer),
    "volume": ("integers", _is_integer),
    "source": ("strings", _is_text),
    "lesion_area": ("integers or nulls", _is_integer_or_null),
    "model_checksum": ("strings", _is_text),
}
# Read dictionary-encoded: one value per case (or one per index) repeated on every row; as plain
# strings they cost ~0.5 s to read at 1M rows (model_checksum alone is 64 MB of text).
DICTIONARY_COLUMNS = ("case", "source", "model_checksum")

# pyarrow's name of a fixed-width type -> numpy's (pyarrow itself is imported on use)
_NUMPY_TYPES = {
    **{t: t for t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")},
    "float": "float32",
    "double": "float64",
}


def _text_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, list]:
    """A text column as (N,) int64 codes into a list of values: its dictionary, or one made
    here. Two codes may name the same value only in a crafted file, which is then refused."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    column = column.unify_dictionaries()
    values = column.chunk(0).dictionary.to_pylist() if column.num_chunks else []
    indices = pa.chunked_array([c.indices for c in column.chunks], column.type.index_type)
    return column_to_numpy(indices).astype(np.int64, copy=False), values


def column_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """(N,) numpy array of a slice-table column, as ``to_numpy(zero_copy_only=False)`` gives it
    (integers with nulls as float64 with NaN, strings as objects with None), without pyarrow's
    conversion, which imports pandas (~0.5 s of a query's start-up)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_integer(column.type) and column.null_count:
        column = pc.fill_null(pc.cast(column, pa.float64()), float("nan"))
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if str(array.type) in _NUMPY_TYPES and not array.null_count:
        dtype = np.dtype(_NUMPY_TYPES[str(array.type)])
        data = array.buffers()[1]
        if data is None:
            return np.zeros(0, dtype)
        return np.frombuffer(data, dtype, count=len(array), offset=array.offset * dtype.itemsize)
    if pa.types.is_dictionary(array.type) and not array.null_count:  # text read as codes
        values = np.array(array.dictionary.to_pylist(), dtype=object)
        return values[column_to_numpy(pa.chunked_array([array.indices]))]
    return np.array(array.to_pylist(), dtype=object)


class SliceTable(Mapping):
    """The checked slice table: column name -> (N,) numpy array, converted on first access.

    Rows of one volume are contiguous, in slice order 0..n-1; `starts[v]`, `counts[v]` and
    `cases[v]` describe volume v. The columns come from slices.parquet (`arrow`, a pyarrow
    Table) or, where the index has a current slice_arrays.npz, from it (`arrow` is None, and
    pyarrow is not imported): row and slice follow from the volumes, lesion_area is stored
    per row, and every text column per volume (`text`).
    """

    def __init__(
        self,
        volume: np.ndarray,
        starts: np.ndarray,
        cases: list[str],
        *,
        arrow: pa.Table | None = None,
        names: list[str] | None = None,
        text: dict[str, list] | None = None,
        lesion_area: np.ndarray | None = None,
    ):
        self.arrow = arrow
        self.names = list(arrow.column_names) if arrow is not None else list(names or [])
        self.starts = starts  # (V,) int64 first row of each volume
        self.counts = np.diff(np.append(starts, len(volume))).astype(np.int64)
        self.cases = cases  # (V,) case id of each volume
        self._text = text or {}  # name -> (V,) values, None for a null
        self._lesion_area = lesion_area  # (N,) int32, -1 for a null
        self._columns: dict[str, np.ndarray] = {"volume": volume}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._columns:
            if name not in self.names:
                raise KeyError(name)
            self._columns[name] = self._column(name)
        return self._columns[name]

    def _column(self, name: str) -> np.ndarray:
        if self.arrow is not None:
            return column_to_numpy(self.arrow.column(name))
        volume = self._columns["volume"]
        n = len(volume)
        if name == "row":
            return np.arange(n, dtype=np.int64)
        if name == "slice":
            return (np.arange(n, dtype=np.int64) - self.starts[volume]).astype(np.int32)
        if name == "lesion_area":
            assert self._lesion_area is not None
            area = self._lesion_area
            if np.any(area < 0):
                return np.where(area < 0, np.nan, area.astype(np.float64))
            return area.astype(np.int64)
        return np.array(self._text[name], dtype=object)[volume]

    def __iter__(self):
        return iter(self.names)

    def __contains__(self, name) -> bool:  # without converting the column
        return name in self.names

    def __len__(self) -> int:
        return len(self.names)

    def slice_range(self, volume: int) -> range:
        """The slice numbers of volume ``volume``: 0 .. its row count - 1 (checked at read)."""
        return range(int(self.counts[volume]))

    def value(self, name: str, row: int):
        """One cell as a Python value (None for a null), without converting the whole column."""
        row = int(row)
        if name in self._columns:
            value = self._columns[name][row]
            if value is None or (isinstance(value, float) and value != value):
                return None
            return value.item() if isinstance(value, np.generic) else value
        if self.arrow is not None:
            return self.arrow.column(name)[row].as_py()
        if name not in self.names:
            raise KeyError(name)
        volume = int(self._columns["volume"][row])
        if name == "row":
            return row
        if name == "slice":
            return row - int(self.starts[volume])
        if name == "lesion_area":
            assert self._lesion_area is not None
            area = int(self._lesion_area[row])
            return None if area < 0 else area
        return self._text[name][volume]


def read_slice_table(
    data: bytes, path: Path, *, n_rows: int, n_cases: int, model_checksum: str
) -> SliceTable:
    """Parse and check slices.parquet (its bytes); IndexDirError naming the fault and the fix."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fix = fix_for(path.parent)
    try:
        # ParquetFile, not read_table: that one imports pyarrow.dataset and pandas (~0.5 s)
        present = pq.ParquetFile(pa.BufferReader(data)).schema_arrow.names
        arrow = pq.ParquetFile(
            pa.BufferReader(data),
            read_dictionary=[c for c in DICTIONARY_COLUMNS if c in present],
        ).read()
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
        raise IndexDirError(
            f"{path}: unreadable slice table ({type(exc).__name__}: {str(exc)[:80]}). {fix}."
        ) from None
    for name, (what, check) in SLICE_COLUMNS.items():
        if name not in arrow.column_names:
            raise IndexDirError(
                f"{path}: no column {name!r} (expected columns {', '.join(SLICE_COLUMNS)}; found "
                f"{', '.join(arrow.column_names[:10]) or 'none'}). {fix}."
            )
        column = arrow.column(name)
        if not check(column.type):
            raise IndexDirError(
                f"{path}: column {name!r} should hold {what}, found {column.type}. {fix}."
            )
        if name != "lesion_area" and column.null_count:
            raise IndexDirError(f"{path}: column {name!r} has {column.null_count} nulls. {fix}.")
    n = arrow.num_rows
    if n != n_rows:
        raise IndexDirError(f"{path}: {n} rows, the manifest says {n_rows} slices. {fix}.")

    def ints(name):
        return column_to_numpy(arrow.column(name)).astype(np.int64, copy=False)

    if not np.array_equal(ints("row"), np.arange(n)):
        raise IndexDirError(f"{path}: column 'row' is not 0..{n - 1} in order. {fix}.")
    volume = ints("volume")
    starts = volume_starts(volume, n_cases)
    if starts is None:
        raise IndexDirError(
            f"{path}: column 'volume' should number the manifest's {n_cases} cases 0..{n_cases - 1} "
            f"in row order. {fix}."
        )
    if not np.array_equal(ints("slice"), np.arange(n) - starts[volume]):
        raise IndexDirError(
            f"{path}: column 'slice' should count 0, 1, … within each volume. {fix}."
        )
    case, case_names = _text_codes(arrow.column("case"))
    if n and np.any(case != case[starts[volume]]):
        raise IndexDirError(f"{path}: a volume's rows name more than one case. {fix}.")
    cases = [case_names[i] for i in case[starts]]
    if len(set(cases)) != len(cases):
        raise IndexDirError(f"{path}: a case appears as more than one volume. {fix}.")
    checksum, checksum_names = _text_codes(arrow.column("model_checksum"))
    used = np.flatnonzero(np.bincount(checksum, minlength=len(checksum_names)))
    if n and {checksum_names[i] for i in used} != {model_checksum}:
        raise IndexDirError(
            f"{path}: rows encoded with another model than the manifest's "
            f"({model_checksum[:12]}…). {fix}."
        )
    return SliceTable(volume, starts, cases, arrow=arrow)


def volume_starts(volume: np.ndarray, n_cases: int) -> np.ndarray | None:
    """(V,) int64 first row of each volume where `volume` numbers 0..n_cases-1 in row order
    (each volume's rows contiguous), else None."""
    n = len(volume)
    if n == 0:
        return np.zeros(0, np.int64) if n_cases == 0 else None
    steps = np.diff(volume)
    if volume[0] != 0 or volume[-1] != n_cases - 1 or np.any((steps != 0) & (steps != 1)):
        return None
    return np.concatenate([[0], np.flatnonzero(steps) + 1]).astype(np.int64)


# ---------------------------------------------------------------------------- slice arrays
#
# slice_arrays.npz: the columns of slices.parquet that a query reads, in numpy's own format, so
# that a query imports and parses no Parquet (~0.15 s at 1M rows). It is derived from the
# Parquet file at build time and records that file's sha256: a reader uses it only where the
# manifest lists the same sha256 for slices.parquet, and reads slices.parquet otherwise (an
# index built before it, or a slice table changed since). Its members:
#
#     parquet_sha256          () str, the sha256 of the slices.parquet it was derived from
#     columns                 (C,) str, the column names of slices.parquet, in order
#     volume_counts           (V,) int64, the rows of each volume
#     lesion_area             (N,) int32, -1 for a null
#     values__NAME, codes__NAME   for each text column NAME (case, source, model_checksum, …):
#                             its distinct values (K,) str and, per volume, (V,) int32 indices
#                             into them (-1 for a null); every row of a volume holds one value
#
# row, slice and volume are not stored: rows are 0..N-1, volumes contiguous and slices count
# 0, 1, … within each volume (`read_slice_table` checks all three), and the hash index holds
# the volume of every row (volume_ids.npy), which the reader checks against volume_counts.

_DERIVED = ("row", "slice", "volume", "lesion_area")


def derive_slice_arrays(table: SliceTable, parquet_sha256: str) -> bytes | None:
    """The bytes of slice_arrays.npz for a checked slice table, or None where a column does not
    fit its layout (a text column that varies within a volume, a lesion area past int32)."""
    import io

    n = len(table["volume"])
    members: dict[str, np.ndarray] = {
        "parquet_sha256": np.array(parquet_sha256),
        "columns": np.array(list(table), dtype=str),
        "volume_counts": table.counts.astype(np.int64),
    }
    area = table["lesion_area"]
    if area.dtype == object:  # a column of nulls only
        area = np.array([np.nan if a is None else a for a in area], dtype=np.float64)
    known = ~np.isnan(area) if area.dtype.kind == "f" else np.ones(n, bool)
    if np.any(area[known] < 0) or np.any(area[known] > np.iinfo(np.int32).max):
        return None
    members["lesion_area"] = np.where(known, np.nan_to_num(area), -1).astype(np.int32)
    volume = table["volume"]
    for name in table:
        if name in _DERIVED:
            continue
        column = table[name]
        per_volume = column[table.starts]
        if column.dtype != object or not all(
            v is None or isinstance(v, str) for v in per_volume.tolist()
        ):
            return None
        if n and not np.array_equal(column, per_volume[volume]):
            return None
        values = sorted({v for v in per_volume.tolist() if v is not None})
        stored = np.array(values, dtype=str)
        if stored.tolist() != values:  # numpy drops trailing NUL characters
            return None
        index = {v: i for i, v in enumerate(values)}
        members[f"values__{name}"] = stored
        members[f"codes__{name}"] = np.array(
            [-1 if v is None else index[v] for v in per_volume.tolist()], dtype=np.int32
        )
    out = io.BytesIO()
    np.savez(out, allow_pickle=False, **members)
    return out.getvalue()


def load_slice_arrays(data: bytes, path: Path) -> dict[str, np.ndarray]:
    """The members of slice_arrays.npz (its bytes, checked against the manifest);
    IndexDirError for a file numpy cannot read."""
    import io

    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:  # numpy raises ValueError, OSError, zipfile errors, …
        raise IndexDirError(
            f"{path}: unreadable ({type(exc).__name__}: {str(exc)[:80]}). {fix_for(path.parent)}."
        ) from None


def slice_arrays_source(members: dict[str, np.ndarray]) -> str:
    """The sha256 of the slices.parquet that slice_arrays.npz was derived from ('' if none)."""
    sha = members.get("parquet_sha256")
    return str(sha) if sha is not None and sha.dtype.kind == "U" and sha.ndim == 0 else ""


def read_slice_arrays(
    members: dict[str, np.ndarray],
    path: Path,
    *,
    volume: np.ndarray,
    n_cases: int,
    model_checksum: str,
) -> SliceTable:
    """The slice table from the members of slice_arrays.npz (`load_slice_arrays`) and the hash
    index's (N,) volume ids; IndexDirError naming the fault and the fix.

    The caller has checked that the file was derived from the slices.parquet the manifest lists
    (`slice_arrays_source`); that file's own checks hold for it, and are not repeated here.
    """
    fix = fix_for(path.parent)

    def bad(what: str) -> IndexDirError:
        return IndexDirError(f"{path}: {what}. {fix}.")

    for key in ("parquet_sha256", "columns", "volume_counts", "lesion_area"):
        if key not in members:
            raise bad(f"no member {key!r}")
    n = len(volume)
    names = members["columns"]
    counts = members["volume_counts"]
    area = members["lesion_area"]
    if names.dtype.kind != "U" or names.ndim != 1 or set(SLICE_COLUMNS) - set(names.tolist()):
        raise bad(f"'columns' should name the columns of {SLICES}")
    if counts.dtype != np.int64 or counts.shape != (n_cases,):
        raise bad(f"'volume_counts' should be ({n_cases},) int64 as the manifest says")
    if area.dtype != np.int32 or area.shape != (n,) or (n and int(area.min()) < -1):
        raise bad(f"'lesion_area' should be ({n},) int32, areas or -1")
    # volume v is rows starts[v] .. ends[v] - 1: the ids never decrease and are v at both ends
    ends = np.cumsum(counts)
    starts = ends - counts
    ids = np.arange(n_cases)
    if (
        (n_cases and int(counts.min()) < 1)
        or (int(ends[-1]) if n_cases else 0) != n
        or not np.array_equal(volume[starts], ids)
        or not np.array_equal(volume[ends - 1], ids)
        or np.any(volume[1:] < volume[:-1])
    ):
        raise bad(
            f"the hash index's volumes (volume_ids.npy, {n} rows) differ from the "
            f"{n_cases} volumes of {sum(counts.tolist())} rows recorded here"
        )
    text = {}
    for name in names.tolist():
        if name in _DERIVED:
            continue
        values, codes = members.get(f"values__{name}"), members.get(f"codes__{name}")
        if (
            values is None
            or codes is None
            or values.dtype.kind != "U"
            or values.ndim != 1
            or codes.dtype != np.int32
            or codes.shape != (n_cases,)
            or (n_cases and not -1 <= int(codes.min()) <= int(codes.max()) < len(values))
        ):
            raise bad(
                f"column {name!r} should be values__{name} (K,) str, codes__{name} "
                f"({n_cases},) int32 in -1..K-1"
            )
        listed = values.tolist() + [None]  # code -1: a null
        text[name] = [listed[c] for c in codes.tolist()]
    for name in ("case", "source", "model_checksum"):
        if None in text[name]:
            raise bad(f"column {name!r} has nulls")
    cases = text["case"]
    if len(set(cases)) != len(cases):
        raise bad("a case appears as more than one volume")
    if n and set(text["model_checksum"]) != {model_checksum}:
        raise bad(f"rows encoded with another model than the manifest's ({model_checksum[:12]}…)")
    return SliceTable(volume, starts, cases, names=names.tolist(), text=text, lesion_area=area)
