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
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define ROWS 64
#define TABLE 256
/* Blocks scored against one query before the next query: 32 blocks of 2 × 64 positions are
 * 256 KiB of codes, which stay in L2 while each query's tables (32 KiB) stay in L1. */
#define TILE 32

static void block_portable(const uint8_t *codes, const uint8_t *table, Py_ssize_t P,
                           uint16_t *out, int accumulate) {
    uint16_t acc[ROWS];
    if (accumulate) memcpy(acc, out, sizeof acc);
    else memset(acc, 0, sizeof acc);
    for (Py_ssize_t p = 0; p < P; p++) {
        const uint8_t *c = codes + p * ROWS;
        const uint8_t *t = table + p * TABLE;
        for (int r = 0; r < ROWS; r++) acc[r] = (uint16_t)(acc[r] + t[c[r]]);
    }
    memcpy(out, acc, sizeof acc);
}

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

typedef void (*block_fn)(const uint8_t *, const uint8_t *, Py_ssize_t, uint16_t *, int);

static int have_vbmi(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vbmi");
}

static block_fn pick(int force_portable) {
    return (!force_portable && have_vbmi()) ? block_vbmi : block_portable;
}

/* lower_bounds(codes_t, tables, out, n_queries, S, s0, P, block_start, block_end, accumulate,
 *              portable)
 *
 * tables: uint8 (n_queries, P, 256) for positions s0 .. s0+P-1 of the S in codes_t;
 * out: uint16 (n_queries, nblocks * 64). Each block of codes is read once and scored against
 * every query while it is in cache: one pass over the codes answers a whole batch.
 */
static PyObject *lower_bounds(PyObject *self, PyObject *args) {
    Py_buffer codes, tables, out;
    Py_ssize_t n_queries, S, s0, P, start, end;
    int accumulate, portable;
    if (!PyArg_ParseTuple(args, "y*y*w*nnnnnnpp", &codes, &tables, &out, &n_queries, &S, &s0, &P,
                          &start, &end, &accumulate, &portable))
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
    } else {
        block_fn fn = pick(portable);
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

/* ------------------------------------------------------------------ pruned scan
 *
 * prune_scan walks the blocks of codes_t once for a batch of queries and keeps, per query, only
 * the rows whose bound can still matter. Each query lists its positions in the order to visit
 * them (`order`, most informative first, padded with zero tables to a multiple of CHUNK) and,
 * per chunk of CHUNK positions, which of two accumulators it adds to (0: the first codebook,
 * 1: the second; S_normal and S_abnormal use only accumulator 0). With L0, L1 the sums:
 *
 *   filter mode: a row is kept when L0 <= lim[0], L1 <= lim[1], L0 + L1 <= lim[2] and
 *                L1 <= room[L0] (room non-increasing, lim[0] < room_stride); kept rows are
 *                written to out_rows in increasing order, out_count counts them all (a count
 *                above `capacity` means the buffer overflowed and the caller must rescan);
 *   heap mode:   the `capacity` rows with the smallest L0 + L1 are kept in a max-heap
 *                (out_keys, out_rows, out_count), and lim[2] follows the heap's top.
 *
 * All sums only grow, so a block is abandoned for a query as soon as none of its 64 rows meets
 * the first three conditions: most blocks are left after a few chunks, without reading the
 * rest of their positions.
 */
#define CHUNK 8
/* Positions added in 8 bits (saturating: a sum that saturates only gets a weaker bound) before
 * they are widened to 16 bits; tables of at most 255 / WIDEN levels never saturate. */
#define WIDEN 4
#define PREFETCH 2         /* blocks ahead */
/* Positions of a block prefetched a tile ahead for a single query: the first two chunks, which
 * every block reads. Fetching more (80 lines, the first ten chunks) fetched lines that most
 * blocks never read, since they are left after about six chunks, and cost memory bandwidth:
 * 1M S_sum D_H went from 8.4 to 7.6 ms a query with 16 (2 threads, side by side, load 2.4). */
#define PREFETCH_LINES 16
#define LIMS 4     /* per query: L0 max, L1 max, L0 + L1 max, staircase shift */
#define COARSE 64  /* staircase steps: coarse[k] >= room[L0] for every L0 >> shift == k */

static inline int stair(int l0, int shift) {
    int k = l0 >> shift;
    return k < COARSE - 1 ? k : COARSE - 1;
}

typedef struct {
    const uint8_t *codes;
    Py_ssize_t S, n_rows, n_pos;
    const uint8_t *tables, *chunk_acc;
    const int32_t *order, *room;
    const uint16_t *coarse;
    int32_t *lim;
    Py_ssize_t room_stride, capacity;
    int64_t *out_rows, *out_count;
    uint32_t *out_keys;
    int heap;
    /* per query and chunk c the largest L0, L1 any row can have after chunks 0..c, (B, n_pos /
     * CHUNK, 2): while the limits admit those, no row can fail and the check is skipped */
    const int32_t *reach;
    /* per block a word of the rows a query may return (bit r: row 64 * b + r), shared by the
     * batch; NULL: every row. A row outside it is dead from the start, like a padding row. */
    const uint64_t *allowed;
} scan_args;

/* reach (see scan_args) of every query: Σ of each position's largest table entry among the
 * first n_codes, in scan order (an upper bound: the kernel's 8-bit sums only saturate lower). */
static void max_reach(scan_args *a, Py_ssize_t B, Py_ssize_t n_codes, int32_t *reach) {
    Py_ssize_t chunks = a->n_pos / CHUNK;
    for (Py_ssize_t q = 0; q < B; q++) {
        int32_t sum[2] = {0, 0};
        for (Py_ssize_t c = 0; c < chunks; c++) {
            for (Py_ssize_t k = c * CHUNK; k < (c + 1) * CHUNK; k++) {
                const uint8_t *t = a->tables + (q * a->n_pos + k) * TABLE;
                int m = 0;
                for (Py_ssize_t j = 0; j < n_codes; j++) m = t[j] > m ? t[j] : m;
                sum[a->chunk_acc[q * chunks + c]] += m;
            }
            reach[(q * chunks + c) * 2] = sum[0];
            reach[(q * chunks + c) * 2 + 1] = sum[1];
        }
    }
}

static void heap_push(uint32_t *keys, int64_t *rows, int64_t *count, Py_ssize_t cap,
                      uint32_t key, int64_t row, int32_t *lim2) {
    Py_ssize_t n = *count, i;
    if (n < cap) {  /* sift up */
        for (i = n; i > 0 && keys[(i - 1) / 2] < key; i = (i - 1) / 2) {
            keys[i] = keys[(i - 1) / 2];
            rows[i] = rows[(i - 1) / 2];
        }
        keys[i] = key;
        rows[i] = row;
        *count = ++n;
    } else if (key < keys[0]) {  /* replace the top, sift down */
        i = 0;
        for (;;) {
            Py_ssize_t c = 2 * i + 1;
            if (c >= n) break;
            if (c + 1 < n && keys[c + 1] > keys[c]) c++;
            if (keys[c] <= key) break;
            keys[i] = keys[c];
            rows[i] = rows[c];
            i = c;
        }
        keys[i] = key;
        rows[i] = row;
    }
    if (n >= cap) *lim2 = (int32_t)keys[0];
}

/* Keep the rows of `alive` (bit r: row 64 * b + r) that pass every condition. */
static void emit(const scan_args *a, Py_ssize_t q, Py_ssize_t b, uint64_t alive,
                 const uint16_t *L0, const uint16_t *L1) {
    int32_t *lim = a->lim + LIMS * q;
    int64_t *count = a->out_count + q;
    int64_t *rows = a->out_rows + q * a->capacity;
    const int32_t *room = a->room + q * a->room_stride;
    while (alive) {
        int r = __builtin_ctzll(alive);
        alive &= alive - 1;
        int32_t l0 = L0[r], l1 = L1[r];
        if (l0 > lim[0] || l1 > lim[1] || l0 + l1 > lim[2]) continue;
        int64_t row = b * ROWS + r;
        if (a->heap) {
            heap_push(a->out_keys + q * a->capacity, rows, count, a->capacity,
                      (uint32_t)(l0 + l1), row, lim + 2);
        } else if (l1 <= room[l0]) {
            if (*count < a->capacity) rows[*count] = row;
            (*count)++;
        }
    }
}

static uint64_t valid_rows(const scan_args *a, Py_ssize_t b) {
    Py_ssize_t left = a->n_rows - b * ROWS;
    uint64_t real = left >= ROWS ? ~0ULL : (left <= 0 ? 0 : (1ULL << left) - 1);
    return a->allowed ? real & a->allowed[b] : real;
}

static void scan_block_portable(const scan_args *a, Py_ssize_t q, Py_ssize_t b) {
    const uint8_t *codes = a->codes + b * a->S * ROWS;
    const uint8_t *tab = a->tables + q * a->n_pos * TABLE;
    const int32_t *order = a->order + q * a->n_pos;
    const uint8_t *acc_of = a->chunk_acc + q * (a->n_pos / CHUNK);
    const int32_t *lim = a->lim + LIMS * q;
    const uint16_t *coarse = a->coarse + q * COARSE;
    uint16_t L[2][ROWS];
    memset(L, 0, sizeof L);
    uint64_t alive = valid_rows(a, b);
    for (Py_ssize_t c = 0; c * CHUNK < a->n_pos && alive; c++) {
        uint16_t *acc = L[acc_of[c]];
        for (int h = 0; h < CHUNK; h += WIDEN) {
            uint16_t sum8[ROWS] = {0};
            for (int j = h; j < h + WIDEN; j++) {
                Py_ssize_t k = c * CHUNK + j;
                const uint8_t *t = tab + k * TABLE, *code = codes + (Py_ssize_t)order[k] * ROWS;
                for (int r = 0; r < ROWS; r++) sum8[r] = (uint16_t)(sum8[r] + t[code[r]]);
            }
            for (int r = 0; r < ROWS; r++)
                acc[r] = (uint16_t)(acc[r] + (sum8[r] > 255 ? 255 : sum8[r]));
        }
        uint64_t keep = 0;
        for (int r = 0; r < ROWS; r++)
            keep |= (uint64_t)(L[0][r] <= lim[0] && L[1][r] <= lim[1] &&
                               L[0][r] + L[1][r] <= lim[2] &&
                               L[1][r] <= coarse[stair(L[0][r], lim[3])]) << r;
        alive &= keep;
    }
    if (alive) emit(a, q, b, alive, L[0], L[1]);
}

static void scan_tile_portable(const scan_args *a, Py_ssize_t q, Py_ssize_t b0, Py_ssize_t b1) {
    for (Py_ssize_t b = b0; b < b1; b++) scan_block_portable(a, q, b);
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

typedef void (*tile_fn)(const scan_args *, Py_ssize_t, Py_ssize_t, Py_ssize_t);

/* Query q's tile kernel: its table width, and whether all its chunks add to L0. */
static tile_fn pick_tile(const scan_args *a, Py_ssize_t q, Py_ssize_t n_codes, int portable) {
    if (portable || !have_vbmi()) return scan_tile_portable;
    int single = 1;
    for (Py_ssize_t c = 0; c < a->n_pos / CHUNK; c++)
        single &= a->chunk_acc[q * (a->n_pos / CHUNK) + c] == 0;
    if (n_codes <= 128) return single ? scan_tile_vbmi2s : scan_tile_vbmi2;
    if (n_codes <= 192) return single ? scan_tile_vbmi3s : scan_tile_vbmi3;
    return single ? scan_tile_vbmi4s : scan_tile_vbmi4;
}

/* prune_scan(codes_t, S, n_rows, n_codes, tables, order, chunk_acc, n_queries, n_pos, lim, room,
 *            room_stride, out_rows, out_keys, out_count, capacity, heap, block_start,
 *            block_end, portable[, allowed]); see the comment above. allowed: (nblocks,) uint64,
 *            bit r of word b set where row 64 * b + r may be kept (left out: every row). */
static PyObject *prune_scan(PyObject *self, PyObject *args) {
    Py_buffer codes, tables, order, chunk_acc, lim, room, coarse, out_rows, out_keys, out_count;
    Py_buffer allowed = {0};  /* optional: obj stays NULL when left out */
    Py_ssize_t S, n_rows, n_queries, n_pos, room_stride, capacity, start, end, n_codes;
    int heap, portable;
    if (!PyArg_ParseTuple(args, "y*nnny*y*y*nnw*y*ny*w*w*w*npnnp|y*", &codes, &S, &n_rows,
                          &n_codes, &tables,
                          &order, &chunk_acc, &n_queries, &n_pos, &lim, &room, &room_stride,
                          &coarse,
                          &out_rows, &out_keys, &out_count, &capacity, &heap, &start, &end,
                          &portable, &allowed))
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
    } else if (allowed.obj && allowed.len != nblocks * 8) {
        PyErr_SetString(PyExc_ValueError, "allowed must hold (nblocks,) uint64 words");
    } else {
        const int32_t *ord = order.buf, *lm = lim.buf;
        const uint8_t *acc = chunk_acc.buf;
        int bad = 0;
        for (Py_ssize_t i = 0; i < B * n_pos; i++) bad |= ord[i] < 0 || ord[i] >= S;
        for (Py_ssize_t i = 0; i < B * (n_pos / CHUNK); i++) bad |= acc[i] > 1;
        for (Py_ssize_t q = 0; q < B; q++)
            bad |= (!heap && lm[LIMS * q] >= room_stride) || lm[LIMS * q + 3] < 0 ||
                   lm[LIMS * q + 3] > 16;
        if (bad) {
            PyErr_SetString(PyExc_ValueError, "order outside 0..S-1, chunk_acc not 0/1, "
                                              "lim[0] >= room_stride or a shift outside 0..16");
        } else {
            scan_args a = {codes.buf, S, n_rows, n_pos, tables.buf, acc, ord, room.buf,
                           coarse.buf, lim.buf, room_stride, capacity, out_rows.buf, out_count.buf,
                           out_keys.buf, heap, NULL, NULL};
            a.allowed = allowed.obj ? allowed.buf : NULL;
            int32_t *reach = PyMem_Malloc((B * (n_pos / CHUNK) * 2 + 1) * sizeof(int32_t));
            if (!reach) {
                PyErr_NoMemory();
                goto release;
            }
            max_reach(&a, B, n_codes, reach);
            a.reach = reach;
            /* Before the queries of a tile, the next tile is fetched: the first lines of each
             * block in scan order when there is one query (the rest is read less often), every
             * line for a batch (which reads most of them, and from L2 after the first query). */
            Py_ssize_t lines = B == 1 ? (n_pos < PREFETCH_LINES ? n_pos : PREFETCH_LINES) : S;
            const uint8_t *cb = codes.buf;
            Py_BEGIN_ALLOW_THREADS
            for (Py_ssize_t tile = start; tile < end; tile += TILE) {
                Py_ssize_t stop = tile + TILE < end ? tile + TILE : end;
                for (Py_ssize_t b = stop; b < stop + TILE && b < end; b++)
                    for (Py_ssize_t k = 0; k < lines; k++)
                        __builtin_prefetch(cb + (b * S + (B == 1 ? ord[k] : k)) * ROWS, 0, 3);
                for (Py_ssize_t q = 0; q < B; q++)  /* picking costs n_pos / 8 reads */
                    pick_tile(&a, q, n_codes, portable)(&a, q, tile, stop);
            }
            Py_END_ALLOW_THREADS
            PyMem_Free(reach);
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

static PyObject *simd_name(PyObject *self, PyObject *noargs) {
    return PyUnicode_FromString(have_vbmi() ? "avx512-vbmi" : "portable");
}

static PyMethodDef methods[] = {
    {"lower_bounds", lower_bounds, METH_VARARGS,
     "lower_bounds(codes_t, tables, out, n_queries, S, s0, P, block_start, block_end, "
     "accumulate, portable): sum 8-bit table entries of 64-row blocks into uint16 "
     "(see module doc)."},
    {"prune_scan", prune_scan, METH_VARARGS,
     "prune_scan(codes_t, S, n_rows, n_codes, tables, order, chunk_acc, n_queries, n_pos, lim, room, "
     "room_stride, coarse, out_rows, out_keys, out_count, capacity, heap, block_start, "
     "block_end, portable[, allowed]): the rows of a batch of queries whose 8-bit bounds pass "
     "their limits, among the allowed rows "
     "(see the source)."},
    {"exact_sums", exact_sums, METH_VARARGS,
     "exact_sums(codes, P, tables, R, rows, qidx, out): float64 table sums of some rows in "
     "position order."},
    {"simd_name", simd_name, METH_NOARGS, "The kernel this CPU runs: avx512-vbmi or portable."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastscan",
                                    "8-bit look-up-table lower bounds of code grids.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__fastscan(void) { return PyModule_Create(&module); }
