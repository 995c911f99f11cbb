"""Building on a Dask cluster started as a hospital would start one: `dask scheduler` and
`dask worker` processes, separate commands, on 127.0.0.1, and `fdn-index build --scheduler`.

The index must equal a one-process build exactly, also when a worker is killed mid-build (its
cases are run again elsewhere) and when a worker joins mid-build (it takes queued cases).
Every process is started in its own session and killed, with its children, in a `finally`;
every wait has a deadline.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fdn.archive_index.build import build_index
from fdn_index_cli.main import main
from tests.checkout import CHILD_PRELUDE, ROOT
from tests.conftest import TINY_SIZE
from tests.pipeline.test_distributed_build import _same_index

distributed = pytest.importorskip("distributed")

DASK = shutil.which("dask", path=str(Path(sys.executable).parent)) or "dask"
BUILD_SCRIPT = CHILD_PRELUDE + "import sys; from fdn_index_cli.main import main; sys.exit(main())"
N_CASES = 8


def _wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Cluster:
    """A scheduler and workers, each its own `dask` command in its own process group."""

    def __init__(self, folder: Path, env: dict):
        self.folder, self.env = folder, env
        self.processes: dict[str, subprocess.Popen] = {}
        self.address = ""

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            [DASK, *args],
            cwd=self.folder,  # not the build's folder, as on another machine
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a group of its own: the nanny and its worker die together
        )
        log.close()
        self.processes[name] = process
        return process

    def start_scheduler(self) -> str:
        info = self.folder / "scheduler.json"
        self._start(
            "scheduler",
            ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
            + ["--scheduler-file", str(info)],
        )
        _wait_for(lambda: info.is_file() and info.stat().st_size > 0, 60, "the scheduler file")
        _wait_for(lambda: "address" in _read_json(info), 10, "the scheduler's address")
        self.address = _read_json(info)["address"]
        return self.address

    def start_worker(self, name: str, preload: bool = False) -> None:
        args = ["worker", self.address, "--name", name, "--nthreads", "1", "--host", "127.0.0.1"]
        args += ["--no-dashboard", "--death-timeout", "60"]
        args += ["--local-directory", str(self.folder / name)]
        if preload:
            args += ["--preload", "tests.pipeline.slow_cases"]
        self._start(name, args)

    def kill(self, name: str) -> None:
        """SIGKILL the whole `dask worker` command (nanny and worker), as a machine dies."""
        process = self.processes[name]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for process in reversed(self.processes.values()):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass

    def log(self) -> str:
        return "\n".join(
            f"--- {name}\n" + (self.folder / f"{name}.log").read_text(errors="replace")[-3000:]
            for name in self.processes
        )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@pytest.fixture(scope="module")
def eight_cases(tmp_path_factory):
    """8 tiny cases (enough that a kill lands mid-build) and their one-process index."""
    from fdn.synth import synthesize_archive
    from tests.conftest import make_model_dir

    folder = tmp_path_factory.mktemp("dask-cluster")
    archive = folder / "archive"
    synthesize_archive(archive, n_cases=N_CASES, healthy_fraction=0.5, seed=5, size=TINY_SIZE)
    model = make_model_dir(folder / "model", seed=0)
    build_index(archive, model, folder / "index-one-process")
    return archive, model, folder / "index-one-process"


@pytest.fixture
def cluster_env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def cluster(tmp_path, cluster_env):
    """A scheduler on a free loopback port, no workers yet; everything killed afterwards."""
    folder = tmp_path / "cluster"
    folder.mkdir()
    started = Cluster(folder, cluster_env)
    try:
        started.start_scheduler()
        yield started
    finally:
        started.stop_all()


def _client(address):
    from distributed import Client

    return Client(address, timeout="30s")


def test_build_against_a_started_scheduler_and_workers(tmp_path, cluster, eight_cases, monkeypatch):
    """`fdn-index build` with relative paths, run in another folder than the workers'."""
    archive, model, one_process = eight_cases
    for name in ("w1", "w2"):
        cluster.start_worker(name)
    with _client(cluster.address) as client:
        client.wait_for_workers(2, timeout=90)
    index = tmp_path / "index"
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main,
        ["build", os.path.relpath(archive), "--model", os.path.relpath(model), "--index", "index"]
        + ["--scheduler", cluster.address, "--json"],
    )
    assert result.exit_code == 0, result.output + cluster.log()
    report = json.loads(result.output)
    assert sorted(report["encoded_now"]) == [f"SYN_{i:03d}" for i in range(N_CASES)]
    assert sum(report["workers"].values()) == N_CASES
    assert all(w.startswith("tcp://127.0.0.1:") for w in report["workers"])  # on the workers
    _same_index(index, one_process)


def test_a_worker_killed_and_one_added_mid_build(tmp_path, cluster, cluster_env, eight_cases):
    """Kill one of two workers as the first journal entry appears, while it holds cases; start
    a third: the build finishes, every case once, and the index equals the one-process one."""
    archive, model, one_process = eight_cases
    cluster.env = {**cluster_env, "FDN_TEST_CASE_DELAY_S": "1.5"}  # cases outlast the kill
    for name in ("w1", "w2"):
        cluster.start_worker(name, preload=True)
    index = tmp_path / "index"
    encoded = index / "encoded"
    out, err = tmp_path / "build.json", tmp_path / "build.log"
    with _client(cluster.address) as client:
        client.wait_for_workers(2, timeout=90)
        names = {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}
        victim = names["w1"]
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            build = subprocess.Popen(
                [sys.executable, "-c", BUILD_SCRIPT, "build", str(archive)]
                + ["--model", str(model), "--index", str(index)]
                + ["--scheduler", cluster.address, "--json"],
                cwd=ROOT,
                env=cluster_env,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        try:

            def victim_holds_cases_and_one_is_written():
                assert build.poll() is None, "the build ended before the kill"
                held = client.processing(workers=[victim]).get(victim, [])
                return bool(held) and any(encoded.glob("*.npz"))

            _wait_for(victim_holds_cases_and_one_is_written, 120, "the first journal entry")
            held = client.processing(workers=[victim])[victim]
            cluster.kill("w1")
            written_at_kill = len(list(encoded.glob("*.npz")))
            cluster.start_worker("w3", preload=True)
            build.wait(timeout=240)
        finally:
            if build.poll() is None:
                os.killpg(build.pid, signal.SIGKILL)
                build.wait(timeout=30)
        assert build.returncode == 0, err.read_text(errors="replace")[-3000:] + cluster.log()
    assert held and written_at_kill < N_CASES, (held, written_at_kill)
    report = json.loads(out.read_text())
    assert sorted(report["encoded_now"]) == [f"SYN_{i:03d}" for i in range(N_CASES)]
    assert sum(report["workers"].values()) == N_CASES  # each case once
    new = {a: n for a, n in report["workers"].items() if a not in names.values()}
    assert len(new) == 1 and sum(new.values()) >= 1, report["workers"]  # w3 took cases
    _same_index(index, one_process)
