"""Packing code grids into bit strings for FAISS binary indexes.

An image code is the concatenation, position by position (row-major over the h × w grid), of
the optimized bits of the code at each position. Each position's E* bits are zero-padded to a
whole number of bytes; the padding bits are 0 for every code, so they never change a Hamming
distance, and the bit-string length d = P · 8 · ceil(E*/8) is a multiple of 8 as
``faiss.IndexBinary`` requires. For S_sum the normal and abnormal strings are concatenated,
so the Hamming distance of the concatenation is D_H,normal + D_H,abnormal.
"""

from __future__ import annotations

import numpy as np


def pack_grids(packed_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Bit strings of code grids.

    Parameters
    ----------
    packed_codes : (K, nbytes) uint8
        Optimized bits of every code (`CodebookTables.packed`).
    codes : (N, h, w) uint16
        Code indices.

    Returns
    -------
    (N, h·w·nbytes) uint8
    """
    flat = codes.reshape(codes.shape[0], int(np.prod(codes.shape[1:])))
    return np.ascontiguousarray(
        packed_codes[flat].reshape(flat.shape[0], flat.shape[1] * packed_codes.shape[1])
    )
