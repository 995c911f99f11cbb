"""The exclusive lock: a second holder fails at once with the caller's error; release on exit.
The reader/writer lock: readers hold it together, a writer waits for them and they for it."""

import threading

import pytest

from crashsafe import LockHeldError, exclusive_lock, shared_or_exclusive_lock


def test_a_second_holder_fails_at_once_until_the_first_lets_go(tmp_path):
    path = tmp_path / ".lock"
    with exclusive_lock(path):
        with pytest.raises(LockHeldError), exclusive_lock(path):
            pass  # flock locks belong to the open file: a second open is a second holder
        with (
            pytest.raises(KeyError, match="busy"),
            exclusive_lock(path, held=lambda: KeyError("busy")),
        ):
            pass
    with exclusive_lock(path):  # released
        pass


def test_never_through_a_symlink(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError), exclusive_lock(tmp_path / "link"):
        pass
    assert not (tmp_path / "elsewhere").exists()


def _enter_in_thread(path, shared, entered: threading.Event, leave: threading.Event):
    def hold():
        with shared_or_exclusive_lock(path, shared=shared):
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    return thread


def test_readers_share_and_a_writer_waits_for_them(tmp_path):
    path = tmp_path / ".swap.lock"
    with shared_or_exclusive_lock(path, shared=False):  # the writer creates the file
        pass
    with shared_or_exclusive_lock(path, shared=True):
        # a second reader (another open file) enters while the first holds the lock
        entered, leave = threading.Event(), threading.Event()
        reader = _enter_in_thread(path, True, entered, leave)
        assert entered.wait(5)
        leave.set()
        reader.join(5)
        # a writer does not enter while a reader holds it
        entered, leave = threading.Event(), threading.Event()
        writer = _enter_in_thread(path, False, entered, leave)
        assert not entered.wait(0.3)
    assert entered.wait(5)  # the reader let go: the writer is in
    # and a reader now waits for the writer
    entered_reader, leave_reader = threading.Event(), threading.Event()
    reader = _enter_in_thread(path, True, entered_reader, leave_reader)
    assert not entered_reader.wait(0.3)
    leave.set()
    writer.join(5)
    assert entered_reader.wait(5)
    leave_reader.set()
    reader.join(5)


def test_a_reader_without_a_lock_file_reads_unlocked_and_a_writer_creates_it(tmp_path):
    path = tmp_path / ".swap.lock"
    with shared_or_exclusive_lock(path, shared=True):
        assert not path.exists()  # readers never create it
    with shared_or_exclusive_lock(path, shared=False):
        assert path.exists()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError), shared_or_exclusive_lock(tmp_path / "link", shared=False):
        pass
    assert not (tmp_path / "elsewhere").exists()
