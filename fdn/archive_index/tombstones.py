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

The file names no case: it holds, for each removed case id, HMAC-SHA256 under a key of the
index directory (``.removal-key``, 32 random bytes as hex, mode 0600, made by the first removal)
of the case's sha256 (`case_digest`). So a compacted index keeps no trace of a case's id, a
later build of the same archive still leaves the case out, and nobody who reads removed.json
without the key (a copy of the folder's public files, a shard listing) can test a guessed case
id against it, as an unkeyed digest of a short, guessable id allowed. The key never leaves
the folder it was made in: shards get their own when a case is removed from them.

Format version 1 held the unkeyed digests; it is still read, and the next `fdn-index remove`
(or `remove --compact`) rewrites it keyed (HMAC of the same digests, so nothing is lost). A
keyed file without its key, or a damaged one, is refused: no query runs rather than show a
removed case.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

from crashsafe import atomic_write, atomic_write_json
from fdn.errors import IndexDirError

TOMBSTONES = "removed.json"
KEY_FILE = ".removal-key"
KEY_BYTES = 32
FORMAT = "fdn-index-removed"
FORMAT_VERSION = 2  # 1: unkeyed sha256 digests, still read
DIGEST_SCHEME = "hmac-sha256(.removal-key, sha256(case))"
_DIGEST = re.compile(r"[0-9a-f]{64}\Z")


def case_digest(case: str) -> str:
    """The sha256 hex digest of a case id: what `RemovedCases` is asked about (in memory; the
    file holds it keyed)."""
    return hashlib.sha256(b"fdn-index removed case\0" + case.encode("utf-8")).hexdigest()


def _keyed(key: bytes, digest: str) -> str:
    return hmac.new(key, digest.encode("ascii"), hashlib.sha256).hexdigest()


class RemovedCases(frozenset):
    """The removed cases of one index directory, asked by `case_digest`:
    ``case_digest(case) in removed``. Its elements are the digests of removed.json as written
    (keyed, or unkeyed from a version-1 file); membership keys the question with `key`. (A
    frozenset, so that code holding the digests of a folder keeps its type; its set
    operations give plain digests without this membership, so use `keyed_under` instead.)"""

    key: bytes | None
    keyed: frozenset[str]
    unkeyed: frozenset[str]

    def __new__(
        cls, keyed: Iterable[str] = (), key: bytes | None = None, unkeyed: Iterable[str] = ()
    ):
        keyed, unkeyed = frozenset(keyed), frozenset(unkeyed)
        self = super().__new__(cls, keyed | unkeyed)
        self.key, self.keyed, self.unkeyed = key, keyed, unkeyed
        return self

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, str):
            return False
        if digest in self.unkeyed:
            return True
        return self.key is not None and _keyed(self.key, digest) in self.keyed

    def keyed_under(self, key: bytes) -> frozenset[str]:
        """Every entry keyed with `key` (the unkeyed ones of a version-1 file keyed now)."""
        return self.keyed | {_keyed(key, d) for d in self.unkeyed}


def read_removal_key(index_dir: str | Path) -> bytes | None:
    """The key of removed.json's digests, or None when the folder has none yet."""
    path = Path(index_dir) / KEY_FILE
    try:
        key = bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise IndexDirError(
            f"{path}: unreadable removal key ({type(exc).__name__}); removed.json cannot be read "
            "without it. Restore it from a backup, or remove the cases again with "
            "`fdn-index remove` after deleting removed.json and this file."
        ) from None
    if len(key) != KEY_BYTES:
        raise IndexDirError(
            f"{path}: a removal key is {KEY_BYTES} bytes as hex, found {len(key)}. Restore it "
            "from a backup."
        )
    return key


def removal_key(index_dir: str | Path) -> bytes:
    """The folder's removal key, made (0600) on first use; the caller holds the build lock."""
    key = read_removal_key(index_dir)
    if key is None:
        path = Path(index_dir) / KEY_FILE
        atomic_write(path, secrets.token_hex(KEY_BYTES).encode() + b"\n")
        os.chmod(path, 0o600)
        key = read_removal_key(index_dir)
    assert key is not None  # just written
    return key


def read_tombstones(index_dir: str | Path) -> RemovedCases:
    """The removed cases of `index_dir` (none when there is no removed.json); IndexDirError
    for a file that is not a list of them, or a keyed one whose key is missing."""
    path = Path(index_dir) / TOMBSTONES
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return RemovedCases()
    except (OSError, ValueError, RecursionError) as exc:
        raise IndexDirError(
            f"{path}: unreadable ({type(exc).__name__}: {str(exc)[:80]}); it lists the removed "
            f"cases, so no query runs without it. Restore it from a backup, or remove the cases "
            f"again with `fdn-index remove`."
        ) from None
    digests = data.get("removed") if isinstance(data, dict) else None
    version = data.get("format_version") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or data.get("format") != FORMAT
        or version not in (1, FORMAT_VERSION)
        or not isinstance(digests, list)
        or not all(isinstance(d, str) and _DIGEST.match(d) for d in digests)
    ):
        raise IndexDirError(
            f"{path}: not a list of removed cases of this fdn-index (expected format {FORMAT!r} "
            f"version 1 or {FORMAT_VERSION} with 'removed': [hex digests]). Restore it from a "
            f"backup, or remove the cases again with `fdn-index remove`."
        )
    if version == 1:
        return RemovedCases(unkeyed=digests)
    key = read_removal_key(index_dir)
    if key is None and digests:
        raise IndexDirError(
            f"{path}: its digests are keyed with {Path(index_dir) / KEY_FILE}, which is missing, "
            "so no query runs (it could not leave the removed cases out). Restore the key from "
            "a backup, or delete removed.json and remove the cases again with `fdn-index remove`."
        )
    return RemovedCases(keyed=digests, key=key)


def write_tombstones(
    index_dir: str | Path, removed: RemovedCases, new: Iterable[str] = ()
) -> RemovedCases:
    """Replace removed.json atomically with `removed` and the cases of digests `new`
    (`case_digest`), all keyed; the caller holds the build lock. Returns what was written."""
    key = removal_key(index_dir)
    keyed = removed.keyed_under(key) | {_keyed(key, d) for d in new}
    atomic_write_json(
        Path(index_dir) / TOMBSTONES,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "digest": DIGEST_SCHEME,
            "removed": sorted(keyed),
        },
    )
    return RemovedCases(keyed=keyed, key=key)


def drop_removed(plan: dict, digests: RemovedCases) -> list[str]:
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
        self._digests = RemovedCases()

    def digests(self) -> RemovedCases:
        try:
            st = os.stat(self.path)
            key: tuple | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        if key != self._key:
            self._digests = read_tombstones(self.path.parent) if key is not None else RemovedCases()
            self._key = key
        return self._digests
