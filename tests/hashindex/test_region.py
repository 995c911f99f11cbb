"""Region queries (``positions``) and hit explanations: the engines that take a position mask
against a numpy brute force on the grids restricted to the same positions (and rows), in every
mode and distance, and the explanations' contributions against per-position references."""

import numpy as np
import pytest

from hashindex.distances import DISTANCES, MODES
from hashindex.explain import explain
from hashindex.registry import REGISTRY
from tests.hashindex.hashindex_reference import (
    all_distances,
    assert_same_hits,
    code_bits,
    rounded,
    volume_topq,
)

REGION_ENGINES = tuple(n for n, e in REGISTRY.items() if e.supports_position_mask)
REFUSING = tuple(n for n, e in REGISTRY.items() if not e.supports_position_mask)
GRID = (3, 2)  # the small_index fixture's grid


def masks():
    """Named regions of the 3 × 2 grid: one cell, a row, a column, scattered cells, per-book
    regions that differ."""
    one = np.zeros(GRID, bool)
    one[1, 1] = True
    row = np.zeros(GRID, bool)
    row[0] = True
    col = np.zeros(GRID, bool)
    col[:, 0] = True
    scattered = np.array([[True, False], [False, False], [False, True]])
    return {
        "one": one,
        "row": row,
        "column": col,
        "scattered": scattered,
        "per-book": {"normal": row, "abnormal": scattered},
    }


def restricted_reference(index, cn, ca, gn, ga, qrow, mode, distance, region, scales=None):
    """(N,) brute-force distances of the grids restricted to the region's cells."""
    mn, ma = (region["normal"], region["abnormal"]) if isinstance(region, dict) else (region,) * 2
    rn = gn[:, mn][:, :, None]  # (N, C, 1): a grid of the region's cells only
    ra = ga[:, ma][:, :, None]
    return all_distances(index, cn, ca, rn, ra, rn[qrow], ra[qrow], mode, distance, scales)


def region_scales(index, distance, region):
    mn, ma = (region["normal"], region["abnormal"]) if isinstance(region, dict) else (region,) * 2
    out = []
    for book, m in (("normal", mn), ("abnormal", ma)):
        share = m.sum() / m.size
        s = index.scales[f"{book}/{distance}"]
        out.append(
            s * share
            if distance == "hamming"
            else s * np.sqrt(share)
            if distance == "euclidean"
            else s
        )
    return tuple(out)


@pytest.mark.parametrize("engine", REGION_ENGINES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("name", list(masks()))
def test_a_region_query_equals_the_brute_force_on_its_cells(
    small_index, engine, mode, distance, name
):
    index, gn, ga, vol, cn, ca = small_index
    region = masks()[name]
    allowed = np.ones(gn.shape[0], bool)
    allowed[::3] = False  # and a row mask: the two restrictions compose
    for qrow in (0, 4, 20):
        ref = restricted_reference(index, cn, ca, gn, ga, qrow, mode, distance, region)
        hits = index.search_volumes(
            gn[qrow : qrow + 1],
            ga[qrow : qrow + 1],
            4,
            mode=mode,
            distance=distance,
            engine=engine,
            exclude_volumes=np.array([vol[qrow]]),
            positions=region,
        )
        want = volume_topq(ref, vol, 4, exclude=vol[qrow])
        assert_same_hits(
            (hits.distances[0], hits.rows[0], hits.volumes[0]), want, distance == "hamming"
        )
        masked = np.where(allowed, ref, np.inf)
        D, I = index.search(
            gn[qrow : qrow + 1],
            ga[qrow : qrow + 1],
            5,
            mode=mode,
            distance=distance,
            engine=engine,
            positions=region,
            allowed_rows=allowed,
        )
        order = np.lexsort((np.arange(masked.size), masked))[:5]
        np.testing.assert_allclose(D[0], masked[order], rtol=1e-9, atol=1e-7)
        assert np.all(allowed[I[0]])


@pytest.mark.parametrize("engine", REGION_ENGINES)
@pytest.mark.parametrize("distance", DISTANCES)
def test_a_region_under_the_normalized_sum_scales_each_term_by_its_share(
    small_index, engine, distance
):
    index, gn, ga, vol, cn, ca = small_index
    region = masks()["per-book"]
    scales = region_scales(index, distance, region)
    ref = restricted_reference(index, cn, ca, gn, ga, 4, "sum", distance, region, scales)
    D, I = index.search(
        gn[4:5],
        ga[4:5],
        6,
        mode="sum",
        distance=distance,
        engine=engine,
        normalized_sum=True,
        positions=region,
    )
    order = np.lexsort((np.arange(ref.size), ref))[:6]
    np.testing.assert_allclose(D[0], ref[order], rtol=1e-9, atol=1e-7)


@pytest.mark.parametrize("distance", DISTANCES)
def test_lut_and_numpy_agree_bit_for_bit_on_a_region(small_index, distance):
    index, gn, ga, *_ = small_index
    for region in masks().values():
        a = index.search(
            gn[:3], ga[:3], 10, mode="sum", distance=distance, engine="lut", positions=region
        )
        b = index.search(
            gn[:3], ga[:3], 10, mode="sum", distance=distance, engine="numpy", positions=region
        )
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_the_whole_grid_as_a_region_is_the_plain_query(small_index):
    index, gn, ga, *_ = small_index
    whole = np.ones(GRID, bool)
    for distance in DISTANCES:
        a = index.search(gn[:2], ga[:2], 8, distance=distance, engine="lut", positions=whole)
        b = index.search(gn[:2], ga[:2], 8, distance=distance, engine="lut")
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("engine", REFUSING)
def test_engines_without_a_position_mask_refuse_a_region(small_index, engine):
    index, gn, ga, *_ = small_index
    with pytest.raises(ValueError) as caught:
        index.search_volumes(
            gn[:1], ga[:1], 3, distance="hamming", engine=engine, positions=masks()["row"]
        )
    assert f"engine {engine!r} cannot restrict the distance to a region" in str(caught.value)
    assert "engine='lut' or engine='numpy'" in str(caught.value)


def test_the_default_engine_of_a_region_query_takes_a_position_mask(small_index):
    index = small_index[0]
    for distance in DISTANCES:
        assert REGISTRY[index.default_engine(distance, position_mask=True)].supports_position_mask


@pytest.mark.parametrize(
    "bad, error, text",
    [
        (np.zeros(GRID, bool), ValueError, "selects no grid position"),
        (np.ones((2, 3), bool), ValueError, "must have the grid's shape (3, 2)"),
        (np.ones(GRID, np.uint8), TypeError, "must be a bool numpy array"),
        ({"normal": np.ones(GRID, bool)}, ValueError, "must name both codebooks"),
    ],
)
def test_a_bad_region_is_refused(small_index, bad, error, text):
    index, gn, ga, *_ = small_index
    with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)")):
        index.search(gn[:1], ga[:1], 3, engine="lut", positions=bad)


# ---------------------------------------------------------------------------- explanations
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("name", ["whole", "scattered", "per-book"])
def test_contributions_sum_to_the_reported_distance(small_index, mode, distance, normalized, name):
    index, gn, ga, vol, *_ = small_index
    region = None if name == "whole" else masks()[name]
    for qrow in (0, 20):
        hits = index.search_volumes(
            gn[qrow : qrow + 1],
            ga[qrow : qrow + 1],
            6,
            mode=mode,
            distance=distance,
            engine="lut",
            normalized_sum=normalized,
            positions=region,
            exclude_volumes=np.array([vol[qrow]]),
        )
        for d, row in zip(hits.distances[0], hits.rows[0]):
            e = explain(
                index,
                (gn[qrow], ga[qrow]),
                index.reconstruct(int(row)),
                mode=mode,
                distance=distance,
                normalized_sum=normalized,
                positions=region,
            )
            assert e.distance == d  # the same sums in the same order: bit for bit
            total = e.contributions().sum()
            # each c_p is a product or quotient of rounded terms: a few ulps each, P = 6 of them
            assert abs(total - d) <= 16 * 6 * np.finfo(float).eps * max(d, 1.0)
            assert np.all(e.contributions() >= 0)
            for book, b in e.books.items():
                if region is not None:
                    m = region[book] if isinstance(region, dict) else region
                    assert np.all(b.contributions[~m] == 0)


def test_hamming_and_euclidean_contributions_are_the_per_position_distances(small_index):
    index, gn, ga, vol, cn, ca = small_index
    bits = code_bits(cn, index.tables["normal"].pairs)
    e_cb = rounded(cn)
    q, r = gn[0], gn[9]
    h = explain(index, (q, ga[0]), (r, ga[9]), mode="normal", distance="hamming")
    want = np.array(
        [[np.count_nonzero(bits[q[i, j]] != bits[r[i, j]]) for j in range(2)] for i in range(3)]
    )
    assert np.array_equal(h.books["normal"].contributions, want.astype(float))
    eu = explain(index, (q, ga[0]), (r, ga[9]), mode="normal", distance="euclidean")
    sq = ((e_cb[q] - e_cb[r]) ** 2).sum(axis=2)  # (3, 2) per-position squared distances
    np.testing.assert_allclose(
        eu.books["normal"].contributions * eu.distance, sq, rtol=1e-9, atol=1e-12
    )


def test_angular_contributions_follow_the_normalized_grids(small_index):
    index, gn, ga, vol, cn, ca = small_index
    e_cb = rounded(ca)
    q, r = ga[1], ga[30]
    x, y = e_cb[q], e_cb[r]  # (3, 2, D)
    nx, ny = np.sqrt((x**2).sum()), np.sqrt((y**2).sum())
    if nx == 0 or ny == 0:
        pytest.skip("an all-zero grid: the split is tested by the sum test")
    u = 0.5 * ((x / nx - y / ny) ** 2).sum(axis=2)
    ang = np.arccos(np.clip((x * y).sum() / (nx * ny), -1, 1)) / np.pi
    got = explain(index, (gn[1], q), (gn[30], r), mode="abnormal", distance="angular")
    np.testing.assert_allclose(
        got.books["abnormal"].contributions, ang * u / u.sum(), rtol=1e-7, atol=1e-12
    )


@pytest.mark.parametrize("n_rows", [1, 2, 3, 5, 6, 7])
def test_rows_past_the_last_group_of_four_are_summed_too(small_index, n_rows):
    """The compiled scans sum four rows side by side: the rows left over (N mod 4) take
    another loop, which must give the numpy engine's sums as well."""
    from hashindex import HashIndex

    index, gn, ga, vol, cn, ca = small_index
    small = HashIndex.build(cn, ca, faiss_indexes=False, seed=1)
    small.add(gn[:n_rows], ga[:n_rows], vol[:n_rows])
    for region in (None, masks()["scattered"], masks()["per-book"]):
        for mode in MODES:
            for distance in DISTANCES:
                a = small.search(
                    gn[:3],
                    ga[:3],
                    n_rows,
                    mode=mode,
                    distance=distance,
                    engine="lut",
                    positions=region,
                )
                b = small.search(
                    gn[:3],
                    ga[:3],
                    n_rows,
                    mode=mode,
                    distance=distance,
                    engine="numpy",
                    positions=region,
                )
                assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.fixture(scope="module")
def wide_index():
    """(index, gn, ga, vol, cn, ca): a normal codebook of 300 distinct vectors, so its codes
    are uint16."""
    from hashindex import HashIndex
    from tests.hashindex.hashindex_reference import make_codebook, make_grids

    rng = np.random.default_rng(5)
    cn, ca = make_codebook(rng, 300, 3), make_codebook(rng, 12, 3)
    gn, ga = make_grids(rng, 41, 300, 3, 2), make_grids(rng, 41, 12, 3, 2)
    vol = np.repeat(np.arange(7), [6, 6, 6, 6, 6, 6, 5]).astype(np.int64)
    index = HashIndex.build(cn, ca, faiss_indexes=False, seed=3)
    index.add(gn, ga, vol)
    assert index.codes["normal"].dtype == np.uint16
    return index, gn, ga, vol, cn, ca


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("distance", DISTANCES)
def test_a_region_on_wide_codes_equals_the_brute_force(wide_index, mode, distance):
    index, gn, ga, vol, cn, ca = wide_index
    for name in ("scattered", "per-book"):
        region = masks()[name]
        ref = restricted_reference(index, cn, ca, gn, ga, 2, mode, distance, region)
        for engine in REGION_ENGINES:
            D, I = index.search(
                gn[2:3], ga[2:3], 8, mode=mode, distance=distance, engine=engine, positions=region
            )
            order = np.lexsort((np.arange(ref.size), ref))[:8]
            np.testing.assert_allclose(D[0], ref[order], rtol=1e-9, atol=1e-7)


def test_a_region_query_of_a_read_index_equals_numpy(small_index, tmp_path):
    from hashindex import HashIndex

    index, gn, ga, *_ = small_index
    index.write(tmp_path / "idx")
    read = HashIndex.read(tmp_path / "idx")
    assert read.codes["normal"].dtype == np.uint8  # memory-mapped rows, one byte per code
    for region in masks().values():
        for distance in DISTANCES:
            a = read.search(gn[:2], ga[:2], 9, distance=distance, engine="lut", positions=region)
            b = index.search(gn[:2], ga[:2], 9, distance=distance, engine="numpy", positions=region)
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
