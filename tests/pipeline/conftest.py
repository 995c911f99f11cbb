"""Fixtures of the end-to-end build and query tests, beside the shared `tiny_archive`,
`model_dir` and `built_index` (tests/conftest.py): more cases to add, a second model, and a
real Dask cluster on loopback."""

import shutil
from contextlib import contextmanager

import pytest

from fdn.synth import synthesize_archive
from tests.conftest import TINY_SIZE, make_model_dir


@pytest.fixture(scope="session")
def extra_archive(tmp_path_factory):
    """Two more cases, with ids that do not clash with tiny_archive's (for --add)."""
    root = tmp_path_factory.mktemp("pipeline-extra") / "archive"
    synthesize_archive(root, n_cases=6, healthy_fraction=0.5, seed=11, size=TINY_SIZE)
    for case in sorted(p.name for p in root.iterdir())[:4]:
        shutil.rmtree(root / case)
    return root


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("model2") / "model", seed=1)


@contextmanager
def loopback_cluster(n_workers: int = 2):
    """A client of a real Dask LocalCluster: ``n_workers`` single-threaded worker processes on
    127.0.0.1, the dashboard on a free loopback port."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
