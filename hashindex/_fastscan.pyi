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
    portable: bool,
    /,
) -> None: ...
def simd_name() -> str: ...
