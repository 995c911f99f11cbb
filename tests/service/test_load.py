"""A short, bounded load test on 127.0.0.1 (the 16-client, 30-second one is in
benchmarks/serve.py): concurrent clients get only correct answers, and memory stays flat."""

from __future__ import annotations

import os

from benchmarks.serve import load_test, rss_bytes


def test_four_clients_for_three_seconds_get_no_error(live_server):
    load_test(live_server.url, clients=4, seconds=1.0, seed=1)  # fills the image cache
    before = rss_bytes(os.getpid())
    result = load_test(live_server.url, clients=4, seconds=3.0, seed=2)
    after = rss_bytes(os.getpid())
    assert result["errors"] == 0, result["error_samples"]
    assert result["query"]["calls"] > 20 and result["png"]["calls"] > 5
    assert after - before < 64 * 2**20, (before, after)
