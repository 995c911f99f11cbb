"""`allowed_rows`: every exact engine against a numpy brute force restricted to the allowed rows,
in every mode and distance it supports, row-wise and volume-wise, for masks that allow nothing,
one row, fewer rows than k, every row but the best ones, random rows and whole 64-row blocks."""

import numpy as np
import pytest

from hashindex import HashIndex, fastscan_kernels
from hashindex.distances import DISTANCES, MODES
from hashindex.registry import REGISTRY
from tests.hashindex.hashindex_reference import (
    assert_same_hits,
    code_bits,
    make_codebook,
    make_grids,
    rounded,
    volume_topq,
)

EXACT = tuple(name for name, engine in REGISTRY.items() if engine.exact)
K_ROWS, TOPQ = 10, 5
QUERIES = [0, 3, 777, 1500]


@pytest.fixture(scope="module", params=["random", "zeros"])
def masked_index(request):
    """(index, gn, ga, vol, cn, ca): 2,000 rows (32 blocks of 64) in 40 volumes of 50 rows."""
    rng = np.random.default_rng(11)
    zeros = request.param == "zeros"
    cn = make_codebook(rng, 24, 6, n_zero=8 if zeros else 0)
    ca = make_codebook(rng, 16, 5, n_zero=6 if zeros else 0)
    N = 2000
    gn = make_grids(rng, N, 24, 3, 3, np.arange(16, 24) if zeros else None)
    ga = make_grids(rng, N, 16, 3, 3, np.arange(10, 16) if zeros else None)
    for twin in (1, 64, 1999):  # exact ties with the first query, across blocks and volumes
        gn[twin], ga[twin] = gn[0], ga[0]
    vol = (np.arange(N) // 50).astype(np.int64) * 3 + 5
    index = HashIndex.build(cn, ca, seed=2)
    index.add(gn, ga, vol)
    return index, gn, ga, vol, cn, ca


def reference_distances(index, cn, ca, gn, ga, qrow, mode, distance):
    """(N,) distances of row qrow's grids to every row, from the codebooks' definitions."""
    out = {}
    for book, cb, g in (("normal", cn, gn), ("abnormal", ca, ga)):
        flat = g.reshape(g.shape[0], -1).astype(np.intp)
        if distance == "hamming":
            bits = code_bits(cb, index.tables[book].pairs)
            out[book] = (bits[flat] != bits[flat[qrow]][None]).sum(axis=(1, 2)).astype(float)
            continue
        e = rounded(cb)
        x, y = e[flat].reshape(flat.shape[0], -1), e[flat[qrow]].ravel()
        if distance == "euclidean":
            out[book] = np.sqrt(((x - y) ** 2).sum(axis=1))
            continue
        nx, ny = np.sqrt((x**2).sum(axis=1)), np.sqrt((y**2).sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            ang = np.arccos(np.clip(x @ y / (nx * ny), -1, 1)) / np.pi
        ang[(nx == 0) != (ny == 0)] = 0.5
        ang[(nx == 0) & (ny == 0)] = 0.0
        out[book] = ang
    return {"normal": out["normal"], "abnormal": out["abnormal"]}.get(
        mode, out["normal"] + out["abnormal"]
    )


def masks(N, best_rows, rng):
    """The masks every engine is checked with, by name."""
    one = np.zeros(N, bool)
    one[int(rng.integers(N))] = True
    few = np.zeros(N, bool)
    few[rng.choice(N, 3, replace=False)] = True
    no_best = np.ones(N, bool)
    no_best[best_rows] = False
    return {
        "nothing": np.zeros(N, bool),
        "one": one,
        "fewer than k": few,
        "without the best": no_best,
        "random 30%": rng.random(N) < 0.3,
        "sparse 1%": rng.random(N) < 0.01,
        "whole blocks": (np.arange(N) // 64) % 3 != 1,
    }


def masked_rows_ref(dist, allowed, k):
    rows = np.flatnonzero(allowed)
    order = np.lexsort((rows, dist[rows]))[:k]
    return rows[order]


def check(index, gn, ga, vol, cn, ca, engine, mode, distance):
    rng = np.random.default_rng(5)
    dists = [reference_distances(index, cn, ca, gn, ga, q, mode, distance) for q in QUERIES]
    # the rows of the first query's best volumes (and every row tied with its best): removed
    best = np.flatnonzero(np.isin(vol, [v for _, _, v in volume_topq(dists[0], vol, TOPQ)]))
    best = np.union1d(best, np.flatnonzero(dists[0] <= dists[0].min()))
    exclude = vol[QUERIES]
    for name, allowed in masks(gn.shape[0], best, rng).items():
        D, I = index.search(
            gn[QUERIES], ga[QUERIES], K_ROWS, mode=mode, distance=distance, engine=engine,
            allowed_rows=allowed,
        )  # fmt: skip
        hits = index.search_volumes(
            gn[QUERIES], ga[QUERIES], TOPQ, mode=mode, distance=distance, engine=engine,
            exclude_volumes=exclude, allowed_rows=allowed,
        )  # fmt: skip
        for b, dist in enumerate(dists):
            rows = masked_rows_ref(dist, allowed, K_ROWS)
            ref = [(dist[r], int(r), int(vol[r])) for r in rows]
            got_v = np.where(I[b] >= 0, vol[np.maximum(I[b], 0)], -1)
            assert np.all(allowed[I[b][I[b] >= 0]]), name
            assert_same_hits((D[b], I[b], got_v), ref, exact=distance == "hamming")
            sub = np.flatnonzero(allowed)
            ref_v = [
                (d, int(sub[r]), v)
                for d, r, v in volume_topq(dist[sub], vol[sub], TOPQ, int(exclude[b]))
            ]
            got = (hits.distances[b], hits.rows[b], hits.volumes[b])
            assert np.all(allowed[hits.rows[b][hits.rows[b] >= 0]]), name
            assert_same_hits(got, ref_v, exact=distance == "hamming")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("engine", EXACT)
def test_each_exact_engine_searches_only_the_allowed_rows(masked_index, engine, mode, distance):
    if engine == "torch":
        pytest.importorskip("torch")
    if distance not in REGISTRY[engine].distances:
        pytest.skip(f"{engine} answers only {REGISTRY[engine].distances}")
    check(*masked_index, engine, mode, distance)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("distance", ["hamming", "euclidean"])
def test_every_prune_kernel_honours_the_mask(masked_index, fastscan_kernel, mode, distance):
    check(*masked_index, "fastscan", mode, distance)


def test_the_kernel_keeps_no_row_outside_its_words(masked_index):
    """prune_scan itself (the C kernel), in heap mode: only rows whose bit is set come back."""
    index = masked_index[0]
    fs = index._fastscan()
    rng = np.random.default_rng(3)
    allowed = rng.random(index.ntotal) < 0.2
    q_reps, _ = index._prepare(masked_index[1][:2], masked_index[2][:2])
    from hashindex.fastscan_layout import quantize

    tables = np.stack(
        [index.tables["normal"].query_table(q_reps["normal"][i], "hamming") for i in range(2)]
    )
    bounds = {"normal": quantize([tables], 63)[0]}
    plan = fs._plan(bounds, ("normal",))
    words = fastscan_kernels.allowed_words(allowed, fs.codes_t.shape[0])
    qidx, rows, _ = fastscan_kernels.prune_scan(fs.codes_t, fs.n, plan, index.ntotal, words)
    for q in range(2):
        np.testing.assert_array_equal(np.sort(rows[qidx == q]), np.flatnonzero(allowed))
    with pytest.raises(ValueError, match="allowed"):
        fastscan_kernels.prune_scan(fs.codes_t, fs.n, plan, 8, words[:-1])


def test_normalized_sum_with_a_mask(masked_index):
    index, gn, ga, vol, cn, ca = masked_index
    allowed = np.random.default_rng(1).random(index.ntotal) < 0.5
    for distance in DISTANCES:
        scales = [index.scales[f"{b}/{distance}"] for b in ("normal", "abnormal")]
        dn = reference_distances(index, cn, ca, gn, ga, 3, "normal", distance)
        da = reference_distances(index, cn, ca, gn, ga, 3, "abnormal", distance)
        dist = dn / scales[0] + da / scales[1]
        rows = masked_rows_ref(dist, allowed, K_ROWS)
        for engine in ("lut", "fastscan", "numpy"):
            D, I = index.search(
                gn[[3]], ga[[3]], K_ROWS, distance=distance, engine=engine, normalized_sum=True,
                allowed_rows=allowed,
            )  # fmt: skip
            ref = [(dist[r], int(r), int(vol[r])) for r in rows]
            assert_same_hits((D[0], I[0], vol[I[0]]), ref, exact=False)


def test_engines_without_a_row_mask_refuse_it(masked_index):
    index, gn, ga = masked_index[:3]
    allowed = np.ones(index.ntotal, bool)
    for name, engine in REGISTRY.items():
        if engine.supports_row_mask:
            continue
        with pytest.raises(ValueError, match="cannot restrict a search to some rows"):
            index.search(gn[:1], ga[:1], 3, engine=name, allowed_rows=allowed)


def test_a_bad_mask_is_refused(masked_index):
    index, gn, ga = masked_index[:3]
    with pytest.raises(TypeError, match="bool"):
        index.search(gn[:1], ga[:1], 3, allowed_rows=np.ones(index.ntotal, np.int64))
    with pytest.raises(ValueError, match=r"\(2000,\)"):
        index.search_volumes(gn[:1], ga[:1], 3, allowed_rows=np.ones(5, bool))


@pytest.fixture(scope="module")
def many_blocks():
    """20,000 rows: 313 blocks, so that `prune_scan` splits them over threads."""
    rng = np.random.default_rng(17)
    cn, ca = make_codebook(rng, 24, 6), make_codebook(rng, 16, 5)
    N = 20_000
    gn, ga = make_grids(rng, N, 24, 3, 3), make_grids(rng, N, 16, 3, 3)
    vol = (np.arange(N) // 40).astype(np.int64)
    index = HashIndex.build(cn, ca, seed=3, faiss_indexes=False)
    index.add(gn, ga, vol)
    return index, gn, ga, vol, cn, ca


@pytest.mark.parametrize("distance", ["hamming", "euclidean"])
def test_fastscan_masks_blocks_split_over_threads(many_blocks, monkeypatch, distance):
    index, gn, ga, vol, cn, ca = many_blocks
    monkeypatch.setattr(fastscan_kernels, "_THREADS", 2)
    rng = np.random.default_rng(8)
    N = gn.shape[0]
    blocks = (np.arange(N) // 64) % 5 == 2  # every fifth block: most blocks are skipped
    for allowed in (rng.random(N) < 0.3, blocks, blocks & (rng.random(N) < 0.5)):
        queries = [0, 9_999, 19_999]
        hits = index.search_volumes(
            gn[queries], ga[queries], TOPQ, distance=distance, engine="fastscan",
            allowed_rows=allowed,
        )  # fmt: skip
        for b, q in enumerate(queries):
            dist = reference_distances(index, cn, ca, gn, ga, q, "sum", distance)
            sub = np.flatnonzero(allowed)
            ref = [(d, int(sub[r]), v) for d, r, v in volume_topq(dist[sub], vol[sub], TOPQ)]
            got = (hits.distances[b], hits.rows[b], hits.volumes[b])
            assert_same_hits(got, ref, exact=distance == "hamming")
