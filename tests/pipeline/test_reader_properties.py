"""Property tests of the index directory's readers: whatever the bytes, a result or a clear error.

- `parse_manifest`: any JSON document gives a Manifest or IndexDirError, never another exception.
- `read_slice_table`: any Parquet table gives a checked table or IndexDirError; a valid table's
  row lookup agrees with a direct search of its columns.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fdn.archive_index.layout import REQUIRED_FILES
from fdn.archive_index.manifest import Manifest, parse_manifest
from fdn.archive_index.slice_table import read_slice_table
from fdn.errors import IndexDirError

PATH = Path("/nonexistent/index/manifest.json")  # only named in messages, never opened
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples every run: CI cannot fail by chance
    suppress_health_check=[HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

SHA = hashlib.sha256(b"weights").hexdigest()


def valid_manifest() -> dict:
    files = {name: {"sha256": SHA, "size": 7} for name in REQUIRED_FILES}
    return {
        "format": "fdn-index",
        "format_version": 2,
        "model_checksum": SHA,
        "preset": "tiny",
        "input_size": 32,
        "grid": [4, 4],
        "n_slices": 10,
        "n_cases": 2,
        "status": "complete",
        "skipped_cases": [],
        "archive_roots": ["/a"],
        "hashindex": {},
        "files": files,
        "fdn_index_version": "0",
    }


def parse_or_error(data):
    try:
        return parse_manifest(data, PATH)
    except IndexDirError as exc:
        assert str(PATH) in str(exc)
        return None


def test_the_valid_manifest_parses():
    manifest = parse_manifest(valid_manifest(), PATH)
    assert manifest.grid == (4, 4) and manifest.n_slices == 10


@SETTINGS
@given(json_values)
def test_any_json_document_is_a_manifest_or_a_clear_error(data):
    assert parse_or_error(json.loads(json.dumps(data))) is None  # random JSON is never valid


@SETTINGS
@given(st.sampled_from(sorted(valid_manifest())), json_values)
def test_a_manifest_with_one_field_replaced_is_a_manifest_or_a_clear_error(field, value):
    data = valid_manifest()
    data[field] = value
    result = parse_or_error(data)
    assert result is None or isinstance(result, Manifest)


@SETTINGS
@given(st.text(max_size=40), json_values)
def test_file_listings_are_checked_name_by_name(name, entry):
    data = valid_manifest()
    data["files"][name] = entry
    result = parse_or_error(data)
    if result is not None:  # accepted: a plain name inside the folder, with a proper entry
        assert ".." not in name.split("/") and not name.startswith("/")
        assert isinstance(entry, dict) and isinstance(entry.get("sha256"), str)


# ---------------------------------------------------------------------------- slice table

CHECKSUM = "ab" * 32
COLUMN_TYPES = [
    pa.int8(),
    pa.int32(),
    pa.int64(),
    pa.uint16(),
    pa.float64(),
    pa.string(),
    pa.bool_(),
    pa.null(),
]


def table_bytes(columns: dict) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue().to_pybytes()


def valid_columns(counts, names):
    volume = np.repeat(np.arange(len(counts)), counts)
    n = int(volume.size)
    return {
        "row": pa.array(np.arange(n), pa.int64()),
        "case": pa.array([names[v] for v in volume], pa.string()),
        "slice": pa.array(np.concatenate([np.arange(c) for c in counts]) if n else [], pa.int32()),
        "volume": pa.array(volume, pa.int64()),
        "source": pa.array([f"/a/{names[v]}" for v in volume], pa.string()),
        "lesion_area": pa.array([None if i % 3 else i for i in range(n)], pa.int64()),
        "model_checksum": pa.array([CHECKSUM] * n, pa.string()),
    }


@st.composite
def arbitrary_column(draw, n):
    kind = draw(st.sampled_from(COLUMN_TYPES))
    if pa.types.is_null(kind):
        return pa.nulls(n)
    if pa.types.is_string(kind):
        values = st.text(max_size=4)
    elif pa.types.is_boolean(kind):
        values = st.booleans()
    elif pa.types.is_floating(kind):
        values = st.floats(allow_nan=True)
    else:
        info = np.iinfo(kind.to_pandas_dtype())
        values = st.integers(int(info.min), int(info.max))
    return pa.array(draw(st.lists(values | st.none(), min_size=n, max_size=n)), kind)


@SETTINGS
@given(st.data())
def test_any_parquet_table_is_checked_or_a_clear_error(data):
    counts = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    names = [f"C{i}" for i in range(len(counts))]
    columns = valid_columns(counts, names)
    n = len(columns["row"])
    for name in data.draw(st.lists(st.sampled_from(sorted(columns)), max_size=3, unique=True)):
        if data.draw(st.booleans()):
            del columns[name]
        else:
            columns[name] = data.draw(arbitrary_column(n))
    n_rows = data.draw(st.sampled_from([n, n + 1]))
    try:
        table = read_slice_table(
            table_bytes(columns),
            PATH,
            n_rows=n_rows,
            n_cases=len(counts),
            model_checksum=CHECKSUM,
        )
    except IndexDirError as exc:
        assert str(PATH) in str(exc)
        return
    # accepted: its structure must be what the reader promises
    cases = table["case"]
    volume = table["volume"]
    for v, case in enumerate(table.cases):
        rows = np.flatnonzero(volume == v)
        assert table.starts[v] == rows[0] and table.counts[v] == rows.size
        assert set(cases[rows]) == {case}
        np.testing.assert_array_equal(table["slice"][rows], np.arange(rows.size))


@pytest.mark.parametrize("counts", [[1], [3, 1, 2], [5, 5]])
def test_a_valid_table_locates_every_row(counts):
    names = [f"CASE_{i}" for i in range(len(counts))]
    table = read_slice_table(
        table_bytes(valid_columns(counts, names)),
        PATH,
        n_rows=sum(counts),
        n_cases=len(counts),
        model_checksum=CHECKSUM,
    )
    assert table.cases == names
    assert list(table.counts) == counts
    assert list(table.starts) == list(np.cumsum([0, *counts[:-1]]))
    assert table.value("lesion_area", 0) == 0
    if sum(counts) > 1:
        assert table.value("lesion_area", 1) is None
        assert table["lesion_area"].dtype == np.float64  # nulls as NaN, as before
        assert table.value("lesion_area", 1) is None  # the same answer from the cached column
