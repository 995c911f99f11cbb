"""Reduced-size run of the kernel benchmark (the full run is `python -m benchmarks.kernels`):
it writes its report with every kernel this CPU runs beside lut, and each kernel's answers
equal lut's for every query (the benchmark checks them, bit for bit)."""

import json
import os

from click.testing import CliRunner

from benchmarks.kernels import main
from hashindex import available_kernels


def test_kernel_benchmark_reports_every_kernel_beside_lut(tmp_path, monkeypatch):
    monkeypatch.setenv("FDN_FASTSCAN_KERNEL", "portable")  # restored after the run
    out = tmp_path / "kernels"
    result = CliRunner().invoke(
        main,
        ["--n", "3000", "--K", "64", "--queries", "3", "--max-seconds", "0.2",
         "--modes", "sum,normal", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    expected = {
        (mode, distance, engine)
        for mode in ("sum", "normal")
        for distance in ("hamming", "euclidean", "angular")
        for engine in ["lut", *available_kernels()]
    }
    assert {(r["mode"], r["distance"], r["kernel"] or r["engine"]) for r in rows} == expected
    assert all(r["identical_to_lut"] for r in rows)
    assert all(0 < r["p50_ms"] <= r["p95_ms"] for r in rows)
    assert results["default_kernel"] == available_kernels()[0]
    report = (out / "report.md").read_text()
    assert "| sum | euclidean | fastscan | avx2 |" in report or "avx2" not in available_kernels()
    assert os.environ["FDN_FASTSCAN_KERNEL"] == "portable"  # the caller's setting is put back
