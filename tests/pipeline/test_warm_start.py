"""A query by --case in a new process: the fastscan engine by default, and nothing heavy imported.

numba, faiss, zarr and torch cost ~0.1-0.5 s each to import; a query of an indexed slice on
the fastscan engine needs none of them (docs/architecture.md, "Start-up"). Nor does it import
pyarrow (it reads slice_arrays.npz, not slices.parquet), numpy.ma, or the modules of the other
commands (cli/main.py, installed as fdn_index_cli, loads a command's module when it runs).
"""

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from fdn.archive_index.layout import SLICE_ARRAYS, SLICES
from fdn.archive_index.manifest import read_listed, read_manifest
from fdn.archive_index.slice_table import read_slice_table
from tests.checkout import CHILD_PRELUDE

HEAVY = ("numba", "faiss", "zarr", "torch", "pandas", "nibabel", "pydicom", "dask")
# Imported by a --case query before they were made lazy.
LAZY = (
    "pyarrow",
    "numpy.ma",
    "fdn_index_cli.build",
    "fdn_index_cli.evaluate_model",
    "fdn_index_cli.import_dicom",
    "fdn_index_cli.serve",
    "fdn_index_cli.shard",
    "fdn_index_cli.show",
    "fdn_index_cli.synth",
    "fdn_index_cli.train",
)

CLI_CHILD = (
    CHILD_PRELUDE
    + """
import json, sys
from fdn_index_cli.main import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.stderr)
"""
)


def run_child(code: str, *args) -> tuple[str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, json.loads(done.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("engine", [None, "fastscan"])
def test_a_case_query_imports_nothing_heavy(built_index, engine):
    case = json.loads((built_index / "build_plan.json").read_text())["cases"][0]
    extra = [] if engine is None else ["--engine", engine]
    out, heavy = run_child(
        CLI_CHILD.format(heavy=HEAVY + LAZY),
        "query",
        "--index",
        built_index,
        "--case",
        case,
        "--json",
        *extra,
    )
    result = json.loads(out)
    # the default where the codebooks allow it (the sum runs with D_E, which it prunes)
    assert result["results"]["sum"]["engine"] == "fastscan"
    assert result["results"]["sum"]["hits"]
    assert heavy == []


def test_the_library_path_imports_nothing_heavy(built_index):
    code = f"""
import json, sys
import numpy as np
from hashindex import HashIndex
index = HashIndex.read(sys.argv[1])
normal, abnormal = index.reconstruct(np.arange(2))
hits = index.search_volumes(normal, abnormal, 3, engine="fastscan")
print(json.dumps(hits.rows.tolist()))
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)
"""
    out, heavy = run_child(code, built_index)
    assert json.loads(out)[0][0] >= 0
    assert heavy == []


def test_the_default_engine_answers_as_lut(built_index):
    from fdn.archive_index.queries import query_options, run_slice_query
    from fdn.archive_index.retrieval import open_index

    index = open_index(built_index)
    assert index.default_engine("hamming") == "fastscan"
    case = index.cases[1]
    default = run_slice_query(index, case, None, query_options("all"))
    lut = run_slice_query(index, case, None, query_options("all", engine="lut"))
    # each mode's best distance (D_E, D_A, D_E) on its default engine: D_A is not pruned
    engines = {"normal": "fastscan", "abnormal": "lut", "sum": "fastscan"}
    assert {m: r.engine for m, r in default.results.items()} == engines
    assert {m: r["engine"] for m, r in default.to_dict()["results"].items()} == engines
    for mode in ("normal", "abnormal", "sum"):
        assert default.hits(mode) == lut.hits(mode)


def test_angular_queries_default_to_lut(built_index):
    # fastscan does not prune D_A, so a query that names no engine runs it on lut
    from fdn.archive_index.queries import query_options, run_slice_query
    from fdn.archive_index.retrieval import open_index

    index = open_index(built_index)
    case = index.cases[1]
    angular = run_slice_query(index, case, None, query_options("abnormal", distance="angular"))
    assert angular.results["abnormal"].engine == "lut"
    explicit = run_slice_query(
        index, case, None, query_options("abnormal", distance="angular", engine="fastscan")
    )
    assert explicit.options.engine == "fastscan"
    assert angular.hits("abnormal") == explicit.hits("abnormal")
    hits = index.search_codes(*index.codes_of_row(0), distance="angular", topq=3)
    assert hits == index.search_codes(
        *index.codes_of_row(0), distance="angular", topq=3, engine="lut"
    )


# --- slice_arrays.npz: the slice table a query reads -------------------------------------------


def parquet_table(index_dir):
    manifest = read_manifest(index_dir)
    return read_slice_table(
        read_listed(index_dir, manifest, SLICES, verify=True),
        index_dir / SLICES,
        n_rows=manifest.n_slices,
        n_cases=manifest.n_cases,
        model_checksum=manifest.model_checksum,
    )


def assert_same_table(found, expected):
    assert found.cases == expected.cases
    assert np.array_equal(found.starts, expected.starts)
    assert np.array_equal(found.counts, expected.counts)
    assert list(found) == list(expected)
    for name in expected:
        a, b = found[name], expected[name]
        assert a.dtype == b.dtype, name
        if a.dtype.kind == "f":
            assert np.array_equal(a, b, equal_nan=True), name
        else:
            assert a.tolist() == b.tolist(), name
        for row in (0, len(b) // 2, len(b) - 1):
            assert found.value(name, row) == expected.value(name, row), (name, row)


def test_the_index_reads_slice_arrays_equal_to_the_parquet_table(built_index):
    from fdn.archive_index.retrieval import open_index

    assert SLICE_ARRAYS in read_manifest(built_index).files
    index = open_index(built_index)
    assert index.table.arrow is None  # from slice_arrays.npz
    expected = parquet_table(built_index)
    assert expected.arrow is not None
    assert_same_table(index.table, expected)
    # study_uid is null for a case not imported from DICOM: None from both
    assert any(v is None for v in expected["study_uid"].tolist())


@pytest.fixture
def copy(tmp_path, built_index):
    target = tmp_path / "index"
    shutil.copytree(built_index, target)
    return target


def unlist(index_dir, name):
    manifest = json.loads((index_dir / "manifest.json").read_text())
    del manifest["files"][name]
    (index_dir / "manifest.json").write_text(json.dumps(manifest))


def answers(index_dir):
    from fdn.archive_index.queries import query_options, run_slice_query
    from fdn.archive_index.retrieval import open_index

    index = open_index(index_dir)
    result = run_slice_query(index, index.cases[1], None, query_options("all"))
    return index, {m: result.hits(m) for m in result.options.modes}, result.query_source


def test_an_index_without_slice_arrays_reads_the_parquet_table_and_answers_the_same(
    copy, built_index
):
    from fdn.archive_index.assemble import add_slice_arrays

    _, expected, source = answers(built_index)
    unlist(copy, SLICE_ARRAYS)
    (copy / SLICE_ARRAYS).unlink()
    index, found, found_source = answers(copy)
    assert index.table.arrow is not None
    assert found == expected and found_source == source
    # an index built before slice_arrays.npz gets one, listed in its manifest
    assert add_slice_arrays(copy) is True
    assert add_slice_arrays(copy) is False  # already current
    assert (copy / SLICE_ARRAYS).read_bytes() == (built_index / SLICE_ARRAYS).read_bytes()
    index, found, found_source = answers(copy)
    assert index.table.arrow is None
    assert found == expected and found_source == source


def test_slice_arrays_of_another_parquet_table_are_not_used(copy, built_index):
    """slices.parquet rewritten (and listed) after the build: the copy derived from the old one
    is stale, and the reader reads the listed slices.parquet instead."""
    import pyarrow.parquet as pq

    table = pq.read_table(copy / SLICES)
    pq.write_table(table, copy / SLICES, compression="gzip")  # same rows, other bytes
    data = (copy / SLICES).read_bytes()
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][SLICES] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    index, found, _ = answers(copy)
    assert index.table.arrow is not None
    assert found == answers(built_index)[1]


def test_changed_slice_arrays_are_refused(copy):
    from click.testing import CliRunner

    from fdn_index_cli.main import main

    data = bytearray((copy / SLICE_ARRAYS).read_bytes())
    data[len(data) // 2] ^= 1
    (copy / SLICE_ARRAYS).write_bytes(bytes(data))
    case = json.loads((copy / "build_plan.json").read_text())["cases"][0]
    result = CliRunner().invoke(main, ["query", "--index", str(copy), "--case", case])
    assert result.exit_code != 0
    assert f"{SLICE_ARRAYS}: sha256" in result.output


def test_slice_arrays_that_disagree_with_the_hash_index_are_refused(copy):
    """A consistent but wrong writer (the file relisted): the volumes recorded in it must match
    the hash index's."""
    from fdn.archive_index.retrieval import open_index
    from fdn.errors import IndexDirError

    with np.load(copy / SLICE_ARRAYS) as npz:
        members = {k: npz[k] for k in npz.files}
    counts = members["volume_counts"]
    counts[0], counts[1] = counts[0] + 1, counts[1] - 1
    np.savez(copy / SLICE_ARRAYS, **members)
    data = (copy / SLICE_ARRAYS).read_bytes()
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][SLICE_ARRAYS] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexDirError, match="volume_ids.npy"):
        open_index(copy)
