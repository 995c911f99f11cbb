"""Every engine against the independent numpy brute force, for every mode and distance."""

import json

import numpy as np
import pytest

import hashindex
from hashindex import DISTANCES, MODES, HashIndex
from hashindex.engines import NumpyEngine
from hashindex.faiss_binary import gpu_available
from hashindex.packing import pack_grids
from hashindex.registry import ENGINES, REGISTRY
from tests.hashindex.hashindex_reference import (
    all_distances,
    assert_same_hits,
    code_bits,
    volume_topq,
)

# every registered engine that promises the brute force's answers
EXACT = tuple(name for name, engine in REGISTRY.items() if engine.exact)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("engine", EXACT)
def test_volume_topq_matches_reference(small_index, mode, distance, engine):
    index, gn, ga, vol, cn, ca = small_index
    if distance not in REGISTRY[engine].distances:
        with pytest.raises(ValueError, match="hamming"):
            index.search_volumes(gn[:1], ga[:1], 3, mode=mode, distance=distance, engine=engine)
        return
    queries = [0, 4, 20, 33, 59]
    exclude = vol[queries]
    hits = index.search_volumes(
        gn[queries],
        ga[queries],
        5,
        mode=mode,
        distance=distance,
        engine=engine,
        exclude_volumes=exclude,
    )
    for b, qrow in enumerate(queries):
        dist = all_distances(index, cn, ca, gn, ga, gn[qrow], ga[qrow], mode, distance)
        ref = volume_topq(dist, vol, 5, exclude=int(exclude[b]))
        assert_same_hits(
            (hits.distances[b], hits.rows[b], hits.volumes[b]), ref, exact=distance == "hamming"
        )
        assert int(exclude[b]) not in hits.volumes[b]


@pytest.mark.parametrize("distance", DISTANCES)
def test_lut_and_numpy_bit_identical(small_index, distance):
    index, gn, ga, vol, *_ = small_index
    for mode in MODES:
        for norm in (False, True):
            a = index.search_volumes(
                gn[:6], ga[:6], 9, mode=mode, distance=distance, engine="lut", normalized_sum=norm
            )
            b = index.search_volumes(
                gn[:6], ga[:6], 9, mode=mode, distance=distance, engine="numpy", normalized_sum=norm
            )
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)


def test_exact_engines_identical_for_hamming_all_volumes(small_index):
    """Q = every volume, no exclusion: long tie chains must be broken the same way."""
    index, gn, ga, vol, *_ = small_index
    for mode in MODES:
        res = [index.search_volumes(gn, ga, 12, mode=mode, engine=e) for e in EXACT]
        for other in res[1:]:
            for x, y in zip(res[0], other):
                np.testing.assert_array_equal(x, y)
        assert np.all(res[0].volumes[:, 9:] == -1)  # only 9 volumes: padded
        assert np.all(np.isinf(res[0].distances[:, 9:]))


@pytest.mark.parametrize("distance", DISTANCES)
def test_normalized_sum_matches_reference(small_index, distance):
    index, gn, ga, vol, cn, ca = small_index
    s = (index.scales[f"normal/{distance}"], index.scales[f"abnormal/{distance}"])
    hits = index.search_volumes(gn[7:9], ga[7:9], 4, distance=distance, normalized_sum=True)
    for b, qrow in enumerate((7, 8)):
        dist = all_distances(index, cn, ca, gn, ga, gn[qrow], ga[qrow], "sum", distance, s)
        assert_same_hits(
            (hits.distances[b], hits.rows[b], hits.volumes[b]),
            volume_topq(dist, vol, 4),
            exact=False,
        )


@pytest.mark.parametrize("engine", EXACT)
def test_rowwise_search_ties_and_k_greater_than_n(small_index, engine):
    index, gn, ga, vol, cn, ca = small_index
    D, I = index.search(gn[[4]], ga[[4]], 70, mode="sum", engine=engine)  # k > n = 60
    dist = all_distances(index, cn, ca, gn, ga, gn[4], ga[4], "sum", "hamming")
    order = np.lexsort((np.arange(60), dist))
    np.testing.assert_array_equal(I[0, :60], order)
    np.testing.assert_array_equal(D[0, :60], dist[order])
    assert np.all(I[0, 60:] == -1) and np.all(np.isinf(D[0, 60:]))
    assert list(I[0, :3]) == [4, 5, 17]  # identical grids: distance 0, smaller row first


def test_ivf_with_all_lists_probed_is_exact(small_index):
    index, gn, ga, vol, *_ = small_index
    exact = index.search_volumes(gn[:5], ga[:5], 4, engine="lut", exclude_volumes=vol[:5])
    ivf = index.search_volumes(
        gn[:5], ga[:5], 4, engine="faiss-ivf", nprobe=4, exclude_volumes=vol[:5]
    )
    for x, y in zip(exact, ivf):
        np.testing.assert_array_equal(x, y)
    approx = index.search_volumes(gn[:5], ga[:5], 4, engine="faiss-ivf", nprobe=1)
    assert approx.rows.shape == (5, 4)


def test_packed_hamming_equals_table_sum(small_index):
    index, gn, ga, *_ = small_index
    for book, g in (("normal", gn), ("abnormal", ga)):
        t = index.tables[book]
        packed = pack_grids(t.packed, g)
        # one byte-aligned block of ⌈E*/8⌉ bytes per grid position, in position order
        P = g.shape[1] * g.shape[2]
        assert packed.shape == (g.shape[0], P * t.packed.shape[1])
        np.testing.assert_array_equal(packed[3, : t.packed.shape[1]], t.packed[g[3].ravel()[0]])
        bits = np.unpackbits(packed, axis=1)
        for a in range(0, 60, 7):
            for b in range(0, 60, 5):
                popcount = np.count_nonzero(bits[a] != bits[b])
                table_sum = sum(
                    int(t.hamming[t.rep_of[x], t.rep_of[y]])
                    for x, y in zip(g[a].ravel(), g[b].ravel())
                )
                assert popcount == table_sum


def test_single_volume_and_all_zero_codes():
    rng = np.random.default_rng(3)
    cn = rng.normal(size=(10, 4)).astype(np.float32)
    cn[5:] = 0
    ca = np.zeros((6, 4), np.float32)  # every abnormal code is zero
    index = HashIndex.build(cn, ca)
    gn = rng.integers(0, 10, (5, 2, 2)).astype(np.uint16)
    ga = np.zeros((5, 2, 2), np.uint16)
    index.add(gn, ga, np.full(5, 42, np.int64))
    for engine in EXACT:
        h = index.search_volumes(gn[:2], ga[:2], 3, engine=engine)
        assert list(h.volumes[0]) == [42]  # Q is capped at the number of volumes
        assert h.rows[0, 0] == 0 and h.distances[0, 0] == 0
        h = index.search_volumes(gn[:1], ga[:1], 3, engine=engine, exclude_volumes=np.array([42]))
        assert list(h.volumes[0]) == [-1]
    D, _ = index.search(gn[:1], ga[:1], 5, mode="abnormal", distance="angular")
    assert np.all(D == 0)  # all-zero grids are at angular distance 0 from each other


def test_wrong_dtypes_and_shapes_are_refused(small_index):
    index, gn, ga, vol, *_ = small_index
    with pytest.raises(TypeError):
        index.search(gn[:1].astype(np.int64), ga[:1], 3)
    with pytest.raises(ValueError):
        index.search(gn[:1, :2], ga[:1, :2], 3)
    with pytest.raises(TypeError):
        index.search_volumes(gn[:1], ga[:1], 3, exclude_volumes=np.array([1], np.int32))
    with pytest.raises(ValueError):
        index.search(gn[:1], ga[:1], 3, engine="bogus")
    with pytest.raises(TypeError):
        HashIndex.build(np.zeros((4, 2)), np.zeros((4, 2), np.float32))


def test_bits_follow_the_definition():
    from hashindex.binarize import hyperplane_bits, pair_indices, squared_distances

    rng = np.random.default_rng(5)
    cb = rng.normal(size=(12, 3)).astype(np.float32)
    cb[9:] = 0
    i, j = pair_indices(12)
    packed = hyperplane_bits(squared_distances(cb), i, j)
    got = np.unpackbits(packed, axis=1, bitorder="little")[:, : i.size].astype(bool)
    np.testing.assert_array_equal(got, code_bits(cb, list(zip(i, j))))


@pytest.mark.skipif(not gpu_available(), reason="faiss sees no GPU")
def test_gpu_flat_matches_cpu(small_index):
    index, gn, ga, *_ = small_index
    a = index.search_volumes(gn[:4], ga[:4], 5, engine="faiss-flat")
    b = index.search_volumes(gn[:4], ga[:4], 5, engine="lut")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("engine", EXACT)
def test_an_empty_batch_of_queries_gets_empty_answers(small_index, engine):
    index, gn, ga, *_ = small_index
    none = gn[:0]
    hits = index.search_volumes(none, ga[:0], 3, engine=engine)
    assert hits.rows.shape == hits.distances.shape == (0, 3)
    D, I = index.search(none, ga[:0], 4, engine=engine)
    assert D.shape == I.shape == (0, 4)


# ---------------------------------------------------------------------------- the registry
def test_the_registry_names_the_engines_in_order():
    assert (
        ENGINES
        == hashindex.ENGINES
        == tuple(REGISTRY)
        == (
            "lut",
            "fastscan",
            "torch",
            "faiss-flat",
            "faiss-ivf",
            "numpy",
        )
    )
    assert {"lut", "fastscan", "torch", "faiss-flat", "numpy"} <= set(EXACT)
    for name, engine in REGISTRY.items():
        assert engine.name == name
        # the table scans take a region's positions; the pruning engines refuse one
        assert engine.supports_position_mask == (name in ("lut", "numpy"))


@pytest.mark.parametrize("bad", ["bogus", "LUT", "", None, 3, ["lut"]])
def test_an_unknown_engine_is_refused_with_the_list(small_index, bad):
    index, gn, ga, *_ = small_index
    message = f"engine must be one of {ENGINES}, got {bad!r}"
    for search in (index.search, index.search_volumes):
        with pytest.raises(ValueError) as caught:
            search(gn[:1], ga[:1], 3, engine=bad)
        assert str(caught.value) == message


@pytest.mark.parametrize("engine", ENGINES)
def test_each_engine_refuses_what_its_class_does_not_support(small_index, engine):
    index, gn, ga, *_ = small_index
    supports = REGISTRY[engine]
    q = (gn[:1], ga[:1], 3)
    for distance in DISTANCES:
        if distance not in supports.distances:
            with pytest.raises(ValueError, match=f"engine {engine!r} supports only distance="):
                index.search_volumes(*q, distance=distance, engine=engine)
    if not supports.normalized_sum:
        with pytest.raises(ValueError, match="normalized_sum needs engine='lut'"):
            index.search_volumes(*q, engine=engine, normalized_sum=True)
    if not supports.takes_nprobe:
        with pytest.raises(ValueError, match="nprobe .* applies only to engine='faiss-ivf'"):
            index.search_volumes(*q, engine=engine, nprobe=1)
    else:
        for nprobe in (0, 5, 1.0, True):  # nlist = 4
            with pytest.raises(ValueError, match="nprobe must be an integer from 1 to nlist=4"):
                index.search_volumes(*q, engine=engine, nprobe=nprobe)


def test_an_index_looks_an_engine_up_once_and_a_new_engine_is_one_class(small_index, monkeypatch):
    """Registering a class is all a new engine needs; the index makes it on its first query
    and keeps it."""
    index, gn, ga, vol, *_ = small_index
    made = []

    class Counted(NumpyEngine):
        name = "counted"

        def __init__(self, index):
            super().__init__(index)
            made.append(self)

    monkeypatch.setitem(REGISTRY, "counted", Counted)
    try:
        for _ in range(3):
            hits = index.search_volumes(gn[:4], ga[:4], 5, engine="counted", distance="euclidean")
            ref = index.search_volumes(gn[:4], ga[:4], 5, engine="numpy", distance="euclidean")
            for x, y in zip(hits, ref):
                np.testing.assert_array_equal(x, y)
            D, I = index.search(gn[:2], ga[:2], 7, engine="counted")
            D0, I0 = index.search(gn[:2], ga[:2], 7, engine="numpy")
            np.testing.assert_array_equal(D, D0)
            np.testing.assert_array_equal(I, I0)
        assert len(made) == 1
        assert "counted" in index.available_engines()
    finally:
        index._engines.pop("counted", None)  # the module-scoped index outlives the registry entry


def test_available_engines_follow_the_codebooks_and_the_files(small_index, tmp_path):
    index, gn, ga, vol, *_ = small_index
    assert index.available_engines() == ENGINES  # 24/32 codes, FAISS flat and IVF built
    index.write(tmp_path / "all")
    meta = json.loads((tmp_path / "all" / "hashindex.json").read_text())
    assert meta["engines"] == list(ENGINES)
    # FAISS files not loaded yet: available all the same
    assert HashIndex.read(tmp_path / "all").available_engines() == ENGINES
    rng = np.random.default_rng(4)
    wide = HashIndex.build(
        rng.normal(size=(300, 4)).astype(np.float32),
        rng.normal(size=(12, 3)).astype(np.float32),
        bit_budget=16,
        faiss_indexes=False,
    )
    wn = rng.integers(0, 300, (6, 2, 3)).astype(np.uint16)
    wa = rng.integers(0, 12, (6, 2, 3)).astype(np.uint16)
    wide.add(wn, wa, np.arange(6, dtype=np.int64))
    assert wide.available_engines() == ("lut", "torch", "numpy")
    with pytest.raises(
        ValueError, match="this index has no FAISS files .built with faiss_indexes=False"
    ):
        wide.search_volumes(wn[:1], wa[:1], 3, engine="faiss-flat")
    with pytest.raises(ValueError, match="300 distinct vectors"):
        wide.search_volumes(wn[:1], wa[:1], 3, engine="fastscan")


def test_the_default_engine_per_distance_comes_from_the_registry(small_index, fastscan_kernel):
    """fastscan where the codebooks fit one byte, the distance is one it prunes and the kernel
    that runs beats lut there (not the portable loops), else lut."""
    index = small_index[0]
    fast = "lut" if fastscan_kernel == "portable" else "fastscan"
    assert [index.default_engine(d) for d in DISTANCES] == [fast, fast, "lut"]
    rng = np.random.default_rng(5)
    wide = HashIndex.build(
        rng.normal(size=(300, 4)).astype(np.float32),
        rng.normal(size=(12, 3)).astype(np.float32),
        bit_budget=16,
        faiss_indexes=False,
    )
    assert [wide.default_engine(d) for d in DISTANCES] == ["lut", "lut", "lut"]
    with pytest.raises(ValueError, match="distance must be one of"):
        index.default_engine("cosine")
