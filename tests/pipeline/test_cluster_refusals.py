"""What `build --workers/--scheduler` refuses, and how quietly a cluster build talks.

The refusals come before any process starts or any traffic goes to a wrong server: more local
workers than cores, an address that is not a Dask scheduler (an HTTP server, a server that
greets with anything else, a port nobody listens on).
"""

import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fdn.archive_index.distributed import check_scheduler, cluster_client
from fdn.errors import ClusterError

distributed = pytest.importorskip("distributed")


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def test_more_local_workers_than_cores_are_refused_before_any_process_starts():
    children_before = _children()
    with pytest.raises(ClusterError, match=rf"this machine has {_cores()} core"):
        with cluster_client(workers=_cores() + 1):
            pass
    assert _children() == children_before


def _children() -> set[str]:
    path = f"/proc/{os.getpid()}/task/{os.getpid()}/children"
    with open(path) as f:
        return set(f.read().split())


class _Silent(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the http.server name)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Silent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"tcp://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_http_server_is_not_taken_for_a_scheduler(http_server):
    started = time.monotonic()
    with pytest.raises(ClusterError, match="not a Dask scheduler .it sent nothing in 1 s"):
        check_scheduler(http_server, timeout=1)
    assert time.monotonic() - started < 5


@pytest.fixture
def banner_server():
    """A server that greets every connection with an SSH-like banner, as some ports do."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    threading.Thread(target=serve, daemon=True).start()
    yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_a_server_greeting_with_other_bytes_is_refused_at_once(banner_server):
    with pytest.raises(ClusterError, match=r"not a Dask scheduler \(it sent b'SSH-2.0"):
        check_scheduler(banner_server, timeout=5)


def test_a_closed_port_and_a_malformed_address_are_named():
    with socket.socket() as s:  # a free port, closed again: nobody listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ClusterError, match=rf"tcp://127.0.0.1:{port}: cannot connect"):
        check_scheduler(f"tcp://127.0.0.1:{port}", timeout=2)
    with pytest.raises(ClusterError, match="expected tcp://HOST:PORT"):
        check_scheduler("tcp://127.0.0.1", timeout=2)


def test_a_real_scheduler_passes_the_check():
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=0, processes=False, protocol="tcp://", host="127.0.0.1", dashboard_address=None
    ) as cluster:
        check_scheduler(cluster.scheduler_address, timeout=10)


def test_a_two_worker_build_prints_no_dask_info_lines(tmp_path, tiny_archive, model_dir):
    if _cores() < 2:
        pytest.skip(f"needs 2 cores for --workers 2; this machine has {_cores()}")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "fdn-index"), "build", str(tiny_archive)]
        + ["--model", str(model_dir), "--index", str(tmp_path / "index"), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    chatter = [line for line in result.stderr.splitlines() if "distributed." in line]
    assert chatter == [], "\n".join(chatter[:20])
    assert "encoded now" in result.stdout
