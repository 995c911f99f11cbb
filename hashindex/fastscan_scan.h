/* The Python-free core of the fastscan kernels (`_fastscan.c` binds them to Python): the
 * layout's constants, the pruned scan's arguments and bookkeeping (limits, heap, emit), the
 * portable C loops every CPU runs and the 4-bit group scan's exact re-check. The SIMD kernels
 * build on it: fastscan_x86.h (AVX2, VBMI) and fastscan_neon.h (NEON), each included by
 * `_fastscan.c` on its architecture; tests/hashindex/native/neon_harness.c includes the NEON
 * one alone, compiled for aarch64 and run under qemu, to check it against the portable loops. */
#ifndef FASTSCAN_SCAN_H
#define FASTSCAN_SCAN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define ROWS 64
#define TABLE 256
/* Blocks scored against one query before the next query: 32 blocks of 2 × 64 positions are
 * 256 KiB of codes, which stay in L2 while each query's tables (32 KiB) stay in L1. */
#define TILE 32

static void block_portable(const uint8_t *codes, const uint8_t *table, ptrdiff_t P,
                           uint16_t *out, int accumulate) {
    uint16_t acc[ROWS];
    if (accumulate) memcpy(acc, out, sizeof acc);
    else memset(acc, 0, sizeof acc);
    for (ptrdiff_t p = 0; p < P; p++) {
        const uint8_t *c = codes + p * ROWS;
        const uint8_t *t = table + p * TABLE;
        for (int r = 0; r < ROWS; r++) acc[r] = (uint16_t)(acc[r] + t[c[r]]);
    }
    memcpy(out, acc, sizeof acc);
}

/* 64 rows' sums (lane i of acc[0]: row 2i, acc[1]: row 2i + 1, acc[2]: row 32 + 2i, acc[3]:
 * row 33 + 2i) to and from row order */
static inline void rows_from_lanes(const uint16_t E[4][16], uint16_t *out) {
    for (int v = 0; v < 4; v++)
        for (int l = 0; l < 16; l++) out[(v >= 2 ? 32 : 0) + 2 * l + (v & 1)] = E[v][l];
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
    ptrdiff_t S, n_rows, n_pos;
    const uint8_t *tables, *chunk_acc;
    const int32_t *order, *room;
    const uint16_t *coarse;
    int32_t *lim;
    ptrdiff_t room_stride, capacity;
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
static void max_reach(scan_args *a, ptrdiff_t B, ptrdiff_t n_codes, int32_t *reach) {
    ptrdiff_t chunks = a->n_pos / CHUNK;
    for (ptrdiff_t q = 0; q < B; q++) {
        int32_t sum[2] = {0, 0};
        for (ptrdiff_t c = 0; c < chunks; c++) {
            for (ptrdiff_t k = c * CHUNK; k < (c + 1) * CHUNK; k++) {
                const uint8_t *t = a->tables + (q * a->n_pos + k) * TABLE;
                int m = 0;
                for (ptrdiff_t j = 0; j < n_codes; j++) m = t[j] > m ? t[j] : m;
                sum[a->chunk_acc[q * chunks + c]] += m;
            }
            reach[(q * chunks + c) * 2] = sum[0];
            reach[(q * chunks + c) * 2 + 1] = sum[1];
        }
    }
}

static void heap_push(uint32_t *keys, int64_t *rows, int64_t *count, ptrdiff_t cap,
                      uint32_t key, int64_t row, int32_t *lim2) {
    ptrdiff_t n = *count, i;
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
            ptrdiff_t c = 2 * i + 1;
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
static void emit(const scan_args *a, ptrdiff_t q, ptrdiff_t b, uint64_t alive,
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

static uint64_t valid_rows(const scan_args *a, ptrdiff_t b) {
    ptrdiff_t left = a->n_rows - b * ROWS;
    uint64_t real = left >= ROWS ? ~0ULL : (left <= 0 ? 0 : (1ULL << left) - 1);
    return a->allowed ? real & a->allowed[b] : real;
}

static void scan_block_portable(const scan_args *a, ptrdiff_t q, ptrdiff_t b) {
    const uint8_t *codes = a->codes + b * a->S * ROWS;
    const uint8_t *tab = a->tables + q * a->n_pos * TABLE;
    const int32_t *order = a->order + q * a->n_pos;
    const uint8_t *acc_of = a->chunk_acc + q * (a->n_pos / CHUNK);
    const int32_t *lim = a->lim + LIMS * q;
    const uint16_t *coarse = a->coarse + q * COARSE;
    uint16_t L[2][ROWS];
    memset(L, 0, sizeof L);
    uint64_t alive = valid_rows(a, b);
    for (ptrdiff_t c = 0; c * CHUNK < a->n_pos && alive; c++) {
        uint16_t *acc = L[acc_of[c]];
        for (int h = 0; h < CHUNK; h += WIDEN) {
            uint16_t sum8[ROWS] = {0};
            for (int j = h; j < h + WIDEN; j++) {
                ptrdiff_t k = c * CHUNK + j;
                const uint8_t *t = tab + k * TABLE, *code = codes + (ptrdiff_t)order[k] * ROWS;
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

static void scan_tile_portable(const scan_args *a, ptrdiff_t q, ptrdiff_t b0, ptrdiff_t b1) {
    for (ptrdiff_t b = b0; b < b1; b++) scan_block_portable(a, q, b);
}

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
static void exact_emit(const scan_args *a, ptrdiff_t q, ptrdiff_t b, uint64_t alive,
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
    for (ptrdiff_t c = 0; c * CHUNK < a->n_pos && n; c++) {
        int32_t *acc = M[acc_of[c]];
        /* the chunk after next: its lines arrive while this one is added */
        for (ptrdiff_t k = (c + 2) * CHUNK; k < (c + 3) * CHUNK && k < a->n_pos; k++)
            __builtin_prefetch(codes + (ptrdiff_t)order[k] * ROWS, 0, 3);
        for (ptrdiff_t k0 = c * CHUNK; k0 < (c + 1) * CHUNK; k0 += WIDEN)
            for (int i = 0; i < n; i++) {
                int r = rows[i], exact = 0, group = 0;
                for (ptrdiff_t k = k0; k < k0 + WIDEN; k++) {
                    ptrdiff_t s = order[k];
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

/* The AVX2 kernel's tables of every query: (B, n_pos, 16), the smallest entry per group among
 * the first n_codes codes (groups: (S, 256), the group of each code at each position). */
static void group_tables(const scan_args *a, ptrdiff_t B, ptrdiff_t n_codes,
                         const uint8_t *groups, uint8_t *ctables) {
    memset(ctables, 255, B * a->n_pos * 16);
    for (ptrdiff_t q = 0; q < B; q++)
        for (ptrdiff_t k = 0; k < a->n_pos; k++) {
            const uint8_t *t = a->tables + (q * a->n_pos + k) * TABLE;
            const uint8_t *g = groups + (ptrdiff_t)a->order[q * a->n_pos + k] * TABLE;
            uint8_t *ct = ctables + (q * a->n_pos + k) * 16;
            for (ptrdiff_t j = 0; j < n_codes; j++)
                if (t[j] < ct[g[j]]) ct[g[j]] = t[j];
        }
}

#endif /* FASTSCAN_SCAN_H */
