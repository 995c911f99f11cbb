"""The fastscan engine's batch path (one pruned pass over the codes for many queries): every
query of a batch equals the numpy brute force and the `lut` scan, on the cases built to break
pruning, on each kernel the CPU runs (AVX-512 VBMI, AVX2, the portable C loops), and through the
fallback taken when candidates overflow. Also the pruned-scan and exact-sum kernels against numpy."""

import numpy as np
import pytest

from hashindex import HashIndex, _fastscan, fastscan_kernels, fastscan_pruned
from hashindex.fastscan import FastScan
from hashindex.fastscan_kernels import CHUNK, COARSE, KERNEL_IDS, available_kernels
from hashindex.fastscan_layout import BLOCK, block_transpose, code_groups, nibble_layout
from tests.hashindex.hashindex_reference import (
    all_distances,
    assert_same_hits,
    make_codebook,
    make_grids,
    volume_topq,
)

MODES = ("normal", "abnormal", "sum")
DISTANCES = ("hamming", "euclidean", "angular")
NOWHERE = -12345  # a volume id no index holds: "exclude nothing" inside a batch


@pytest.fixture
def kernel(fastscan_kernel):
    """Run each test on every kernel the CPU supports (VBMI, AVX2, the portable C loops)."""
    return fastscan_kernel


def _both(index, qn, qa, topq, **kw):
    fast = index.search_volumes(qn, qa, topq, engine="fastscan", **kw)
    lut = index.search_volumes(qn, qa, topq, engine="lut", **kw)
    for field in ("distances", "rows", "volumes"):
        np.testing.assert_array_equal(getattr(fast, field), getattr(lut, field), err_msg=field)
    return fast


def _index(cn, ca, gn, ga, vol):
    index = HashIndex.build(cn, ca, faiss_indexes=False)
    index.add(gn, ga, vol)
    return index


def _check_reference(index, hits, cn, ca, gn, ga, vol, queries, excl, topq, mode, distance):
    for b, (i, ex) in enumerate(zip(queries, excl, strict=True)):
        dist = all_distances(index, cn, ca, gn, ga, gn[i], ga[i], mode, distance)
        ref = volume_topq(dist, vol, topq, exclude=int(ex))
        assert_same_hits(
            (hits.distances[b], hits.rows[b], hits.volumes[b]), ref, exact=distance == "hamming"
        )


@pytest.fixture(scope="module")
def books():
    rng = np.random.default_rng(11)
    return make_codebook(rng, 40, 6, n_zero=10), make_codebook(rng, 24, 5, n_zero=8)


# ---------------------------------------------------------------------------- exact answers
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize(
    "mode, normalized_sum", [("normal", False), ("abnormal", False), ("sum", False), ("sum", True)]
)
def test_batch_equals_brute_force_and_lut(small_index, kernel, mode, normalized_sum, distance):
    index, gn, ga, vol, cn, ca = small_index
    queries = np.arange(0, gn.shape[0], 4)
    # own volume excluded for every other query, nothing excluded for the rest
    excl = np.where(np.arange(queries.size) % 2 == 0, vol[queries], NOWHERE).astype(np.int64)
    kw = dict(mode=mode, distance=distance, normalized_sum=normalized_sum, exclude_volumes=excl)
    hits = _both(index, gn[queries], ga[queries], 5, **kw)
    if normalized_sum:
        for b, i in enumerate(queries):
            scales = (index.scales[f"normal/{distance}"], index.scales[f"abnormal/{distance}"])
            dist = all_distances(index, cn, ca, gn, ga, gn[i], ga[i], mode, distance, scales)
            ref = volume_topq(dist, vol, 5, exclude=int(excl[b]))
            assert_same_hits((hits.distances[b], hits.rows[b], hits.volumes[b]), ref, exact=False)
    else:
        _check_reference(index, hits, cn, ca, gn, ga, vol, queries, excl, 5, mode, distance)


@pytest.mark.parametrize("distance", DISTANCES)
def test_batch_mixing_ties_an_excluded_best_volume_and_q_beyond_the_volumes(
    books, kernel, distance
):
    # volume 0 is nothing but copies of row 0 (the first query: excluded, it holds every best
    # row); 30 more copies scattered over other volumes tie exactly at the Q-th distance;
    # one query asks for more volumes than exist
    cn, ca = books
    rng = np.random.default_rng(1)
    gn, ga = make_grids(rng, 600, 40, 4, 4), make_grids(rng, 600, 24, 4, 4)
    vol = np.repeat(np.arange(60), 10).astype(np.int64)
    twin = rng.choice(np.arange(10, 600), 30, replace=False)
    gn[:10], ga[:10] = gn[0], ga[0]
    gn[twin], ga[twin] = gn[0], ga[0]
    index = _index(cn, ca, gn, ga, vol)
    queries = np.array([0, 0, 5, 123, 599])
    excl = np.array([0, NOWHERE, 0, vol[123], NOWHERE], np.int64)
    for mode in MODES:
        kw = dict(mode=mode, distance=distance, exclude_volumes=excl)
        hits = _both(index, gn[queries], ga[queries], 12, **kw)
        assert 0 not in hits.volumes[0] and 0 not in hits.volumes[2]
        _check_reference(index, hits, cn, ca, gn, ga, vol, queries, excl, 12, mode, distance)
        every = _both(index, gn[queries], ga[queries], 60, **kw)  # Q = every volume
        assert (every.volumes[0] >= 0).sum() == 59 and (every.volumes[1] >= 0).sum() == 60


def test_angular_is_pruned_and_exact_with_zero_norm_rows_and_a_zero_query(books, kernel):
    """D_A by the pruned scan: rows of a few prototypes with noise (so bounds are tight), a
    quarter of them with an all-zero abnormal grid (norm 0: angle exactly 0.5), a query whose
    abnormal grid is zero too (every angle 0.5 or 0). The answers equal the brute force's and
    lut's, and far fewer rows than the index holds are evaluated exactly."""
    cn, ca = books  # the last 10 / 8 codes of each book are zero vectors
    rng = np.random.default_rng(12)
    n = 3000
    proto_n, proto_a = make_grids(rng, 6, 30, 4, 4), make_grids(rng, 6, 16, 4, 4)
    pick = rng.integers(0, 6, n)
    gn, ga = proto_n[pick].copy(), proto_a[pick].copy()
    noise = rng.random(gn.shape) < 0.15
    gn[noise] = rng.integers(0, 30, noise.sum())
    ga[rng.random(n) < 0.25] = 16  # a zero code everywhere: norm 0
    vol = np.repeat(np.arange(n // 10), 10).astype(np.int64)
    index = _index(cn, ca, gn, ga, vol)
    queries = np.array([1, 7, 500, 2999])
    qa = ga[queries].copy()
    qa[3] = 17  # a zero query in the abnormal book
    excl = np.array([vol[1], NOWHERE, vol[500], NOWHERE], np.int64)
    fs = index._fastscan()
    for mode in MODES:
        kw = dict(mode=mode, distance="angular", exclude_volumes=excl)
        hits = _both(index, gn[queries], qa, 10, **kw)
        for b, (i, ex) in enumerate(zip(queries, excl, strict=True)):
            dist = all_distances(index, cn, ca, gn, ga, gn[i], qa[b], mode, "angular")
            ref = volume_topq(dist, vol, 10, exclude=int(ex))
            assert_same_hits((hits.distances[b], hits.rows[b], hits.volumes[b]), ref, exact=False)
        q_reps, q_sq = index._prepare(gn[queries[:3]], qa[:3])
        evaluated = fs.search(q_reps, q_sq, 10, mode, "angular", False, excl[:3])[3]
        assert (evaluated < n // 2).all(), (mode, evaluated)


@pytest.mark.parametrize("distance", DISTANCES)
def test_batch_all_rows_identical_and_a_single_volume(books, kernel, distance):
    cn, ca = books
    rng = np.random.default_rng(2)
    gn = np.repeat(make_grids(rng, 1, 40, 4, 4), 200, axis=0)
    ga = np.repeat(make_grids(rng, 1, 24, 4, 4), 200, axis=0)
    other = make_grids(rng, 2, 40, 4, 4), make_grids(rng, 2, 24, 4, 4)
    qn, qa = np.concatenate([gn[:1], other[0]]), np.concatenate([ga[:1], other[1]])
    for vol in (np.zeros(200, np.int64), np.repeat(np.arange(5), 40).astype(np.int64)):
        index = _index(cn, ca, gn, ga, vol)
        for mode in MODES:
            hits = _both(index, qn, qa, 50, mode=mode, distance=distance)
            # every volume is found once, at its first row (all rows tie)
            for b in range(qn.shape[0]):
                found = hits.volumes[b][hits.volumes[b] >= 0]
                assert sorted(found) == sorted(set(vol))
                assert list(hits.rows[b][: found.size]) == [
                    int(np.flatnonzero(vol == v)[0]) for v in found
                ]
            excl = np.full(qn.shape[0], vol[0], np.int64)  # the single volume left out
            hits = _both(index, qn, qa, 3, mode=mode, distance=distance, exclude_volumes=excl)
            if vol.max() == 0:
                assert (hits.volumes == -1).all() and np.isinf(hits.distances).all()


def test_an_empty_index_is_refused_and_an_empty_engine_answers_nothing(books):
    cn, ca = books
    index = HashIndex.build(cn, ca, faiss_indexes=False)
    g = make_grids(np.random.default_rng(3), 2, 24, 4, 4)
    with pytest.raises(ValueError, match="empty"):
        index.search_volumes(g, g, 3, engine="fastscan")
    tables = index.tables
    empty = np.zeros((0, 16), np.uint8)
    engine = FastScan(
        tables,
        {"normal": empty, "abnormal": empty},
        {"normal": np.zeros(0), "abnormal": np.zeros(0)},
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        {},
    )
    q = {"normal": np.zeros((2, 16), np.uint8), "abnormal": np.zeros((2, 16), np.uint8)}
    D, R, V, evaluated = engine.search(
        q, {b: np.zeros(2) for b in q}, 4, "sum", "hamming", False, None
    )
    assert np.isinf(D).all() and (R == -1).all() and (V == -1).all() and (evaluated == 0).all()


@pytest.fixture(scope="module")
def threaded(books):
    """An index large enough for the scan to split its blocks over threads."""
    cn, ca = books
    rng = np.random.default_rng(5)
    n = 300 * BLOCK + 17
    gn, ga = make_grids(rng, n, 40, 4, 4, np.arange(30, 40)), make_grids(rng, n, 24, 4, 4)
    vol = np.repeat(np.arange(n // 155 + 1), 155)[:n].astype(np.int64)
    return _index(cn, ca, gn, ga, vol), gn, ga, vol, rng.choice(n, 7, replace=False)


@pytest.mark.parametrize("distance", ["hamming", "euclidean"])
def test_batch_over_threads_and_row_wise_top_k(threaded, kernel, distance):
    index, gn, ga, vol, q = threaded
    for mode in MODES:
        for normalized_sum in (False, True) if mode == "sum" else (False,):
            kw = dict(mode=mode, distance=distance, normalized_sum=normalized_sum)
            _both(index, gn[q], ga[q], 10, exclude_volumes=vol[q], **kw)
            D, I = index.search(gn[q], ga[q], 25, engine="fastscan", **kw)
            D0, I0 = index.search(gn[q], ga[q], 25, engine="lut", **kw)
            np.testing.assert_array_equal(D, D0)
            np.testing.assert_array_equal(I, I0)


def test_overflowing_candidates_fall_back_to_the_full_scan(threaded, monkeypatch):
    index, gn, ga, vol, q = threaded
    monkeypatch.setattr(fastscan_pruned, "CAPACITY", 3)  # every query overflows its buffer
    for distance in ("hamming", "euclidean"):
        _both(index, gn[q], ga[q], 10, mode="sum", distance=distance, exclude_volumes=vol[q])


# ---------------------------------------------------------------------------- kernels
def _plan(rng, B, S, n_pos):
    """Random scan plans: tables ≤ 63 (4 of them never saturate a byte), orders, accumulators."""
    tables = rng.integers(0, 64, (B, n_pos, 256)).astype(np.uint8)
    order = rng.integers(0, S, (B, n_pos)).astype(np.int32)
    acc = rng.integers(0, 2, (B, n_pos // CHUNK)).astype(np.uint8)
    return tables, order, acc


def _sums(codes, tables, order, acc):
    """(B, 2, n) float sums L0, L1 of every row, as the kernel defines them."""
    B, n_pos = order.shape
    out = np.zeros((B, 2, codes.shape[0]), np.int64)
    for q in range(B):
        for k in range(n_pos):
            out[q, acc[q, k // CHUNK]] += tables[q, k][codes[:, order[q, k]]]
    return out


def _nibble_args(kernel, codes_t, rng):
    """The avx2 kernel's extra arguments for a layout: its 4-bit copy under a random grouping
    of the codes (any grouping gives valid bounds), else none."""
    if kernel != "avx2":
        return ()
    groups = np.broadcast_to(rng.integers(0, 16, 256).astype(np.uint8), (codes_t.shape[1], 256))
    return (None, nibble_layout(codes_t, groups), np.ascontiguousarray(groups))


def test_prune_scan_keeps_exactly_the_rows_within_the_limits(fastscan_kernel):
    kid = KERNEL_IDS[fastscan_kernel]
    rng = np.random.default_rng(8)
    n, S, B, n_pos = 7 * BLOCK + 23, 10, 3, 16
    codes = rng.integers(0, 200, (n, S)).astype(np.uint8)
    codes_t = block_transpose(codes)
    tables, order, acc = _plan(rng, B, S, n_pos)
    L = _sums(codes, tables, order, acc)
    lim = np.zeros((B, 4), np.int32)
    stride = 2000
    room = np.full((B, stride), -1, np.int32)
    coarse = np.zeros((B, COARSE), np.uint16)
    for q in range(B):
        l0max, l1max = np.percentile(L[q, 0], 50), np.percentile(L[q, 1], 70)
        r = (l1max + 0.05 * (l0max - np.arange(int(l0max) + 1))).astype(np.int32)
        lim[q] = (int(l0max), r[0], int(np.percentile(L[q].sum(0), 50)), 5)
        room[q, : r.size] = r
        steps = np.minimum(np.arange(COARSE) << 5, r.size - 1)
        coarse[q] = np.clip(r[steps], 0, 65535)
    cap = 4 * BLOCK
    rows = np.zeros((B, cap), np.int64)
    keys = np.zeros((B, cap), np.uint32)
    count = np.zeros(B, np.int64)
    extra = _nibble_args(fastscan_kernel, codes_t, rng)
    _fastscan.prune_scan(
        codes_t, S, n, 200, tables, order, acc, B, n_pos, lim, room, stride, coarse,
        rows, keys, count, cap, False, 0, codes_t.shape[0], kid, *extra,
    )  # fmt: skip
    for q in range(B):
        l0, l1 = L[q]
        keep = (l0 <= lim[q, 0]) & (l1 <= lim[q, 1]) & (l0 + l1 <= lim[q, 2])
        keep &= l1 <= room[q][np.minimum(l0, stride - 1)]
        expected = np.flatnonzero(keep)
        assert 0 < expected.size <= cap
        np.testing.assert_array_equal(rows[q, : count[q]], expected)
    # heap mode: the `cap` smallest L0 + L1 of each query
    small = 50
    lim[:] = (65535, 65535, 65535, 0)
    count[:] = 0
    _fastscan.prune_scan(
        codes_t, S, n, 200, tables, order, acc, B, n_pos, lim, room[:, :0].copy(), 0,
        np.full((B, COARSE), 65535, np.uint16), rows[:, :small].copy(), keys[:, :small].copy(),
        count, small, True, 0, codes_t.shape[0], kid, *extra,
    )  # fmt: skip
    assert (count == small).all()
    for q in range(B):
        total = np.sort(L[q].sum(0))
        assert lim[q, 2] == total[small - 1]  # the limit followed the heap's top


def test_prune_scan_rejects_bad_arguments():
    codes_t = block_transpose(np.zeros((70, 4), np.uint8))
    tables, order, acc = _plan(np.random.default_rng(0), 1, 4, 8)
    lim = np.zeros((1, 4), np.int32)
    room = np.zeros((1, 1), np.int32)
    coarse = np.zeros((1, COARSE), np.uint16)
    out = np.zeros((1, 4), np.int64), np.zeros((1, 4), np.uint32), np.zeros(1, np.int64)

    def call(**kw):
        args = dict(order=order, lim=lim, n_rows=70, n_pos=8)
        args.update(kw)
        _fastscan.prune_scan(
            codes_t, 4, args["n_rows"], 10, tables, args["order"], acc, 1, args["n_pos"],
            args["lim"], room, 1, coarse, *out, 4, False, 0, 2, args.get("kernel", 1),
            *args.get("extra", ()),
        )  # fmt: skip

    call()
    with pytest.raises(ValueError, match="order"):
        call(order=np.full_like(order, 4))
    with pytest.raises(ValueError, match="n_rows"):
        call(n_rows=129)
    with pytest.raises(ValueError, match="multiple of 8"):
        call(n_pos=6)
    with pytest.raises(ValueError, match="room_stride"):
        call(lim=np.array([[1, 0, 0, 0]], np.int32))
    with pytest.raises(ValueError, match="kernel must be"):
        call(kernel=7)
    if "avx2" in available_kernels():
        with pytest.raises(ValueError, match="need codes4"):
            call(kernel=2)
        groups = np.zeros((4, 256), np.uint8)
        codes4 = nibble_layout(codes_t, groups)
        call(kernel=2, extra=(None, codes4, groups))
        with pytest.raises(ValueError, match="group above 15"):
            call(kernel=2, extra=(None, codes4, groups + 16))
    for name in set(KERNEL_IDS) - set(available_kernels()):
        with pytest.raises(ValueError, match=f"cannot run the {name} kernel"):
            call(kernel=KERNEL_IDS[name])


def test_the_kernel_switch_refuses_unknown_names(monkeypatch):
    monkeypatch.setenv(fastscan_kernels.KERNEL_ENV, "sse9")
    with pytest.raises(fastscan_kernels.KernelError, match="FDN_FASTSCAN_KERNEL='sse9'"):
        fastscan_kernels.kernel()
    monkeypatch.delenv(fastscan_kernels.KERNEL_ENV)
    assert fastscan_kernels.kernel() == available_kernels()[0]
    assert available_kernels()[-1] == "portable"


def test_code_groups_recover_separated_clusters_and_keep_small_codebooks_exact():
    rng = np.random.default_rng(5)
    truth = rng.permutation(np.arange(48) % 16)  # 16 tight clusters, 3 codes each, far apart
    x = rng.normal(size=(16, 3))[truth] * 100 + rng.normal(size=(48, 3)) * 0.01
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    g = code_groups(d)[:48]
    # the same partition as the clusters, whatever the labels
    for k in range(16):
        assert np.unique(g[truth == k]).size == 1
    assert np.unique(g).size == 16
    np.testing.assert_array_equal(code_groups(d[:9, :9])[:9], np.arange(9))
    assert (code_groups(np.zeros((30, 30)))[:30] == 0).all()  # coincident codes: one group


def test_nibble_layout_packs_two_rows_per_byte():
    rng = np.random.default_rng(6)
    codes = rng.integers(0, 50, (3 * BLOCK + 5, 7)).astype(np.uint8)
    groups = rng.integers(0, 16, (7, 256)).astype(np.uint8)
    out = nibble_layout(block_transpose(codes), groups, blocks_per_step=2)
    g = groups[np.arange(7)[None, :], codes]  # (n, S) the group of each row's code
    n = codes.shape[0]
    for r in range(n):
        b, i = divmod(r, BLOCK)
        nib = out[b, :, i % 32] & 15 if i < 32 else out[b, :, i % 32] >> 4
        np.testing.assert_array_equal(nib, g[r])


def test_exact_sums_add_in_position_order_like_numpy():
    rng = np.random.default_rng(9)
    N, P, R, B = 500, 37, 60, 4
    codes = rng.integers(0, R, (N, P)).astype(np.uint8)
    tables = rng.normal(size=(B, P, R)) * 10.0 ** rng.uniform(-8, 8, (B, P, 1))
    rows = rng.integers(0, N, 300)
    qidx = rng.integers(0, B, 300)
    out = np.empty(300)
    _fastscan.exact_sums(codes, P, tables, R, rows, qidx, out)
    expected = np.zeros(300)
    for p in range(P):
        expected += tables[qidx, p, codes[rows, p]]
    np.testing.assert_array_equal(out, expected)  # bit for bit
    with pytest.raises(ValueError, match="outside"):
        _fastscan.exact_sums(codes, P, tables, R, rows + N, qidx, out)
