"""Property tests of HashIndex's boundary: any arrays and options give the exact answer of a
numpy reference, or TypeError / ValueError; never another exception, never a silent cast."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashindex import HashIndex
from tests.hashindex.hashindex_reference import (
    all_distances,
    assert_same_hits,
    make_codebook,
    make_grids,
    volume_topq,
)

K_N, K_A, H, W = 12, 8, 2, 2
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples every run: CI cannot fail by chance
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
DTYPES = [np.uint16, np.int64, np.uint8, np.int16, np.float32]


@pytest.fixture(scope="module")
def pristine():
    rng = np.random.default_rng(5)
    cn, ca = make_codebook(rng, K_N, 4, n_zero=2), make_codebook(rng, K_A, 3, n_zero=2)
    return HashIndex.build(cn, ca, ivf_nlist=2, seed=3), cn, ca


@pytest.fixture(scope="module")
def filled(pristine):
    index, cn, ca = pristine
    index = fresh(index)
    rng = np.random.default_rng(6)
    gn, ga = make_grids(rng, 14, K_N, H, W), make_grids(rng, 14, K_A, H, W)
    vol = np.repeat(np.arange(5), [3, 3, 3, 3, 2]).astype(np.int64)
    index.add(gn, ga, vol)
    return index, cn, ca, gn, ga, vol


def fresh(built):
    """An empty index with the binarized codebooks of `built` (which add never changes)."""
    return HashIndex(built.tables, built.report, ivf_nlist=built.ivf_nlist, seed=built.seed)


def arrays(max_value):
    shape = st.lists(st.integers(0, 3), min_size=1, max_size=4).map(tuple)
    return st.builds(
        lambda dtype, shape, seed: (
            np.random.default_rng(seed).integers(0, max_value, size=shape).astype(dtype)
        ),
        st.sampled_from(DTYPES),
        shape,
        st.integers(0, 2**32 - 1),
    )


def valid_codes(codes, K, grid=None):
    return (
        codes.dtype == np.uint16
        and codes.ndim == 3
        and codes.shape[1] >= 1
        and codes.shape[2] >= 1
        and (grid is None or codes.shape[1:] == grid)
        and (codes.size == 0 or int(codes.max()) < K)
    )


@SETTINGS
@given(
    arrays(K_N + 2),
    arrays(K_A + 2),
    st.builds(
        lambda dtype, n: np.arange(n).astype(dtype) // 2,
        st.sampled_from([np.int64, np.int32, np.float64]),
        st.integers(0, 4),
    ),
)
def test_add_accepts_exactly_the_valid_inputs(pristine, gn, ga, vol):
    index = fresh(pristine[0])
    valid = (
        valid_codes(gn, K_N)
        and valid_codes(ga, K_A, gn.shape[1:])
        and ga.shape[0] == gn.shape[0]
        and vol.dtype == np.int64
        and vol.shape == gn.shape[:1]
    )
    if not valid:
        with pytest.raises((TypeError, ValueError)):
            index.add(gn, ga, vol)
        return
    index.add(gn, ga, vol)
    assert index.ntotal == gn.shape[0]
    if gn.shape[0]:
        D, I = index.search(gn[:1], ga[:1], 1, engine="numpy")
        assert D[0, 0] == 0  # the first row is at distance 0 from itself (or a tie before it)


@SETTINGS
@given(
    q=st.one_of(arrays(K_N + 2), st.integers(1, 3).map(lambda b: np.zeros((b, H, W), np.uint16))),
    topq=st.one_of(st.integers(-2, 10), st.just(10**12), st.just(2.0), st.just(True)),
    engine=st.sampled_from(["lut", "numpy", "faiss-flat", "faiss-ivf"]),
    distance=st.sampled_from(["hamming", "euclidean", "angular"]),
    mode=st.sampled_from(["normal", "abnormal", "sum"]),
    nprobe=st.sampled_from([None, None, 0, 1, 2, 3]),
)
def test_search_volumes_is_the_reference_or_a_clear_error(
    filled, q, topq, engine, distance, mode, nprobe
):
    index, cn, ca, gn, ga, vol = filled
    qa = (q % K_A).astype(q.dtype) if q.dtype != np.float32 else q
    valid = (
        valid_codes(q, K_N, (H, W))
        and valid_codes(qa, K_A, (H, W))
        and isinstance(topq, int)
        and not isinstance(topq, bool)
        and topq >= 1
        and (not engine.startswith("faiss") or distance == "hamming")
        and (nprobe is None or (engine == "faiss-ivf" and 1 <= nprobe <= 2))
    )
    if not valid:
        with pytest.raises((TypeError, ValueError)):
            index.search_volumes(
                q, qa, topq, engine=engine, distance=distance, mode=mode, nprobe=nprobe
            )
        return
    hits = index.search_volumes(
        q, qa, topq, engine=engine, distance=distance, mode=mode, nprobe=nprobe
    )
    n_volumes = np.unique(vol).size
    assert hits.rows.shape == (q.shape[0], min(topq, n_volumes))
    if engine == "faiss-ivf" and nprobe != 2:
        return  # approximate: only the shape is promised
    for b in range(q.shape[0]):
        dist = all_distances(index, cn, ca, gn, ga, q[b], qa[b], mode, distance)
        ref = volume_topq(dist, vol, min(topq, n_volumes))
        assert_same_hits(
            (hits.distances[b], hits.rows[b], hits.volumes[b]), ref, exact=distance == "hamming"
        )
