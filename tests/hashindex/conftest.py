"""Fixtures for hashindex tests: small seeded codebooks (random, many zeros) and code grids."""

import numpy as np
import pytest

from hashindex import HashIndex
from hashindex.fastscan_kernels import KERNEL_ENV, KERNEL_IDS, available_kernels
from tests.hashindex.hashindex_reference import make_codebook, make_grids


@pytest.fixture(scope="module", params=["random", "zeros"])
def small_index(request):
    """(index, grids_normal, grids_abnormal, volume_ids) with 60 rows in 9 volumes."""
    rng = np.random.default_rng(7)
    if request.param == "random":
        cn, ca = make_codebook(rng, 24, 6), make_codebook(rng, 16, 5)
        zn = za = None
    else:
        cn = make_codebook(rng, 32, 6, n_zero=14, n_tiny=4, n_dup=2)
        ca = make_codebook(rng, 20, 5, n_zero=12)
        zn, za = np.arange(14, 32), np.arange(8, 20)
    N, h, w = 60, 3, 2
    gn = make_grids(rng, N, cn.shape[0], h, w, zn)
    ga = make_grids(rng, N, ca.shape[0], h, w, za)
    gn[5] = gn[4]  # identical rows: exact ties between volumes 0 and 0, and across volumes
    ga[5] = ga[4]
    gn[17], ga[17] = gn[4], ga[4]
    if zn is not None:
        gn[20], ga[20] = zn[0], za[0]  # an all-zero grid
    vol = np.repeat(np.arange(100, 109), [7, 7, 7, 7, 7, 7, 7, 7, 4]).astype(np.int64)
    index = HashIndex.build(cn, ca, ivf_nlist=4, seed=1)
    index.add(gn[:25], ga[:25], vol[:25])
    index.add(gn[25:], ga[25:], vol[25:])  # two adds: row ids continue
    return index, gn, ga, vol, cn, ca


@pytest.fixture(params=list(KERNEL_IDS))
def fastscan_kernel(request, monkeypatch):
    """Each fastscan kernel in turn, forced through FDN_FASTSCAN_KERNEL (one this CPU lacks is
    skipped, and says so)."""
    if request.param not in available_kernels():
        pytest.skip(
            f"this CPU cannot run the {request.param} kernel (it runs {available_kernels()})"
        )
    monkeypatch.setenv(KERNEL_ENV, request.param)
    return request.param
