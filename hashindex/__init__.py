"""Binary hashing of codebooks and exact/approximate volume-wise search over code grids.

`HashIndex.build` binarizes two codebooks with separating hyperplanes (paper eq. 14–16) and
shortens the bits with Algorithm A.1 (optionally to a bit budget); `add` stores code grids;
`search` / `search_volumes` answer row-wise top-k and volume-wise top-Q under S_normal,
S_abnormal or S_sum with Hamming, Euclidean or angular distances, on a compiled look-up-table
engine, FAISS binary indexes (flat, IVF) or a numpy reference. This package does not import
`fdn` or torch.
"""

import os

# Numba's kernels run on the system's OpenMP runtime and faiss on the one its wheel bundles. With
# the default (active) wait policy the idle threads of one spin while the other works: measured
# here, a LUT query 3-4x and a FAISS query 10-25x slower on 2 cores. The policy must be chosen
# before either runtime starts, so here, before anything below imports numba or faiss. An
# explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from hashindex.binarize import ZERO_NORM  # noqa: E402
from hashindex.distances import DISTANCES  # noqa: E402
from hashindex.errors import HashIndexError, IndexFormatError  # noqa: E402
from hashindex.fastscan_kernels import available_kernels  # noqa: E402
from hashindex.fastscan_kernels import kernel as fastscan_kernel
from hashindex.files import IndexFiles, index_files  # noqa: E402
from hashindex.index import FORMAT_VERSION, MODES, HashIndex  # noqa: E402
from hashindex.registry import ENGINES  # noqa: E402
from hashindex.volumes import VolumeHits  # noqa: E402

__all__ = [
    "DISTANCES",
    "ENGINES",
    "FORMAT_VERSION",
    "MODES",
    "ZERO_NORM",
    "HashIndex",
    "HashIndexError",
    "IndexFiles",
    "IndexFormatError",
    "VolumeHits",
    "available_kernels",
    "fastscan_kernel",
    "index_files",
]
