"""Reduced-size run of the assembly benchmark (the full run is
`python -m benchmarks.assembly_scale`): it writes its report, and the index it times is one a
query opens, holding exactly the journal's rows."""

import json

import numpy as np
from click.testing import CliRunner

from benchmarks.assembly_scale import SLICES_PER_CASE, STEPS, main, measure_one


def test_the_benchmark_writes_a_report_of_every_step(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["--slices", "1000", "--work", str(tmp_path), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    run = json.loads((out / "results.json").read_text())["runs"][0]
    assert run["cases"] == round(1000 / SLICES_PER_CASE)
    assert run["slices"] == run["cases"] * SLICES_PER_CASE
    assert set(run["steps"]) == set(STEPS) and all(v >= 0 for v in run["steps"].values())
    assert sum(run["steps"].values()) <= run["assemble_s"]
    assert run["peak_rss_bytes"] > 0 and run["index_bytes"] > 0
    assert "projected" in (out / "report.md").read_text()


def test_the_assembled_index_holds_the_journal_rows(tmp_path):
    from fdn.archive_index.retrieval import open_index

    measure_one(3 * SLICES_PER_CASE, tmp_path)
    index = open_index(tmp_path)
    assert index.cases == ["case000000", "case000001", "case000002"]
    assert index.ntotal == 3 * SLICES_PER_CASE
    # the benchmark's journal draws 5 % non-null abnormal cells: the stored grids agree
    share = float(np.mean(np.asarray(index.codes_abnormal) != 0))
    assert 0.03 < share < 0.07
