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

static PyObject *simd_name(PyObject *self, PyObject *noargs) {
    return PyUnicode_FromString(have_vbmi() ? "avx512-vbmi" : "portable");
}

static PyMethodDef methods[] = {
    {"lower_bounds", lower_bounds, METH_VARARGS,
     "lower_bounds(codes_t, tables, out, n_queries, S, s0, P, block_start, block_end, "
     "accumulate, portable): sum 8-bit table entries of 64-row blocks into uint16 "
     "(see module doc)."},
    {"simd_name", simd_name, METH_NOARGS, "The kernel this CPU runs: avx512-vbmi or portable."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastscan",
                                    "8-bit look-up-table lower bounds of code grids.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__fastscan(void) { return PyModule_Create(&module); }
