"""The plain table scans: Σ_p table[p, code_p] over every stored row, in position order.

``lut`` runs the Numba kernel (numba alone takes ~150 ms to import, so it is imported on first
use), ``numpy`` the same additions in plain numpy. `hashindex.distances.finish` turns the sums
into distances, so the two agree bit for bit.

A region query (`hashindex.search`, ``positions``) sums only its positions: ``cols`` names them
(sorted flat position indices) and ``table`` then holds one row per named position. The
compiled kernels gather only those positions' table entries (`hashindex.region_kernels`), so
the cost falls with the region's size.
"""

from __future__ import annotations

import numpy as np


def scan_lut(
    rep_codes: np.ndarray, table: np.ndarray, cols: np.ndarray | None = None
) -> np.ndarray:
    """(N,) sums Σ_i table[i, rep_codes[n, cols[i]]] (cols None: every position) with the
    Numba kernel (int64 for int32 tables, else float64)."""
    from hashindex.kernels import KERNELS

    integer = table.dtype == np.int32
    out = np.empty(rep_codes.shape[0], np.int64 if integer else np.float64)
    if cols is None:
        KERNELS["lut_scan_int" if integer else "lut_scan"](rep_codes, table, out)
    else:
        KERNELS["lut_scan_cols_int" if integer else "lut_scan_cols"](rep_codes, cols, table, out)
    return out


def scan_numpy(
    rep_codes: np.ndarray, table: np.ndarray, cols: np.ndarray | None = None
) -> np.ndarray:
    """(N,) sums Σ_i table[i, rep_codes[n, cols[i]]] in plain numpy, in position order."""
    positions = range(rep_codes.shape[1]) if cols is None else cols
    acc = np.zeros(rep_codes.shape[0], np.int64 if table.dtype == np.int32 else np.float64)
    for i, p in enumerate(positions):
        acc += table[i][rep_codes[:, p]]
    return acc


def scan_lut_two(
    rep_codes: np.ndarray, table_a: np.ndarray, table_b: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`scan_lut` of two float64 tables over the same positions in one pass over the codes."""
    from hashindex.kernels import KERNELS

    out_a = np.empty(rep_codes.shape[0])
    out_b = np.empty(rep_codes.shape[0])
    KERNELS["lut_scan_cols_two"](rep_codes, cols, table_a, table_b, out_a, out_b)
    return out_a, out_b


def scan_numpy_two(
    rep_codes: np.ndarray, table_a: np.ndarray, table_b: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`scan_numpy` of two tables over the same positions (the same sums as `scan_lut_two`)."""
    return scan_numpy(rep_codes, table_a, cols), scan_numpy(rep_codes, table_b, cols)


SCANS = {"lut": scan_lut, "numpy": scan_numpy}
# two tables over one region's positions at once (D_A: dot products and squared norms)
SCANS_TWO = {"lut": scan_lut_two, "numpy": scan_numpy_two}
