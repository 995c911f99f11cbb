"""Fixtures shared by every test package.

`small_archive` (session scope) synthesises a tiny archive once per test session and returns
its root folder. Reuse it read-only (copy it with `shutil.copytree` before breaking files):

* 3 cases SYN_000..SYN_002, 40 × 40 × 26 voxels (`SMALL_ARCHIVE["size"]` = 40), seed 0;
* exactly one healthy case (empty seg), two with a lesion;
* each case has t1, t1ce, t2, flair, seg, anat and pseudohealthy files.
"""

import random

import numpy as np
import pytest
import torch

SMALL_ARCHIVE = {"n_cases": 3, "healthy_fraction": 1 / 3, "seed": 0, "size": 40}


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory):
    from fdn.synth import synthesize_archive

    root = tmp_path_factory.mktemp("small_archive") / "archive"
    synthesize_archive(root, **SMALL_ARCHIVE)
    return root


@pytest.fixture(autouse=True)
def _seed_global_generators():
    """Every test starts from the same global random state, whatever ran before it: code that
    draws from torch's, numpy's or Python's global generator gives the same numbers each run."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
