"""The torch engine against the lut scan, bit for bit: every mode and distance, the cases that
break pruning (ties, identical rows, Q ≥ volumes, an excluded volume holding the best rows, one
volume, an empty index, zero-norm rows under D_A), each bound kernel, and the GPU."""

import importlib.util

import numpy as np
import pytest

import hashindex.torch_engine as torch_engine
from hashindex import HashIndex
from tests.hashindex.hashindex_reference import make_codebook, make_grids

torch = pytest.importorskip("torch")

MODES = ("normal", "abnormal", "sum")
DISTANCES = ("hamming", "euclidean", "angular")
HAS_TRITON = importlib.util.find_spec("triton") is not None


def _index(n=1000, per_volume=25, seed=21, identical=slice(0, 0)):
    rng = np.random.default_rng(seed)
    cn, ca = make_codebook(rng, 40, 6, n_zero=10), make_codebook(rng, 24, 5, n_zero=8)
    gn, ga = make_grids(rng, n, 40, 4, 4, np.arange(30, 40)), make_grids(rng, n, 24, 4, 4)
    if n > 8:
        gn[7], ga[7] = gn[3], ga[3]  # a tie across volumes
        gn[4], ga[4] = gn[3], ga[3]  # and a tie inside one (rows 3 and 4)
        ga[8] = ga[9] = np.flatnonzero(~ca.any(axis=1))[0]  # all zero vectors: norm 0 under D_A
    gn[identical], ga[identical] = gn[identical.start], ga[identical.start]
    vol = (np.arange(n) // per_volume).astype(np.int64) * 7 + 3  # sparse volume ids
    idx = HashIndex.build(cn, ca, faiss_indexes=False)
    idx.add(gn, ga, vol)
    return idx, gn, ga, vol


@pytest.fixture(scope="module")
def index():
    return _index()


def _scan(idx, device="cpu"):
    return torch_engine.TorchScan(
        idx.tables,
        idx.codes,
        idx.row_sqnorm,
        idx._vol_index,
        idx._vol_unique,
        idx.scales,
        device=device,
    )


def _compare_volumes(idx, gn, ga, vol, scan, q, topq=8, exclude=True):
    q_reps, q_sq = idx._prepare(gn[q], ga[q])
    for mode in MODES:
        for distance in DISTANCES:
            for norm in (False, True):
                ex = vol[q] if exclude else None
                # search_volumes caps Q at the number of volumes before any engine runs
                width = min(topq, np.unique(vol).size)
                D, R, V = scan.search(q_reps, q_sq, width, mode, distance, norm, ex)
                ref = idx.search_volumes(
                    gn[q],
                    ga[q],
                    topq,
                    mode=mode,
                    distance=distance,
                    engine="lut",
                    normalized_sum=norm,
                    exclude_volumes=ex,
                )
                case = (mode, distance, norm)
                np.testing.assert_array_equal(D, ref.distances, err_msg=str(case))
                np.testing.assert_array_equal(R, ref.rows, err_msg=str(case))
                np.testing.assert_array_equal(V, ref.volumes, err_msg=str(case))


def _compare_rows(idx, gn, ga, scan, q, k=12):
    q_reps, q_sq = idx._prepare(gn[q], ga[q])
    for mode in MODES:
        for distance in DISTANCES:
            width = min(k, gn.shape[0])  # search caps k at the rows before any engine runs
            D, R = scan.search_rows(q_reps, q_sq, width, mode, distance, False)
            ref_D, ref_R = idx.search(gn[q], ga[q], k, mode=mode, distance=distance, engine="lut")
            np.testing.assert_array_equal(D, ref_D, err_msg=f"{mode} {distance}")
            np.testing.assert_array_equal(R, ref_R, err_msg=f"{mode} {distance}")


QUERIES = np.array([3, 4, 8, 100, 555, 999])
# Triton's interpreter runs the Triton kernels on the CPU; on a CUDA machine the compiled kernels
# are tested instead (mixing both in one process confuses Triton 3.6)
INTERPRETABLE = HAS_TRITON and not torch.cuda.is_available()


@pytest.fixture(
    params=[
        "torch",
        pytest.param(
            "triton",
            marks=pytest.mark.skipif(
                not INTERPRETABLE,
                reason="the triton package is not installed (it comes with CUDA torch), or a "
                "GPU is here and the CUDA tests run the compiled kernels",
            ),
        ),
    ]
)
def kernel(request, monkeypatch):
    """Each bound kernel, forced; the Triton one through Triton's interpreter."""
    monkeypatch.setenv(torch_engine.KERNEL_ENV, request.param)
    if request.param == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    return request.param


def test_each_bound_kernel_equals_lut_bit_for_bit(index, kernel):
    scan = _scan(index[0])
    assert scan.kernel == kernel
    _compare_volumes(*index, scan, QUERIES)
    _compare_rows(index[0], index[1], index[2], scan, QUERIES)


def test_batches_split_across_bound_passes(index, kernel, monkeypatch):
    monkeypatch.setattr(torch_engine, "MAX_BATCH", 4)  # 6 queries in two passes
    _compare_volumes(*index, _scan(index[0]), QUERIES)


def test_more_volumes_asked_than_exist_and_an_excluded_volume_with_the_best_rows(index, kernel):
    idx, gn, ga, vol = index
    q = np.array([3])  # its own volume holds rows 3 and 4, both at distance 0
    _compare_volumes(idx, gn, ga, vol, _scan(idx), q, topq=60)  # 40 volumes
    _compare_volumes(idx, gn, ga, vol, _scan(idx), q, topq=60, exclude=False)


def test_one_volume_and_identical_rows(kernel):
    one, gn, ga, vol = _index(n=40, per_volume=40, seed=3, identical=slice(10, 20))
    _compare_volumes(one, gn, ga, vol, _scan(one), np.array([10, 15]), topq=3, exclude=False)
    _compare_rows(one, gn, ga, _scan(one), np.array([10, 15]), k=50)


def test_empty_index_answers_padding(index, kernel):
    idx = index[0]
    empty = torch_engine.TorchScan(
        idx.tables,
        {b: np.zeros((0, 16), np.uint8) for b in ("normal", "abnormal")},
        {b: np.zeros(0) for b in ("normal", "abnormal")},
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        idx.scales,
        device="cpu",
    )
    q_reps, q_sq = index[0]._prepare(index[1][:2], index[2][:2])
    D, R, V = empty.search(q_reps, q_sq, 5, "sum", "euclidean", False, None)
    assert np.isinf(D).all() and (R == -1).all() and (V == -1).all()


def test_unknown_kernel_is_refused(index, monkeypatch):
    monkeypatch.setenv(torch_engine.KERNEL_ENV, "cuda-magic")
    with pytest.raises(ValueError, match="triton or torch"):
        _scan(index[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU here")
@pytest.mark.parametrize("kernel", ["torch", "triton"])
def test_cuda_device_equals_lut(index, kernel, monkeypatch):
    monkeypatch.setenv(torch_engine.KERNEL_ENV, kernel)
    scan = _scan(index[0], device="cuda")
    _compare_volumes(*index, scan, QUERIES)
    _compare_rows(index[0], index[1], index[2], scan, QUERIES)
