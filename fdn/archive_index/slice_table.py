"""The slice table (slices.parquet): its columns, their checks, and `SliceTable`, as queries read it.

Row i describes row i of the code arrays. Rows of one volume are contiguous, in slice order.
pyarrow is imported only where a Parquet file is parsed (~0.1 s): a query that reads
slice_arrays.npz (`fdn.archive_index.slice_arrays`) never imports it.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fdn.archive_index.layout import fix_for
from fdn.errors import IndexDirError

if TYPE_CHECKING:  # pyarrow is imported where a slice table is parsed (~0.1 s)
    import pyarrow as pa


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


def typed_column(values: np.ndarray) -> np.ndarray:
    """A column of Python objects as numpy types where its values are dates or numbers (as
    pyarrow hands over date and nullable columns), else unchanged."""
    if values.dtype != object:
        return values
    present = [v for v in values.tolist() if v is not None]
    if present and all(isinstance(v, datetime.date) for v in present):
        return np.array(
            [np.datetime64("NaT") if v is None else np.datetime64(v, "D") for v in values],
            "datetime64[D]",
        )
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
    if present and numeric:
        return np.array([np.nan if v is None else v for v in values], np.float64)
    return values


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
        text: dict[str, list | np.ndarray] | None = None,
        lesion_area: np.ndarray | None = None,
    ):
        self.arrow = arrow
        self.names = list(arrow.column_names) if arrow is not None else list(names or [])
        self.starts = starts  # (V,) int64 first row of each volume
        self.counts = np.diff(np.append(starts, len(volume))).astype(np.int64)
        self.cases = cases  # (V,) case id of each volume
        # name -> (V,) values: a list of text (None for a null), or an array of float64 (NaN)
        # or datetime64[D] (NaT) for a metadata column of numbers or dates
        self._text = text or {}
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
        per_volume = self._text[name]
        if isinstance(per_volume, np.ndarray):  # a metadata column of numbers or dates
            return per_volume[volume]
        return np.array(per_volume, dtype=object)[volume]

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
