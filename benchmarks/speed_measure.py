"""Measurement primitives of the speed benchmark: its configuration (`SpeedConfig`), single-query
and batched latency, CPU time, recall, the float baseline (FAISS on decoded vectors) every engine
is compared with, and the constants and row filter shared by the measurement, the figures and
the report."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import faiss
import numpy as np

from benchmarks import report as rp
from benchmarks import workload as wl
from hashindex import DISTANCES, MODES

__all__ = [
    "DISTANCES",
    "MODES",
    "RAW_K",
    "SpeedConfig",
    "TOPQ",
    "FloatFlat",
    "cpu_seconds",
    "recall_at_q",
    "select_rows",
    "time_batch",
    "time_single",
]

TOPQ = 10
RAW_K = 100  # k of the raw single-round k-NN timing (scan cost without the grow-k rounds)


@dataclass
class SpeedConfig:
    """Everything a run depends on (stored whole in results.json)."""

    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    queries: int = 50
    batch: int = 64
    seed: int = 0
    K: int = 512
    D: int = 64
    bit_budget: int = 64
    ivf_nlist: int = 128
    nprobes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    hamming_batch_sizes: tuple[int, ...] = (256, 1024, 4096, 16384, 65536)
    numpy_max_n: int = 100_000
    float_budget_bytes: int = 4 << 30
    max_seconds_per_figure: float = 8.0
    from_index: str | None = None
    name: str = "speed-cpu"
    targets: dict = field(
        default_factory=lambda: {
            "sum_1m_ms": 30.0,
            "speedup_vs_float_l2_100k": 20.0,
            "ivf_recall": 0.95,
            "ivf_speedup": 5.0,
        }
    )


def select_rows(results: dict, **match) -> list[dict]:
    """The result rows whose fields equal every ``match`` item."""
    return [r for r in results["rows"] if all(r.get(k) == v for k, v in match.items())]


def time_single(fn, n_queries: int, max_calls: int, max_seconds: float, min_calls: int = 5) -> dict:
    """Latency of ``fn(ids)`` with one query id per call, cycling over the queries.

    Two warm-up calls first; stops after ``max_calls`` calls, or after ``max_seconds`` once
    ``min_calls`` were made.
    """
    for i in range(min(2, n_queries)):
        fn(np.array([i]))
    times, start = [], time.perf_counter()
    for i in range(max_calls):
        ids = np.array([i % n_queries])
        t = time.perf_counter()
        fn(ids)
        times.append(time.perf_counter() - t)
        if len(times) >= min_calls and time.perf_counter() - start > max_seconds:
            break
    return rp.latency_stats(times)


def time_batch(fn, n_queries: int, batch: int):
    """Queries per second of one call ``fn(ids)`` with ``batch`` ids (best of ≤ 3 calls < 1 s).

    Returns the figures and the answer for query ids 0..n_queries-1 (VolumeHits): taken from
    the timed call when the batch covers every query, else from one more call.
    """
    ids = np.arange(batch) % n_queries
    best, hits = math.inf, None
    for _ in range(3):
        t = time.perf_counter()
        hits = fn(ids)
        best = min(best, time.perf_counter() - t)
        if best > 1.0:
            break
    if batch >= n_queries:
        hits = type(hits)(*(a[:n_queries] for a in hits))
    else:
        hits = fn(np.arange(n_queries))
    return {"batch": batch, "throughput_qps": batch / best, "batch_seconds": best}, hits


# ---------------------------------------------------------------------------- float baseline


class FloatFlat:
    """``faiss.IndexFlatL2`` or ``IndexFlatIP`` (cosine) over decoded grids of one mode."""

    def __init__(self, metric: str, books: list[np.ndarray], use_gpu: bool):
        self.metric = metric
        self.books = books
        self.dim = 0
        self.index = None
        self.use_gpu = use_gpu

    def decode(self, grids: list[np.ndarray]) -> np.ndarray:
        """(n, dim) float32: the grids of each book decoded and concatenated (normalised for IP)."""
        parts = [wl.decode(book, g) for book, g in zip(self.books, grids, strict=True)]
        x = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        if self.metric == "ip":
            faiss.normalize_L2(x)
        return x

    def build(self, grids: list[np.ndarray], chunk: int = 16384) -> None:
        n = grids[0].shape[0]
        P = int(np.prod(grids[0].shape[1:]))
        self.dim = P * sum(b.shape[1] for b in self.books)
        index = faiss.IndexFlatL2(self.dim) if self.metric == "l2" else faiss.IndexFlatIP(self.dim)
        for s in range(0, n, chunk):
            index.add(self.decode([g[s : s + chunk] for g in grids]))
        if self.use_gpu:
            index = faiss.index_cpu_to_all_gpus(index)
        self.index = index

    def knn(self, x: np.ndarray):
        """A ``knn(ids, k) -> (D ascending, I)`` for `volumes_from_knn` (IP similarity negated)."""

        def fn(ids, k):
            D, I = self.index.search(x[ids], k)
            return (-D if self.metric == "ip" else D), I

        return fn

    def to_distance(self, d: np.ndarray) -> np.ndarray:
        """Search output → D_E (sqrt of L2²) or D_A (arccos(cos)/π), the hashindex scales."""
        if self.metric == "l2":
            return np.sqrt(np.maximum(d, 0))
        return np.arccos(np.clip(-d, -1, 1)) / np.pi


# ---------------------------------------------------------------------------- the run


def recall_at_q(approx, exact) -> float:
    """Tie-aware volume-wise recall@Q of an approximate result against the exact one.

    A returned volume counts when it is in the exact top-Q or when its returned distance (a true
    distance of one of its rows, so ≥ its best) is ≤ the exact Q-th distance: with ties at the
    boundary any of the tied volumes is a correct answer.
    """
    Q = exact.volumes.shape[1]
    hits = []
    for b in range(exact.volumes.shape[0]):
        ok = approx.volumes[b] >= 0
        boundary = exact.distances[b, Q - 1]
        good = np.isin(approx.volumes[b], exact.volumes[b]) | (approx.distances[b] <= boundary)
        hits.append(min(Q, int((good & ok).sum())) / Q)
    return float(np.mean(hits))


def cpu_seconds() -> float:
    import resource

    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime
