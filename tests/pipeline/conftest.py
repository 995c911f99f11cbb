"""Fixtures of the end-to-end build and query tests, beside the shared `tiny_archive`,
`model_dir` and `built_index` (tests/conftest.py): more cases to add, and a second model."""

import shutil

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
