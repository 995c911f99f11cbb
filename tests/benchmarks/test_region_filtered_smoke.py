"""The region and filter benchmarks at a tiny size: they run, every answer they time is the
exact one, and the rows they describe are what their names say."""

import json

from click.testing import CliRunner

from benchmarks.filtered import main as filtered_main
from benchmarks.region import main as region_main

SMALL = ["--n", "3000", "--queries", "2", "--max-seconds", "0.05"]


def test_the_region_benchmark_times_exact_answers(tmp_path):
    result = CliRunner().invoke(region_main, [*SMALL, "--out", str(tmp_path / "region")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "region" / "results.json").read_text())["rows"]
    regions = [r for r in rows if r["region"] != "whole grid"]
    assert regions and all(r["same_as_numpy"] for r in regions)
    for r in rows:  # "6x6 (56%)": a side x side box of the 8x8 grid
        side = 8 if r["region"] == "whole grid" else int(r["region"].split("x")[0])
        assert r["positions"] == side * side


def test_the_filter_benchmark_times_exact_answers(tmp_path):
    result = CliRunner().invoke(filtered_main, [*SMALL, "--out", str(tmp_path / "filtered")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "filtered" / "results.json").read_text())["rows"]
    fast = [r for r in rows if r["engine"] == "fastscan"]
    assert fast and all(r["identical_to_lut"] for r in fast)
    assert {r["rows_allowed"] for r in rows if r["mask"] == "all rows"} == {3000}
    assert all(r["rows_allowed"] < 3000 for r in rows if r["mask"] != "all rows")
