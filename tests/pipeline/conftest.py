"""Fixtures for the end-to-end tests: a tiny synthetic archive, a tiny model, and an index of it.

The model has seeded random weights (the "tiny" preset): the tests check that build, resume
and query are exact and safe, which does not need a trained model.
"""

import shutil
from dataclasses import asdict

import pytest
import torch

from fdn.archive_index.build import build_index
from fdn.model import FDN, PRESETS
from fdn.synth import synthesize_archive
from fdn.training.checkpoint import save_checkpoint

SIZE = PRESETS["tiny"].image_size


def make_model_dir(path, seed):
    torch.manual_seed(seed)
    model = FDN(PRESETS["tiny"])
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "config": asdict(PRESETS["tiny"]),
            "preset": "tiny",
            "step": 0,
        },
    )
    return path


@pytest.fixture(scope="session")
def pipeline_archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline") / "archive"
    synthesize_archive(root, n_cases=4, healthy_fraction=0.5, seed=11, size=SIZE)
    return root


@pytest.fixture(scope="session")
def extra_archive(tmp_path_factory):
    """Two more cases, with ids that do not clash with pipeline_archive's (for --add)."""
    root = tmp_path_factory.mktemp("pipeline-extra") / "archive"
    synthesize_archive(root, n_cases=6, healthy_fraction=0.5, seed=11, size=SIZE)
    for case in sorted(p.name for p in root.iterdir())[:4]:
        shutil.rmtree(root / case)
    return root


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("model") / "model", seed=0)


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("model2") / "model", seed=1)


@pytest.fixture(scope="session")
def built_index(tmp_path_factory, pipeline_archive, model_dir):
    index_dir = tmp_path_factory.mktemp("index") / "index"
    build_index(pipeline_archive, model_dir, index_dir)
    return index_dir
