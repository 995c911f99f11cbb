"""The locks of an index directory: one build at a time, and no reader sees a swap.

Locks (`crashsafe`'s flock locks on two empty files). A build holds `.build.lock` exclusively
for its whole run, so a second build of the same directory fails at once. It assembles the new
files in a staging folder, then takes `.swap.lock` exclusively for the short swap: the manifest
says "building", the new files are renamed into place, the new manifest is written last.
Readers take `.swap.lock` shared while they read the manifest and open the files, so they see
the last complete index, never a mix; what they opened stays theirs after a later swap.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from crashsafe import exclusive_lock, shared_or_exclusive_lock
from fdn.archive_index.layout import BUILD_LOCK, SWAP_LOCK
from fdn.errors import IndexDirError


@contextlib.contextmanager
def build_lock(index_dir: Path) -> Iterator[None]:
    """Hold the directory's build lock (exclusive, non-blocking) for the duration."""
    path = Path(index_dir) / BUILD_LOCK
    with exclusive_lock(
        path,
        held=lambda: IndexDirError(
            f"{index_dir}: another build holds this index directory (lock {path}). Wait for "
            f"it to finish, then run this build again."
        ),
    ):
        yield


@contextlib.contextmanager
def swap_lock(index_dir: Path, *, shared: bool) -> Iterator[None]:
    """Readers (shared) see no swap in progress; the build (exclusive) waits for readers.

    A reader in a directory without a lock file (or one it may not open) reads unlocked:
    no build ever ran there, or the directory is read-only.
    """
    with shared_or_exclusive_lock(Path(index_dir) / SWAP_LOCK, shared=shared):
        yield
