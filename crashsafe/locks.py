"""The exclusive lock of a folder's single writer: fcntl.flock on a lock file.

The lock belongs to the open file description, so it is released when its holder closes the
file or dies, however it dies: a killed writer never leaves a stale lock behind. A second
writer does not wait: it fails at once with `LockHeldError`, and its caller says who holds
the lock and what to do.
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
