"""The torch engine against the lut scan: bit-identical sums, chunk boundaries, and the GPU."""

import numpy as np
import pytest

import hashindex.torch_engine as torch_engine
from hashindex import HashIndex
from tests.hashindex.hashindex_reference import make_codebook, make_grids

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def index():
    rng = np.random.default_rng(21)
    cn, ca = make_codebook(rng, 40, 6, n_zero=10), make_codebook(rng, 24, 5, n_zero=8)
    n = 1000
    gn, ga = make_grids(rng, n, 40, 4, 4, np.arange(30, 40)), make_grids(rng, n, 24, 4, 4)
    gn[7], ga[7] = gn[3], ga[3]  # a tie across volumes
    vol = np.repeat(np.arange(n // 25), 25).astype(np.int64)
    idx = HashIndex.build(cn, ca, faiss_indexes=False)
    idx.add(gn, ga, vol)
    return idx, gn, ga, vol


def _compare(idx, gn, ga, vol, device):
    q = np.array([3, 100, 555, 999])
    q_reps, q_sq = idx._prepare(gn[q], ga[q])
    scan = torch_engine.TorchScan(
        idx.tables,
        idx.codes,
        idx.row_sqnorm,
        idx._vol_index,
        idx._vol_unique,
        idx.scales,
        device=device,
    )
    for mode in ("normal", "abnormal", "sum"):
        for distance in ("hamming", "euclidean", "angular"):
            for norm in (False, True):
                D, R, V = scan.search(q_reps, q_sq, 8, mode, distance, norm, vol[q])
                ref = idx.search_volumes(
                    gn[q],
                    ga[q],
                    8,
                    mode=mode,
                    distance=distance,
                    engine="lut",
                    normalized_sum=norm,
                    exclude_volumes=vol[q],
                )
                # the hits' distances are lut's, bit for bit; rows within one rounding of
                # each other may swap places under D_E / D_A (torch's sqrt and arccos)
                np.testing.assert_array_equal(D, ref.distances)
                if distance == "hamming":
                    np.testing.assert_array_equal(R, ref.rows)
                    np.testing.assert_array_equal(V, ref.volumes)
                else:
                    assert all(set(a) == set(b) for a, b in zip(V, ref.volumes, strict=True))


def test_cpu_device_equals_lut_across_chunk_boundaries(index, monkeypatch):
    monkeypatch.setattr(torch_engine, "CHUNK_ROWS", 96)  # 1,000 rows in 11 chunks
    _compare(*index, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU here")
def test_cuda_device_equals_lut(index):
    _compare(*index, device="cuda")
