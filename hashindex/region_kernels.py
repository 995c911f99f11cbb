"""Numba kernels of the region query (`hashindex.scans`): table sums over some grid positions.

The kernels read the row-major codes (N, P) and gather only the region's table entries. Each
adds a row's terms in increasing position order, so its sums equal the numpy engine's bit for
bit, and keeps four rows in flight: the order fixes a chain of dependent additions per row,
and independent rows hide the adder's latency. The gathers, not the memory, bound the cost:
one row is one cache line either way, and a block-transposed layout (one position of 64 rows
per cache line, so that a region reads only its own bytes) measured slower here (16 of 64
positions at 1M rows: 12.9 ms of CPU against 7.8 ms). They are registered in
`hashindex.kernels.KERNELS`.
"""

from __future__ import annotations

from numba import njit, prange


@njit(cache=True, nogil=True, parallel=True)
def lut_scan_cols(codes, cols, table, out):
    """`lut_scan` over some positions only (a region query): only those columns are read and
    only their table entries gathered, four rows side by side as in `lut_scan`.

    Parameters
    ----------
    codes : (N, P) uint8 or uint16
        Database code indices.
    cols : (C,) int64
        The positions summed, increasing (so sums keep the numpy engine's order), C >= 1.
    table : (C, R) float64
        ``table[i, c]``: the query's table row of position ``cols[i]``.
    out : (N,) float64
        ``out[n] = sum_i table[i, codes[n, cols[i]]]``.
    """
    N = codes.shape[0]
    C = cols.shape[0]
    groups = N // 4
    for g in prange(groups):
        n = 4 * g
        c = cols[0]
        a0 = table[0, codes[n, c]]
        a1 = table[0, codes[n + 1, c]]
        a2 = table[0, codes[n + 2, c]]
        a3 = table[0, codes[n + 3, c]]
        for i in range(1, C):
            c = cols[i]
            a0 += table[i, codes[n, c]]
            a1 += table[i, codes[n + 1, c]]
            a2 += table[i, codes[n + 2, c]]
            a3 += table[i, codes[n + 3, c]]
        out[n] = a0
        out[n + 1] = a1
        out[n + 2] = a2
        out[n + 3] = a3
    for n in range(4 * groups, N):
        acc = table[0, codes[n, cols[0]]]
        for i in range(1, C):
            acc += table[i, codes[n, cols[i]]]
        out[n] = acc


@njit(cache=True, nogil=True, parallel=True)
def lut_scan_cols_two(codes, cols, table_a, table_b, out_a, out_b):
    """`lut_scan_cols` of two tables over the same codes in one pass (D_A of a region: the dot
    products and the rows' squared norms over the region), each summed in position order,
    four rows side by side."""
    N = codes.shape[0]
    C = cols.shape[0]
    groups = N // 4
    for g in prange(groups):
        n = 4 * g
        c = cols[0]
        k0, k1, k2, k3 = codes[n, c], codes[n + 1, c], codes[n + 2, c], codes[n + 3, c]
        a0, a1, a2, a3 = table_a[0, k0], table_a[0, k1], table_a[0, k2], table_a[0, k3]
        b0, b1, b2, b3 = table_b[0, k0], table_b[0, k1], table_b[0, k2], table_b[0, k3]
        for i in range(1, C):
            c = cols[i]
            k0, k1, k2, k3 = codes[n, c], codes[n + 1, c], codes[n + 2, c], codes[n + 3, c]
            a0 += table_a[i, k0]
            a1 += table_a[i, k1]
            a2 += table_a[i, k2]
            a3 += table_a[i, k3]
            b0 += table_b[i, k0]
            b1 += table_b[i, k1]
            b2 += table_b[i, k2]
            b3 += table_b[i, k3]
        out_a[n], out_a[n + 1], out_a[n + 2], out_a[n + 3] = a0, a1, a2, a3
        out_b[n], out_b[n + 1], out_b[n + 2], out_b[n + 3] = b0, b1, b2, b3
    for n in range(4 * groups, N):
        k = codes[n, cols[0]]
        acc_a = table_a[0, k]
        acc_b = table_b[0, k]
        for i in range(1, C):
            k = codes[n, cols[i]]
            acc_a += table_a[i, k]
            acc_b += table_b[i, k]
        out_a[n] = acc_a
        out_b[n] = acc_b


@njit(cache=True, nogil=True, parallel=True)
def lut_scan_cols_int(codes, cols, table, out):
    """`lut_scan_cols` for int32 tables, accumulating in int64, four rows side by side."""
    N = codes.shape[0]
    groups = N // 4
    for g in prange(groups):
        n = 4 * g
        a0 = a1 = a2 = a3 = 0
        for i in range(cols.shape[0]):
            c = cols[i]
            a0 += table[i, codes[n, c]]
            a1 += table[i, codes[n + 1, c]]
            a2 += table[i, codes[n + 2, c]]
            a3 += table[i, codes[n + 3, c]]
        out[n] = a0
        out[n + 1] = a1
        out[n + 2] = a2
        out[n + 3] = a3
    for n in range(4 * groups, N):
        acc = 0
        for i in range(cols.shape[0]):
            acc += table[i, codes[n, cols[i]]]
        out[n] = acc


@njit(cache=True, nogil=True, parallel=True)
def lut_scan_cols_int_pair(codes_a, cols_a, table_a, codes_b, cols_b, table_b, out):
    """Fused S_sum for Hamming over some positions of each grid (`lut_scan_int_pair` with the
    columns of `lut_scan_cols`): ``out[n]`` (float64) = Σ_i table_a[i, codes_a[n, cols_a[i]]]
    + Σ_i table_b[i, codes_b[n, cols_b[i]]], exact integers, four rows side by side."""
    N = codes_a.shape[0]
    groups = N // 4
    for g in prange(groups):
        n = 4 * g
        a0 = a1 = a2 = a3 = 0
        for i in range(cols_a.shape[0]):
            c = cols_a[i]
            a0 += table_a[i, codes_a[n, c]]
            a1 += table_a[i, codes_a[n + 1, c]]
            a2 += table_a[i, codes_a[n + 2, c]]
            a3 += table_a[i, codes_a[n + 3, c]]
        for i in range(cols_b.shape[0]):
            c = cols_b[i]
            a0 += table_b[i, codes_b[n, c]]
            a1 += table_b[i, codes_b[n + 1, c]]
            a2 += table_b[i, codes_b[n + 2, c]]
            a3 += table_b[i, codes_b[n + 3, c]]
        out[n] = a0
        out[n + 1] = a1
        out[n + 2] = a2
        out[n + 3] = a3
    for n in range(4 * groups, N):
        acc = 0
        for i in range(cols_a.shape[0]):
            acc += table_a[i, codes_a[n, cols_a[i]]]
        for i in range(cols_b.shape[0]):
            acc += table_b[i, codes_b[n, cols_b[i]]]
        out[n] = acc
