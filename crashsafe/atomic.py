"""Crash-safe file writes: the one way this project puts a file on disk.

Every writer (index files, checkpoints, journal entries, figures, benchmark reports) goes
through `atomic_write`, as SQLite and Zarr do it:

1. write a temporary file in the target's own folder (so the rename never crosses a file system),
2. flush and fsync it,
3. rename it over the target (a reader sees the old file or the new one, never a part of one),
4. fsync the folder, so that the rename itself survives a power cut.

The target must be a regular file or not exist yet. A device node, a FIFO, a folder or a
symbolic link is refused: a rename would replace the node or the link itself (`--montage
/dev/null` once replaced the device with a PNG), which is never what the user meant.

Temporary files are named ``.NAME.<random>.tmp``; `remove_stale_temporaries` deletes those a
killed writer left behind.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"


class WriteTargetError(OSError):
    """A file cannot be written where asked: the message names the path, the fault and the fix."""


def check_write_target(path: str | Path) -> Path:
    """`path` as a Path if a file may be written there; WriteTargetError saying why not."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as exc:
        raise WriteTargetError(
            f"{path}: cannot inspect the target ({exc.strerror}); choose another output path"
        ) from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise WriteTargetError(
                f"{path}: is a symbolic link (to {os.readlink(path)}); writing would replace the "
                "link, not its target. Pass the real path, or remove the link first"
            )
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "a folder"
                if stat.S_ISDIR(st.st_mode)
                else "a special file (device, FIFO or socket)"
            )
            raise WriteTargetError(
                f"{path}: is {kind}, not a regular file; refusing to replace it. Choose a file "
                "name for the output"
            )
    parent = path.parent
    if not parent.is_dir():
        raise WriteTargetError(
            f"{path}: the folder {parent} does not exist (or is not a folder); create it first"
        )
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_directory(directory: str | Path) -> None:
    """Make the renames and creations inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes | Callable[[BinaryIO], None]) -> Path:
    """Write `data` (bytes, or a function that writes to an open binary file) to `path`.

    A reader of `path` sees the old content or the new one, never a part; after a crash the
    target is whole (old or new) and at most a ``.NAME.*.tmp`` file is left beside it.
    Raises WriteTargetError for a target that is not a regular file, or a folder that cannot
    be written.
    """
    path = check_write_target(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as exc:
        raise WriteTargetError(
            f"{path}: cannot write in {path.parent} ({exc.strerror}); choose a writable folder"
        ) from None
    try:
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 less the
        # umask), so an index built by one user can be read by the others the umask allows
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, text.encode())


def atomic_write_json(path: str | Path, obj) -> Path:
    """JSON with sorted keys and a final newline, so that equal objects give equal bytes."""
    return atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files (and folders) a killed writer left in `directory`.

    Call it only while holding the folder's writer lock: a live writer's temporary looks the same.
    """
    import shutil

    removed: list[Path] = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
