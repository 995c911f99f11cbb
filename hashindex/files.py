"""The file names of a hash index directory: a fixed list, and `index_files`, its public form.

An index directory holds ``hashindex.json`` (written last: format, shapes, scales, and the size
and checksums of every other file), the codebooks (``codebook_*.npy``), the kept hyperplanes and
packed bits (``bits_*.npz``), the stored rows (`ARRAY_FILES`: representative ids, row norms,
volumes and, for codebooks of at most 256 distinct vectors, the fastscan engine's
block-transposed layout) and the FAISS indexes (``faiss_*.index``). Readers take names from
this list only, never from a file's content.

Code outside `hashindex` (the archive index of `fdn`) asks `index_files()` which names are
the hash index's; the module constants are this package's own.
"""

from __future__ import annotations

from dataclasses import dataclass

from hashindex.distances import BOOKS, MODES

META_FILE = "hashindex.json"
CODEBOOK_FILES = {b: f"codebook_{b}.npy" for b in BOOKS}
BITS_FILES = {b: f"bits_{b}.npz" for b in BOOKS}
# (N, P) representative ids per codebook, uint8 (at most 256 distinct vectors) or uint16
CODES_FILES = {b: f"codes_{b}.npy" for b in BOOKS}
# (N,) float64 squared norm of every stored grid, per codebook (the angular distance needs them)
SQNORM_FILES = {b: f"row_sqnorm_{b}.npy" for b in BOOKS}
# (N,) int64 volume id of each row; (N,) int64 its dense number; (V,) int64 the sorted volume ids
VOLUME_FILES = {
    "volume_ids": "volume_ids.npy",
    "volume_index": "volume_index.npy",
    "volume_unique": "volume_unique.npy",
}
# (ceil(N / 64), 2P, 64) uint8: `hashindex.fastscan_layout.block_transpose` of both books side
# by side; written only when both codebooks fit one byte per code
FASTSCAN_FILE = "fastscan_codes_t.npy"
ARRAY_FILES = (
    *CODES_FILES.values(),
    *SQNORM_FILES.values(),
    *VOLUME_FILES.values(),
    FASTSCAN_FILE,
)
FLAT_FILES = {m: f"faiss_{m}.index" for m in MODES}
IVF_FILES = {m: f"faiss_ivf_{m}.index" for m in MODES}
INDEX_FILES = (
    META_FILE,
    *CODEBOOK_FILES.values(),
    *BITS_FILES.values(),
    *ARRAY_FILES,
    *FLAT_FILES.values(),
    *IVF_FILES.values(),
)


@dataclass(frozen=True)
class IndexFiles:
    """The names of the files `HashIndex.write` may put in a directory (all top-level files).

    meta: hashindex.json, written last, listing the size and checksums of every other file;
    names: every name an index may hold, in a fixed order (nothing else is ever opened);
    required: the names every index that holds rows has (the others are optional);
    rows: the stored row arrays, which an index written before format 3 lacks;
    optional: the FAISS files (built with ``faiss_indexes``, IVF with ``ivf_nlist``) and the
    fastscan layout (written when both codebooks have at most 256 distinct vectors).
    """

    meta: str
    names: tuple[str, ...]
    required: tuple[str, ...]
    rows: tuple[str, ...]
    optional: tuple[str, ...]


def index_files() -> IndexFiles:
    """The file names of a hash index directory (see `IndexFiles`)."""
    optional = (FASTSCAN_FILE, *FLAT_FILES.values(), *IVF_FILES.values())
    return IndexFiles(
        meta=META_FILE,
        names=INDEX_FILES,
        required=tuple(n for n in INDEX_FILES if n not in optional),
        rows=ARRAY_FILES,
        optional=optional,
    )
