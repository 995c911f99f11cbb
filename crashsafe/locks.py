"""Locks on a lock file with fcntl.flock: a folder's single writer, and readers beside a writer.

The lock belongs to the open file description, so it is released when its holder closes the
file or dies, however it dies: a killed writer never leaves a stale lock behind.
`exclusive_lock` does not wait: a second writer fails at once with `LockHeldError`, and its
caller says who holds the lock and what to do. `shared_or_exclusive_lock` waits: readers hold
it together, and a writer's short critical section waits for them (and they for it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path


class LockHeldError(BlockingIOError):
    """Another process holds the lock."""


@contextlib.contextmanager
def exclusive_lock(path: str | Path, held: Callable[[], Exception] | None = None) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created 0644 if missing, never through a symbolic
    link) for the duration. If another process holds it, raise ``held()`` at once (the
    caller's error, saying what to do), or LockHeldError."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if held is not None:
                raise held() from None
            raise LockHeldError(f"{path}: held by another process") from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def shared_or_exclusive_lock(path: str | Path, *, shared: bool) -> Iterator[None]:
    """Wait for a flock on ``path``: shared (readers, together) or exclusive (one writer,
    alone), held for the duration.

    The writer creates the lock file (0644, never through a symbolic link). A reader that
    cannot open it reads unlocked: no writer ever ran in that folder, or the folder is
    read-only to it, and then no writer of this kind can run there either."""
    try:
        if shared:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError:
        if not shared:
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
