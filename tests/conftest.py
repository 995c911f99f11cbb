"""Fixtures shared by every test package, and the `slow` marker of the end-to-end folders.

Session fixtures, made once per test session; use them read-only (copy a folder with
`shutil.copytree` before breaking files):

* `small_archive`: 3 cases SYN_000..SYN_002, 40 × 40 × 26 voxels (`SMALL_ARCHIVE["size"]` = 40),
  seed 0; exactly one healthy case (empty seg), two with a lesion; each case has t1, t1ce, t2,
  flair, seg, anat and pseudohealthy files.
* `tiny_archive`: 4 cases (2 healthy), seed 11, at the "tiny" preset's input size (`TINY_SIZE`).
* `model_dir`: a model directory of the "tiny" preset with seeded random weights (seed 0);
  `make_model_dir(path, seed)` writes another. The pipeline, service and DICOM tests check that
  build, resume and query are exact and safe, which needs no trained model.
* `built_index`: `fdn-index build` of `tiny_archive` with `model_dir`.

The command line (cli/) and the shipped models (models/) are imported as fdn_index_cli and
fdn_index_models, their installed names, from this checkout (tests/checkout.py).

Every test under tests/pipeline, tests/service, tests/dicom, tests/benchmarks and
tests/packaging is marked `slow` (it builds indexes, starts servers, runs a benchmark or builds
the wheel): `pytest -m "not slow"` is the
fast inner loop, and plain `pytest` runs everything.
"""

import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from fdn.model import PRESETS
from tests.checkout import use_checkout

use_checkout()

SMALL_ARCHIVE = {"n_cases": 3, "healthy_fraction": 1 / 3, "seed": 0, "size": 40}
TINY_SIZE = PRESETS["tiny"].image_size
SLOW_FOLDERS = ("pipeline", "service", "dicom", "benchmarks", "packaging")


def pytest_collection_modifyitems(config, items):
    tests = Path(__file__).parent
    for item in items:
        if not item.path.is_relative_to(tests):
            continue
        parts = item.path.relative_to(tests).parts
        if len(parts) > 1 and parts[0] in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)


def make_model_dir(path, seed):
    """A model directory at `path`: the "tiny" preset with random weights drawn from `seed`."""
    from fdn.model import FDN
    from fdn.training.checkpoint import save_checkpoint

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
def small_archive(tmp_path_factory):
    from fdn.synth import synthesize_archive

    root = tmp_path_factory.mktemp("small_archive") / "archive"
    synthesize_archive(root, **SMALL_ARCHIVE)
    return root


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory):
    from fdn.synth import synthesize_archive

    root = tmp_path_factory.mktemp("tiny_archive") / "archive"
    synthesize_archive(root, n_cases=4, healthy_fraction=0.5, seed=11, size=TINY_SIZE)
    return root


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("model") / "model", seed=0)


@pytest.fixture(scope="session")
def built_index(tmp_path_factory, tiny_archive, model_dir):
    from fdn.archive_index.build import build_index

    index_dir = tmp_path_factory.mktemp("index") / "index"
    build_index(tiny_archive, model_dir, index_dir)
    return index_dir


@pytest.fixture(autouse=True)
def _seed_global_generators():
    """Every test starts from the same global random state, whatever ran before it: code that
    draws from torch's, numpy's or Python's global generator gives the same numbers each run."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
