"""Type stub of the C extension `hashindex._fastscan` (see _fastscan.c)."""

from typing import Any

Buffer = Any  # any object with the buffer protocol (numpy arrays)

def lower_bounds(
    codes_t: Buffer,
    tables: Buffer,
    out: Buffer,
    n_queries: int,
    S: int,
    s0: int,
    P: int,
    block_start: int,
    block_end: int,
    accumulate: bool,
    kernel: int,
    /,
) -> None: ...
def kernels() -> list[str]: ...
def prune_scan(
    codes_t: Buffer,
    S: int,
    n_rows: int,
    n_codes: int,
    tables: Buffer,
    order: Buffer,
    chunk_acc: Buffer,
    n_queries: int,
    n_pos: int,
    lim: Buffer,
    room: Buffer,
    room_stride: int,
    coarse: Buffer,
    out_rows: Buffer,
    out_keys: Buffer,
    out_count: Buffer,
    capacity: int,
    heap: bool,
    block_start: int,
    block_end: int,
    kernel: int,
    allowed: Buffer | None = None,
    codes4: Buffer | None = None,
    groups: Buffer | None = None,
    /,
) -> None: ...
def exact_sums(
    codes: Buffer, P: int, tables: Buffer, R: int, rows: Buffer, qidx: Buffer, out: Buffer, /
) -> None: ...
