"""Checked reads: a file named by a trusted list, opened safely and checked against its record.

A reader that trusts only a listing (a manifest's size and sha256 per file) opens each listed
file with `open_regular` (never through a symbolic link, never blocking on a FIFO put in its
place, never anything but a regular file) and checks its size before reading it and its sha256
after (`read_checked`). A fault raises `CheckedReadError`, whose `fault`, `found` and
`expected` let the caller say in its own words what is wrong and how to fix it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

# CheckedReadError.fault
MISSING = "missing"
UNREADABLE = "unreadable"  # `found` says why: "a symbolic link" or the system's message
NOT_REGULAR = "not a regular file"
SIZE = "size"  # `found` and `expected`: sizes in bytes
SHA256 = "sha256"  # `found` and `expected`: hex digests


class CheckedReadError(Exception):
    """A listed file is missing, unreadable, not a regular file, or not what its record says."""

    def __init__(self, path: Path, fault: str, *, found=None, expected=None):
        self.path, self.fault, self.found, self.expected = path, fault, found, expected
        super().__init__(f"{path}: {fault} (found {found}, expected {expected})")


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def open_regular(path: str | Path) -> BinaryIO:
    """``path`` open for binary reading, if it is a regular file reached without a symlink."""
    path = Path(path)
    try:
        # O_NONBLOCK: a FIFO put in place of a file must not hang the reader
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise CheckedReadError(path, MISSING) from None
    except OSError as exc:
        what = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise CheckedReadError(path, UNREADABLE, found=what) from None
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise CheckedReadError(path, NOT_REGULAR)
    return f


def check_content(path: str | Path, data: bytes, size: int, sha256: str | None) -> bytes:
    """``data`` (read from ``path``) if it has ``size`` bytes and, unless None, ``sha256``."""
    if len(data) != size:
        raise CheckedReadError(Path(path), SIZE, found=len(data), expected=size)
    if sha256 is not None:
        found = sha256_hex(data)
        if found != sha256:
            raise CheckedReadError(Path(path), SHA256, found=found, expected=sha256)
    return data


def read_checked(path: str | Path, size: int, sha256: str | None) -> bytes:
    """The content of the regular file ``path``, checked for ``size`` before it is read (a huge
    file is never read whole) and for ``sha256`` (None: not hashed) after."""
    with open_regular(path) as f:
        found = os.fstat(f.fileno()).st_size
        if found != size:
            raise CheckedReadError(Path(path), SIZE, found=found, expected=size)
        data = f.read()
    return check_content(path, data, size, sha256)
