"""The exclusive lock: a second holder fails at once with the caller's error; release on exit."""

import pytest

from crashsafe import LockHeldError, exclusive_lock


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
