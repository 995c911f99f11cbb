"""Binarization figures of the quality benchmark (4.4.5, 5.3, Appendix F).

- `codebook_figures`: E, E*, E*/E and the top-1/5/10 concordance of the full-length bits b and
  the optimized bits b* with the Euclidean neighbours (over all K codes and over the live,
  non-zero codes), read from the index's `HashIndex.report`.
- `appendix_f_timing`: Appendix F literally: for each of the K code vectors, the distance to
  all K code vectors, one Python call per pair with Listing F.1's functions
  (``np.count_nonzero(a != b)`` on the bits, ``np.linalg.norm(a - b)`` on the continuous
  vectors), repeated and averaged; reduction = 1 − t_H / t_E. The same all-pairs matrices are
  also timed vectorised (one numpy expression each), which is how one would really compute them.
- `appendix_f_image_timing`: the same per-pair functions on whole image codes (P positions).
- `lut_timing`: the distances at scale: single-query volume-wise top-Q latency of the index's
  compiled look-up-table engine with D_H against D_E (and D_A) on the test index.
"""

from __future__ import annotations

import time

import numpy as np

from hashindex.binarize import hyperplane_bits, pair_indices, squared_distances


def codebook_figures(report: dict) -> dict:
    """Per codebook: K, live codes, E, E*, E*/E and concordance (b, b*; all K, live)."""
    out = {}
    for book, r in report.items():
        out[book] = {
            "K": r["K"],
            "live": r["live"],
            "distinct": r["distinct"],
            "E": r["E"],
            "E_star": r["E_star"],
            "compression": r["compression"],
            "concordance": r["concordance"],
        }
    return out


def _hamming_listing(a, b):
    return np.count_nonzero(a != b)


def _euclidean_listing(a, b):
    return np.linalg.norm(a - b)


def _time_all_pairs(vectors: np.ndarray, fn, repeats: int) -> float:
    """Mean seconds over ``repeats`` of fn(v_i, v_j) for every ordered pair (i, j)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for a in vectors:
            for b in vectors:
                fn(a, b)
        times.append(time.perf_counter() - start)
    return float(np.mean(times))


def _mean_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.mean(times))


def unpacked_bits(packed: np.ndarray, n_bits: int) -> np.ndarray:
    """(K, nbytes) little-endian packed bits -> (K, n_bits) uint8 0/1."""
    return np.unpackbits(packed, axis=1, bitorder="little")[:, :n_bits]


def appendix_f_timing(
    vectors: np.ndarray,
    packed_star: np.ndarray,
    e_star: int,
    repeats: int = 5,
    include_full_bits: bool = True,
) -> dict:
    """Appendix F timing for one codebook.

    vectors: (K, D) float32 continuous codebook e (small norms rounded to 0);
    packed_star: (K, nbytes) uint8 optimized bits b*; e_star: their length E*.
    Returns seconds t_E, t_H (b*), optionally t_H_full (b, all K(K−1)/2 bits), the reduction
    1 − t_H / t_E, and the same for the vectorised all-pairs matrices.
    """
    e = np.asarray(vectors, dtype=np.float32)
    b_star = unpacked_bits(packed_star, e_star)
    out = {
        "K": int(e.shape[0]),
        "D": int(e.shape[1]),
        "E_star": int(e_star),
        "repeats": repeats,
        "pairs": int(e.shape[0]) ** 2,
    }
    out["t_E"] = _time_all_pairs(e, _euclidean_listing, repeats)
    out["t_H"] = _time_all_pairs(b_star, _hamming_listing, repeats)
    out["reduction"] = 1.0 - out["t_H"] / out["t_E"]
    b_full = None
    if include_full_bits:
        i, j = pair_indices(e.shape[0])
        b_full = unpacked_bits(hyperplane_bits(squared_distances(e), i, j), i.size)
        out["E"] = int(i.size)
        out["t_H_full"] = _time_all_pairs(b_full, _hamming_listing, repeats)
        out["reduction_full"] = 1.0 - out["t_H_full"] / out["t_E"]

    e64 = e.astype(np.float64)
    sq = np.einsum("kd,kd->k", e64, e64)

    def euclid_matrix():
        return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * e64 @ e64.T, 0.0))

    def hamming_matrix():
        return np.bitwise_count(packed_star[:, None, :] ^ packed_star[None, :, :]).sum(
            axis=2, dtype=np.int64
        )

    out["vectorised_t_E"] = _mean_time(euclid_matrix, repeats)
    out["vectorised_t_H"] = _mean_time(hamming_matrix, repeats)
    out["vectorised_reduction"] = 1.0 - out["vectorised_t_H"] / out["vectorised_t_E"]
    return out


def appendix_f_image_timing(index, rows, repeats: int = 3) -> dict:
    """Listing F.1 on image codes: all ordered pairs of the given index rows, per codebook.

    An image's continuous code is its grid of code vectors flattened to (P·D,) float32, its
    binary code the concatenated optimized bits (P·E*,) uint8 0/1; one Python call per pair.
    """
    rows = np.asarray(rows)
    out = {"images": int(rows.size), "pairs": int(rows.size) ** 2, "repeats": repeats}
    for book, codes in (("normal", index.codes_normal), ("abnormal", index.codes_abnormal)):
        t = index.hash_index.tables[book]
        grid = codes[rows].reshape(rows.size, -1).astype(np.int64)  # (M, P)
        e = t.vectors[grid].reshape(rows.size, -1)  # (M, P·D)
        bits = unpacked_bits(t.packed, int(t.pairs.shape[0]))[grid].reshape(rows.size, -1)
        t_e = _time_all_pairs(e, _euclidean_listing, repeats)
        t_h = _time_all_pairs(bits, _hamming_listing, repeats)
        out[book] = {
            "floats": int(e.shape[1]),
            "bits": int(bits.shape[1]),
            "t_E": t_e,
            "t_H": t_h,
            "reduction": 1.0 - t_h / t_e,
        }
    return out


def lut_timing(
    index,
    query_rows,
    topq: int,
    modes=("normal", "abnormal", "sum"),
    distances=("hamming", "euclidean", "angular"),
    repeats: int = 3,
) -> dict:
    """Single-query volume-wise top-Q latency (ms, p50 and mean over queries × repeats).

    index: an `fdn.archive_index.retrieval.ArchiveIndex`; every query is an index row searched with its own
    volume excluded, on the "lut" engine, after one warm-up call per (mode, distance).
    """
    hi = index.hash_index
    vol = np.asarray(index.table["volume"], dtype=np.int64)
    out = {"n_slices": int(index.ntotal), "queries": len(query_rows), "repeats": repeats}
    for mode in modes:
        for dist in distances:

            def call(row, mode=mode, dist=dist):
                hi.search_volumes(
                    index.codes_normal[row : row + 1],
                    index.codes_abnormal[row : row + 1],
                    topq,
                    mode=mode,
                    distance=dist,
                    engine="lut",
                    exclude_volumes=vol[row : row + 1],
                )

            call(query_rows[0])  # compile / warm caches
            ms = []
            for _ in range(repeats):
                for row in query_rows:
                    start = time.perf_counter()
                    call(row)
                    ms.append((time.perf_counter() - start) * 1e3)
            out[f"{mode}/{dist}"] = {"p50_ms": float(np.median(ms)), "mean_ms": float(np.mean(ms))}
    for mode in modes:
        h, e = out[f"{mode}/hamming"]["p50_ms"], out[f"{mode}/euclidean"]["p50_ms"]
        out[f"{mode}/reduction_vs_euclidean"] = 1.0 - h / e
    return out
