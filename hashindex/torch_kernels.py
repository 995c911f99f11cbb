"""The torch engine's Triton kernels: fused distance bounds, and exact sums of chosen rows.

`bounds` is pass 1 of `hashindex.torch_engine` in one launch: per (query, row) the float32 table
sums of one or two codebooks, their distance intervals (the same bounds as the engine's torch
path, `TorchScan._bounds`), the query's excluded volume taken out of the race, and either the
per-volume minimum of ``hi`` (an atomic min on the float's bits, order-preserving for floats
≥ +0) or ``hi`` itself. `exact_sums` is pass 2 on the device: float64 (int64 for D_H) sums of
(query, row) pairs in position order, starting from position 0's entry, the additions of the
`lut` kernel (`hashindex.kernels.lut_scan`), so the sums are lut's bit for bit.

arccos has no portable Triton intrinsic (the CUDA one lives in libdevice, which the interpreter
lacks), so the bound uses Abramowitz & Stegun 4.4.46: errs by ≤ 2.2e-8 in exact arithmetic and
by ≤ 2.6e-7 when evaluated in float32 (measured on 2M points of [0, 1]); ``ACOS_ERROR`` widens the
interval by about eight times that.

Importing this module imports Triton; `hashindex.torch_engine` does so only where it is installed.
"""

from __future__ import annotations

import triton
import triton.language as tl

ACOS_ERROR = tl.constexpr(2e-6)  # radians
PI = tl.constexpr(3.141592653589793)
DISTANCE_CODES = {"hamming": 0, "euclidean": 1, "angular": 2}


@triton.jit
def _acos(x):
    """arccos on [-1, 1] (A&S 4.4.46 on |x|, reflected for x < 0)."""
    a = tl.abs(x)
    p = -0.0012624911
    p = p * a + 0.0066700901
    p = p * a - 0.0170881256
    p = p * a + 0.0308918810
    p = p * a - 0.0501743046
    p = p * a + 0.0889789874
    p = p * a - 0.2145988016
    p = p * a + 1.5707963050
    r = tl.sqrt(1.0 - a) * p
    return tl.where(x >= 0, r, PI - r)


@triton.jit
def _book_sums(codes_ptr, table_ptr, rows, queries, row_ok, tile_ok, N, R, P: tl.constexpr):
    """(BLOCK_B, BLOCK_N) float32 Σ_p table[q, p, codes[p, n]]; codes (P, N) position-major."""
    code_ptrs = codes_ptr + rows  # advanced by N per position: 64-bit pointer arithmetic
    table_ptrs = table_ptr + queries[:, None].to(tl.int64) * (P * R)
    codes = tl.load(code_ptrs, mask=row_ok, other=0).to(tl.int32)
    acc = tl.load(table_ptrs + codes[None, :], mask=tile_ok, other=0.0)
    for _ in range(1, P):
        code_ptrs += N
        table_ptrs += R
        codes = tl.load(code_ptrs, mask=row_ok, other=0).to(tl.int32)
        acc += tl.load(table_ptrs + codes[None, :], mask=tile_ok, other=0.0)
    return acc


@triton.jit
def _interval(y, err, q, q_zero, r, r_zero, scale, DIST: tl.constexpr, SLACK: tl.constexpr):
    """lo ≤ distance ≤ hi of one codebook from float32 sums y within ±err (`finish`'s steps)."""
    if DIST == 0:
        lo = y - err
        hi = y + err
    elif DIST == 1:
        lo = tl.sqrt(tl.maximum(y - err, 0.0))
        hi = tl.sqrt(tl.maximum(y + err, 0.0))
    else:
        denom = tl.sqrt(q * r)
        safe = tl.where(denom > 0, denom, 1.0)
        slack = (tl.abs(y) + err) * SLACK
        cos_lo = tl.minimum(tl.maximum((y - err - slack) / safe, -1.0), 1.0)
        cos_hi = tl.minimum(tl.maximum((y + err + slack) / safe, -1.0), 1.0)
        lo = (_acos(cos_hi) - ACOS_ERROR) / PI
        hi = (_acos(cos_lo) + ACOS_ERROR) / PI
        # `finish`: cos 0 (D_A = 0.5) where one norm is zero, 0 where both are (float64 flags)
        degenerate = q_zero | r_zero
        fixed = tl.where(q_zero & r_zero, 0.0, 0.5)
        lo = tl.where(degenerate, fixed, lo)
        hi = tl.where(degenerate, fixed, hi)
        # float32 norms that underflowed where the float64 ones did not: any distance
        lost = (denom == 0) & (degenerate == 0)
        lo = tl.where(lost, 0.0, lo)
        hi = tl.where(lost, 1.0, hi)
    return lo / scale, hi / scale


@triton.jit
def _bounds_kernel(
    codes1, codes2, table1, table2, err1, err2, q1, q2, qz1, qz2, r1, r2, rz1, rz2,
    scale1, scale2, volume_ptr, excluded_ptr, lo_ptr, hi_ptr, upper_ptr,
    N, V, R1, R2, B,
    P1: tl.constexpr, P2: tl.constexpr, TWO: tl.constexpr, DIST: tl.constexpr,
    VOLUMES: tl.constexpr, SLACK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    queries = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < N
    query_ok = queries < B
    tile_ok = query_ok[:, None] & row_ok[None, :]
    y = _book_sums(codes1, table1, rows, queries, row_ok, tile_ok, N, R1, P1)
    lo, hi = _interval(
        y,
        tl.load(err1 + queries, mask=query_ok, other=0.0)[:, None],
        tl.load(q1 + queries, mask=query_ok, other=1.0)[:, None],
        tl.load(qz1 + queries, mask=query_ok, other=0)[:, None] != 0,
        tl.load(r1 + rows, mask=row_ok, other=1.0)[None, :],
        tl.load(rz1 + rows, mask=row_ok, other=0)[None, :] != 0,
        scale1,
        DIST,
        SLACK,
    )
    if TWO:
        y2 = _book_sums(codes2, table2, rows, queries, row_ok, tile_ok, N, R2, P2)
        lo2, hi2 = _interval(
            y2,
            tl.load(err2 + queries, mask=query_ok, other=0.0)[:, None],
            tl.load(q2 + queries, mask=query_ok, other=1.0)[:, None],
            tl.load(qz2 + queries, mask=query_ok, other=0)[:, None] != 0,
            tl.load(r2 + rows, mask=row_ok, other=1.0)[None, :],
            tl.load(rz2 + rows, mask=row_ok, other=0)[None, :] != 0,
            scale2,
            DIST,
            SLACK,
        )
        lo += lo2
        hi += hi2
    lo -= tl.abs(lo) * SLACK
    hi += tl.abs(hi) * SLACK
    volume = tl.load(volume_ptr + rows, mask=row_ok, other=0)
    excluded = tl.load(excluded_ptr + queries, mask=query_ok, other=-1)
    racing = volume[None, :] != excluded[:, None]
    at = queries[:, None].to(tl.int64) * N + rows[None, :]
    tl.store(lo_ptr + at, tl.where(racing, lo, float("inf")), mask=tile_ok)
    if VOLUMES:
        hi = tl.where(hi > 0, hi, 0.0)  # never -0.0, whose bits sort below every float
        bits = hi.to(tl.int32, bitcast=True)
        slot = upper_ptr + queries[:, None].to(tl.int64) * V + volume[None, :]
        tl.atomic_min(slot, bits, mask=tile_ok & racing)
    else:
        tl.store(hi_ptr + at, hi, mask=tile_ok)


@triton.jit
def _exact_kernel(
    codes_ptr, table_ptr, pair_query_ptr, pair_row_ptr, out_ptr, C, N, R,
    P: tl.constexpr, INT: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < C
    query = tl.load(pair_query_ptr + i, mask=ok, other=0).to(tl.int64)
    row = tl.load(pair_row_ptr + i, mask=ok, other=0).to(tl.int64)
    code_ptrs = codes_ptr + row
    table_ptrs = table_ptr + query * (P * R)
    code = tl.load(code_ptrs, mask=ok, other=0).to(tl.int64)
    if INT:
        acc = tl.load(table_ptrs + code, mask=ok, other=0).to(tl.int64)
    else:
        acc = tl.load(table_ptrs + code, mask=ok, other=0.0)
    for _ in range(1, P):
        code_ptrs += N
        table_ptrs += R
        code = tl.load(code_ptrs, mask=ok, other=0).to(tl.int64)
        if INT:
            acc += tl.load(table_ptrs + code, mask=ok, other=0).to(tl.int64)
        else:
            acc += tl.load(table_ptrs + code, mask=ok, other=0.0)
    tl.store(out_ptr + i, acc, mask=ok)


_tuned = triton.autotune(
    configs=[
        triton.Config({"BLOCK_N": n}, num_warps=w)
        for n, w in ((256, 4), (512, 4), (512, 8), (1024, 4), (1024, 8))
    ],
    key=["N", "P1", "P2", "TWO", "DIST", "VOLUMES", "BLOCK_B"],
)(_bounds_kernel)


def bounds(books, volume, excluded, lo, hi, upper, distance, slack, interpret):
    """Launch pass 1. books: one or two dicts of device tensors (codes_t (P, N), table32
    (B, P, R), err (B,), q (B,), q_zero (B,) int8, r (N,), r_zero (N,) int8) and a float scale;
    volume (N,) int32, excluded (B,) int32; writes lo (B, N) and upper (B, V) int32 bits, or
    hi (B, N) when upper is None."""
    first, second = books[0], books[-1]
    P1, N = first["codes_t"].shape
    B = first["table"].shape[0]
    block_b = min(16, triton.next_power_of_2(B))
    volumes = upper is not None
    upper_arg = upper if volumes else lo  # an unused pointer must still be a tensor
    hi_arg = lo if volumes else hi
    V = upper.shape[1] if volumes else 1
    args = [first["codes_t"], second["codes_t"], first["table"], second["table"]]
    for name in ("err", "q", "q_zero", "r", "r_zero"):
        args += [first[name], second[name]]
    args += [first["scale"], second["scale"], volume, excluded, lo, hi_arg, upper_arg]
    args += [N, V, first["table"].shape[2], second["table"].shape[2], B]
    meta = dict(
        P1=P1,
        P2=second["codes_t"].shape[0],
        TWO=len(books) == 2,
        DIST=DISTANCE_CODES[distance],
        VOLUMES=volumes,
        SLACK=slack,
        BLOCK_B=block_b,
    )
    if interpret:  # no GPU to time configurations on: one fixed tile
        _bounds_kernel[(triton.cdiv(N, 256), triton.cdiv(B, block_b))](*args, BLOCK_N=256, **meta)
        return

    def grid(tile):
        return (triton.cdiv(N, tile["BLOCK_N"]), triton.cdiv(B, block_b))

    _tuned[grid](*args, **meta)


def exact_sums(codes_t, table, pair_query, pair_row, out) -> None:
    """Pass 2: out[i] = Σ_p table[pair_query[i], p, codes_t[p, pair_row[i]]] in position order;
    table (B, P, R) float64 or int32 (then out is int64)."""
    P, N = codes_t.shape
    C = out.shape[0]
    if C == 0:
        return
    block = 256
    _exact_kernel[(triton.cdiv(C, block),)](
        codes_t, table, pair_query, pair_row, out, C, N, table.shape[2],
        P=P, INT=not table.dtype.is_floating_point, BLOCK=block,
    )  # fmt: skip
