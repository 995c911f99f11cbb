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
 * `pshufb` tables). AVX2 and ARM NEON prune over a 4-bit group layout of the rows with 16-entry
 * tables (`pshufb`, `tbl`) and re-check the survivors exactly; other CPUs run a portable loop.
 * All give the same result. The caller keeps every sum below 65,536 by its choice of
 * quantization levels, so the uint16 adds never wrap.
 *
 * `lower_bounds` sums every row; `prune_scan` keeps only the rows that can still win, leaving
 * blocks early; `exact_sums` re-ranks the rows kept with the float64 tables. The kernel is
 * chosen per call (`kernel`: 0 the best this CPU runs; a kernel it lacks is refused).
 *
 * Files: this one binds the kernels to Python and picks them; fastscan_scan.h is the
 * Python-free core (pruned-scan bookkeeping, portable loops), fastscan_x86.h the VBMI and AVX2
 * kernels, fastscan_neon.h the NEON ones.
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
#include "fastscan_x86.h"
#elif defined(__aarch64__)
#include "fastscan_neon.h"
#endif

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
