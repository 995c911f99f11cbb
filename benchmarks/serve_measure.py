"""Measurements of the serve benchmark: `fdn-index serve` in its own process, and the clients that
time its queries, slice PNGs and uploads and put it under load."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODES = ("normal", "abnormal", "sum")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def percentiles(seconds) -> dict:
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        return {"calls": 0}
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
        "calls": int(ms.size),
    }


class Server:
    """`fdn-index serve` in a subprocess on 127.0.0.1 and a free port."""

    def __init__(self, index: Path, max_upload_mb: int = 256):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-c",
            "from fdn_index_cli.main import main; main()",
            "serve",
            "--index",
            str(index),
            "--port",
            str(self.port),
            "--max-upload-mb",
            str(max_upload_mb),
        ]
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.started = time.perf_counter()

    def wait(self, timeout: float = 120) -> float:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the server did not start")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def slice_targets(client, rng: random.Random) -> list[tuple[str, int]]:
    cases = client.get("/api/cases", params={"limit": 500}).json()["cases"]
    return [(c["case"], z) for c in cases for z in range(c["first_slice"], c["last_slice"] + 1)]


def measure_queries(url: str, n: int, seed: int) -> dict:
    import httpx

    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=30) as client:
        targets = slice_targets(client, rng)
        out = {}
        for label, modes in (("single mode", MODES), ("mode=all", ("all",))):
            times, server = [], []
            for i in range(n):
                case, z = rng.choice(targets)
                t0 = time.perf_counter()
                r = client.get(
                    "/api/query",
                    params={"case": case, "slice": z, "mode": modes[i % len(modes)], "topq": 10},
                )
                times.append(time.perf_counter() - t0)
                r.raise_for_status()
                server.append(r.json()["query_seconds"])
            out[label] = {"round_trip": percentiles(times), "server": percentiles(server)}
        times = []
        for i in range(n):
            case, z = rng.choice(targets)
            t0 = time.perf_counter()
            r = client.get(
                f"/api/cases/{case}/slices/{z}.png",
                params={"overlay": "seg" if i % 2 else "seg,anat"},
            )
            times.append(time.perf_counter() - t0)
            r.raise_for_status()
        out["slice png"] = {"round_trip": percentiles(times)}
    return out


def brats_case(work: Path) -> Path:
    """A 240 x 240 x 155 synthetic case (`fdn-index synth --cases 1`, default size), made once."""
    from fdn.synth import synthesize_archive

    root = work / "upload-archive"
    synthesize_archive(root, n_cases=1, healthy_fraction=0.0, seed=3)
    return next(p for p in root.iterdir() if p.is_dir())


def measure_upload(url: str, case_dir: Path, repeats: int) -> dict:
    import httpx

    case = case_dir.name
    files = {
        k: (
            f"{case}_{k}.nii.gz",
            (case_dir / f"{case}_{k}.nii.gz").read_bytes(),
            "application/gzip",
        )
        for k in ("t1", "t1ce", "t2", "flair")
    }
    size = sum(len(v[1]) for v in files.values())
    times, load, encode, server = [], [], [], []
    with httpx.Client(base_url=url, timeout=120) as client:
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = client.post("/api/query/upload", files=files, data={"mode": "all", "topq": "10"})
            times.append(time.perf_counter() - t0)
            r.raise_for_status()
            body = r.json()
            load.append(body["load_seconds"])
            encode.append(body["encode_seconds"])
            server.append(body["query_seconds"])
    return {
        "case": case,
        "shape": [240, 240, 155],
        "upload_bytes": size,
        "round_trip": percentiles(times),
        "server_query": percentiles(server),
        "read_and_preprocess": percentiles(load),
        "encode": percentiles(encode),
        "query_slice": body["query_slice"],
    }


def load_test(url: str, clients: int, seconds: float, seed: int = 0) -> dict:
    """`clients` threads, each with its own keep-alive connection, for `seconds`: random
    (case, slice) queries (80 %) and slice PNGs (20 %). Counts every non-200 or exception."""
    import httpx

    with httpx.Client(base_url=url, timeout=30) as client:
        targets = slice_targets(client, random.Random(seed))
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    times: dict[str, list[float]] = {"query": [], "png": []}
    errors: list[str] = []

    def worker(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        local = {"query": [], "png": []}
        local_errors = []
        with httpx.Client(base_url=url, timeout=30) as c:
            while time.monotonic() < deadline:
                case, z = rng.choice(targets)
                kind = "query" if rng.random() < 0.8 else "png"
                t0 = time.perf_counter()
                try:
                    if kind == "query":
                        r = c.get(
                            "/api/query",
                            params={
                                "case": case,
                                "slice": z,
                                "mode": rng.choice([*MODES, "all"]),
                                "topq": rng.choice([5, 10, 20]),
                            },
                        )
                    else:
                        r = c.get(
                            f"/api/cases/{case}/slices/{z}.png",
                            params={
                                "sequence": rng.choice(["t1", "t2", "flair"]),
                                "overlay": "seg",
                            },
                        )
                    if r.status_code != 200:
                        local_errors.append(f"{kind} {r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as exc:
                    local_errors.append(f"{kind}: {type(exc).__name__}: {exc}")
                local[kind].append(time.perf_counter() - t0)
        with lock:
            for key in times:
                times[key].extend(local[key])
            errors.extend(local_errors)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    total = len(times["query"]) + len(times["png"])
    return {
        "clients": clients,
        "seconds": seconds,
        "wall_seconds": wall,
        "requests": total,
        "requests_per_second": total / wall,
        "errors": len(errors),
        "error_samples": errors[:5],
        "query": percentiles(times["query"]),
        "png": percentiles(times["png"]),
    }
