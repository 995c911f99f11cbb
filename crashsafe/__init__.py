"""Crash-safe file I/O, shared by `hashindex` and `fdn`: the standard library only.

atomic.py         atomic_write (temporary file, fsync, rename, fsync of the folder), the
                  write-target check, and the removal of a killed writer's temporaries
checked_read.py   a listed file opened safely and checked against its size and sha256
locks.py          flock locks: a folder's single writer, and readers beside a writer
"""

from crashsafe.atomic import (
    TEMP_SUFFIX,
    WriteTargetError,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    check_write_target,
    fsync_directory,
    remove_stale_temporaries,
)
from crashsafe.checked_read import (
    CheckedReadError,
    check_content,
    open_regular,
    read_checked,
    sha256_hex,
)
from crashsafe.locks import LockHeldError, exclusive_lock, shared_or_exclusive_lock

__all__ = [
    "TEMP_SUFFIX",
    "CheckedReadError",
    "LockHeldError",
    "WriteTargetError",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "check_content",
    "check_write_target",
    "exclusive_lock",
    "fsync_directory",
    "open_regular",
    "read_checked",
    "remove_stale_temporaries",
    "sha256_hex",
    "shared_or_exclusive_lock",
]
