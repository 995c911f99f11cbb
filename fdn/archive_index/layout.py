"""The index directory's layout: the names of its files, fixed (docs/architecture.md).

An index directory (the output of `fdn-index build`) holds, by the names docs/architecture.md fixes:

    manifest.json           format name and version, build status, model checksum, counts, and
                            the size and sha256 of every other file of the index (written last)
    model/                  the model's config.json and weights, so queries encode with the same model
    codes.zarr/             arrays `normal` and `abnormal`, (N, h, w) uint16, chunked along N
    slices.parquet          row i describes row i of the code arrays
    slice_arrays.npz        the columns of slices.parquet a query reads, derived from it at
                            build time (see "slice arrays" below), so a query reads no Parquet
    brain_percent.npy       (N,) uint8: each slice's share of brain pixels, in percent; lesion
                            queries leave out the slices below the manifest's min_brain_percent
    codebook_*.npy, bits_*.npz, codes_*.npy, row_sqnorm_*.npy, volume_*.npy,
    fastscan_codes_t.npy, hashindex.json, faiss_*.index   written by `hashindex`: a query
                            reads these (memory-mapped), never codes.zarr
    encoded/<case>.npz      the build journal: one file per encoded case (see `fdn.archive_index.build`)
    build_plan.json         the cases of this index in row order, and the model they are encoded with
    removed.json            keyed digests of the cases `fdn-index remove` removed
                            (`fdn.archive_index.tombstones`)
    .removal-key            the key of those digests (0600); never copied into shards
    .build.lock, .swap.lock the lock files (see below)
"""

from __future__ import annotations

import re
from pathlib import Path

from hashindex import index_files

FORMAT_NAME = "fdn-index"

# Whether a build writes the FAISS copies of the packed bits (faiss_*.index). With Algorithm
# A.1's full bit length they take kilobytes per slice (26 KB with the shipped model: 260 GB at
# 10M slices), so "auto" writes them only while they fit this limit; the default engines
# (fastscan, lut) never read them.
FAISS_POLICIES = ("auto", "always", "never")
FAISS_AUTO_LIMIT_GIB = 2
# 2: the manifest lists every file with its size and sha256 ("files").
FORMAT_VERSION = 2

MANIFEST = "manifest.json"
PLAN = "build_plan.json"
CODES = "codes.zarr"
SLICES = "slices.parquet"
SLICE_ARRAYS = "slice_arrays.npz"
# per row: the percentage of the slice in the brain (`fdn.archive_index.brain_area`)
BRAIN_PERCENT = "brain_percent.npy"
MODEL_DIR = "model"
MODEL_FILES = (f"{MODEL_DIR}/config.json", f"{MODEL_DIR}/weights.pt")
ENCODED_DIR = "encoded"
BUILD_LOCK = ".build.lock"
SWAP_LOCK = ".swap.lock"

STATUS_BUILDING = "building"
STATUS_COMPLETE = "complete"

# Files every complete index lists in its manifest (FAISS files only when built, the fastscan
# layout only for codebooks of at most 256 distinct vectors).
REQUIRED_FILES = (
    SLICES,
    *MODEL_FILES,
    *index_files().required,
    f"{CODES}/zarr.json",
    f"{CODES}/normal/zarr.json",
    f"{CODES}/abnormal/zarr.json",
)
_TOP_FILES = frozenset((SLICES, SLICE_ARRAYS, BRAIN_PERCENT, *MODEL_FILES, *index_files().names))
_ZARR_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\Z")
MAX_ZARR_DEPTH = 8


def fix_for(index_dir: Path) -> str:
    """The usual remedy for a damaged or inconsistent index directory."""
    return (
        f"Run `fdn-index build ARCHIVE --model MODEL --index {index_dir}` again: it re-assembles "
        f"the index from its build journal ({ENCODED_DIR}/), re-encoding what is missing"
    )


def is_index_file(name: str) -> bool:
    """Whether `name` (relative, '/'-separated) may appear in a manifest: a fixed list of names,
    or a plain path of at most a few segments inside codes.zarr/ (no '..', no hidden names)."""
    if not isinstance(name, str):
        return False
    if name in _TOP_FILES:
        return True
    parts = name.split("/")
    return (
        len(parts) >= 2
        and len(parts) <= MAX_ZARR_DEPTH
        and parts[0] == CODES
        and all(_ZARR_SEGMENT.match(p) for p in parts[1:])
    )
