"""Fixtures of the query-service tests: the service over the shared `built_index` (of
`tiny_archive` by `model_dir`, tests/conftest.py), an in-process client, and a real uvicorn
server on 127.0.0.1 and a free port; headless Chromium for the browser tests.

The model has seeded random weights: the tests check that the service answers exactly what the
library answers, which needs no trained model. Everything is written inside pytest's tmp folders.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from tests.checkout import CHILD_PRELUDE

with warnings.catch_warnings():  # on import, starlette says it prefers httpx2 to the pinned httpx
    warnings.simplefilter("ignore")
    import starlette.testclient  # noqa: F401


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium under Selenium, one per test module (the browser tests skip
    first where it is missing: benchmarks.chromium.available)."""
    from benchmarks.chromium import headless_chromium

    with headless_chromium(1400, 1000) as driver:
        driver.set_page_load_timeout(30)
        yield driver


def load_reference():
    """tests/hashindex/hashindex_reference.py: the plain-numpy brute force of the search tests."""
    import tests.hashindex.hashindex_reference as reference

    return reference


def checksums(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` (symlinks not followed)."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session")
def service(built_index, tmp_path_factory):
    from fdn.service import QueryService

    scratch = tmp_path_factory.mktemp("service-scratch")
    return QueryService.open(built_index, scratch_dir=scratch, max_upload_bytes=8 * 1024 * 1024)


@pytest.fixture(scope="session")
def client(service):
    from starlette.testclient import TestClient

    from fdn.service import create_app

    with TestClient(create_app(service), base_url="http://127.0.0.1") as test_client:
        yield test_client


class LiveServer:
    """uvicorn serving `app` in a thread on 127.0.0.1 and a free port."""

    def __init__(self, app):
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        assert host == "127.0.0.1"
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def live_server(service):
    from fdn.service import create_app

    service.warm_up()
    with LiveServer(create_app(service, allowed_hosts=["127.0.0.1", "localhost"])) as server:
        yield server


SERVE = CHILD_PRELUDE + "import sys; from fdn_index_cli.main import main; sys.exit(main())"


def proc_status_bytes(pid: int, field: str) -> int:
    """VmRSS, VmHWM, … of a process from /proc/PID/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class ServeProcess:
    """`fdn-index serve ARGS` in a child process (port 0, so a free one); `url` from the banner it
    prints once its socket is bound. The child is killed on exit."""

    def __init__(self, *args: str, env: dict | None = None):
        self.args = [sys.executable, "-c", SERVE, "serve", "--port", "0", *args]
        self.env = {**os.environ, **(env or {})}

    def __enter__(self):
        self.process = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        self.banner = self.process.stdout.readline()
        match = re.search(r"Viewer: (http://\S+?:(\d+))/ ", self.banner)
        if match is None:  # it exited (a refused option) or printed something else
            self.process.kill()
            errors = self.process.stderr.read()
            self.__exit__()
            raise RuntimeError(f"serve did not start: {self.banner!r} {errors!r}")
        self.url, self.port = match.group(1), int(match.group(2))
        self.pid = self.process.pid
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait(timeout=30)
        self.process.stdout.close()
        self.process.stderr.close()
