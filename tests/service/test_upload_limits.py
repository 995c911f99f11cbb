"""Hostile uploads against real servers on 127.0.0.1: a gzip bomb is refused from its header
while the server's memory stays flat (watched in /proc/PID/status), and clients that trickle
their upload are dropped with 408 and free their slot for others."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import zlib

import httpx
import nibabel as nib
import numpy as np
import pytest

from fdn.archive_index.retrieval import open_index
from fdn.service import QueryService, create_app
from tests.service.conftest import LiveServer, ServeProcess, proc_status_bytes

SEQUENCES = ("t1", "t1ce", "t2", "flair")
RSS_CAP = 300 * 2**20  # the most a refused upload may add to the server's resident memory


def zero_volume_gz(shape, dtype=np.uint8) -> bytes:
    """A valid .nii.gz of zeros of `shape`, compressed piecewise (never held whole): about
    1/1000 of its decompressed size, the ratio that makes a gzip bomb."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_qform(np.eye(4), code=1)
    header.set_data_offset(352)
    head = header.binaryblock + b"\0" * 4  # the 4-byte extension flag: data at 352
    header_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [deflate.compress(head)]
    zeros = bytes(16 * 2**20)
    left = header_bytes
    while left:
        n = min(left, len(zeros))
        out.append(deflate.compress(zeros[:n]))
        left -= n
    out.append(deflate.flush())
    return b"".join(out)


def watch_rss(pid: int, stop: threading.Event, cap: int, seen: list[int], process) -> None:
    """Sample the server's RSS every 20 ms until `stop`; kill it past `baseline + cap`, so that a
    failing server cannot take the machine's memory."""
    baseline = seen[0]
    while not stop.is_set():
        try:
            rss = proc_status_bytes(pid, "VmRSS")
        except (FileNotFoundError, ProcessLookupError):
            return
        seen.append(rss)
        if rss > baseline + cap:
            process.kill()
            return
        time.sleep(0.02)


@pytest.mark.parametrize(
    "shape, dtype, status, message",
    [
        # the header claims 134 M voxels (a valid file: its data are there, as zeros)
        ((512, 512, 512), np.uint8, 413, "the t1 volume's header claims 512 × 512 × 512"),
    ],
)
def test_a_gzip_bomb_is_refused_from_its_header_with_flat_memory(
    built_index, shape, dtype, status, message
):
    bomb = zero_volume_gz(shape, dtype)
    assert len(bomb) < 1_000_000  # under the byte cap: only the header can tell
    files = {k: (f"x_{k}.nii.gz", bomb, "application/gzip") for k in SEQUENCES}
    with ServeProcess("--index", str(built_index), "--max-upload-mb", "8") as server:
        baseline = proc_status_bytes(server.pid, "VmRSS")
        seen, stop = [baseline], threading.Event()
        watcher = threading.Thread(
            target=watch_rss, args=(server.pid, stop, RSS_CAP, seen, server.process)
        )
        watcher.start()
        started = time.monotonic()
        try:
            r = httpx.post(f"{server.url}/api/query/upload", files=files, timeout=60)
        finally:
            seconds = time.monotonic() - started
            stop.set()
            watcher.join()
        assert max(seen) - baseline < RSS_CAP, (baseline, max(seen))
        assert r.status_code == status, r.text
        assert message in r.json()["error"], r.json()["error"]
        assert "--max-voxels" in r.json()["error"]
        assert seconds < 20, seconds  # refused from the first chunk, not after inflating
        assert httpx.get(f"{server.url}/api/health", timeout=30).status_code == 200


def test_a_volume_that_inflates_past_its_header_is_refused(upload_service_live):
    """A header claiming 32³ voxels in front of 64 MB of zeros: the reader stops a little past
    what the header claims, with a 400 naming the file."""
    url, scratch = upload_service_live
    head = nib.Nifti1Header()
    head.set_data_shape((32, 32, 32))
    head.set_data_dtype(np.uint8)
    head.set_data_offset(352)
    lying = gzip.compress(head.binaryblock + b"\0" * 4 + bytes(64 * 2**20), 9)
    files = {k: (f"x_{k}.nii.gz", lying, "application/gzip") for k in SEQUENCES}
    r = httpx.post(f"{url}/api/query/upload", files=files, timeout=60)
    assert r.status_code == 400, r.text
    assert "decompresses to more than" in r.json()["error"]
    assert "--skip-bad" not in r.json()["error"]  # the web has no such flag
    assert list(scratch.iterdir()) == []


@pytest.fixture()
def upload_service_live(built_index, tmp_path):
    """A real server whose uploads are dropped after 1 s without progress, 2 slots."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    service = QueryService(
        open_index(built_index),
        scratch_dir=scratch,
        max_upload_bytes=8 * 2**20,
        max_concurrent_uploads=2,
        upload_idle_seconds=1.0,
        upload_min_bytes_per_second=32 * 1024,
    )
    with LiveServer(create_app(service, allowed_hosts=["127.0.0.1"])) as server:
        yield server.url, scratch


def trickle(url: str, interval: float, bound: float, out: dict) -> None:
    """Send an upload's headers, then one byte every `interval` s, until the server answers or
    `bound` s pass; out["status"], out["seconds"]."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=bound) as sock:
        sock.sendall(
            b"POST /api/query/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=zzz\r\nContent-Length: 100000\r\n\r\n"
        )
        sock.settimeout(interval)
        answer = b""
        body = iter(
            b'--zzz\r\nContent-Disposition: form-data; name="t1"; filename="t1.nii"\r\n\r\n'
            + b"\0" * 1000
        )  # a well-formed start, so that only its pace is at fault
        while time.monotonic() - started < bound:
            try:
                sock.send(bytes([next(body)]))
            except OSError:  # the server closed its side after answering
                pass
            try:
                answer += sock.recv(4096)
            except TimeoutError:
                continue
            if b"\r\n" in answer or not answer:
                break
        sock.settimeout(2.0)
        try:  # the rest of the answer, up to the server's close
            while chunk := sock.recv(4096):
                answer += chunk
        except OSError:
            pass
        out["seconds"] = time.monotonic() - started
        out["status"] = int(answer.split()[1]) if answer.startswith(b"HTTP/1.1") else None
        out["answer"] = answer


def test_slow_uploads_are_dropped_and_free_their_slots(upload_service_live, tiny_archive):
    url, scratch = upload_service_live
    results = [{}, {}]
    threads = [threading.Thread(target=trickle, args=(url, 0.25, 10.0, out)) for out in results]
    for t in threads:
        t.start()
    time.sleep(0.4)  # both slots are held by the tricklers now
    case = sorted(p.name for p in tiny_archive.iterdir() if p.is_dir())[0]
    files = {
        k: (f"{case}_{k}.nii.gz", (tiny_archive / case / f"{case}_{k}.nii.gz").read_bytes(), "x")
        for k in SEQUENCES
    }
    busy = httpx.post(f"{url}/api/query/upload", files=files, timeout=30)
    assert busy.status_code == 503, busy.text
    for t in threads:
        t.join(timeout=15)
    for out in results:
        assert out["status"] == 408, out
        assert b"arrived too slowly" in out["answer"]
        assert out["seconds"] < 5, out  # 1 s idle grace, then the rate deadline
    r = httpx.post(f"{url}/api/query/upload", files=files, timeout=60)
    assert r.status_code == 200, r.text
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("compressed", [True, False])
@pytest.mark.parametrize("piece", [1, 7, 65536])
def test_the_header_probe_reads_the_claim_from_the_first_bytes(compressed, piece):
    """Fed in pieces of any size, the probe finds the shape written into the header, and of a
    gzip bomb it decompresses only the header's bytes."""
    from fdn.service.uploads import HEADER_BYTES, HeaderProbe, claimed_shape

    shape = (300, 200, 100)
    if compressed:
        data = zero_volume_gz(shape)
    else:
        header = nib.Nifti1Header()
        header.set_data_shape(shape)
        header.set_data_dtype(np.uint8)
        header.set_data_offset(352)
        data = header.binaryblock + bytes(4 + 4096)  # a .nii cut short: the header is enough
    probe = HeaderProbe()
    fed = 0
    while not probe.finished and fed < len(data):
        probe.feed(data[fed : fed + piece])
        fed += piece
    assert probe.finished and len(probe.head) == HEADER_BYTES
    assert claimed_shape(probe.head) == shape
    assert claimed_shape(b"\0" * HEADER_BYTES) is None  # no header: left to the reader
