"""Building and searching on a Dask cluster: one task per case, one shard per worker.

`fdn.archive_index.build` hands the cases that need encoding to `encode_cases`, which runs them in this
process or, given a `dask.distributed` client, as one task per case on the cluster's workers.
A task reads, preprocesses and encodes its case where it runs (on the worker's GPU when it has
one) and writes the case's build-journal entry atomically into the index folder, which every
worker must reach (a shared file system). The scheduler re-runs the tasks of a worker that dies,
and a journal entry is written whole or not at all, so nothing is lost or written twice; a rerun
after the whole cluster died reuses the entries already written. Assembly then runs unchanged in
the calling process, so the index is identical, bit for bit, to a single-process build's.

    from dask.distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        build_index(archive, model, index, client=client)

`cluster_client` makes such a client from the command line's --workers / --scheduler.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# retries of a case's task after its worker died; a KilledWorker after that
TASK_RETRIES = 2
SCHEDULER_TIMEOUT_S = 30
# a scheduler greets a connection within milliseconds; a silent server is not one
GREETING_TIMEOUT_S = 10

# Models loaded by this process (a worker keeps its model between tasks): {(dir, checksum): model}
_MODELS: dict = {}


@dataclass(frozen=True)
class CaseTask:
    """Everything a worker needs to encode one case into its journal entry."""

    archive_root: str
    case: str
    model_dir: str
    checksum: str
    journal_path: str
    source: str
    inputs: dict | None
    batch_size: int
    device: str | None
    precision: str = "fp32"


@dataclass
class CaseResult:
    """What became of one case: fault is None when its entry was written; seconds per stage."""

    case: str
    fault: str | None
    stages: dict
    worker: str


def _model(model_dir: str, checksum: str, device: str):
    key = (model_dir, checksum, device)
    if key not in _MODELS:
        from fdn.errors import ModelError
        from fdn.training.checkpoint import load_model, model_checksum

        if model_checksum(model_dir) != checksum:
            raise ModelError(
                f"{model_dir}: the weights differ from the ones the build was "
                "started with (another file on this worker?). Every worker must "
                "see the same model directory."
            )
        _MODELS.clear()  # one model per process
        _MODELS[key] = load_model(model_dir, device=device)[0]
    return _MODELS[key]


def encode_case(task: CaseTask) -> CaseResult:
    """Read, preprocess and encode one case, and write its journal entry (runs on a worker).

    A bad case is reported in the result (the caller decides whether to skip it); any other
    error propagates.
    """
    from fdn.archive_index.encode import encode_images
    from fdn.archive_index.journal import write_encoded
    from fdn.data import Archive
    from fdn.device import resolve_device
    from fdn.errors import ArchiveError

    device = resolve_device(task.device)
    stages = {}
    t = time.perf_counter()
    model = _model(task.model_dir, task.checksum, device)
    stages["model_s"] = time.perf_counter() - t
    archive = Archive(Path(task.archive_root))
    try:
        # the index stores lesion areas (seg), nothing of anat or the pseudo-healthy rendering
        volume = archive.load(task.case, model.config.image_size, timings=stages, extras=("seg",))
    except ArchiveError as exc:
        return CaseResult(task.case, str(exc), stages, _worker_name())
    t = time.perf_counter()
    normal, abnormal = encode_images(
        model, volume.image, batch_size=task.batch_size, device=device, precision=task.precision
    )
    stages["encode_s"] = time.perf_counter() - t
    t = time.perf_counter()
    write_encoded(
        Path(task.journal_path), volume, normal, abnormal, task.checksum, task.source, task.inputs
    )
    stages["write_s"] = time.perf_counter() - t
    stages["slices"] = int(normal.shape[0])
    return CaseResult(task.case, None, stages, _worker_name())


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def encode_cases(tasks: list[CaseTask], client=None) -> Iterator[CaseResult]:
    """Encode every task, yielding each result as it is finished (in completion order).

    Without a client the tasks run here, one after another; with one, each is a Dask task.
    """
    if client is None:
        for task in tasks:
            yield encode_case(task)
        return
    from distributed import KilledWorker, as_completed

    from fdn.errors import ClusterError

    # pure=False: a rerun after a failure must run again, not reuse a cached result
    futures = {
        client.submit(
            encode_case,
            task,
            key=f"encode-{task.case}-{os.getpid()}",
            pure=False,
            retries=TASK_RETRIES,
        ): task
        for task in tasks
    }
    done = 0
    try:
        for future in as_completed(futures):
            try:
                result = future.result()
            except KilledWorker:
                case = futures[future].case
                raise ClusterError(
                    f"case {case}: the workers encoding it died {TASK_RETRIES + 1} times (out "
                    f"of memory, or killed). The {done} case(s) finished so far are kept in the "
                    "build journal: run the build again to resume, with fewer --workers or more "
                    "memory per worker."
                ) from None
            done += 1
            yield result
    finally:
        for future in futures:
            future.cancel()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_scheduler(address: str, timeout: float = GREETING_TIMEOUT_S) -> None:
    """ClusterError unless `address` (tcp://HOST:PORT) answers as a Dask scheduler does.

    A scheduler greets a new connection at once with a framed message: a uint64 byte count and
    a uint64 frame count. distributed's client instead sends its own greeting and reads what
    comes back as frame sizes, so an HTTP server there made it allocate "3.01 EiB" and fail
    with a numpy traceback, and a silent server made it wait past its timeout. Other schemes
    (tls://, ucx://) go to Dask unchecked.
    """
    from urllib.parse import urlsplit

    from fdn.errors import ClusterError

    parts = urlsplit(address)
    if parts.scheme != "tcp":
        return
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise ClusterError(f"{address}: expected tcp://HOST:PORT, the address of a Dask scheduler")
    greeting = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            deadline = time.monotonic() + timeout
            while len(greeting) < 16 and time.monotonic() < deadline:
                conn.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = conn.recv(16 - len(greeting))
                if not chunk:
                    break
                greeting += chunk
    except TimeoutError:
        pass
    except OSError as exc:
        raise ClusterError(f"{address}: cannot connect ({exc.strerror or exc})") from None
    if len(greeting) == 16:
        nbytes, nframes = struct.unpack("<QQ", greeting)
        if 0 < nbytes < 2**20 and 0 < nframes < 64:
            return
    said = f"it sent {greeting[:16]!r}" if greeting else f"it sent nothing in {timeout:.0f} s"
    raise ClusterError(
        f"{address}: not a Dask scheduler ({said}). Give the address `dask scheduler` prints "
        "(tcp://HOST:8786 by default)."
    )


def _quiet_dask_logs() -> None:
    """Dask logs every connection and worker at INFO (49 lines for a two-worker build): keep
    its errors only, unless the root logger was made verbose (fdn-index -v)."""
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        logging.getLogger("distributed").setLevel(logging.ERROR)


@contextlib.contextmanager
def cluster_client(workers: int | None = None, scheduler: str | None = None):
    """A `distributed.Client`: to the scheduler at `scheduler` (tcp://host:port), or to a new
    LocalCluster of `workers` single-threaded worker processes on 127.0.0.1; None for neither.

    ClusterError for more local workers than this machine has cores (each is a process holding
    a model; more only compete for the cores) or a scheduler that cannot be reached."""
    from fdn.errors import ClusterError

    if not workers and not scheduler:
        yield None
        return
    if workers and workers > _cores():
        raise ClusterError(
            f"--workers {workers}: this machine has {_cores()} core(s), and each worker is a "
            f"process that encodes on one; use --workers {_cores()} or fewer, or --scheduler "
            "for a cluster of several machines"
        )
    from distributed import Client, LocalCluster

    _quiet_dask_logs()
    if scheduler:
        check_scheduler(scheduler)
        try:
            client = Client(scheduler, timeout=f"{SCHEDULER_TIMEOUT_S}s")
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"{scheduler}: cannot reach the Dask scheduler ({exc})") from None
        with client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.getLogger("distributed").getEffectiveLevel(),
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
