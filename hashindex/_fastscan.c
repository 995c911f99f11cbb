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

/* The kernels, by the number callers pass (0: the best this CPU runs). */
enum { KERNEL_AUTO = 0, KERNEL_PORTABLE = 1, KERNEL_AVX2 = 2, KERNEL_VBMI = 3 };
static const char *const KERNEL_NAMES[] = {"auto", "portable", "avx2", "vbmi"};

static int have_vbmi(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vbmi");
}

static int have_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi2");
}

static int cpu_runs(int kernel) {
    return kernel == KERNEL_PORTABLE || (kernel == KERNEL_AVX2 && have_avx2()) ||
           (kernel == KERNEL_VBMI && have_vbmi());
}

/* The kernel to run for a caller's choice, or -1 with ValueError set: a kernel this CPU lacks
 * is refused, never replaced by another one silently. */
static int resolve_kernel(int kernel) {
    if (kernel == KERNEL_AUTO)
        return have_vbmi() ? KERNEL_VBMI : have_avx2() ? KERNEL_AVX2 : KERNEL_PORTABLE;
    if (kernel < KERNEL_PORTABLE || kernel > KERNEL_VBMI) {
        PyErr_Format(PyExc_ValueError, "kernel must be 0..3 (auto, portable, avx2, vbmi), got %d",
                     kernel);
        return -1;
    }
    if (!cpu_runs(kernel)) {
        PyErr_Format(PyExc_ValueError, "this CPU cannot run the %s kernel", KERNEL_NAMES[kernel]);
        return -1;
    }
    return kernel;
}

#define AVX2 __attribute__((target("avx2,bmi2")))

/* a <= m in every unsigned 16-bit lane (AVX2 has no unsigned compare) */
AVX2 static inline __attribute__((always_inline)) __m256i le_epu16(__m256i a, __m256i m) {
    return _mm256_cmpeq_epi16(_mm256_min_epu16(a, m), a);
}

/* 64 rows' sums (lane i of acc[0]: row 2i, acc[1]: row 2i + 1, acc[2]: row 32 + 2i, acc[3]:
 * row 33 + 2i) to and from row order */
static void rows_from_lanes(const uint16_t E[4][16], uint16_t *out) {
    for (int v = 0; v < 4; v++)
        for (int l = 0; l < 16; l++) out[(v >= 2 ? 32 : 0) + 2 * l + (v & 1)] = E[v][l];
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

static block_fn pick(int kernel) {
    return kernel == KERNEL_VBMI ? block_vbmi : kernel == KERNEL_AVX2 ? block_avx2 : block_portable;
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
    /* the AVX2 kernel's 4-bit layout and tables (NULL for the others): codes4 (nblocks, S, 32),
     * byte i of position s holding the groups of rows i (low nibble) and 32 + i (high nibble);
     * ctables (B, n_pos, 16), entry g the smallest 8-bit entry among the codes of group g */
    const uint8_t *codes4, *ctables, *groups;
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

/* ------------------------------------------------------------------ AVX2: 4-bit groups
 *
 * Without VBMI a 256-entry lookup costs 16 `pshufb`. The AVX2 kernel instead scans a second
 * layout of the rows, 4 bits per code: the code's group (the caller puts similar codes in one of
 * 16 groups per position). A group's table entry is the smallest 8-bit entry of its codes, so a
 * group sum never exceeds the 8-bit sum L of the same row, and each of the filter's conditions
 * (all of the form "sum <= limit") that L meets, the group sums meet too: a row ruled out by its
 * group sums is ruled out by L. A lookup of 64 rows is then two `pshufb` of one 16-byte table,
 * as in FAISS's fast-scan. The rows that survive every chunk get their exact 8-bit sums from
 * codes_t (`exact_emit`) and go through the same `emit` as the other kernels, so the rows kept
 * are the same. The staircase (L1 <= coarse[min(L0 >> shift, 63)]) is looked up with gathers. */

/* The rows of `alive` in block b that pass with their exact 8-bit sums L0, L1 (added as the
 * portable kernel adds them: WIDEN positions saturated to 255, then widened), then `emit`.
 * G: their group sums over all positions. Chunk by chunk, in scan order, each WIDEN positions'
 * group share of G is replaced by their exact share, so M = G − group share + exact share is a
 * bound between G and L that ends at L; a row leaves as soon as M fails the filter, before its
 * codes at the remaining positions (a cache line each) are read. */
static void exact_emit(const scan_args *a, Py_ssize_t q, Py_ssize_t b, uint64_t alive,
                       uint16_t G[2][ROWS]) {
    const uint8_t *codes = a->codes + b * a->S * ROWS;
    const uint8_t *tab = a->tables + q * a->n_pos * TABLE;
    const uint8_t *ctab = a->ctables + q * a->n_pos * 16;
    const int32_t *order = a->order + q * a->n_pos;
    const uint8_t *acc_of = a->chunk_acc + q * (a->n_pos / CHUNK);
    const int32_t *lim = a->lim + LIMS * q;
    const uint16_t *coarse = a->coarse + q * COARSE;
    int32_t M[2][ROWS];
    int rows[ROWS], n = 0;
    for (uint64_t m = alive; m; m &= m - 1) {
        int r = __builtin_ctzll(m);
        rows[n++] = r;
        M[0][r] = G[0][r];
        M[1][r] = G[1][r];
    }
    for (Py_ssize_t c = 0; c * CHUNK < a->n_pos && n; c++) {
        int32_t *acc = M[acc_of[c]];
        /* the chunk after next: its lines arrive while this one is added */
        for (Py_ssize_t k = (c + 2) * CHUNK; k < (c + 3) * CHUNK && k < a->n_pos; k++)
            __builtin_prefetch(codes + (Py_ssize_t)order[k] * ROWS, 0, 3);
        for (Py_ssize_t k0 = c * CHUNK; k0 < (c + 1) * CHUNK; k0 += WIDEN)
            for (int i = 0; i < n; i++) {
                int r = rows[i], exact = 0, group = 0;
                for (Py_ssize_t k = k0; k < k0 + WIDEN; k++) {
                    Py_ssize_t s = order[k];
                    int code = codes[s * ROWS + r];
                    exact += tab[k * TABLE + code];
                    group += ctab[k * 16 + a->groups[s * TABLE + code]];
                }
                acc[r] += (exact > 255 ? 255 : exact) - (group > 255 ? 255 : group);
            }
        int kept = 0;
        for (int i = 0; i < n; i++) {
            int r = rows[i], m0 = M[0][r], m1 = M[1][r];
            if (m0 <= lim[0] && m1 <= lim[1] && m0 + m1 <= lim[2] &&
                m1 <= coarse[stair(m0 > 65535 ? 65535 : m0, lim[3])])
                rows[kept++] = r;
            else
                alive &= ~(1ULL << r);
        }
        n = kept;
    }
    if (!alive) return;
    uint16_t L[2][ROWS];
    for (int i = 0; i < n; i++) {
        L[0][rows[i]] = (uint16_t)M[0][rows[i]];
        L[1][rows[i]] = (uint16_t)M[1][rows[i]];
    }
    emit(a, q, b, alive, L[0], L[1]);
}

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

/* The AVX2 kernel's tables of every query: (B, n_pos, 16), the smallest entry per group among
 * the first n_codes codes (groups: (S, 256), the group of each code at each position). */
static void group_tables(const scan_args *a, Py_ssize_t B, Py_ssize_t n_codes,
                         const uint8_t *groups, uint8_t *ctables) {
    memset(ctables, 255, B * a->n_pos * 16);
    for (Py_ssize_t q = 0; q < B; q++)
        for (Py_ssize_t k = 0; k < a->n_pos; k++) {
            const uint8_t *t = a->tables + (q * a->n_pos + k) * TABLE;
            const uint8_t *g = groups + (Py_ssize_t)a->order[q * a->n_pos + k] * TABLE;
            uint8_t *ct = ctables + (q * a->n_pos + k) * 16;
            for (Py_ssize_t j = 0; j < n_codes; j++)
                if (t[j] < ct[g[j]]) ct[g[j]] = t[j];
        }
}

typedef void (*tile_fn)(const scan_args *, Py_ssize_t, Py_ssize_t, Py_ssize_t);

/* Query q's tile kernel: its table width, and whether all its chunks add to L0. */
static tile_fn pick_tile(const scan_args *a, Py_ssize_t q, Py_ssize_t n_codes, int kernel) {
    if (kernel == KERNEL_PORTABLE) return scan_tile_portable;
    if (kernel == KERNEL_AVX2) return scan_tile_avx2;
    int single = 1;
    for (Py_ssize_t c = 0; c < a->n_pos / CHUNK; c++)
        single &= a->chunk_acc[q * (a->n_pos / CHUNK) + c] == 0;
    if (n_codes <= 128) return single ? scan_tile_vbmi2s : scan_tile_vbmi2;
    if (n_codes <= 192) return single ? scan_tile_vbmi3s : scan_tile_vbmi3;
    return single ? scan_tile_vbmi4s : scan_tile_vbmi4;
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
    } else if (kernel == KERNEL_AVX2 &&
               (!codes4.buf || !groups.buf || codes4.len != nblocks * S * 32 ||
                groups.len != S * TABLE)) {
        PyErr_SetString(PyExc_ValueError, "the avx2 kernel needs codes4 (nblocks, S, 32) uint8 "
                                          "and groups (S, 256) uint8");
    } else {
        const int32_t *ord = order.buf, *lm = lim.buf;
        const uint8_t *acc = chunk_acc.buf;
        int bad = 0;
        for (Py_ssize_t i = 0; i < B * n_pos; i++) bad |= ord[i] < 0 || ord[i] >= S;
        for (Py_ssize_t i = 0; i < B * (n_pos / CHUNK); i++) bad |= acc[i] > 1;
        if (kernel == KERNEL_AVX2)
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
            uint8_t *ctables = kernel == KERNEL_AVX2 ? PyMem_Malloc(B * n_pos * 16) : NULL;
            if (!reach || (kernel == KERNEL_AVX2 && !ctables)) {
                PyMem_Free(reach);
                PyMem_Free(ctables);
                PyErr_NoMemory();
                goto release;
            }
            max_reach(&a, B, n_codes, reach);
            a.reach = reach;
            if (kernel == KERNEL_AVX2) {
                a.codes4 = codes4.buf;
                a.groups = groups.buf;
                group_tables(&a, B, n_codes, groups.buf, ctables);
                a.ctables = ctables;
            }
            /* Before the queries of a tile, the next tile is fetched: the first lines of each
             * block in scan order when there is one query (the rest is read less often), every
             * line for a batch (which reads most of them, and from L2 after the first query). */
            Py_ssize_t lines = B == 1 ? (n_pos < PREFETCH_LINES ? n_pos : PREFETCH_LINES) : S;
            /* the AVX2 kernel reads the 4-bit layout, half a line per position */
            const uint8_t *cb = kernel == KERNEL_AVX2 ? codes4.buf : codes.buf;
            const Py_ssize_t width = kernel == KERNEL_AVX2 ? 32 : ROWS;
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
    PyObject *names = PyList_New(0);
    for (int k = KERNEL_VBMI; names && k >= KERNEL_PORTABLE; k--)
        if (cpu_runs(k)) {
            PyObject *name = PyUnicode_FromString(KERNEL_NAMES[k]);
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
     "The kernels this CPU runs, best first: 'vbmi', 'avx2', 'portable' (kernel 3, 2, 1)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastscan",
                                    "8-bit look-up-table lower bounds of code grids.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__fastscan(void) { return PyModule_Create(&module); }
