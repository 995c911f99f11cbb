"""Checked reads: each fault of a listed file is named, and only a whole, matching file is read."""

import hashlib
import os

import pytest

from crashsafe import CheckedReadError, checked_read, read_checked


def fault_of(path, size, sha256):
    with pytest.raises(CheckedReadError) as info:
        read_checked(path, size, sha256)
    return info.value


def test_reads_a_matching_file_and_names_each_fault(tmp_path):
    data = b"listed content"
    digest = hashlib.sha256(data).hexdigest()
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert read_checked(path, len(data), digest) == data
    assert read_checked(path, len(data), None) == data  # size only
    size = fault_of(path, len(data) + 1, digest)
    assert (size.fault, size.found, size.expected) == (checked_read.SIZE, len(data), len(data) + 1)
    assert fault_of(path, len(data), "0" * 64).fault == checked_read.SHA256
    assert fault_of(tmp_path / "none", 1, None).fault == checked_read.MISSING


def test_refuses_links_and_special_files(tmp_path):
    target = tmp_path / "real"
    target.write_bytes(b"x")
    (tmp_path / "link").symlink_to(target)
    link = fault_of(tmp_path / "link", 1, None)
    assert (link.fault, link.found) == (checked_read.UNREADABLE, "a symbolic link")
    os.mkfifo(tmp_path / "fifo")  # opened without blocking, then refused
    assert fault_of(tmp_path / "fifo", 1, None).fault == checked_read.NOT_REGULAR
