"""The plain table scans: Σ_p table[p, code_p] over every stored row, in position order.

``lut`` runs the Numba kernel (numba alone takes ~150 ms to import, so it is imported on first
use), ``numpy`` the same additions in plain numpy. `hashindex.distances.finish` turns the sums
into distances, so the two agree bit for bit.
"""

from __future__ import annotations

import numpy as np


def scan_lut(rep_codes: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(N,) sums Σ_p table[p, rep_codes[n, p]] with the Numba kernel (int64 or float64)."""
    from hashindex.kernels import KERNELS

    if table.dtype == np.int32:
        out = np.empty(rep_codes.shape[0], np.int64)
        KERNELS["lut_scan_int"](rep_codes, table, out)
    else:
        out = np.empty(rep_codes.shape[0], np.float64)
        KERNELS["lut_scan"](rep_codes, table, out)
    return out


def scan_numpy(rep_codes: np.ndarray, table: np.ndarray) -> np.ndarray:
    """(N,) sums Σ_p table[p, rep_codes[n, p]] in plain numpy, in position order."""
    acc = np.zeros(rep_codes.shape[0], np.int64 if table.dtype == np.int32 else np.float64)
    for p in range(rep_codes.shape[1]):
        acc += table[p][rep_codes[:, p]]
    return acc


SCANS = {"lut": scan_lut, "numpy": scan_numpy}
