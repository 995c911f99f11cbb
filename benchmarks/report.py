"""Shared machinery of the benchmark reports: result directories, machine, bandwidth, tables.

Every suite writes ``benchmarks/results/<name>/`` with ``report.md``, ``results.json`` and PNG
figures. Every file goes through `crashsafe` (temporary file, fsync, rename, fsync of the
folder), so a crashed run never leaves a half-written report beside a complete one.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import crashsafe
from fdn import figures

RESULTS_ROOT = Path(__file__).resolve().parent / "results"


def results_dir(name_or_path: str | Path) -> Path:
    """``benchmarks/results/<name>/`` for a bare name, else the given path; created if missing."""
    p = Path(name_or_path)
    out = RESULTS_ROOT / p if len(p.parts) == 1 and not p.is_absolute() else p
    out.mkdir(parents=True, exist_ok=True)
    return out


def jsonable(obj):
    """Numpy scalars/arrays → Python; NaN/inf → None (JSON has neither)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path, obj) -> None:
    crashsafe.atomic_write(path, (json.dumps(jsonable(obj), indent=2) + "\n").encode())


def write_text(path: Path, text: str) -> None:
    crashsafe.atomic_write_text(path, text)


def write_report(out: str | Path, results: dict, report: str | list[str]) -> Path:
    """End a suite: ``results`` as results.json and ``report`` (markdown, or its lines) as
    report.md in `results_dir(out)`, which is returned. results gains the 1-minute load
    average at the end and the time finished, which say how noisy the run was."""
    results.setdefault("load_average_1m_end", os.getloadavg()[0])
    results.setdefault("finished", time.strftime("%Y-%m-%d %H:%M:%S"))
    out_dir = results_dir(out)
    write_json(out_dir / "results.json", results)
    text = report if isinstance(report, str) else "\n".join(report)
    write_text(out_dir / "report.md", text.rstrip("\n") + "\n")
    return out_dir


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure as PNG (the reports' resolution and margins) and close it."""
    figures.save_figure(fig, path, dpi=120, bbox_inches="tight")


# ---------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "avx512f", "avx512_vpopcntdq", "avx512bw", "avx512vbmi", "popcnt")
                return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def machine_info() -> dict:
    """CPU model, cores, RAM, library versions and GPUs as FAISS sees them."""
    import faiss
    import numba

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    from hashindex.fastscan_kernels import available_kernels, kernel

    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores": cores,
        "ram_bytes": _ram_bytes(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "faiss_compile_options": faiss.get_compile_options().strip(),
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "faiss_gpus": int(n_gpus),
        # the kernel fastscan runs in this process (FDN_FASTSCAN_KERNEL or the CPU's best)
        "fastscan_kernel": kernel(),
        "fastscan_kernels_available": available_kernels(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: active)"),
        "load_average_1m": os.getloadavg()[0],
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def machine_markdown(info: dict) -> str:
    ram = info.get("ram_bytes")
    ram_s = f"{ram / 2**30:.1f} GiB" if ram else "unknown"
    gpu = f"{info['faiss_gpus']} GPU(s) visible to FAISS" if info["faiss_gpus"] else "no GPU"
    return (
        f"- CPU: {info['cpu']}, {info['cores']} cores available "
        f"({', '.join(info['cpu_flags']) or 'no AVX flags read'}), RAM {ram_s}, {gpu}\n"
        f"- Python {info['python']}, numpy {info['numpy']}, faiss {info['faiss']} "
        f"({info['faiss_compile_options']}), numba {info['numba']} "
        f"({info['numba_threads']} threads); fastscan kernel "
        f"{info.get('fastscan_kernel', 'not recorded')}\n"
        f"- {info['os']}, run at {info['date_utc']} UTC; OMP_WAIT_POLICY "
        f"{info['omp_wait_policy']}; 1-minute load average at the start "
        f"{info['load_average_1m']:.1f} (the machine is shared)\n"
    )


# ---------------------------------------------------------------------------- bandwidth


def measure_bandwidth(nbytes: int = 1 << 30, repeats: int = 5, threads: int | None = None) -> dict:
    """Memory read bandwidth (GB/s, 1e9 bytes) measured now, in this process.

    Sums a ``nbytes`` float64 array (far beyond the caches): once on one thread
    (``read_1thread_gbps``) and split over ``threads`` threads, which numpy runs in parallel
    because its reductions release the GIL (``read_gbps``, the figure the floors use, since
    the scans it bounds run on every core). Also a single-thread copy (counted as read + write
    bytes). Best of ``repeats`` each, after one warm-up touch.
    """
    threads = threads or len(os.sched_getaffinity(0))
    a = np.ones(nbytes // 8)
    dst = np.empty_like(a)
    parts = np.array_split(a, threads)

    def best(fn):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    a.sum()
    t1 = best(a.sum)
    with ThreadPoolExecutor(threads) as pool:
        tn = best(lambda: list(pool.map(np.sum, parts)))
    tc = best(lambda: np.copyto(dst, a))
    return {
        "bytes": int(a.nbytes),
        "threads": threads,
        "read_1thread_gbps": a.nbytes / t1 / 1e9,
        "read_gbps": max(a.nbytes / tn, a.nbytes / t1) / 1e9,
        "copy_gbps": 2 * a.nbytes / tc / 1e9,
    }


# ---------------------------------------------------------------------------- numbers


def latency_stats(seconds) -> dict:
    """p50, p95, mean and count of a list of per-call times, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "mean_ms": float(ms.mean()),
        "calls": int(ms.size),
    }


def fmt(x, digits: int = 3) -> str:
    """A table cell: '—' for missing/NaN, else ``digits`` significant digits."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, int | np.integer):
        return f"{int(x):,}"
    if isinstance(x, float | np.floating):
        if x == 0:
            return "0"
        if abs(x) >= 10**digits:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"
    return str(x)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; cells pass through `fmt`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def dir_bytes(path: Path) -> int:
    """Total size of the files under ``path`` (a file's own size for a file)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
