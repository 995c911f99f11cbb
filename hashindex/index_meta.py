"""hashindex.json: the format version and the check of every field before `read` trusts it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hashindex.distances import BOOKS, DISTANCES
from hashindex.errors import IndexFormatError
from hashindex.files import (
    ARRAY_FILES,
    BITS_FILES,
    CODEBOOK_FILES,
    CODES_FILES,
    FASTSCAN_FILE,
    FLAT_FILES,
    INDEX_FILES,
    IVF_FILES,
    SQNORM_FILES,
    VOLUME_FILES,
)

# 3: the stored rows are files of the index (ARRAY_FILES, memory-mapped, checked by sum64), so
#    `read` takes no code arrays. 2: hashindex.json lists the size and sha256 of every file.
FORMAT_VERSION = 3


def is_int(value) -> bool:
    """An int or numpy integer, never a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


_SHA256_HEX = frozenset("0123456789abcdef")
_SUM64_HEX = frozenset("0123456789abcdef")


def check_meta(meta, path: Path, fix: str) -> dict:
    """hashindex.json's content, every field checked; IndexFormatError naming the first fault."""

    def bad(what):
        return IndexFormatError(f"{path}: {what}; {fix}")

    if not isinstance(meta, dict):
        raise bad(f"expected a JSON object, found a JSON {type(meta).__name__}")
    if meta.get("format_version") != FORMAT_VERSION or not is_int(meta.get("format_version")):
        raise IndexFormatError(
            f"{path}: format version {str(meta.get('format_version'))[:20]}, expected "
            f"{FORMAT_VERSION} (an index of an older version lacks the stored rows this version "
            f"reads); {fix} with this version of hashindex"
        )
    for key in ("K", "D", "E_star"):
        value = meta.get(key)
        if not isinstance(value, dict) or not all(
            is_int(value.get(b)) and value[b] >= (0 if key == "E_star" else 1) for b in BOOKS
        ):
            raise bad(
                f"{key!r} should map normal and abnormal to integers, found {str(value)[:60]!r}"
            )
    grid = meta.get("grid")
    if grid is not None and not (
        isinstance(grid, list) and len(grid) == 2 and all(is_int(g) and g >= 1 for g in grid)
    ):
        raise bad(f"'grid' should be null or two positive integers, found {str(grid)[:60]!r}")
    checks = {
        "ntotal": lambda v: is_int(v) and v >= 0,
        "n_volumes": lambda v: is_int(v) and v >= 0,
        "fastscan_layout": lambda v: isinstance(v, bool),
        "ivf_nlist": lambda v: v is None or (is_int(v) and v >= 1),
        "seed": is_int,
        "faiss_indexes": lambda v: isinstance(v, bool),
        "faiss_files": lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
        "scales": lambda v: (
            isinstance(v, dict)
            and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) and x > 0
                for x in v.values()
            )
        ),
        "report": lambda v: isinstance(v, dict),
        "files": lambda v: (
            isinstance(v, dict)
            and all(
                n in INDEX_FILES
                and isinstance(e, dict)
                and isinstance(e.get("sha256"), str)
                and len(e["sha256"]) == 64
                and set(e["sha256"]) <= _SHA256_HEX
                and is_int(e.get("size"))
                and e["size"] >= 0
                and (
                    n not in ARRAY_FILES
                    or (
                        isinstance(e.get("sum64"), str)
                        and len(e["sum64"]) == 16
                        and set(e["sum64"]) <= _SUM64_HEX
                    )
                )
                for n, e in v.items()
            )
        ),
    }
    for key, check in checks.items():
        if key not in meta or not check(meta[key]):
            raise bad(f"{key!r} is missing or malformed (found {str(meta.get(key))[:60]!r})")
    if grid is not None:
        missing = [f"{b}/{d}" for b in BOOKS for d in DISTANCES if f"{b}/{d}" not in meta["scales"]]
        if missing:
            raise bad(f"'scales' lacks {', '.join(missing)}")
    names = meta["faiss_files"]
    flat, ivf = sorted(FLAT_FILES.values()), sorted(IVF_FILES.values())
    allowed: list[list[str]] = [[]]
    if meta["faiss_indexes"] and grid is not None:
        allowed = [flat] + ([sorted(flat + ivf)] if meta["ivf_nlist"] is not None else [])
    if sorted(names) not in allowed:
        raise bad(
            f"'faiss_files' lists {str(names)[:120]}, expected "
            f"{' or '.join(str(a) for a in allowed)} for faiss_indexes="
            f"{meta['faiss_indexes']}, ivf_nlist={meta['ivf_nlist']}"
        )
    arrays: list[str] = []
    if grid is not None:
        arrays = [*CODES_FILES.values(), *SQNORM_FILES.values(), *VOLUME_FILES.values()]
        arrays += [FASTSCAN_FILE] if meta["fastscan_layout"] else []
    elif meta["ntotal"] or meta["n_volumes"] or meta["fastscan_layout"]:
        raise bad("an index without a grid holds no rows (ntotal 0, n_volumes 0, no layout)")
    unlisted = [
        n
        for n in (*CODEBOOK_FILES.values(), *BITS_FILES.values(), *arrays, *names)
        if n not in meta["files"]
    ]
    if unlisted:
        raise bad(f"'files' lacks the checksums of {', '.join(unlisted)}")
    return meta
