"""Reduced-size run of the speed benchmark (the full run is `python -m benchmarks.speed`).

Checks that the suite writes its report, that every number is finite and sane, and that the
exact engines agree — against independent references where the numbers allow one.
"""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks import workload as wl
from benchmarks.speed import SpeedConfig, main, run
from benchmarks.speed_measure import recall_at_q
from benchmarks.speed_report import write_report
from hashindex import VolumeHits

N = 2000
BIT_BUDGET = 16


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    cfg = SpeedConfig(
        sizes=(N,),
        queries=4,
        batch=4,
        K=32,
        D=8,
        bit_budget=BIT_BUDGET,
        ivf_nlist=8,
        nprobes=(1, 8),
        hamming_batch_sizes=(256, 4096),
        max_seconds_per_figure=0.5,
        name="smoke",
    )
    results = run(cfg)
    out = write_report(results, tmp_path_factory.mktemp("speed") / "smoke")
    return results, out


def test_report_files_exist(suite):
    _, out = suite
    for name in ("report.md", "results.json", "latency_vs_n.png", "ivf_recall_speed.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "latency_vs_n.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "report.md").read_text()
    for heading in ("## Machine", "## Targets", "### S_normal", "### S_abnormal", "### S_sum"):
        assert heading in text
    json.loads((out / "results.json").read_text())  # valid JSON (NaN/inf became null)


def test_every_engine_and_mode_measured(suite):
    results, _ = suite
    seen = {(r["engine"], r["mode"]) for r in results["rows"]}
    for mode in ("normal", "abnormal", "sum"):
        for engine in (
            "lut",
            "numpy",
            "faiss-binary-flat",
            "faiss-binary-ivf",
            "faiss-float-l2",
            "faiss-float-ip",
        ):
            assert (engine, mode) in seen


def test_numbers_are_finite_and_sane(suite):
    results, _ = suite
    gbps = results["bandwidth"]["read_gbps"]
    assert 0.5 < gbps < 2000
    for r in results["rows"]:
        assert r["device"] in ("cpu", "gpu")
        for key in ("p50_ms", "p95_ms", "throughput_qps", "build_s", "floor_ms"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r)
        assert r["p95_ms"] >= r["p50_ms"]
        assert r["calls"] >= 4
        assert math.isclose(r["floor_ms"], r["scan_bytes"] / (gbps * 1e9) * 1e3, rel_tol=1e-9)
        if r["recall_at_10"] is not None:
            assert 0.0 <= r["recall_at_10"] <= 1.0


def test_bytes_per_slice(suite):
    results, _ = suite
    P = 64  # 8 × 8 grid; K = 32 codes fit uint8 ids
    for r in results["rows"]:
        books = 2 if r["mode"] == "sum" else 1
        if r["engine"] in ("lut", "numpy"):
            assert r["ram_bytes_per_slice"] == books * (P + 8) + 8
        elif r["engine"] == "fastscan":  # lut's arrays and the block-transposed ids
            assert r["ram_bytes_per_slice"] == books * (P + 8) + 8 + books * P
        elif r["engine"] == "faiss-binary-flat":
            assert r["ram_bytes_per_slice"] == books * P * BIT_BUDGET // 8
        elif r["engine"] == "faiss-binary-ivf":
            assert r["ram_bytes_per_slice"] == books * P * BIT_BUDGET // 8 + 8
        else:
            assert r["ram_bytes_per_slice"] == books * P * 8 * 4


def test_exact_engines_agree(suite):
    results, _ = suite
    checks = results["agreement"]
    names = " ".join(c["check"] for c in checks)
    for part in (
        "numpy == lut",
        "fastscan == lut",
        "faiss-flat == lut",
        "faiss-float-l2 == lut",
        "faiss-float-ip == lut",
    ):
        assert part in names
    bad = [c for c in checks if not c["ok"]]
    assert not bad, bad


def test_ivf_scanning_every_list_is_exact(suite):
    results, _ = suite
    full = [
        r
        for r in results["rows"]
        if r["engine"] == "faiss-binary-ivf" and r["nprobe"] == r["nlist"]
    ]
    assert full and all(r["recall_at_10"] == 1.0 for r in full)


def test_targets_reported(suite):
    results, _ = suite
    targets = results["targets"]
    assert targets[0]["met"] is None and targets[1]["met"] is None  # no 1M / 100k here
    assert targets[2]["met"] in (True, False)


def test_recall_against_hand_example():
    exact = VolumeHits(np.array([[1.0, 2.0, 3.0]]), np.array([[0, 1, 2]]), np.array([[7, 8, 9]]))
    # volume 5 ties the exact boundary (3.0) and counts; volume 6 (4.0) does not; -1 is padding
    approx = VolumeHits(np.array([[1.0, 3.0, 4.0]]), np.array([[0, 5, 6]]), np.array([[7, 5, 6]]))
    assert recall_at_q(approx, exact) == pytest.approx(2 / 3)
    padded = VolumeHits(
        np.array([[1.0, np.inf, np.inf]]), np.array([[0, -1, -1]]), np.array([[7, -1, -1]])
    )
    assert recall_at_q(padded, exact) == pytest.approx(1 / 3)


def test_workload_structure():
    w = wl.synthetic(400, 3, seed=1, K=64, D=8, dead_fraction=0.5)
    assert w.codes_normal.shape == (400, 8, 8) and w.codes_normal.dtype == np.uint16
    norms = np.linalg.norm(w.codebook_normal, axis=1)
    assert (norms < 1e-5).sum() == 32  # half the codebook near zero
    assert np.array_equal(np.bincount(w.volume_ids), [155, 155, 90])
    live = set(wl.live_codes(w.codebook_normal).tolist())
    assert set(np.unique(w.codes_normal).tolist()) <= live  # only live codes are used
    counts = np.bincount(w.codes_normal.ravel(), minlength=64)
    assert counts.max() / counts.sum() > 3 / len(live)  # skewed, not uniform
    assert not np.isin(w.query_volumes, w.volume_ids).any()  # queries are new patients
    assert (w.query_abnormal != np.bincount(w.codes_abnormal.ravel()).argmax()).any()
    # decode: row r is the concatenation of codebook[codes[r, p]] over positions p
    x = wl.decode(w.codebook_normal, w.codes_normal[:3])
    ref = np.stack(
        [np.concatenate([w.codebook_normal[c] for c in g.ravel()]) for g in w.codes_normal[:3]]
    )
    assert np.array_equal(x, ref)


def test_cli_rejects_bad_sizes():
    result = CliRunner().invoke(main, ["--sizes", "10,abc"])
    assert result.exit_code != 0
    assert "comma-separated integers" in result.output


def _fake_index(path, n=310):
    """A minimal index directory: codebooks and codes.zarr where position p of the normal grid
    only ever holds code p % 8 or 8 + p % 8, and the abnormal grid only code 3."""
    import zarr

    rng = np.random.default_rng(0)
    book = rng.normal(size=(16, 4)).astype(np.float32)
    np.save(path / "codebook_normal.npy", book)
    np.save(path / "codebook_abnormal.npy", book)
    p = np.arange(64) % 8
    normal = (p[None, :] + 8 * rng.integers(0, 2, (n, 64))).reshape(n, 8, 8).astype(np.uint16)
    abnormal = np.full((n, 8, 8), 3, np.uint16)
    group = zarr.open_group(str(path / "codes.zarr"), mode="w")
    for name, arr in (("normal", normal), ("abnormal", abnormal)):
        group.create_array(name, shape=arr.shape, chunks=(128, 8, 8), dtype="uint16")[:] = arr
    return book


def test_workload_from_index_keeps_per_position_usage(tmp_path):
    book = _fake_index(tmp_path)
    w = wl.from_index(tmp_path, 500, 3, seed=2)
    assert np.array_equal(w.codebook_normal, book)
    assert w.codes_normal.shape == (500, 8, 8)
    flat = w.codes_normal.reshape(500, 64).astype(np.int64)
    assert ((flat % 8) == (np.arange(64) % 8)[None, :]).all()  # only that position's codes
    assert 0.3 < (flat >= 8).mean() < 0.7  # both codes of a position are drawn, ~half/half
    assert (w.codes_abnormal == 3).all() and (w.query_abnormal == 3).all()


def test_workload_from_index_refuses_a_non_index(tmp_path):
    with pytest.raises(FileNotFoundError, match="codebook_normal.npy"):
        wl.from_index(tmp_path, 100)


def test_optimization_benchmark_reports_a1_on_k512(tmp_path):
    from benchmarks.optimization import main as optimization_main

    result = CliRunner().invoke(
        optimization_main, ["--seeds", "1", "--no-random", "--out", str(tmp_path / "opt"), "--json"]
    )
    assert result.exit_code == 0, result.output
    (run,) = json.loads(result.output)
    assert run["K"] == 512 and run["live"] == 180 and 0 < run["E_star"] < run["E"] == 512 * 511 // 2
    assert 0 < run["top10_live"] <= 1
    assert "A.1 at K = 512" in (tmp_path / "opt" / "report.md").read_text()


def test_scale_benchmark_times_fastscan_against_lut(tmp_path):
    from benchmarks.scale import main as scale_main

    result = CliRunner().invoke(
        scale_main,
        [
            "--sizes",
            "4000",
            "--queries",
            "3",
            "--batch",
            "4",
            "--max-seconds",
            "0.2",
            "--out",
            str(tmp_path / "s"),
            "--json",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    (size,) = json.loads(result.output[result.output.index("{") :])["sizes"]
    fast = [r for r in size["rows"] if r["engine"] == "fastscan"]
    assert len(fast) == 6 and all(r["identical_to_lut"] for r in fast)
    assert all(1 <= r["evaluated_median"] <= 4000 for r in fast)
    assert "fastscan" in (tmp_path / "s" / "report.md").read_text()
