"""Index files read from several threads at once (shards open in threads).

CPython 3.11's AST constructor keeps its recursion depth in interpreter-wide state
(python/cpython#106905), and numpy parses every .npy header with ast.literal_eval. A
finaliser run by a collection inside one parse hands the GIL to another parsing thread, and
one of them raised SystemError: CI once reported a sound shard "corrupt" that way. The
conditions below (cyclic garbage with finalisers, frequent collections, a tiny switch
interval) made a bare np.load fail 13-35 times in 16,000 reads on this machine.
"""

import gc
import io
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from hashindex.checked_files import load_npy, load_npz


class _CycleWithFinaliser:
    def __init__(self):
        self.me = self

    def __del__(self):
        total = 0
        for k in range(50):  # Python bytecode, so the interpreter may switch threads here
            total += k


@pytest.fixture
def contended_interpreter():
    threshold, interval = gc.get_threshold(), sys.getswitchinterval()
    gc.set_threshold(50)
    sys.setswitchinterval(1e-6)
    yield
    gc.set_threshold(*threshold)
    sys.setswitchinterval(interval)


def _read_from_threads(read, expected, threads=8, reads=2000):
    def worker(_):
        failures = []
        for _ in range(reads):
            for _ in range(5):
                _CycleWithFinaliser()
            try:
                got = read()
            except SystemError as exc:
                failures.append(str(exc))
                continue
            if not np.array_equal(got, expected):
                failures.append(f"read {got!r}")
        return failures

    with ThreadPoolExecutor(threads) as pool:
        return [f for failures in pool.map(worker, range(threads)) for f in failures]


def test_npy_reads_from_many_threads_all_succeed(contended_interpreter):
    expected = np.arange(12, dtype=np.uint8).reshape(3, 4)
    buffer = io.BytesIO()
    np.save(buffer, expected)
    data = buffer.getvalue()
    assert _read_from_threads(lambda: load_npy(io.BytesIO(data)), expected) == []


def test_npz_reads_from_many_threads_all_succeed(contended_interpreter):
    expected = np.arange(6, dtype=np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, a=expected, b=expected[::-1])
    data = buffer.getvalue()

    def read():
        arrays = load_npz(io.BytesIO(data), ["a"])
        assert list(arrays) == ["a"]
        return arrays["a"]

    assert _read_from_threads(read, expected, reads=1000) == []
