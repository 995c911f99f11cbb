"""Binary hashing of codebooks and exact/approximate volume-wise search over code grids.

`HashIndex.build` binarizes two codebooks with separating hyperplanes (paper eq. 14–16) and
shortens the bits with Algorithm A.1 (optionally to a bit budget); `add` stores code grids;
`search` / `search_volumes` answer row-wise top-k and volume-wise top-Q under S_normal,
S_abnormal or S_sum with Hamming, Euclidean or angular distances, on a compiled look-up-table
engine, FAISS binary indexes (flat, IVF) or a numpy reference. This package does not import
`fdn` or torch.
"""

from hashindex.binarize import ZERO_NORM
from hashindex.distances import DISTANCES
from hashindex.engines import ENGINES
from hashindex.errors import HashIndexError, IndexFormatError
from hashindex.index import FORMAT_VERSION, MODES, HashIndex
from hashindex.volumes import VolumeHits

BinarizationReport = dict
"""Type of `HashIndex.report`: per codebook ("normal", "abnormal") a dict with K, D, distinct,
live, E, E_distinct, E_star_faithful, E_star, compression (E*/E), seconds, concordance
({b,b_star}_{all,live} → {top1, top5, top10}) and, with a bit budget, bit_budget and
bit_budget_curve ([{length, top1, top5, top10}] over live codes)."""

__all__ = [
    "DISTANCES", "ENGINES", "FORMAT_VERSION", "MODES", "ZERO_NORM", "BinarizationReport",
    "HashIndex", "HashIndexError", "IndexFormatError", "VolumeHits",
]
