"""What a folder of shards records about each shard, and the checks that tie each opened shard
to it (`fdn.archive_index.shards` splits and searches; this module reads and checks).

``shards.json`` (written last by `split_index`), format ``fdn-index-shards`` version 2::

    {"format": "fdn-index-shards", "format_version": 2, "source": "/abs/index",
     "n_slices": N, "model_checksum": "<sha256 of the model's weights>",
     "shards": [{"path": "shard-000", "row_offset": 0, "n_slices": n0, "cases": [...],
                 "model_checksum": "…", "rows_digest": "…"}, ...]}

Each shard folder also holds ``shard.json``, its own record of where it belongs: the same entry,
its number (``shard``) and the source. ``rows_digest`` is a sha256 over the checksums the shard's
manifest lists for the files that hold its rows (`ROW_FILES`: slices.parquet and the hash
index's row arrays). `open_index` checks those files against the manifest, so the digest stands
for the rows themselves and costs no read of them.

Opening a folder of shards refuses, with an `IndexDirError` naming the shard folder, what
differs and the fix (split the index again):

* a listing whose offsets do not run on from 0 without gap or overlap, whose row counts do not
  add up to its `n_slices`, or that lists one case twice;
* a shard built with another model than the listing's;
* a shard whose own ``shard.json`` names another position (a copy of another shard, or a shard
  of another split) or is missing;
* a shard whose cases, row count or rows digest are not its entry's.

**Version 1** listings (before the checks above) record no model checksum per shard, no rows
digest and no ``shard.json``. They are opened with a warning: the checks their content allows
still run (the listing's model checksum against every shard's, each shard's cases and row count,
the offsets), which refuse a shard of another model, a shard replaced by a copy of another and an
edited offset. The warning says how to get the rest: split the index again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from fdn.errors import IndexDirError

log = logging.getLogger(__name__)

SHARDS_FILE = "shards.json"
SHARD_FILE = "shard.json"  # inside each shard folder: its own position
FORMAT = "fdn-index-shards"
SHARD_FORMAT = "fdn-index-shard"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# Position fields a shard records in itself as shards.json does for it.
POSITION = ("path", "row_offset", "n_slices", "cases")

_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


def row_files() -> tuple[str, ...]:
    """The files whose listed checksums make a shard's rows digest."""
    from fdn.archive_index.layout import SLICES
    from hashindex import index_files

    return (SLICES, *index_files().rows)


def rows_digest(files: dict[str, dict]) -> str:
    """sha256 over the manifest's {name: sha256} of the row files (those the index has)."""
    listed = {name: files[name]["sha256"] for name in row_files() if name in files}
    return hashlib.sha256(json.dumps(listed, sort_keys=True).encode()).hexdigest()


def identity(index, folder: str | Path) -> dict:
    """What an opened shard says it is: its model, rows, cases, rows digest and own record
    (None when it has no shard.json; a string saying why when that file is unreadable). Runs
    where the shard is opened (a Dask worker, or here); small enough to send back."""
    path = Path(folder) / SHARD_FILE
    own: dict | str | None = None
    if path.is_file() and not path.is_symlink():
        try:
            own = json.loads(path.read_bytes())
        except (OSError, ValueError, RecursionError) as exc:
            own = f"{type(exc).__name__}: {str(exc)[:80]}"
        if not isinstance(own, (dict, str)):
            own = f"a JSON {type(own).__name__}, not an object"
    elif path.is_symlink():
        own = "a symbolic link, not a file"
    return {
        "model_checksum": index.manifest.model_checksum,
        "n_slices": int(index.ntotal),
        "cases": list(index.cases),
        "rows_digest": rows_digest(index.manifest.files),
        "own": own,
    }


def own_record(listing: dict, k: int) -> dict:
    """The shard.json of shard `k` of `listing` (version 2)."""
    return {
        "format": SHARD_FORMAT,
        "format_version": FORMAT_VERSION,
        "shard": k,
        "source": listing["source"],
        **listing["shards"][k],
    }


def _is_int(value, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _is_sha256(value) -> bool:
    return isinstance(value, str) and _SHA256.match(value) is not None


def _valid_entry(entry, version: int) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("path"), str)
        and re.fullmatch(r"shard-[0-9]{3,}", entry["path"]) is not None
        and _is_int(entry.get("row_offset"))
        and _is_int(entry.get("n_slices"), 1)
        and isinstance(entry.get("cases"), list)
        and len(entry["cases"]) >= 1
        and all(isinstance(c, str) for c in entry["cases"])
        and (
            version < 2
            or (_is_sha256(entry.get("model_checksum")) and _is_sha256(entry.get("rows_digest")))
        )
    )


def read_listing(folder: Path) -> dict:
    """shards.json of `folder`, checked in itself (formats, offsets, counts, distinct cases);
    IndexDirError saying what is wrong and the fix. A version 1 listing is logged as a warning."""
    path = folder / SHARDS_FILE
    again = "Split the index again: `fdn-index shard INDEX NEW_FOLDER --shards N`"
    try:
        listing = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        raise IndexDirError(f"{path}: unreadable ({exc}). {again}.") from None
    version = listing.get("format_version") if isinstance(listing, dict) else None
    ok = (
        isinstance(listing, dict)
        and listing.get("format") == FORMAT
        and version in READABLE_VERSIONS
        and _is_int(listing.get("n_slices"))
        and _is_sha256(listing.get("model_checksum"))
        and isinstance(listing.get("shards"), list)
        and listing["shards"]
        and all(_valid_entry(s, version) for s in listing["shards"])
    )
    if not ok:
        raise IndexDirError(
            f"{path}: not a shard listing of this fdn-index (format {FORMAT} version "
            f"{' or '.join(map(str, READABLE_VERSIONS))}). {again}."
        )
    version = int(listing["format_version"])
    shards = listing["shards"]
    offset = 0
    for entry in shards:
        if entry["row_offset"] != offset:
            raise IndexDirError(
                f"{path}: {entry['path']} has row_offset {entry['row_offset']}, but the shards "
                f"before it hold {offset} rows (the offsets run on without gap or overlap); "
                f"the listing was edited. {again}."
            )
        offset += entry["n_slices"]
        if version >= 2 and entry["model_checksum"] != listing["model_checksum"]:
            raise IndexDirError(
                f"{path}: {entry['path']} is recorded with model {entry['model_checksum'][:12]}…, "
                f"the listing with {listing['model_checksum'][:12]}…. {again}."
            )
    if offset != listing["n_slices"]:
        raise IndexDirError(
            f"{path}: the shards hold {offset} rows, the listing says n_slices "
            f"{listing['n_slices']}. {again}."
        )
    paths = [s["path"] for s in shards]
    cases = [c for s in shards for c in s["cases"]]
    if len(set(paths)) != len(paths) or len(set(cases)) != len(cases):
        twice = sorted({c for c in [*paths, *cases] if [*paths, *cases].count(c) > 1})[:3]
        raise IndexDirError(
            f"{path}: lists {', '.join(twice)} more than once; each shard and each case "
            f"appears once. {again}."
        )
    if version < FORMAT_VERSION:
        log.warning(
            "%s: shard listing of version %d, which records no model checksum or rows digest "
            "per shard; opened with the checks it allows (model, cases, row counts, offsets). "
            "For every check, split the index again: `fdn-index shard INDEX NEW_FOLDER`.",
            path,
            version,
        )
    return listing


def check_shard(folder: Path, listing: dict, k: int, found: dict) -> None:
    """Refuse shard `k` when what it is (`identity`) is not what `listing` records for it."""
    entry = listing["shards"][k]
    where = folder / entry["path"]
    fix = (
        f"Put back the shard that was split there, or split the index again into a new "
        f"folder: `fdn-index shard INDEX NEW_FOLDER --shards {len(listing['shards'])}`"
    )

    def refuse(what: str):
        return IndexDirError(f"{where}: {what}. {fix}.")

    expected = entry.get("model_checksum", listing["model_checksum"])
    if found["model_checksum"] != expected:
        raise refuse(
            f"built with model {found['model_checksum'][:12]}…, but {SHARDS_FILE} records "
            f"model {expected[:12]}… (the model of every shard of this folder); its codes "
            "would be searched with another model's codebooks"
        )
    if listing["format_version"] >= 2:
        own = found["own"]
        if own is None:
            raise refuse(f"no {SHARD_FILE}, the shard's own record of its position")
        if isinstance(own, str):
            raise refuse(f"{SHARD_FILE} is unreadable ({own})")
        differs = [name for name in (*POSITION, "model_checksum") if own.get(name) != entry[name]]
        if differs or own.get("source") != listing["source"]:
            raise refuse(
                f"its {SHARD_FILE} says it is {str(own.get('path'))[:20]} (row_offset "
                f"{str(own.get('row_offset'))[:20]}, {str(own.get('n_slices'))[:20]} rows) "
                f"of the split of {str(own.get('source'))[:200]}, but {SHARDS_FILE} lists "
                f"{entry['path']} (row_offset {entry['row_offset']}, {entry['n_slices']} rows) "
                f"of {listing['source']}; it was copied or moved here"
            )
    if found["cases"] != entry["cases"] or found["n_slices"] != entry["n_slices"]:
        raise refuse(
            f"holds {found['n_slices']} rows of cases {', '.join(found['cases'][:3])}…, "
            f"{SHARDS_FILE} records {entry['n_slices']} rows of cases "
            f"{', '.join(entry['cases'][:3])}… for it"
        )
    if "rows_digest" in entry and found["rows_digest"] != entry["rows_digest"]:
        raise refuse(
            f"its rows (digest {found['rows_digest'][:12]}… of slices.parquet and the row "
            f"arrays its manifest lists) are not those {SHARDS_FILE} records "
            f"({entry['rows_digest'][:12]}…)"
        )
    own = found["own"]
    if isinstance(own, dict) and own.get("rows_digest") not in (None, found["rows_digest"]):
        raise refuse(f"its rows differ from those its own {SHARD_FILE} records")
