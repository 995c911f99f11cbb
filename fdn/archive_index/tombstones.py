"""Tombstones of removed cases (withdrawn consent): `removed.json` in an index directory.

A removed case is hidden at once and its data deleted later (`fdn.archive_index.removal`):

- `fdn-index remove` adds the case to `removed.json`, one atomic write (temporary file, fsync,
  rename, fsync of the folder: `crashsafe.atomic_write_json`) under the build lock, so a crash
  leaves the old list or the new one, and no build or other removal runs meanwhile.
- Every query reads the list (`TombstoneWatch`: one stat per query, a re-read when the file was
  replaced) and searches with a row mask that leaves the removed cases' rows out; a removed
  case is refused as a query.
- Compaction (`fdn-index remove --compact`, or a later `fdn-index build`) assembles the index
  again without those cases and deletes their build-journal entries.

The file names no case: it holds the sha256 of each removed case id (`case_digest`), so that a
compacted index keeps no trace of a case's id while a later build of the same archive still
leaves the case out. The file is not in the manifest: it changes after the build, and a reader
that finds it damaged refuses to search rather than show a removed case.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from crashsafe import atomic_write_json
from fdn.errors import IndexDirError

TOMBSTONES = "removed.json"
FORMAT = "fdn-index-removed"
FORMAT_VERSION = 1
_DIGEST = re.compile(r"[0-9a-f]{64}\Z")


def case_digest(case: str) -> str:
    """The sha256 hex digest that stands for a removed case id in `removed.json`."""
    return hashlib.sha256(b"fdn-index removed case\0" + case.encode("utf-8")).hexdigest()


def read_tombstones(index_dir: str | Path) -> frozenset[str]:
    """The digests of the removed cases of `index_dir` (none when there is no removed.json);
    IndexDirError for a file that is not a list of them."""
    path = Path(index_dir) / TOMBSTONES
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return frozenset()
    except (OSError, ValueError, RecursionError) as exc:
        raise IndexDirError(
            f"{path}: unreadable ({type(exc).__name__}: {str(exc)[:80]}); it lists the removed "
            f"cases, so no query runs without it. Restore it from a backup, or remove the cases "
            f"again with `fdn-index remove`."
        ) from None
    digests = data.get("removed") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or data.get("format") != FORMAT
        or data.get("format_version") != FORMAT_VERSION
        or not isinstance(digests, list)
        or not all(isinstance(d, str) and _DIGEST.match(d) for d in digests)
    ):
        raise IndexDirError(
            f"{path}: not a list of removed cases of this fdn-index (expected format {FORMAT!r} "
            f"version {FORMAT_VERSION} with 'removed': [sha256 hex digests]). Restore it from a "
            f"backup, or remove the cases again with `fdn-index remove`."
        )
    return frozenset(digests)


def write_tombstones(index_dir: str | Path, digests) -> None:
    """Replace removed.json atomically; the caller holds the build lock."""
    atomic_write_json(
        Path(index_dir) / TOMBSTONES,
        {"format": FORMAT, "format_version": FORMAT_VERSION, "removed": sorted(set(digests))},
    )


def drop_removed(plan: dict, digests: frozenset[str]) -> list[str]:
    """Take the removed cases out of a build plan (in place): its cases, sources and skipped
    entries. Returns the cases taken out."""
    gone = [c for c in plan["cases"] if case_digest(c) in digests]
    if gone:
        plan["cases"] = [c for c in plan["cases"] if c not in gone]
        plan["sources"] = {c: s for c, s in plan["sources"].items() if c not in gone}
        plan["skipped"] = [e for e in plan.get("skipped", []) if e["case"] not in gone]
    return gone


class TombstoneWatch:
    """The removed cases of one index directory, re-read whenever removed.json is replaced
    (an atomic write gives it a new inode), so that a long-running server honours a removal
    at its next query."""

    def __init__(self, index_dir: str | Path):
        self.path = Path(index_dir) / TOMBSTONES
        self._key: tuple | None = None
        self._digests: frozenset[str] = frozenset()

    def digests(self) -> frozenset[str]:
        try:
            st = os.stat(self.path)
            key: tuple | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        if key != self._key:
            self._digests = read_tombstones(self.path.parent) if key is not None else frozenset()
            self._key = key
        return self._digests
