"""The fastscan engine's C kernels (`hashindex._fastscan`), run over threads.

`integer_sums` adds quantized tables over every row of a layout; `prune_scan` keeps, per query,
the rows whose integer sums stay within limits (or the rows of smallest sums). Both run the
best kernel the CPU has — AVX-512 VBMI, else AVX2, else ARM NEON, else the portable C loops —
unless the environment variable FDN_FASTSCAN_KERNEL names one (`kernel()`); every kernel gives
the same answers, so forcing one only changes the speed (tests run each one the CPU supports).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import hashindex._fastscan as _fastscan
from hashindex.errors import HashIndexError
from hashindex.fastscan_layout import BLOCK, MAX_SUM, Bounds

CHUNK = 8  # positions scanned between two checks whether a block can be left
COARSE = 64  # steps of the staircase the kernel checks the two sums against
KERNEL_ENV = "FDN_FASTSCAN_KERNEL"
KERNEL_IDS = {"portable": 1, "avx2": 2, "vbmi": 3, "neon": 4}  # the C extension's numbers
GROUP_KERNELS = ("avx2", "neon")  # those that scan the 4-bit group layout (nibble_layout)
# The distances for which each kernel answered faster than lut, single query, 1M rows, S_sum
# (benchmarks/results/kernels/report.md, lut / kernel for D_H, D_E: vbmi 4.8x, 4.5x; avx2 4.0x,
# 2.9x; portable 1.2x, 0.91x): where fastscan may be the default engine. The portable loops are
# left out (slower for D_E, barely faster for D_H). D_A (pruned since, 4.4x on vbmi there) stays
# with lut until measured on a built index's codes (benchmarks/results/scale-from-index: the
# unpruned D_A re-ranked 40-90 % of the rows there).
FASTER_THAN_LUT: dict[str, tuple[str, ...]] = {
    "vbmi": ("hamming", "euclidean"),
    "avx2": ("hamming", "euclidean"),
    # not measured on an ARM machine yet (only checked under qemu): lut stays the default there
    "neon": (),
    "portable": (),
}

_THREADS = max(1, min(os.cpu_count() or 1, 8))
_pool: ThreadPoolExecutor | None = None


class KernelError(HashIndexError):
    """FDN_FASTSCAN_KERNEL names a kernel that does not exist or that this CPU cannot run."""


def available_kernels() -> list[str]:
    """The kernels this CPU runs, best first: some of "vbmi", "avx2", "portable"."""
    return list(_fastscan.kernels())


def kernel() -> str:
    """The kernel the fastscan engine runs: FDN_FASTSCAN_KERNEL when set (read at each call,
    so a test or a benchmark can switch), else the best this CPU has."""
    chosen = os.environ.get(KERNEL_ENV, "").strip().lower()
    have = available_kernels()
    if not chosen:
        return have[0]
    if chosen not in KERNEL_IDS:
        raise KernelError(
            f"{KERNEL_ENV}={chosen!r} is not a fastscan kernel; use one of "
            f"{', '.join(KERNEL_IDS)} (or leave it unset for the best this CPU has)"
        )
    if chosen not in have:
        raise KernelError(
            f"{KERNEL_ENV}={chosen!r}: this CPU cannot run the {chosen} kernel (it runs "
            f"{', '.join(have)}); unset {KERNEL_ENV} or choose one of those"
        )
    return chosen


def integer_sums(
    codes_t: np.ndarray,
    bounds: Bounds,
    first_position: int,
    accumulate_into: np.ndarray | None = None,
) -> np.ndarray:
    """(B, nblocks·64) uint16 sums of the quantized tables over every row, in one pass.

    codes_t: (nblocks, S, 64) uint8; the tables cover positions first_position .. +P-1.
    """
    B, P, _ = bounds.tables.shape
    nblocks, S, _ = codes_t.shape
    out = (
        accumulate_into
        if accumulate_into is not None
        else np.empty((B, nblocks * BLOCK), np.uint16)
    )
    acc = accumulate_into is not None
    tables = np.ascontiguousarray(bounds.tables)
    kid = KERNEL_IDS[kernel()]

    def run(start: int, end: int) -> None:
        _fastscan.lower_bounds(codes_t, tables, out, B, S, first_position, P, start, end, acc, kid)

    threads = 1 if nblocks < 256 else _THREADS
    edges = np.linspace(0, nblocks, threads + 1).astype(int)
    parallel(lambda t: run(int(edges[t]), int(edges[t + 1])), threads)
    return out


def parallel(run, threads: int) -> None:
    """run(0) .. run(threads − 1), the last one on the calling thread (one hand-off fewer)."""
    global _pool
    if threads > 1 and _pool is None:
        _pool = ThreadPoolExecutor(_THREADS - 1, thread_name_prefix="fastscan")
    jobs = [_pool.submit(run, t) for t in range(threads - 1)] if _pool is not None else []
    try:
        run(threads - 1)
    finally:
        for job in jobs:
            job.result()


def allowed_words(allowed: np.ndarray, nblocks: int) -> np.ndarray:
    """(nblocks,) uint64 words of a (n,) bool row mask: bit r of word b is row 64·b + r (the
    kernel's `allowed`); rows past n are left out."""
    words = np.zeros(nblocks * 8, np.uint8)
    packed = np.packbits(allowed, bitorder="little")
    words[: packed.size] = packed
    return words.view("<u8")


def prune_scan(
    codes_t: np.ndarray,
    n_rows: int,
    plan: dict,
    capacity: int,
    allowed: np.ndarray | None = None,
    nibbles=None,
):
    """One `prune_scan` of `codes_t` (n_rows real rows) for the queries of `plan`, blocks
    split over threads: (query, row) of the rows kept, and (B,) bool, the queries whose
    candidates overflowed. With limits in `plan` (filter mode) every row within them is
    kept (up to `capacity` per query and thread), else (heap mode) about `capacity` rows
    of smallest bound per query: as many per thread as make up `capacity`. ``allowed``:
    (nblocks,) uint64 words (`allowed_words`) of the only rows that may be kept, or None.
    ``nibbles``: a callable returning the (codes4, groups) of these rows that the AVX2 and NEON
    kernels scan (`fastscan_layout.nibble_layout`), called only when one of them runs."""
    filter_mode = "lim" in plan
    B, n_pos = plan["order"].shape
    nblocks, S, _ = codes_t.shape
    threads = 1 if _THREADS == 1 or nblocks < 256 else _THREADS
    edges = np.linspace(0, nblocks, threads + 1).astype(int)
    if filter_mode:
        lim, room, coarse = plan["lim"], plan["room"], plan["coarse"]
        lims = [lim] * threads
    else:  # no limits but the heap's top; each thread keeps its share of `capacity`
        capacity = max(1, min(-(-capacity // threads), n_rows))
        lim = np.full((B, 4), MAX_SUM, np.int32)
        lim[:, 3] = 0
        room = np.zeros((B, 0), np.int32)
        coarse = np.full((B, COARSE), MAX_SUM, np.uint16)
        lims = [lim.copy() for _ in range(threads)]
    rows = np.empty((threads, B, capacity), np.int64)
    keys = np.empty((threads, B, capacity), np.uint32)
    count = np.zeros((threads, B), np.int64)

    name = kernel()
    extra: tuple = (allowed,)
    if name in GROUP_KERNELS:
        if nibbles is None:
            raise ValueError(f"the {name} kernel needs the rows' 4-bit layout (nibbles)")
        extra = (allowed, *nibbles())
    kid = KERNEL_IDS[name]

    def run(t: int) -> None:
        _fastscan.prune_scan(
            codes_t,
            S,
            n_rows,
            plan["n_codes"],
            plan["tables"],
            plan["order"],
            plan["acc"],
            B,
            n_pos,
            lims[t],
            room,
            room.shape[1],
            coarse,
            rows[t],
            keys[t],
            count[t],
            capacity,
            not filter_mode,
            int(edges[t]),
            int(edges[t + 1]),
            kid,
            *extra,
        )

    parallel(run, threads)
    kept = np.minimum(count, capacity)
    if B == 1:  # one query: its rows, thread by thread (in row order)
        found = np.concatenate([rows[t, 0, : kept[t, 0]] for t in range(threads)])
        qidx = np.zeros(found.size, np.int64)
    else:
        mask = np.arange(capacity)[None, None, :] < kept[:, :, None]  # (threads, B, capacity)
        qidx = np.broadcast_to(np.arange(B)[None, :, None], mask.shape)[mask]
        found = rows[mask]
    return qidx, found, (count > capacity).any(axis=0)
