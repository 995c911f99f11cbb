"""Building on a Dask LocalCluster: the same index as a single-process build, bit for bit, even
when a worker is killed in the middle."""

import json
import os
import signal

import numpy as np
import pytest
from click.testing import CliRunner

from fdn.archive_index.build import build_index
from fdn.archive_index.retrieval import open_index
from fdn_index_cli.main import main
from tests.pipeline.conftest import loopback_cluster

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with loopback_cluster() as c:
        yield c


def _same_index(a, b):
    """Two index folders hold the same codes, slice table and hash index, byte for byte."""
    fa = json.loads((a / "manifest.json").read_text())["files"]
    fb = json.loads((b / "manifest.json").read_text())["files"]
    data = {k for k in fa if k.startswith("codes.zarr/") or k in ("slices.parquet",)}
    assert data, "the manifest lists no data files"
    assert {k: fa[k] for k in data} == {k: fb[k] for k in data}
    ia, ib = open_index(a), open_index(b)
    np.testing.assert_array_equal(ia.codes_normal, ib.codes_normal)
    np.testing.assert_array_equal(ia.codes_abnormal, ib.codes_abnormal)
    assert list(ia.table["case"]) == list(ib.table["case"])


def test_cluster_build_equals_the_single_process_build(
    tmp_path, client, tiny_archive, model_dir, built_index
):
    index = tmp_path / "index"
    report = build_index(tiny_archive, model_dir, index, client=client)
    assert sorted(report.encoded_now) == sorted(open_index(built_index).cases)
    assert report.stages["slices"] == report.n_slices
    assert all(report.stages[k] >= 0 for k in ("read_s", "preprocess_s", "encode_s", "write_s"))
    assert all(not w.startswith("pid ") for w in report.workers)  # ran on the workers
    _same_index(index, built_index)


def test_a_worker_killed_mid_build_loses_and_duplicates_nothing(
    tmp_path, client, tiny_archive, model_dir, built_index
):
    index = tmp_path / "index"
    pids = list(client.run(os.getpid).values())
    killed = []

    def kill_one_worker(case):
        if not killed:  # after the first case, while the others are queued or running
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    report = build_index(tiny_archive, model_dir, index, client=client, on_case=kill_one_worker)
    assert killed, "no worker was killed"
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    assert len(report.encoded_now) == len(set(report.encoded_now)) == report.n_cases
    _same_index(index, built_index)
    client.wait_for_workers(2, timeout=60)  # the nanny restarts it for the next test


def test_cli_build_with_workers(tmp_path, tiny_archive, model_dir, built_index):
    index = tmp_path / "index"
    result = CliRunner().invoke(
        main,
        [
            "build",
            str(tiny_archive),
            "--model",
            str(model_dir),
            "--index",
            str(index),
            "--workers",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "encoded now" in result.output and "seconds: " in result.output
    _same_index(index, built_index)
    both = CliRunner().invoke(
        main,
        [
            "build",
            str(tiny_archive),
            "--model",
            str(model_dir),
            "--index",
            str(index),
            "--workers",
            "2",
            "--scheduler",
            "tcp://127.0.0.1:1",
        ],
    )
    assert both.exit_code != 0 and "not both" in both.output
