/* ARM NEON kernels of fastscan (AArch64, where NEON is always present), included by
 * `_fastscan.c` there, as fastscan_x86.h is on x86. They mirror the AVX2 ones:
 *
 *   block_neon      exact 8-bit table sums of 64 rows for `lower_bounds`: one 256-entry lookup
 *                   of 16 codes is a `tbl` over the first 64 entries and three `tbx` over the
 *                   others (an index outside a `tbx` table leaves its byte as it was);
 *   scan_tile_neon  the pruned scan over the 4-bit group layout (codes4), one 16-entry `tbl`
 *                   (vqtbl1q_u8) per 16 rows and position, group sums checked per chunk
 *                   (staircase included, looked up with `tbl` on its low and high bytes), the
 *                   survivors re-checked with their exact sums by `exact_emit`.
 *
 * Lanes are rows in order: vector v of an accumulator holds rows 8v .. 8v + 7. */
#ifndef FASTSCAN_NEON_H
#define FASTSCAN_NEON_H

#include <arm_neon.h>

#include "fastscan_scan.h"

#define FASTSCAN_NEON 1

static inline uint8x16x4_t load_table64(const uint8_t *t) {
    uint8x16x4_t T;
    T.val[0] = vld1q_u8(t);
    T.val[1] = vld1q_u8(t + 16);
    T.val[2] = vld1q_u8(t + 32);
    T.val[3] = vld1q_u8(t + 48);
    return T;
}

static void block_neon(const uint8_t *codes, const uint8_t *table, ptrdiff_t P, uint16_t *out,
                       int accumulate) {
    uint16x8_t acc[8];
    for (int v = 0; v < 8; v++) acc[v] = accumulate ? vld1q_u16(out + 8 * v) : vdupq_n_u16(0);
    for (ptrdiff_t p = 0; p < P; p++) {
        const uint8_t *t = table + p * TABLE;
        uint8x16x4_t T[4];
        for (int k = 0; k < 4; k++) T[k] = load_table64(t + 64 * k);
        for (int h = 0; h < 4; h++) {
            uint8x16_t idx = vld1q_u8(codes + p * ROWS + 16 * h);
            uint8x16_t v = vqtbl4q_u8(T[0], idx);
            v = vqtbx4q_u8(v, T[1], vsubq_u8(idx, vdupq_n_u8(64)));
            v = vqtbx4q_u8(v, T[2], vsubq_u8(idx, vdupq_n_u8(128)));
            v = vqtbx4q_u8(v, T[3], vsubq_u8(idx, vdupq_n_u8(192)));
            acc[2 * h] = vaddw_u8(acc[2 * h], vget_low_u8(v));
            acc[2 * h + 1] = vaddw_high_u8(acc[2 * h + 1], v);
        }
    }
    for (int v = 0; v < 8; v++) vst1q_u16(out + 8 * v, acc[v]);
}

/* Query q over blocks b0 .. b1-1 (at most TILE) by group sums, as `scan_tile_avx2`. */
static void scan_tile_neon(const scan_args *a, ptrdiff_t q, ptrdiff_t b0, ptrdiff_t b1) {
    const uint8_t *ctab = a->ctables + q * a->n_pos * 16;
    const int32_t *order = a->order + q * a->n_pos;
    const uint8_t *acc_of = a->chunk_acc + q * (a->n_pos / CHUNK);
    const int32_t *lim = a->lim + LIMS * q;
    if (lim[0] < 0 || lim[1] < 0 || lim[2] < 0) return;
    uint16x8_t acc[TILE][2][8], keep[TILE][8];
    int alive[TILE], n_alive = 0;
    for (ptrdiff_t b = b0; b < b1; b++) {
        uint64_t valid = valid_rows(a, b);
        if (!valid) continue;
        int i = (int)(b - b0);
        uint16_t K[ROWS];
        for (int r = 0; r < ROWS; r++) K[r] = (valid >> r) & 1 ? 0xFFFF : 0;
        for (int v = 0; v < 8; v++) {
            acc[i][0][v] = acc[i][1][v] = vdupq_n_u16(0);
            keep[i][v] = vld1q_u16(K + 8 * v);
        }
        alive[n_alive++] = i;
    }
    const uint8x16_t nib = vdupq_n_u8(0x0F);
    const uint16x8_t m0 = vdupq_n_u16((uint16_t)(lim[0] > 65535 ? 65535 : lim[0]));
    const uint16x8_t m1 = vdupq_n_u16((uint16_t)(lim[1] > 65535 ? 65535 : lim[1]));
    const uint16x8_t m2 = vdupq_n_u16((uint16_t)(lim[2] > 65535 ? 65535 : lim[2]));
    const ptrdiff_t stride = a->S * 32;
    const int32_t *reach = a->reach + q * (a->n_pos / CHUNK) * 2;
    const uint16_t *coarse = a->coarse + q * COARSE;
    int single = 1;
    for (ptrdiff_t c = 0; c < a->n_pos / CHUNK; c++) single &= acc_of[c] == 0;
    /* the staircase's 64 steps as two 64-byte tables: low bytes, high bytes */
    uint8_t low[COARSE], high[COARSE];
    for (int k = 0; k < COARSE; k++) {
        low[k] = (uint8_t)(coarse[k] & 0xFF);
        high[k] = (uint8_t)(coarse[k] >> 8);
    }
    const uint8x16x4_t stair_lo = load_table64(low), stair_hi = load_table64(high);
    const int16x8_t shift = vdupq_n_s16((int16_t)-lim[3]);
    const uint16x8_t top = vdupq_n_u16(COARSE - 1);
    for (ptrdiff_t c = 0; c * CHUNK < a->n_pos && n_alive; c++) {
        const int w = acc_of[c];
        for (int h = 0; h < CHUNK; h += WIDEN) {
            uint8x16_t t[WIDEN];
            ptrdiff_t off[WIDEN];
            for (int j = 0; j < WIDEN; j++) {
                ptrdiff_t k = c * CHUNK + h + j;
                t[j] = vld1q_u8(ctab + k * 16);
                off[j] = (ptrdiff_t)order[k] * 32;
            }
            for (int n = 0; n < n_alive; n++) {
                int i = alive[n];
                const uint8_t *blk = a->codes4 + (b0 + i) * stride;
                uint8x16_t s[4] = {vdupq_n_u8(0), vdupq_n_u8(0), vdupq_n_u8(0), vdupq_n_u8(0)};
                for (int j = 0; j < WIDEN; j++) {
                    uint8x16_t x0 = vld1q_u8(blk + off[j]), x1 = vld1q_u8(blk + off[j] + 16);
                    /* rows 0-15, 16-31 in the low nibbles, 32-47, 48-63 in the high ones */
                    s[0] = vqaddq_u8(s[0], vqtbl1q_u8(t[j], vandq_u8(x0, nib)));
                    s[1] = vqaddq_u8(s[1], vqtbl1q_u8(t[j], vandq_u8(x1, nib)));
                    s[2] = vqaddq_u8(s[2], vqtbl1q_u8(t[j], vshrq_n_u8(x0, 4)));
                    s[3] = vqaddq_u8(s[3], vqtbl1q_u8(t[j], vshrq_n_u8(x1, 4)));
                }
                uint16x8_t *A = acc[i][w];
                for (int g = 0; g < 4; g++) {
                    A[2 * g] = vaddw_u8(A[2 * g], vget_low_u8(s[g]));
                    A[2 * g + 1] = vaddw_high_u8(A[2 * g + 1], s[g]);
                }
            }
        }
        const int32_t r0 = reach[2 * c], r1 = reach[2 * c + 1];
        if (r0 <= lim[0] && r1 <= lim[1] && r0 + r1 <= lim[2] &&
            r1 <= coarse[stair(r0 > 65535 ? 65535 : r0, lim[3])])
            continue; /* every row still passes */
        int kept = 0;
        for (int n = 0; n < n_alive; n++) {
            int i = alive[n];
            uint16x8_t any = vdupq_n_u16(0);
            for (int v = 0; v < 8; v++) {
                uint16x8_t e0 = acc[i][0][v], e1 = acc[i][1][v];
                uint16x8_t ok = vandq_u16(vcleq_u16(e0, m0), vcleq_u16(e1, m1));
                ok = vandq_u16(ok, vcleq_u16(vaddq_u16(e0, e1), m2));
                if (!single) {
                    uint8x8_t k = vmovn_u16(vminq_u16(vshlq_u16(e0, shift), top));
                    uint16x8_t room = vorrq_u16(vmovl_u8(vqtbl4_u8(stair_lo, k)),
                                                vshll_n_u8(vqtbl4_u8(stair_hi, k), 8));
                    ok = vandq_u16(ok, vcleq_u16(e1, room));
                }
                keep[i][v] = vandq_u16(keep[i][v], ok);
                any = vorrq_u16(any, keep[i][v]);
            }
            if (vmaxvq_u16(any)) alive[kept++] = i;
        }
        n_alive = kept;
    }
    for (int n = 0; n < n_alive; n++) {
        int i = alive[n];
        uint16_t K[ROWS], G[2][ROWS];
        uint64_t rows = 0;
        for (int v = 0; v < 8; v++) {
            vst1q_u16(K + 8 * v, keep[i][v]);
            vst1q_u16(G[0] + 8 * v, acc[i][0][v]);
            vst1q_u16(G[1] + 8 * v, acc[i][1][v]);
        }
        for (int r = 0; r < ROWS; r++)
            if (K[r]) rows |= 1ULL << r;
        exact_emit(a, q, b0 + i, rows, G);
    }
}

#endif /* FASTSCAN_NEON_H */
