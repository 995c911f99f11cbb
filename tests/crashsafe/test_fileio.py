"""The crash-safe writer: content, refusals of special targets, no leftovers on failure."""

import os

import pytest

from crashsafe import WriteTargetError, atomic_write, atomic_write_json, remove_stale_temporaries


def test_writes_bytes_and_callables_and_replaces_whole(tmp_path):
    target = tmp_path / "a.bin"
    atomic_write(target, b"first")
    atomic_write(target, lambda f: f.write(b"second, longer"))
    assert target.read_bytes() == b"second, longer"
    atomic_write_json(tmp_path / "b.json", {"z": 1, "a": [1, 2]})
    assert (tmp_path / "b.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "z": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.json"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_refuses_a_symlink_and_leaves_link_and_target_alone(tmp_path):
    real = tmp_path / "real.png"
    real.write_bytes(b"keep")
    link = tmp_path / "link.png"
    link.symlink_to(real)
    with pytest.raises(WriteTargetError, match="symbolic link"):
        atomic_write(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"keep"


def test_refuses_special_files_and_folders(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(WriteTargetError, match="special file"):
        atomic_write(fifo, b"x")
    assert fifo.exists() and not fifo.is_file()
    (tmp_path / "folder").mkdir()
    with pytest.raises(WriteTargetError, match="is a folder"):
        atomic_write(tmp_path / "folder", b"x")


def test_a_missing_or_non_folder_parent_is_a_clear_error(tmp_path):
    with pytest.raises(WriteTargetError, match="does not exist"):
        atomic_write(tmp_path / "no" / "such" / "x.png", b"x")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(WriteTargetError, match="does not exist"):
        atomic_write(tmp_path / "file" / "x.png", b"x")


def test_remove_stale_temporaries_only_removes_temporaries(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / ".manifest.json.abc123.tmp").write_text("{")
    (tmp_path / ".codes.zarr.xyz.tmp").mkdir()
    (tmp_path / ".hidden").write_text("keep")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".codes.zarr.xyz.tmp", ".manifest.json.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "manifest.json"]


def test_written_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644
