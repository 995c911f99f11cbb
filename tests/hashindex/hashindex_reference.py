"""Independent brute-force references (plain numpy, explicit loops) for the hashindex tests."""

from pathlib import Path

import numpy as np


def rounded(cb):
    cb = cb.astype(np.float64).copy()
    for k in range(cb.shape[0]):
        if np.sqrt((cb[k] ** 2).sum()) < 1e-5:
            cb[k] = 0
    return cb


def code_bits(cb, pairs):
    """(K, E) bool: bit (i, j) of code k = ‖e_k − e_i‖² ≤ ‖e_k − e_j‖², evaluated directly."""
    e = rounded(cb)
    out = np.zeros((e.shape[0], len(pairs)), bool)
    for k in range(e.shape[0]):
        for n, (i, j) in enumerate(pairs):
            out[k, n] = ((e[k] - e[i]) ** 2).sum() <= ((e[k] - e[j]) ** 2).sum()
    return out


def grid_distance(distance, cb, bits, q, r):
    """Distance between two (h, w) grids of one codebook."""
    q, r = q.ravel(), r.ravel()
    if distance == "hamming":
        return float(sum(np.count_nonzero(bits[a] != bits[b]) for a, b in zip(q, r)))
    e = rounded(cb)
    x, y = e[q].ravel(), e[r].ravel()
    if distance == "euclidean":
        return float(np.sqrt(((x - y) ** 2).sum()))
    nx, ny = np.sqrt((x**2).sum()), np.sqrt((y**2).sum())
    if nx == 0 and ny == 0:
        return 0.0
    if nx == 0 or ny == 0:
        return 0.5
    return float(np.arccos(np.clip(x @ y / (nx * ny), -1, 1)) / np.pi)


def all_distances(index, cn, ca, gn, ga, qn, qa, mode, distance, scales=None):
    """(N,) distances of query grid pair (qn, qa) to every row."""
    bn = code_bits(cn, index.tables["normal"].pairs)
    ba = code_bits(ca, index.tables["abnormal"].pairs)
    out = np.zeros(gn.shape[0])
    for n in range(gn.shape[0]):
        dn = grid_distance(distance, cn, bn, qn, gn[n])
        da = grid_distance(distance, ca, ba, qa, ga[n])
        if scales is not None:
            dn, da = dn / scales[0], da / scales[1]
        out[n] = {"normal": dn, "abnormal": da, "sum": dn + da}[mode]
    return out


def volume_topq(dist, vol, q, exclude=None):
    """[(distance, row, volume)] of the q best volumes: closest row per volume, smaller row on
    ties, volumes ordered by (distance, row)."""
    best = {}
    for n in range(dist.size):
        v = int(vol[n])
        if v == exclude:
            continue
        if v not in best or dist[n] < best[v][0]:
            best[v] = (dist[n], n)
    hits = sorted((d, r, v) for v, (d, r) in best.items())
    return hits[:q]


def assert_same_hits(hits, ref, exact):
    """hits: (distances, rows, volumes) 1-D arrays of one query; ref: volume_topq output."""
    d, r, v = hits
    m = len(ref)
    assert np.all(r[m:] == -1) and np.all(v[m:] == -1) and np.all(np.isinf(d[m:]))
    rd = np.array([x[0] for x in ref])
    if exact:
        assert [(float(a), int(b), int(c)) for a, b, c in zip(d[:m], r[:m], v[:m])] == [
            (float(a), int(b), int(c)) for a, b, c in ref
        ]
        return
    # arccos near cos = 1 amplifies rounding (≈1e-8), hence the absolute tolerance
    np.testing.assert_allclose(d[:m], rd, rtol=1e-9, atol=1e-7)
    for i in range(m):  # beyond floating-point near-ties the order must be the same
        near_tie = np.abs(rd - rd[i]) <= 1e-7
        if near_tie.sum() == 1:
            assert (int(r[i]), int(v[i])) == (ref[i][1], ref[i][2])


def make_codebook(rng, K, D, n_zero=0, n_tiny=0, n_dup=0):
    """Random (K, D) float32 codebook; the last n_zero rows are 0, n_tiny rows have norm < 1e-5,
    and n_dup rows copy row 0 (exact duplicates)."""
    cb = rng.normal(size=(K, D)).astype(np.float32)
    if n_zero:
        cb[K - n_zero :] = 0
    if n_tiny:
        cb[K - n_zero - n_tiny : K - n_zero] *= 1e-7
    for r in range(1, 1 + n_dup):
        cb[r] = cb[0]
    return cb


def make_grids(rng, N, K, h, w, zero_codes=None):
    g = rng.integers(0, K, (N, h, w)).astype(np.uint16)
    if zero_codes is not None:  # bias towards the zero codes, as trained codebooks do
        mask = rng.random((N, h, w)) < 0.4
        g[mask] = rng.choice(zero_codes, mask.sum()).astype(np.uint16)
    return g


def lesion_candidates(index_dir, mode, n_rows, min_percent=5):
    """(N,) bool rows a query of ``mode`` may return: S_abnormal and S_sum leave out slices
    with under ``min_percent`` % brain (the index's brain_percent.npy, read with numpy)."""
    if mode not in ("abnormal", "sum"):
        return np.ones(n_rows, dtype=bool)
    return np.load(Path(index_dir) / "brain_percent.npy") >= min_percent
