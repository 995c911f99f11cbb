/* Lower-bound scan of code grids with 8-bit look-up tables held in SIMD registers.
 *
 * The distance of a database grid to a query is a sum over positions p of table[p][code_p].
 * `hashindex.fastscan` quantizes each query table to uint8 lower bounds (one scale for all
 * positions, so the bounds add up in integers) and this module sums them for 64 rows at a time:
 *
 *   codes_t  uint8 (nblocks, S, 64)  block-transposed code grids: row 64*b + r, position s is
 *                                    codes_t[b][s][r] (representative ids, at most 256 codes);
 *                                    S counts the positions of both codebooks, side by side
 *   table    uint8 (P, 256)          a query's quantized table for positions s0 .. s0+P-1;
 *                                    entries past the codebook's size are unused
 *   out      uint16 (nblocks * 64)   Σ_p table[p][code_{s0+p}] per row (or added to `out`)
 *
 * With AVX-512 VBMI one 256-entry table lookup of 64 rows is two `vpermi2b` (128 entries each)
 * and a blend on the index's top bit, in the manner of FAISS's fast-scan (which uses 16-entry
 * `pshufb` tables). Other CPUs run a portable loop with the same result. The caller keeps every
 * sum below 65,536 by its choice of quantization levels, so the uint16 adds never wrap.
 *
 * `lower_bounds` sums every row; `prune_scan` (below) keeps only the rows that can still win,
 * leaving blocks early; `exact_sums` re-ranks the rows kept with the float64 tables.
 *
 * Functions take Python buffers (no numpy headers at build time), check their sizes, and
 * release the GIL, so the caller can run disjoint block ranges on several threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "fastscan_scan.h"

#if defined(__x86_64__) || defined(__i386__)
#define FASTSCAN_X86 1
#include <immintrin.h>
#endif

#ifdef FASTSCAN_X86
__attribute__((target("avx512f,avx512bw,avx512vbmi")))
static void block_vbmi(const uint8_t *codes, const uint8_t *table, Py_ssize_t P, uint16_t *out,
                       int accumulate) {
    __m512i acc_lo = accumulate ? _mm512_loadu_si512((const void *)out) : _mm512_setzero_si512();
    __m512i acc_hi = accumulate ? _mm512_loadu_si512((const void *)(out + 32))
                                : _mm512_setzero_si512();
    for (Py_ssize_t p = 0; p < P; p++) {
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

#endif /* FASTSCAN_X86 */

typedef void (*block_fn)(const uint8_t *, const uint8_t *, Py_ssize_t, uint16_t *, int);

/* The kernels, by the number callers pass (0: the best this CPU runs). */
enum { KERNEL_AUTO = 0, KERNEL_PORTABLE = 1, KERNEL_AVX2 = 2, KERNEL_VBMI = 3, KERNEL_NEON = 4 };
static const char *const KERNEL_NAMES[] = {"auto", "portable", "avx2", "vbmi", "neon"};
#define KERNEL_LAST KERNEL_NEON

static int have_vbmi(void) {
#ifdef FASTSCAN_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vbmi");
#else
    return 0;
#endif
}

static int have_avx2(void) {
#ifdef FASTSCAN_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi2");
#else
    return 0;
#endif
}

static int have_neon(void) {
#ifdef FASTSCAN_NEON
    return 1; /* part of every AArch64 CPU */
#else
    return 0;
#endif
}

static int cpu_runs(int kernel) {
    return kernel == KERNEL_PORTABLE || (kernel == KERNEL_AVX2 && have_avx2()) ||
           (kernel == KERNEL_VBMI && have_vbmi()) || (kernel == KERNEL_NEON && have_neon());
}

/* the kernels that scan the 4-bit group layout (codes4, groups) */
static int uses_groups(int kernel) { return kernel == KERNEL_AVX2 || kernel == KERNEL_NEON; }

/* The kernel to run for a caller's choice, or -1 with ValueError set: a kernel this CPU lacks
 * is refused, never replaced by another one silently. */
static int resolve_kernel(int kernel) {
    if (kernel == KERNEL_AUTO)
        return have_vbmi()   ? KERNEL_VBMI
               : have_avx2() ? KERNEL_AVX2
               : have_neon() ? KERNEL_NEON
                             : KERNEL_PORTABLE;
    if (kernel < KERNEL_PORTABLE || kernel > KERNEL_LAST) {
        PyErr_Format(PyExc_ValueError,
                     "kernel must be 0..4 (auto, portable, avx2, vbmi, neon), got %d", kernel);
        return -1;
    }
    if (!cpu_runs(kernel)) {
        PyErr_Format(PyExc_ValueError, "this CPU cannot run the %s kernel", KERNEL_NAMES[kernel]);
        return -1;
    }
    return kernel;
}

#ifdef FASTSCAN_X86
#define AVX2 __attribute__((target("avx2,bmi2")))

/* a <= m in every unsigned 16-bit lane (AVX2 has no unsigned compare) */
AVX2 static inline __attribute__((always_inline)) __m256i le_epu16(__m256i a, __m256i m) {
    return _mm256_cmpeq_epi16(_mm256_min_epu16(a, m), a);
}

/* With AVX2 a 256-entry lookup is 16 `pshufb` of 16 entries each, one per value of the code's
 * high nibble, each kept where the nibble matches: exact, about four times the work of the
 * VBMI lookup (the pruned scan below avoids it with 4-bit group codes). */
AVX2 static void block_avx2(const uint8_t *codes, const uint8_t *table, Py_ssize_t P,
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
    for (Py_ssize_t p = 0; p < P; p++) {
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

#endif /* FASTSCAN_X86 */

static block_fn pick(int kernel) {
#ifdef FASTSCAN_X86
    if (kernel == KERNEL_VBMI) return block_vbmi;
    if (kernel == KERNEL_AVX2) return block_avx2;
#endif
#ifdef FASTSCAN_NEON
    if (kernel == KERNEL_NEON) return block_neon;
#endif
    return block_portable;
}

/* lower_bounds(codes_t, tables, out, n_queries, S, s0, P, block_start, block_end, accumulate,
 *              kernel)
 *
 * tables: uint8 (n_queries, P, 256) for positions s0 .. s0+P-1 of the S in codes_t;
 * out: uint16 (n_queries, nblocks * 64). Each block of codes is read once and scored against
 * every query while it is in cache: one pass over the codes answers a whole batch.
 */
static PyObject *lower_bounds(PyObject *self, PyObject *args) {
    Py_buffer codes, tables, out;
    Py_ssize_t n_queries, S, s0, P, start, end;
    int accumulate, kernel;
    if (!PyArg_ParseTuple(args, "y*y*w*nnnnnnpi", &codes, &tables, &out, &n_queries, &S, &s0, &P,
                          &start, &end, &accumulate, &kernel))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t nblocks = (S > 0) ? codes.len / (S * ROWS) : 0;
    if (S <= 0 || n_queries <= 0 || codes.len != nblocks * S * ROWS) {
        PyErr_SetString(PyExc_ValueError, "codes_t must hold (nblocks, S, 64) uint8 with S > 0");
    } else if (P <= 0 || s0 < 0 || s0 + P > S) {
        PyErr_SetString(PyExc_ValueError, "positions s0 .. s0+P-1 outside 0..S-1");
    } else if (tables.len != n_queries * P * TABLE) {
        PyErr_SetString(PyExc_ValueError, "tables must hold (n_queries, P, 256) uint8");
    } else if (out.len != n_queries * nblocks * ROWS * (Py_ssize_t)sizeof(uint16_t)) {
        PyErr_SetString(PyExc_ValueError, "out must hold (n_queries, nblocks * 64) uint16");
    } else if (start < 0 || end > nblocks || start > end) {
        PyErr_SetString(PyExc_ValueError, "block range outside 0..nblocks");
    } else if ((kernel = resolve_kernel(kernel)) >= 0) {
        block_fn fn = pick(kernel);
        const uint8_t *c = codes.buf, *t = tables.buf;
        uint16_t *o = out.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t tile = start; tile < end; tile += TILE) {
            Py_ssize_t stop = tile + TILE < end ? tile + TILE : end;
            for (Py_ssize_t q = 0; q < n_queries; q++)
                for (Py_ssize_t b = tile; b < stop; b++)
                    fn(c + (b * S + s0) * ROWS, t + q * P * TABLE, P,
                       o + q * nblocks * ROWS + b * ROWS, accumulate);
        }
        Py_END_ALLOW_THREADS
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&codes);
    PyBuffer_Release(&tables);
    PyBuffer_Release(&out);
    return result;
}

#ifdef FASTSCAN_X86
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
                                                                        Py_ssize_t q,
                                                                        Py_ssize_t b0,
                                                                        Py_ssize_t b1,
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
    for (Py_ssize_t b = b0; b < b1; b++) {
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
    const Py_ssize_t stride = a->S * ROWS;
    const int32_t *reach = a->reach + q * (a->n_pos / CHUNK) * 2;
    const uint16_t *coarse = a->coarse + q * COARSE;
    for (Py_ssize_t c = 0; c * CHUNK < a->n_pos && n_alive; c++) {
        const int w = single ? 0 : 2 * acc_of[c];
        for (int h = 0; h < CHUNK; h += WIDEN) {
            __m512i t[WIDEN][4];
            Py_ssize_t off[WIDEN];
#pragma GCC unroll 4
            for (int j = 0; j < WIDEN; j++) {
                Py_ssize_t k = c * CHUNK + h + j;
                for (int r = 0; r < width; r++)
                    t[j][r] = _mm512_loadu_si512((const void *)(tab + k * TABLE + 64 * r));
                off[j] = (Py_ssize_t)order[k] * ROWS;
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
    VBMI static void name(const scan_args *a, Py_ssize_t q, Py_ssize_t b0, Py_ssize_t b1) {     \
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
AVX2 static void scan_tile_avx2(const scan_args *a, Py_ssize_t q, Py_ssize_t b0,
                                Py_ssize_t b1) {
    const uint8_t *ctab = a->ctables + q * a->n_pos * 16;
    const int32_t *order = a->order + q * a->n_pos;
    const uint8_t *acc_of = a->chunk_acc + q * (a->n_pos / CHUNK);
    const int32_t *lim = a->lim + LIMS * q;
    if (lim[0] < 0 || lim[1] < 0 || lim[2] < 0) return;
    __m256i acc[TILE][2][4], keep[TILE][4];
    int alive[TILE], n_alive = 0;
    for (Py_ssize_t b = b0; b < b1; b++) {
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
    const Py_ssize_t stride = a->S * 32;
    const int32_t *reach = a->reach + q * (a->n_pos / CHUNK) * 2;
    const uint16_t *coarse = a->coarse + q * COARSE;
    /* single: every chunk adds to L0, L1 stays 0 and the staircase holds (coarse >= 0) */
    int single = 1, stairs[COARSE];
    for (Py_ssize_t c = 0; c < a->n_pos / CHUNK; c++) single &= acc_of[c] == 0;
    for (int k = 0; k < COARSE; k++) stairs[k] = coarse[k];
    const __m256i top = _mm256_set1_epi32(COARSE - 1);
    const __m128i shift = _mm_cvtsi32_si128(lim[3]);
    for (Py_ssize_t c = 0; c * CHUNK < a->n_pos && n_alive; c++) {
        const int w = acc_of[c];
        for (int h = 0; h < CHUNK; h += WIDEN) {
            __m256i t[WIDEN];
            Py_ssize_t off[WIDEN];
            for (int j = 0; j < WIDEN; j++) {
                Py_ssize_t k = c * CHUNK + h + j;
                t[j] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(ctab + k * 16)));
                off[j] = (Py_ssize_t)order[k] * 32;
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
        for (Py_ssize_t k = 0; k < 2 * CHUNK && k < a->n_pos; k++)
            __builtin_prefetch(blk + (Py_ssize_t)order[k] * ROWS, 0, 3);
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

#endif /* FASTSCAN_X86 */

typedef void (*tile_fn)(const scan_args *, Py_ssize_t, Py_ssize_t, Py_ssize_t);

/* Query q's tile kernel: its table width, and whether all its chunks add to L0. */
static tile_fn pick_tile(const scan_args *a, Py_ssize_t q, Py_ssize_t n_codes, int kernel) {
#ifdef FASTSCAN_NEON
    if (kernel == KERNEL_NEON) return scan_tile_neon;
#endif
#ifdef FASTSCAN_X86
    if (kernel == KERNEL_AVX2) return scan_tile_avx2;
    if (kernel == KERNEL_VBMI) {
        int single = 1;
        for (Py_ssize_t c = 0; c < a->n_pos / CHUNK; c++)
            single &= a->chunk_acc[q * (a->n_pos / CHUNK) + c] == 0;
        if (n_codes <= 128) return single ? scan_tile_vbmi2s : scan_tile_vbmi2;
        if (n_codes <= 192) return single ? scan_tile_vbmi3s : scan_tile_vbmi3;
        return single ? scan_tile_vbmi4s : scan_tile_vbmi4;
    }
#endif
    return scan_tile_portable;
}

/* prune_scan(codes_t, S, n_rows, n_codes, tables, order, chunk_acc, n_queries, n_pos, lim, room,
 *            room_stride, out_rows, out_keys, out_count, capacity, heap, block_start,
 *            block_end, kernel[, allowed[, codes4, groups]]); see the comment above.
 *   kernel: 0 the best this CPU runs, 1 portable, 2 avx2, 3 vbmi (one the CPU lacks: ValueError);
 *   allowed: (nblocks,) uint64 or None, bit r of word b set where row 64 * b + r may be kept
 *            (None or left out: every row);
 *   codes4 (nblocks, S, 32) uint8 and groups (S, 256) uint8: the AVX2 kernel's 4-bit layout of
 *            the same rows and the group (0..15) of each code at each position (see above). */
static PyObject *prune_scan(PyObject *self, PyObject *args) {
    Py_buffer codes, tables, order, chunk_acc, lim, room, coarse, out_rows, out_keys, out_count;
    /* optional: buf stays NULL when left out or None */
    Py_buffer allowed = {0}, codes4 = {0}, groups = {0};
    Py_ssize_t S, n_rows, n_queries, n_pos, room_stride, capacity, start, end, n_codes;
    int heap, kernel;
    if (!PyArg_ParseTuple(args, "y*nnny*y*y*nnw*y*ny*w*w*w*npnni|z*z*z*", &codes, &S, &n_rows,
                          &n_codes, &tables,
                          &order, &chunk_acc, &n_queries, &n_pos, &lim, &room, &room_stride,
                          &coarse,
                          &out_rows, &out_keys, &out_count, &capacity, &heap, &start, &end,
                          &kernel, &allowed, &codes4, &groups))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t nblocks = (S > 0) ? codes.len / (S * ROWS) : 0;
    Py_ssize_t B = n_queries;
    if (S <= 0 || B <= 0 || codes.len != nblocks * S * ROWS || n_rows < 0 ||
        n_rows > nblocks * ROWS) {
        PyErr_SetString(PyExc_ValueError, "codes_t must hold (nblocks, S, 64) uint8 with S > 0 "
                                          "and n_rows <= nblocks * 64");
    } else if (n_pos <= 0 || n_pos % CHUNK || tables.len != B * n_pos * TABLE ||
               order.len != B * n_pos * 4 || chunk_acc.len != B * (n_pos / CHUNK)) {
        PyErr_SetString(PyExc_ValueError, "tables (B, n_pos, 256) uint8, order (B, n_pos) int32 "
                                          "and chunk_acc (B, n_pos / 8) uint8 with n_pos a "
                                          "positive multiple of 8");
    } else if (lim.len != B * LIMS * 4 || room_stride < 0 || room.len != B * room_stride * 4 ||
               coarse.len != B * COARSE * 2) {
        PyErr_SetString(PyExc_ValueError, "lim must hold (B, 4) int32, room (B, room_stride) "
                                          "int32 and coarse (B, 64) uint16");
    } else if (capacity < 1 || out_rows.len != B * capacity * 8 ||
               out_keys.len != B * capacity * 4 || out_count.len != B * 8) {
        PyErr_SetString(PyExc_ValueError, "out_rows (B, capacity) int64, out_keys (B, capacity) "
                                          "uint32 and out_count (B,) int64");
    } else if (start < 0 || end > nblocks || start > end) {
        PyErr_SetString(PyExc_ValueError, "block range outside 0..nblocks");
    } else if (n_codes < 1 || n_codes > TABLE) {
        PyErr_SetString(PyExc_ValueError, "n_codes must be in 1..256");
    } else if (allowed.buf && allowed.len != nblocks * 8) {
        PyErr_SetString(PyExc_ValueError, "allowed must hold (nblocks,) uint64 words");
    } else if ((kernel = resolve_kernel(kernel)) < 0) {
        /* the error is set */
    } else if (uses_groups(kernel) &&
               (!codes4.buf || !groups.buf || codes4.len != nblocks * S * 32 ||
                groups.len != S * TABLE)) {
        PyErr_SetString(PyExc_ValueError, "the avx2 and neon kernels need codes4 (nblocks, S, "
                                          "32) uint8 "
                                          "and groups (S, 256) uint8");
    } else {
        const int32_t *ord = order.buf, *lm = lim.buf;
        const uint8_t *acc = chunk_acc.buf;
        int bad = 0;
        for (Py_ssize_t i = 0; i < B * n_pos; i++) bad |= ord[i] < 0 || ord[i] >= S;
        for (Py_ssize_t i = 0; i < B * (n_pos / CHUNK); i++) bad |= acc[i] > 1;
        if (uses_groups(kernel))
            for (Py_ssize_t i = 0; i < S * TABLE; i++) bad |= ((const uint8_t *)groups.buf)[i] > 15;
        for (Py_ssize_t q = 0; q < B; q++)
            bad |= (!heap && lm[LIMS * q] >= room_stride) || lm[LIMS * q + 3] < 0 ||
                   lm[LIMS * q + 3] > 16;
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "order outside 0..S-1, chunk_acc not 0/1, "
                                              "lim[0] >= room_stride, a shift outside 0..16 "
                                              "or a group above 15");
        } else {
            scan_args a = {codes.buf, S, n_rows, n_pos, tables.buf, acc, ord, room.buf,
                           coarse.buf, lim.buf, room_stride, capacity, out_rows.buf, out_count.buf,
                           out_keys.buf, heap, NULL, NULL, NULL, NULL, NULL};
            a.allowed = allowed.buf;
            int32_t *reach = PyMem_Malloc((B * (n_pos / CHUNK) * 2 + 1) * sizeof(int32_t));
            uint8_t *ctables = uses_groups(kernel) ? PyMem_Malloc(B * n_pos * 16) : NULL;
            if (!reach || (uses_groups(kernel) && !ctables)) {
                PyMem_Free(reach);
                PyMem_Free(ctables);
                PyErr_NoMemory();
                goto release;
            }
            max_reach(&a, B, n_codes, reach);
            a.reach = reach;
            if (uses_groups(kernel)) {
                a.codes4 = codes4.buf;
                a.groups = groups.buf;
                group_tables(&a, B, n_codes, groups.buf, ctables);
                a.ctables = ctables;
            }
            /* Before the queries of a tile, the next tile is fetched: the first lines of each
             * block in scan order when there is one query (the rest is read less often), every
             * line for a batch (which reads most of them, and from L2 after the first query). */
            Py_ssize_t lines = B == 1 ? (n_pos < PREFETCH_LINES ? n_pos : PREFETCH_LINES) : S;
            /* the group kernels read the 4-bit layout, half a line per position */
            const uint8_t *cb = uses_groups(kernel) ? codes4.buf : codes.buf;
            const Py_ssize_t width = uses_groups(kernel) ? 32 : ROWS;
            Py_BEGIN_ALLOW_THREADS
            for (Py_ssize_t tile = start; tile < end; tile += TILE) {
                Py_ssize_t stop = tile + TILE < end ? tile + TILE : end;
                for (Py_ssize_t b = stop; b < stop + TILE && b < end; b++)
                    for (Py_ssize_t k = 0; k < lines; k++)
                        __builtin_prefetch(cb + (b * S + (B == 1 ? ord[k] : k)) * width, 0, 3);
                for (Py_ssize_t q = 0; q < B; q++)  /* picking costs n_pos / 8 reads */
                    pick_tile(&a, q, n_codes, kernel)(&a, q, tile, stop);
            }
            Py_END_ALLOW_THREADS
            PyMem_Free(reach);
            PyMem_Free(ctables);
            result = Py_NewRef(Py_None);
        }
    }
release:
    PyBuffer_Release(&codes);
    PyBuffer_Release(&tables);
    PyBuffer_Release(&order);
    PyBuffer_Release(&chunk_acc);
    PyBuffer_Release(&lim);
    PyBuffer_Release(&room);
    PyBuffer_Release(&coarse);
    PyBuffer_Release(&out_rows);
    PyBuffer_Release(&out_keys);
    PyBuffer_Release(&out_count);
    if (allowed.obj) PyBuffer_Release(&allowed);
    if (codes4.obj) PyBuffer_Release(&codes4);
    if (groups.obj) PyBuffer_Release(&groups);
    return result;
}

/* exact_sums(codes, P, tables, R, rows, qidx, out): the exact table sums of some rows,
 *   out[m] = Σ_p tables[qidx[m]][p][codes[rows[m]][p]]   added in position order p = 0, 1, ...
 * codes (N, P) uint8, tables (B, P, R) float64, rows and qidx (M,) int64, out (M,) float64: the
 * same additions in the same order as numpy's `acc += table[p][codes[:, p]]`, so the same bits.
 */
static PyObject *exact_sums(PyObject *self, PyObject *args) {
    Py_buffer codes, tables, rows, qidx, out;
    Py_ssize_t P, R;
    if (!PyArg_ParseTuple(args, "y*ny*ny*y*w*", &codes, &P, &tables, &R, &rows, &qidx, &out))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t N = P > 0 ? codes.len / P : 0, M = rows.len / 8;
    Py_ssize_t B = (P > 0 && R > 0) ? tables.len / (P * R * 8) : 0;
    if (P <= 0 || R <= 0 || codes.len != N * P || tables.len != B * P * R * 8) {
        PyErr_SetString(PyExc_ValueError, "codes must hold (N, P) uint8, tables (B, P, R) float64");
    } else if (rows.len != M * 8 || qidx.len != M * 8 || out.len != M * 8) {
        PyErr_SetString(PyExc_ValueError, "rows, qidx (M,) int64 and out (M,) float64");
    } else {
        const uint8_t *c = codes.buf;
        const double *t = tables.buf;
        const int64_t *rw = rows.buf, *qi = qidx.buf;
        double *o = out.buf;
        int bad = 0;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t m = 0; m < M && !bad; m++) {
            if (rw[m] < 0 || rw[m] >= N || qi[m] < 0 || qi[m] >= B) {
                bad = 1;
                break;
            }
            const uint8_t *code = c + rw[m] * P;
            const double *tab = t + qi[m] * P * R;
            double acc = 0.0;
            for (Py_ssize_t p = 0; p < P; p++) {
                if (code[p] >= R) {
                    bad = 1;
                    break;
                }
                acc += tab[p * R + code[p]];
            }
            o[m] = acc;
        }
        Py_END_ALLOW_THREADS
        if (bad) PyErr_SetString(PyExc_ValueError, "a row, query or code outside its table");
        else result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&codes);
    PyBuffer_Release(&tables);
    PyBuffer_Release(&rows);
    PyBuffer_Release(&qidx);
    PyBuffer_Release(&out);
    return result;
}

/* kernels(): the names of the kernels this CPU runs, best first (the one kernel 0 picks). */
static PyObject *kernels(PyObject *self, PyObject *noargs) {
    static const int best_first[] = {KERNEL_VBMI, KERNEL_AVX2, KERNEL_NEON, KERNEL_PORTABLE};
    PyObject *names = PyList_New(0);
    for (int i = 0; names && i < 4; i++)
        if (cpu_runs(best_first[i])) {
            PyObject *name = PyUnicode_FromString(KERNEL_NAMES[best_first[i]]);
            if (!name || PyList_Append(names, name) < 0) Py_CLEAR(names);
            Py_XDECREF(name);
        }
    return names;
}

static PyMethodDef methods[] = {
    {"lower_bounds", lower_bounds, METH_VARARGS,
     "lower_bounds(codes_t, tables, out, n_queries, S, s0, P, block_start, block_end, "
     "accumulate, kernel): sum 8-bit table entries of 64-row blocks into uint16 "
     "(see module doc)."},
    {"prune_scan", prune_scan, METH_VARARGS,
     "prune_scan(codes_t, S, n_rows, n_codes, tables, order, chunk_acc, n_queries, n_pos, lim, room, "
     "room_stride, coarse, out_rows, out_keys, out_count, capacity, heap, block_start, "
     "block_end, kernel[, allowed[, codes4, groups]]): the rows of a batch of queries whose 8-bit bounds pass "
     "their limits, among the allowed rows "
     "(see the source)."},
    {"exact_sums", exact_sums, METH_VARARGS,
     "exact_sums(codes, P, tables, R, rows, qidx, out): float64 table sums of some rows in "
     "position order."},
    {"kernels", kernels, METH_NOARGS,
     "The kernels this CPU runs, best first: 'vbmi', 'avx2', 'neon', 'portable' (kernel 3, 2, "
     "4, 1)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastscan",
                                    "8-bit look-up-table lower bounds of code grids.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__fastscan(void) { return PyModule_Create(&module); }
