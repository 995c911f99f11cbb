/* The x86 kernels of fastscan (AVX-512 VBMI and AVX2), each compiled for its instruction set
 * with a target attribute and run only where the CPU has it (`_fastscan.c` checks at run time).
 * Included by `_fastscan.c` after fastscan_scan.h on x86 only. */
#ifndef FASTSCAN_X86_H
#define FASTSCAN_X86_H

#include <immintrin.h>

#include "fastscan_scan.h"

__attribute__((target("avx512f,avx512bw,avx512vbmi")))
static void block_vbmi(const uint8_t *codes, const uint8_t *table, ptrdiff_t P, uint16_t *out,
                       int accumulate) {
    __m512i acc_lo = accumulate ? _mm512_loadu_si512((const void *)out) : _mm512_setzero_si512();
    __m512i acc_hi = accumulate ? _mm512_loadu_si512((const void *)(out + 32))
                                : _mm512_setzero_si512();
    for (ptrdiff_t p = 0; p < P; p++) {
        const uint8_t *t = table + p * TABLE;
        __m512i idx = _mm512_loadu_si512((const void *)(codes + p * ROWS));
        __m512i lo = _mm512_permutex2var_epi8(_mm512_loadu_si512((const void *)t), idx,
                                              _mm512_loadu_si512((const void *)(t + 64)));
        __m512i hi = _mm512_permutex2var_epi8(_mm512_loadu_si512((const void *)(t + 128)), idx,
                                              _mm512_loadu_si512((const void *)(t + 192)));
        __m512i v = _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), lo, hi);
        acc_lo = _mm512_add_epi16(acc_lo, _mm512_cvtepu8_epi16(_mm512_castsi512_si256(v)));
        acc_hi = _mm512_add_epi16(acc_hi, _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(v, 1)));
    }
    _mm512_storeu_si512((void *)out, acc_lo);
    _mm512_storeu_si512((void *)(out + 32), acc_hi);
}


#define AVX2 __attribute__((target("avx2,bmi2")))

/* a <= m in every unsigned 16-bit lane (AVX2 has no unsigned compare) */
AVX2 static inline __attribute__((always_inline)) __m256i le_epu16(__m256i a, __m256i m) {
    return _mm256_cmpeq_epi16(_mm256_min_epu16(a, m), a);
}

/* With AVX2 a 256-entry lookup is 16 `pshufb` of 16 entries each, one per value of the code's
 * high nibble, each kept where the nibble matches: exact, about four times the work of the
 * VBMI lookup (the pruned scan below avoids it with 4-bit group codes). */
AVX2 static void block_avx2(const uint8_t *codes, const uint8_t *table, ptrdiff_t P,
                            uint16_t *out, int accumulate) {
    __m256i acc[4];
    if (accumulate) {
        uint16_t E[4][16];
        for (int v = 0; v < 4; v++)
            for (int l = 0; l < 16; l++) E[v][l] = out[(v >= 2 ? 32 : 0) + 2 * l + (v & 1)];
        for (int v = 0; v < 4; v++) acc[v] = _mm256_loadu_si256((const __m256i *)E[v]);
    } else {
        for (int v = 0; v < 4; v++) acc[v] = _mm256_setzero_si256();
    }
    const __m256i nib = _mm256_set1_epi8(0x0F), low = _mm256_set1_epi16(0x00FF);
    for (ptrdiff_t p = 0; p < P; p++) {
        const uint8_t *t = table + p * TABLE;
        __m256i x[2], lo[2], hi[2], v[2];
        for (int h = 0; h < 2; h++) {
            x[h] = _mm256_loadu_si256((const __m256i *)(codes + p * ROWS + 32 * h));
            lo[h] = _mm256_and_si256(x[h], nib);
            hi[h] = _mm256_and_si256(_mm256_srli_epi16(x[h], 4), nib);
            v[h] = _mm256_setzero_si256();
        }
        for (int g = 0; g < 16; g++) {
            __m256i T = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(t + 16 * g)));
            __m256i sel = _mm256_set1_epi8((char)g);
            for (int h = 0; h < 2; h++)
                v[h] = _mm256_or_si256(v[h], _mm256_and_si256(_mm256_shuffle_epi8(T, lo[h]),
                                                              _mm256_cmpeq_epi8(hi[h], sel)));
        }
        for (int h = 0; h < 2; h++) {
            acc[2 * h] = _mm256_add_epi16(acc[2 * h], _mm256_and_si256(v[h], low));
            acc[2 * h + 1] = _mm256_add_epi16(acc[2 * h + 1], _mm256_srli_epi16(v[h], 8));
        }
    }
    uint16_t E[4][16];
    for (int v = 0; v < 4; v++) _mm256_storeu_si256((__m256i *)E[v], acc[v]);
    rows_from_lanes((const uint16_t(*)[16])E, out);
}


#define VBMI __attribute__((target("avx512f,avx512bw,avx512vbmi,bmi2")))

/* One lookup of 64 codes in a table of `width` registers: 2 for codes < 128, 3 for < 192, 4. */
VBMI static inline __attribute__((always_inline)) __m512i lookup(const __m512i *t, __m512i idx,
                                                                   const int width) {
    __m512i v = _mm512_permutex2var_epi8(t[0], idx, t[1]);
    if (width == 2) return v;
    __m512i hi = width == 3 ? _mm512_permutexvar_epi8(idx, t[2])
                            : _mm512_permutex2var_epi8(t[2], idx, t[3]);
    return _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), v, hi);
}

/* Query q over blocks b0 .. b1-1 (at most TILE), in the manner of FAISS's fast-scan: the tables
 * of WIDEN positions are loaded into registers once and applied to every block of the tile
 * that is still alive, whose sums wait in L1 (lane i of the even accumulators holds row 2i, of
 * the odd ones row 2i + 1: a byte sum is widened by masking and shifting). */
VBMI static inline __attribute__((always_inline)) void scan_tile_vbmi(const scan_args *a,
                                                                        ptrdiff_t q,
                                                                        ptrdiff_t b0,
                                                                        ptrdiff_t b1,
                                                                        const int width,
                                                                        const int single) {
    const uint8_t *tab = a->tables + q * a->n_pos * TABLE;
    const int32_t *order = a->order + q * a->n_pos;
    const uint8_t *acc_of = a->chunk_acc + q * (a->n_pos / CHUNK);
    const int32_t *lim = a->lim + LIMS * q;
    if (lim[0] < 0 || lim[1] < 0 || lim[2] < 0) return;
    __m512i acc[TILE][4]; /* even L0, odd L0, even L1, odd L1 */
    __mmask32 ke[TILE], ko[TILE];
    int alive[TILE], n_alive = 0;
    for (ptrdiff_t b = b0; b < b1; b++) {
        uint64_t valid = valid_rows(a, b);
        if (!valid) continue;
        int i = (int)(b - b0);
        for (int s = 0; s < 4; s++) acc[i][s] = _mm512_setzero_si512();
        ke[i] = (__mmask32)_pext_u64(valid, 0x5555555555555555ULL);
        ko[i] = (__mmask32)_pext_u64(valid, 0xAAAAAAAAAAAAAAAAULL);
        alive[n_alive++] = i;
    }
    const __m512i low = _mm512_set1_epi16(0x00FF);
    const __m512i m0 = _mm512_set1_epi16((short)(lim[0] > 65535 ? 65535 : lim[0]));
    const __m512i m1 = _mm512_set1_epi16((short)(lim[1] > 65535 ? 65535 : lim[1]));
    const __m512i m2 = _mm512_set1_epi16((short)(lim[2] > 65535 ? 65535 : lim[2]));
    /* single: every chunk adds to L0, so L1 stays 0 and the four conditions reduce to
     * L0 <= min(lim[0], lim[2]) (lim[1] >= 0 and coarse >= 0 hold) */
    const int l0max = lim[0] < lim[2] ? lim[0] : lim[2];
    const __m512i ms = _mm512_set1_epi16((short)(l0max > 65535 ? 65535 : l0max));
    const __m512i c_lo = _mm512_loadu_si512((const void *)(a->coarse + q * COARSE));
    const __m512i c_hi = _mm512_loadu_si512((const void *)(a->coarse + q * COARSE + 32));
    const __m512i top = _mm512_set1_epi16(COARSE - 1);
    const __m128i shift = _mm_cvtsi32_si128(lim[3]);
    const ptrdiff_t stride = a->S * ROWS;
    const int32_t *reach = a->reach + q * (a->n_pos / CHUNK) * 2;
    const uint16_t *coarse = a->coarse + q * COARSE;
    for (ptrdiff_t c = 0; c * CHUNK < a->n_pos && n_alive; c++) {
        const int w = single ? 0 : 2 * acc_of[c];
        for (int h = 0; h < CHUNK; h += WIDEN) {
            __m512i t[WIDEN][4];
            ptrdiff_t off[WIDEN];
#pragma GCC unroll 4
            for (int j = 0; j < WIDEN; j++) {
                ptrdiff_t k = c * CHUNK + h + j;
                for (int r = 0; r < width; r++)
                    t[j][r] = _mm512_loadu_si512((const void *)(tab + k * TABLE + 64 * r));
                off[j] = (ptrdiff_t)order[k] * ROWS;
            }
            for (int n = 0; n < n_alive; n++) {
                int i = alive[n];
                const uint8_t *blk = a->codes + (b0 + i) * stride;
                __m512i sum8 = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int j = 0; j < WIDEN; j++)
                    sum8 = _mm512_adds_epu8(
                        sum8, lookup(t[j], _mm512_loadu_si512((const void *)(blk + off[j])),
                                     width));
                acc[i][w] = _mm512_add_epi16(acc[i][w], _mm512_and_si512(sum8, low));
                acc[i][w + 1] = _mm512_add_epi16(acc[i][w + 1], _mm512_srli_epi16(sum8, 8));
            }
        }
        const int32_t r0 = reach[2 * c], r1 = reach[2 * c + 1];
        if (r0 <= lim[0] && r1 <= lim[1] && r0 + r1 <= lim[2] &&
            r1 <= coarse[stair(r0 > 65535 ? 65535 : r0, lim[3])])
            continue; /* every row still passes */
        int kept = 0;
        for (int n = 0; n < n_alive; n++) {
            int i = alive[n];
            if (single) {
                ke[i] = _mm512_mask_cmple_epu16_mask(ke[i], acc[i][0], ms);
                ko[i] = _mm512_mask_cmple_epu16_mask(ko[i], acc[i][1], ms);
                if (ke[i] | ko[i]) alive[kept++] = i;
                continue;
            }
            __m512i e0 = acc[i][0], o0 = acc[i][1], e1 = acc[i][2], o1 = acc[i][3];
            /* the staircase: L1 <= coarse[min(L0 >> shift, 63)], room's value at the step */
            __m512i se = _mm512_permutex2var_epi16(
                c_lo, _mm512_min_epu16(_mm512_srl_epi16(e0, shift), top), c_hi);
            __m512i so = _mm512_permutex2var_epi16(
                c_lo, _mm512_min_epu16(_mm512_srl_epi16(o0, shift), top), c_hi);
            __mmask32 me = ke[i], mo = ko[i];
            me = _mm512_mask_cmple_epu16_mask(me, e0, m0) & _mm512_mask_cmple_epu16_mask(me, e1, m1) &
                 _mm512_mask_cmple_epu16_mask(me, _mm512_add_epi16(e0, e1), m2) &
                 _mm512_mask_cmple_epu16_mask(me, e1, se);
            mo = _mm512_mask_cmple_epu16_mask(mo, o0, m0) & _mm512_mask_cmple_epu16_mask(mo, o1, m1) &
                 _mm512_mask_cmple_epu16_mask(mo, _mm512_add_epi16(o0, o1), m2) &
                 _mm512_mask_cmple_epu16_mask(mo, o1, so);
            ke[i] = me;
            ko[i] = mo;
            if (me | mo) alive[kept++] = i;
        }
        n_alive = kept;
    }
    for (int n = 0; n < n_alive; n++) {
        int i = alive[n];
        uint16_t E[4][32], L[2][ROWS];
        for (int s = 0; s < 4; s++) _mm512_storeu_si512((void *)E[s], acc[i][s]);
        for (int r = 0; r < 32; r++) {
            L[0][2 * r] = E[0][r];
            L[0][2 * r + 1] = E[1][r];
            L[1][2 * r] = E[2][r];
            L[1][2 * r + 1] = E[3][r];
        }
        uint64_t rows = _pdep_u64(ke[i], 0x5555555555555555ULL) |
                        _pdep_u64(ko[i], 0xAAAAAAAAAAAAAAAAULL);
        emit(a, q, b0 + i, rows, L[0], L[1]);
    }
}

#define TILE_FN(name, width, single)                                                           \
    VBMI static void name(const scan_args *a, ptrdiff_t q, ptrdiff_t b0, ptrdiff_t b1) {     \
        scan_tile_vbmi(a, q, b0, b1, width, single);                                           \
    }
TILE_FN(scan_tile_vbmi2, 2, 0)
TILE_FN(scan_tile_vbmi3, 3, 0)
TILE_FN(scan_tile_vbmi4, 4, 0)
TILE_FN(scan_tile_vbmi2s, 2, 1)
TILE_FN(scan_tile_vbmi3s, 3, 1)
TILE_FN(scan_tile_vbmi4s, 4, 1)

/* Query q over blocks b0 .. b1-1 (at most TILE) by group sums, in the manner of the VBMI tile:
 * the 16-byte tables of WIDEN positions sit in registers while every live block of the tile
 * adds them; lanes as in `rows_from_lanes`. */
AVX2 static void scan_tile_avx2(const scan_args *a, ptrdiff_t q, ptrdiff_t b0,
                                ptrdiff_t b1) {
    const uint8_t *ctab = a->ctables + q * a->n_pos * 16;
    const int32_t *order = a->order + q * a->n_pos;
    const uint8_t *acc_of = a->chunk_acc + q * (a->n_pos / CHUNK);
    const int32_t *lim = a->lim + LIMS * q;
    if (lim[0] < 0 || lim[1] < 0 || lim[2] < 0) return;
    __m256i acc[TILE][2][4], keep[TILE][4];
    int alive[TILE], n_alive = 0;
    for (ptrdiff_t b = b0; b < b1; b++) {
        uint64_t valid = valid_rows(a, b);
        if (!valid) continue;
        int i = (int)(b - b0);
        uint16_t K[4][16];
        for (int v = 0; v < 4; v++)
            for (int l = 0; l < 16; l++)
                K[v][l] = (valid >> ((v >= 2 ? 32 : 0) + 2 * l + (v & 1))) & 1 ? 0xFFFF : 0;
        for (int v = 0; v < 4; v++) {
            acc[i][0][v] = acc[i][1][v] = _mm256_setzero_si256();
            keep[i][v] = _mm256_loadu_si256((const __m256i *)K[v]);
        }
        alive[n_alive++] = i;
    }
    const __m256i nib = _mm256_set1_epi8(0x0F), low = _mm256_set1_epi16(0x00FF);
    const __m256i m0 = _mm256_set1_epi16((short)(lim[0] > 65535 ? 65535 : lim[0]));
    const __m256i m1 = _mm256_set1_epi16((short)(lim[1] > 65535 ? 65535 : lim[1]));
    const __m256i m2 = _mm256_set1_epi16((short)(lim[2] > 65535 ? 65535 : lim[2]));
    const ptrdiff_t stride = a->S * 32;
    const int32_t *reach = a->reach + q * (a->n_pos / CHUNK) * 2;
    const uint16_t *coarse = a->coarse + q * COARSE;
    /* single: every chunk adds to L0, L1 stays 0 and the staircase holds (coarse >= 0) */
    int single = 1, stairs[COARSE];
    for (ptrdiff_t c = 0; c < a->n_pos / CHUNK; c++) single &= acc_of[c] == 0;
    for (int k = 0; k < COARSE; k++) stairs[k] = coarse[k];
    const __m256i top = _mm256_set1_epi32(COARSE - 1);
    const __m128i shift = _mm_cvtsi32_si128(lim[3]);
    for (ptrdiff_t c = 0; c * CHUNK < a->n_pos && n_alive; c++) {
        const int w = acc_of[c];
        for (int h = 0; h < CHUNK; h += WIDEN) {
            __m256i t[WIDEN];
            ptrdiff_t off[WIDEN];
            for (int j = 0; j < WIDEN; j++) {
                ptrdiff_t k = c * CHUNK + h + j;
                t[j] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(ctab + k * 16)));
                off[j] = (ptrdiff_t)order[k] * 32;
            }
            for (int n = 0; n < n_alive; n++) {
                int i = alive[n];
                const uint8_t *blk = a->codes4 + (b0 + i) * stride;
                __m256i s_lo = _mm256_setzero_si256(), s_hi = _mm256_setzero_si256();
                for (int j = 0; j < WIDEN; j++) {
                    __m256i x = _mm256_loadu_si256((const __m256i *)(blk + off[j]));
                    s_lo = _mm256_adds_epu8(s_lo, _mm256_shuffle_epi8(t[j], _mm256_and_si256(x, nib)));
                    s_hi = _mm256_adds_epu8(
                        s_hi, _mm256_shuffle_epi8(t[j], _mm256_and_si256(_mm256_srli_epi16(x, 4), nib)));
                }
                __m256i *A = acc[i][w];
                A[0] = _mm256_add_epi16(A[0], _mm256_and_si256(s_lo, low));
                A[1] = _mm256_add_epi16(A[1], _mm256_srli_epi16(s_lo, 8));
                A[2] = _mm256_add_epi16(A[2], _mm256_and_si256(s_hi, low));
                A[3] = _mm256_add_epi16(A[3], _mm256_srli_epi16(s_hi, 8));
            }
        }
        const int32_t r0 = reach[2 * c], r1 = reach[2 * c + 1];
        if (r0 <= lim[0] && r1 <= lim[1] && r0 + r1 <= lim[2] &&
            r1 <= coarse[stair(r0 > 65535 ? 65535 : r0, lim[3])])
            continue; /* every row still passes */
        int kept = 0;
        for (int n = 0; n < n_alive; n++) {
            int i = alive[n];
            __m256i any = _mm256_setzero_si256();
            for (int v = 0; v < 4; v++) {
                __m256i e0 = acc[i][0][v], e1 = acc[i][1][v];
                __m256i ok = _mm256_and_si256(le_epu16(e0, m0), le_epu16(e1, m1));
                ok = _mm256_and_si256(ok, le_epu16(_mm256_add_epi16(e0, e1), m2));
                if (!single) {
                    __m256i over[2];
                    for (int half = 0; half < 2; half++) {
                        __m128i l0 = half ? _mm256_extracti128_si256(e0, 1) : _mm256_castsi256_si128(e0);
                        __m128i l1 = half ? _mm256_extracti128_si256(e1, 1) : _mm256_castsi256_si128(e1);
                        __m256i k = _mm256_min_epi32(_mm256_srl_epi32(_mm256_cvtepu16_epi32(l0), shift), top);
                        over[half] = _mm256_cmpgt_epi32(_mm256_cvtepu16_epi32(l1),
                                                        _mm256_i32gather_epi32(stairs, k, 4));
                    }
                    /* packs interleaves the 128-bit halves: lanes 0-3, 8-11, 4-7, 12-15 */
                    __m256i fail = _mm256_permute4x64_epi64(_mm256_packs_epi32(over[0], over[1]), 0xD8);
                    ok = _mm256_andnot_si256(fail, ok);
                }
                keep[i][v] = _mm256_and_si256(keep[i][v], ok);
                any = _mm256_or_si256(any, keep[i][v]);
            }
            if (!_mm256_testz_si256(any, any)) alive[kept++] = i;
        }
        n_alive = kept;
    }
    /* the survivors' first two chunks of codes_t are fetched for all blocks at once, so that
     * their misses overlap */
    uint64_t rows[TILE];
    for (int n = 0; n < n_alive; n++) {
        int i = alive[n];
        uint16_t K[4][16];
        for (int v = 0; v < 4; v++) _mm256_storeu_si256((__m256i *)K[v], keep[i][v]);
        rows[n] = 0;
        for (int v = 0; v < 4; v++)
            for (int l = 0; l < 16; l++)
                if (K[v][l]) rows[n] |= 1ULL << ((v >= 2 ? 32 : 0) + 2 * l + (v & 1));
        const uint8_t *blk = a->codes + (b0 + i) * a->S * ROWS;
        for (ptrdiff_t k = 0; k < 2 * CHUNK && k < a->n_pos; k++)
            __builtin_prefetch(blk + (ptrdiff_t)order[k] * ROWS, 0, 3);
    }
    for (int n = 0; n < n_alive; n++) {
        int i = alive[n];
        uint16_t E[4][16], G[2][ROWS];
        for (int w = 0; w < 2; w++) {
            for (int v = 0; v < 4; v++) _mm256_storeu_si256((__m256i *)E[v], acc[i][w][v]);
            rows_from_lanes((const uint16_t(*)[16])E, G[w]);
        }
        exact_emit(a, q, b0 + i, rows[n], G);
    }
}


#endif /* FASTSCAN_X86_H */
