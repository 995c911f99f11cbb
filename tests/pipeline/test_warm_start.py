"""A query by --case in a new process: the fastscan engine by default, and nothing heavy imported.

numba, faiss, zarr and torch cost ~0.1-0.5 s each to import; a query of an indexed slice on
the fastscan engine needs none of them (docs/architecture.md, "Start-up").
"""

import json
import subprocess
import sys

import pytest

HEAVY = ("numba", "faiss", "zarr", "torch", "pandas", "nibabel", "pydicom", "dask")

CLI_CHILD = """
import json, sys
from cli.main import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.stderr)
"""


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
        CLI_CHILD.format(heavy=HEAVY),
        "query",
        "--index",
        built_index,
        "--case",
        case,
        "--json",
        *extra,
    )
    result = json.loads(out)
    assert result["engine"] == "fastscan"  # the default where the codebooks allow it
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
    from fdn.queries import run_slice_query
    from fdn.retrieval import open_index

    index = open_index(built_index)
    assert index.default_engine == "fastscan"
    case = index.cases[1]
    default = run_slice_query(index, case, None, "all")
    lut = run_slice_query(index, case, None, "all", engine="lut")
    assert default.options.engine == "fastscan" and default.to_dict()["engine"] == "fastscan"
    for mode in ("normal", "abnormal", "sum"):
        assert default.hits(mode) == lut.hits(mode)
