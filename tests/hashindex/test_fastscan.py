"""The fastscan engine: its 8-bit bounds, its C kernel, and exact answers on cases built to
break pruning, checked against the numpy brute force and against the plain `lut` scan."""

import numpy as np
import pytest

from hashindex import HashIndex, _fastscan
from hashindex.fastscan_kernels import KERNEL_IDS
from hashindex.fastscan_layout import BLOCK, block_transpose, levels_for, quantize
from tests.hashindex.hashindex_reference import (
    all_distances,
    assert_same_hits,
    make_codebook,
    make_grids,
    volume_topq,
)

MODES = ("normal", "abnormal", "sum")
DISTANCES = ("hamming", "euclidean", "angular")


def _search(index, qn, qa, topq, **kw):
    return index.search_volumes(qn, qa, topq, engine="fastscan", **kw)


def _lut(index, qn, qa, topq, **kw):
    return index.search_volumes(qn, qa, topq, engine="lut", **kw)


# ---------------------------------------------------------------------------- bounds and kernel
def test_quantized_tables_bound_every_sum_from_below_and_negated_from_above():
    rng = np.random.default_rng(3)
    for trial in range(20):
        P, R = int(rng.integers(1, 70)), int(rng.integers(1, 257))
        tables = [rng.normal(size=(1, P, R)) * 10 ** rng.uniform(-3, 3) for _ in range(2)]
        codes = [rng.integers(0, R, (500, P)) for _ in range(2)]
        levels = levels_for(2 * P)
        for negate in (False, True):
            bounds = quantize(tables, levels, negate=negate)
            assert bounds[0].step[0] == bounds[1].step[0]  # one step: integer sums add up
            for t, b, c in zip(tables, bounds, codes, strict=True):
                assert b.tables.dtype == np.uint8 and b.tables.max() <= levels
                exact = t[0][np.arange(P), c].sum(axis=1)
                L = b.tables[0][np.arange(P), c].astype(np.int64).sum(axis=1)
                if negate:
                    bound = b.offset[0] - b.step[0] * L
                    assert np.all(exact <= bound + 1e-9 * np.abs(bound).max()), trial
                else:
                    bound = b.offset[0] + b.step[0] * L
                    assert np.all(bound <= exact + 1e-9 * np.abs(exact).max()), trial
                # and the bound is tight: off by less than one step per position
                assert np.all(np.abs(exact - bound) <= P * b.step[0] * (1 + 1e-9))


def test_kernel_sums_match_numpy_for_every_block_and_position_range(fastscan_kernel):
    kid = KERNEL_IDS[fastscan_kernel]
    rng = np.random.default_rng(4)
    n, S = 3 * BLOCK + 17, 12  # a partial last block
    codes = rng.integers(0, 256, (n, S)).astype(np.uint8)
    codes_t = block_transpose(codes)
    for s0, P in ((0, S), (0, 5), (5, 7)):
        tables = rng.integers(0, 256, (2, P, 256)).astype(np.uint8)
        out = np.full((2, codes_t.shape[0] * BLOCK), 7, np.uint16)
        _fastscan.lower_bounds(codes_t, tables, out, 2, S, s0, P, 0, codes_t.shape[0], True, kid)
        for q in range(2):
            expected = 7 + tables[q][np.arange(P), codes[:, s0 : s0 + P]].astype(np.int64).sum(1)
            np.testing.assert_array_equal(out[q, :n], expected)
    with pytest.raises(ValueError, match="positions"):
        _fastscan.lower_bounds(codes_t, tables, out, 2, S, 8, 7, 0, 1, False, kid)
    with pytest.raises(ValueError, match="tables"):
        _fastscan.lower_bounds(codes_t, tables[:1], out, 2, S, 0, P, 0, 1, False, kid)


def test_block_transpose_refuses_wide_codes():
    with pytest.raises(TypeError, match="256"):
        block_transpose(np.zeros((3, 4), np.uint16))


# ---------------------------------------------------------------------------- exact answers
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize(
    "mode, normalized_sum", [("normal", False), ("abnormal", False), ("sum", False), ("sum", True)]
)
def test_equals_brute_force_and_lut(small_index, mode, normalized_sum, distance):
    index, gn, ga, vol, cn, ca = small_index
    for b in range(0, gn.shape[0], 7):
        exclude = np.array([vol[b]], np.int64)
        kw = dict(
            mode=mode, distance=distance, normalized_sum=normalized_sum, exclude_volumes=exclude
        )
        hits = _search(index, gn[b : b + 1], ga[b : b + 1], 5, **kw)
        lut = _lut(index, gn[b : b + 1], ga[b : b + 1], 5, **kw)
        # bit for bit the lut scan's answer, ties included
        np.testing.assert_array_equal(hits.distances, lut.distances)
        np.testing.assert_array_equal(hits.rows, lut.rows)
        np.testing.assert_array_equal(hits.volumes, lut.volumes)
        scales = None
        if normalized_sum:
            scales = (index.scales[f"normal/{distance}"], index.scales[f"abnormal/{distance}"])
        ref = volume_topq(
            all_distances(index, cn, ca, gn, ga, gn[b], ga[b], mode, distance, scales),
            vol,
            5,
            exclude=int(vol[b]),
        )
        assert_same_hits(
            (hits.distances[0], hits.rows[0], hits.volumes[0]),
            ref,
            exact=distance == "hamming" and not normalized_sum,
        )


def _index(cn, ca, gn, ga, vol):
    index = HashIndex.build(cn, ca, faiss_indexes=False)
    index.add(gn, ga, vol)
    return index


@pytest.fixture(scope="module")
def books():
    rng = np.random.default_rng(11)
    return make_codebook(rng, 40, 6, n_zero=10), make_codebook(rng, 24, 5, n_zero=8)


@pytest.mark.parametrize("distance", DISTANCES)
def test_ties_exactly_at_the_threshold_break_by_row(books, distance):
    # 30 volumes hold the same grid at different rows: every one of them ties at the Q-th
    # distance, and only the row order decides which volumes are returned
    cn, ca = books
    rng = np.random.default_rng(1)
    gn, ga = make_grids(rng, 600, 40, 4, 4), make_grids(rng, 600, 24, 4, 4)
    vol = np.repeat(np.arange(60), 10).astype(np.int64)
    twin = rng.choice(600, 30, replace=False)
    gn[twin], ga[twin] = gn[0], ga[0]
    index = _index(cn, ca, gn, ga, vol)
    for mode in MODES:
        kw = dict(mode=mode, distance=distance, exclude_volumes=np.array([0], np.int64))
        a = _search(index, gn[:1], ga[:1], 12, **kw)
        b = _lut(index, gn[:1], ga[:1], 12, **kw)
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.distances, b.distances)


def test_all_rows_identical_single_volume_and_q_beyond_the_volumes(books):
    cn, ca = books
    rng = np.random.default_rng(2)
    gn = np.repeat(make_grids(rng, 1, 40, 4, 4), 200, axis=0)
    ga = np.repeat(make_grids(rng, 1, 24, 4, 4), 200, axis=0)
    for vol in (np.zeros(200, np.int64), np.repeat(np.arange(5), 40).astype(np.int64)):
        index = _index(cn, ca, gn, ga, vol)
        for distance in DISTANCES:
            a = _search(index, gn[:1], ga[:1], 50, mode="sum", distance=distance)
            b = _lut(index, gn[:1], ga[:1], 50, mode="sum", distance=distance)
            np.testing.assert_array_equal(a.rows, b.rows)
            np.testing.assert_array_equal(a.volumes, b.volumes)
            # every volume is found once, at its first row (all rows tie at distance 0)
            found = a.volumes[0][a.volumes[0] >= 0]
            assert sorted(found) == sorted(set(vol))
            assert list(a.rows[0][: found.size]) == [
                int(np.flatnonzero(vol == v)[0]) for v in found
            ]


def test_the_excluded_volume_holding_every_best_row(books):
    cn, ca = books
    rng = np.random.default_rng(3)
    gn, ga = make_grids(rng, 400, 40, 4, 4), make_grids(rng, 400, 24, 4, 4)
    vol = np.repeat(np.arange(8), 50).astype(np.int64)
    gn[:50], ga[:50] = gn[0], ga[0]  # volume 0 is nothing but copies of the query
    index = _index(cn, ca, gn, ga, vol)
    for mode in MODES:
        kw = dict(mode=mode, distance="hamming", exclude_volumes=np.array([0], np.int64))
        a = _search(index, gn[:1], ga[:1], 4, **kw)
        b = _lut(index, gn[:1], ga[:1], 4, **kw)
        assert 0 not in a.volumes[0]
        np.testing.assert_array_equal(a.rows, b.rows)


@pytest.fixture(scope="module")
def larger(books):
    cn, ca = books
    rng = np.random.default_rng(5)
    n = 50 * BLOCK + 29  # a partial last block
    gn, ga = make_grids(rng, n, 40, 8, 8, np.arange(30, 40)), make_grids(rng, n, 24, 8, 8)
    vol = np.repeat(np.arange(n // 31 + 1), 31)[:n].astype(np.int64)
    return _index(cn, ca, gn, ga, vol), gn, ga, vol, rng.choice(n, 6, replace=False)


@pytest.mark.parametrize("distance", DISTANCES)
def test_larger_index_with_partial_blocks_and_batches(larger, distance):
    index, gn, ga, vol, q = larger
    for mode in MODES:
        kw = dict(mode=mode, distance=distance, exclude_volumes=vol[q])
        a = _search(index, gn[q], ga[q], 10, **kw)
        b = _lut(index, gn[q], ga[q], 10, **kw)
        np.testing.assert_array_equal(a.distances, b.distances)
        np.testing.assert_array_equal(a.rows, b.rows)


def test_codebooks_over_256_distinct_codes_are_refused_with_the_fix():
    rng = np.random.default_rng(6)
    cb = make_codebook(rng, 257, 2)
    index = _index(
        cb,
        cb[:20].copy(),
        make_grids(rng, 10, 257, 2, 2),
        make_grids(rng, 10, 20, 2, 2),
        np.arange(10, dtype=np.int64),
    )
    g = make_grids(rng, 1, 20, 2, 2)
    with pytest.raises(ValueError, match="lut"):
        _search(index, g, g, 3)
