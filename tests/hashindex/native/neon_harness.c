/* The NEON kernels (hashindex/fastscan_neon.h) against the portable C loops, on random cases:
 * built for aarch64 and run under qemu by tests/hashindex/test_neon.py (no Python needed).
 *
 *   prune scan, filter mode: the rows kept, per query, equal the portable kernel's, and equal
 *     a plain recount of the limits (a third reference, independent of both kernels);
 *   prune scan, heap mode: the same heap (keys and rows) and limit;
 *   lower_bounds blocks: block_neon's sums equal block_portable's, with and without
 *     accumulating.
 * Exit status 0 when every case agrees; each disagreement is printed. */
#include <stdio.h>
#include <stdlib.h>

#include "fastscan_neon.h"

#ifndef FASTSCAN_NEON
#error "build for aarch64: the NEON kernels are compiled only there"
#endif

static uint64_t state = 0x9E3779B97F4A7C15ULL;
static uint32_t rnd(uint32_t n) { /* xorshift64*, uniform enough for test data */
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return (uint32_t)((state * 0x2545F4914F6CDD1DULL) >> 33) % n;
}

static int cmp_int(const void *x, const void *y) {
    int a = *(const int *)x, b = *(const int *)y;
    return (a > b) - (a < b);
}

typedef void (*tile)(const scan_args *, ptrdiff_t, ptrdiff_t, ptrdiff_t);

static void run(scan_args *a, ptrdiff_t B, ptrdiff_t nblocks, tile fn) {
    for (ptrdiff_t t = 0; t < nblocks; t += TILE)
        for (ptrdiff_t q = 0; q < B; q++) fn(a, q, t, t + TILE < nblocks ? t + TILE : nblocks);
}

int main(void) {
    int failures = 0, cases = 0, kept_total = 0;
    for (int trial = 0; trial < 60; trial++) {
        ptrdiff_t S = 4 + rnd(12), n_rows = rnd(7 * ROWS) + 1, nblocks = (n_rows + ROWS - 1) / ROWS;
        ptrdiff_t n_codes = 1 + rnd(256), B = 1 + rnd(3), n_pos = CHUNK * (1 + rnd(3));
        int all_first = trial % 3 == 0; /* every chunk to L0: the single-accumulator case */
        uint8_t *codes = calloc(nblocks * S * ROWS, 1), *codes4 = calloc(nblocks * S * 32, 1);
        uint8_t *groups = malloc(S * TABLE), *tables = malloc(B * n_pos * TABLE);
        uint8_t *acc_of = malloc(B * (n_pos / CHUNK)), *ctables = malloc(B * n_pos * 16);
        int32_t *order = malloc(B * n_pos * 4), *lim = malloc(B * LIMS * 4);
        int32_t *reach = malloc(B * (n_pos / CHUNK) * 2 * 4 + 4);
        int32_t *L = calloc(B * 2 * nblocks * ROWS, 4);
        for (ptrdiff_t r = 0; r < n_rows; r++)
            for (ptrdiff_t s = 0; s < S; s++)
                codes[((r / ROWS) * S + s) * ROWS + r % ROWS] = (uint8_t)rnd((uint32_t)n_codes);
        for (ptrdiff_t i = 0; i < S * TABLE; i++) groups[i] = (uint8_t)rnd(16);
        for (ptrdiff_t b = 0; b < nblocks; b++)
            for (ptrdiff_t s = 0; s < S; s++)
                for (int i = 0; i < 32; i++) {
                    const uint8_t *c = codes + (b * S + s) * ROWS;
                    codes4[(b * S + s) * 32 + i] =
                        (uint8_t)(groups[s * TABLE + c[i]] | groups[s * TABLE + c[i + 32]] << 4);
                }
        for (ptrdiff_t i = 0; i < B * n_pos * TABLE; i++) tables[i] = (uint8_t)rnd(64);
        for (ptrdiff_t i = 0; i < B * n_pos; i++) order[i] = (int32_t)rnd((uint32_t)S);
        for (ptrdiff_t i = 0; i < B * (n_pos / CHUNK); i++) acc_of[i] = all_first ? 0 : rnd(2);
        /* the exact sums, and limits around their middle */
        for (ptrdiff_t q = 0; q < B; q++)
            for (ptrdiff_t r = 0; r < n_rows; r++)
                for (ptrdiff_t k = 0; k < n_pos; k++) {
                    int s = order[q * n_pos + k];
                    int code = codes[((r / ROWS) * S + s) * ROWS + r % ROWS];
                    L[(q * 2 + acc_of[q * (n_pos / CHUNK) + k / CHUNK]) * nblocks * ROWS + r] +=
                        tables[(q * n_pos + k) * TABLE + code];
                }
        int32_t stride = 0;
        int32_t *room_all = NULL;
        uint16_t *coarse = malloc(B * COARSE * 2);
        int32_t l0max[3], shift[3];
        for (ptrdiff_t q = 0; q < B; q++) {
            const int32_t *l0 = L + q * 2 * nblocks * ROWS, *l1 = l0 + nblocks * ROWS;
            int32_t mid0 = l0[rnd((uint32_t)n_rows)], mid1 = l1[rnd((uint32_t)n_rows)];
            l0max[q] = mid0 + (int32_t)rnd(40);
            lim[q * LIMS] = l0max[q];
            lim[q * LIMS + 1] = mid1 + (int32_t)rnd(40);
            lim[q * LIMS + 2] = mid0 + mid1 + (int32_t)rnd(60);
            if (l0max[q] + 1 > stride) stride = l0max[q] + 1;
        }
        room_all = malloc(B * stride * 4);
        for (ptrdiff_t q = 0; q < B; q++) {
            int32_t *room = room_all + q * stride, size = l0max[q] + 1;
            for (int32_t x = 0; x < stride; x++) /* non-increasing, -1 past L0 max */
                room[x] = x < size ? lim[q * LIMS + 1] - x / (1 + (int32_t)rnd(3)) : -1;
            for (int32_t x = 1; x < size; x++)
                if (room[x] > room[x - 1]) room[x] = room[x - 1];
            int bits = 0;
            while ((1 << bits) < size) bits++;
            shift[q] = bits > 6 ? bits - 6 : 0;
            lim[q * LIMS + 3] = shift[q];
            for (int k = 0; k < COARSE; k++) {
                int32_t x = (k << shift[q]) < size ? (k << shift[q]) : size - 1;
                coarse[q * COARSE + k] = (uint16_t)(room[x] < 0 ? 0 : room[x]);
            }
        }
        ptrdiff_t cap = nblocks * ROWS;
        int64_t *rows[2], *count[2];
        uint32_t *keys[2];
        for (int k = 0; k < 2; k++) {
            rows[k] = calloc(B * cap, 8);
            keys[k] = calloc(B * cap, 4);
            count[k] = calloc(B, 8);
        }
        scan_args a = {codes, S, n_rows, n_pos, tables, acc_of, order, room_all, coarse, lim,
                       stride, cap, NULL, NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL};
        max_reach(&a, B, n_codes, reach);
        a.reach = reach;
        a.codes4 = codes4;
        a.groups = groups;
        group_tables(&a, B, n_codes, groups, ctables);
        a.ctables = ctables;
        tile fns[2] = {scan_tile_portable, scan_tile_neon};
        for (int k = 0; k < 2; k++) { /* filter mode */
            a.out_rows = rows[k];
            a.out_keys = keys[k];
            a.out_count = count[k];
            run(&a, B, nblocks, fns[k]);
        }
        for (ptrdiff_t q = 0; q < B; q++) {
            cases++;
            /* the recount: the rows within every limit */
            const int32_t *l0 = L + q * 2 * nblocks * ROWS, *l1 = l0 + nblocks * ROWS;
            const int32_t *lm = lim + q * LIMS, *room = room_all + q * stride;
            int64_t expect = 0;
            int bad = 0;
            for (ptrdiff_t r = 0; r < n_rows; r++) {
                int pass = l0[r] <= lm[0] && l1[r] <= lm[1] && l0[r] + l1[r] <= lm[2] &&
                           l1[r] <= room[l0[r] < stride ? l0[r] : stride - 1];
                if (pass) bad |= expect >= cap || rows[0][q * cap + expect] != r, expect++;
            }
            bad |= count[0][q] != expect || count[1][q] != expect;
            for (int64_t i = 0; i < expect && i < cap; i++)
                bad |= rows[1][q * cap + i] != rows[0][q * cap + i];
            kept_total += (int)expect;
            if (bad) {
                printf("FAIL filter trial %d query %td: portable %lld, neon %lld, recount %lld\n",
                       trial, q, (long long)count[0][q], (long long)count[1][q], (long long)expect);
                failures++;
            }
        }
        /* heap mode: the `small` rows of smallest L0 + L1 */
        ptrdiff_t small = 1 + rnd(40);
        int32_t lims[2][3 * LIMS];
        uint16_t open[3 * COARSE];
        for (int i = 0; i < 3 * COARSE; i++) open[i] = 65535;
        for (int k = 0; k < 2; k++) {
            for (ptrdiff_t q = 0; q < B; q++) {
                lims[k][q * LIMS] = lims[k][q * LIMS + 1] = lims[k][q * LIMS + 2] = 65535;
                lims[k][q * LIMS + 3] = 0;
                count[k][q] = 0;
            }
            scan_args h = a;
            h.lim = lims[k];
            h.coarse = open;
            h.room = NULL;
            h.room_stride = 0;
            h.capacity = small;
            h.heap = 1;
            h.out_rows = rows[k];
            h.out_keys = keys[k];
            h.out_count = count[k];
            max_reach(&h, B, n_codes, reach);
            run(&h, B, nblocks, fns[k]);
        }
        for (ptrdiff_t q = 0; q < B; q++) {
            cases++;
            int bad = count[0][q] != count[1][q] || lims[0][q * LIMS + 2] != lims[1][q * LIMS + 2];
            for (int64_t i = 0; !bad && i < count[0][q]; i++)
                bad |= keys[0][q * small + i] != keys[1][q * small + i] ||
                       rows[0][q * small + i] != rows[1][q * small + i];
            /* and the heap's top is the small-th smallest L0 + L1 of all rows */
            int *sums = malloc(n_rows * sizeof(int));
            const int32_t *l0 = L + q * 2 * nblocks * ROWS, *l1 = l0 + nblocks * ROWS;
            for (ptrdiff_t r = 0; r < n_rows; r++) sums[r] = l0[r] + l1[r];
            qsort(sums, n_rows, sizeof(int), cmp_int);
            if (small <= n_rows) bad |= lims[1][q * LIMS + 2] != sums[small - 1];
            free(sums);
            if (bad) {
                printf("FAIL heap trial %d query %td\n", trial, q);
                failures++;
            }
        }
        /* lower_bounds blocks */
        uint8_t *full = malloc(S * TABLE);
        for (ptrdiff_t i = 0; i < S * TABLE; i++) full[i] = (uint8_t)rnd(256);
        for (ptrdiff_t b = 0; b < nblocks; b++)
            for (int accumulate = 0; accumulate < 2; accumulate++) {
                uint16_t out[2][ROWS];
                for (int r = 0; r < ROWS; r++) out[0][r] = out[1][r] = (uint16_t)rnd(1000);
                block_portable(codes + b * S * ROWS, full, S, out[0], accumulate);
                block_neon(codes + b * S * ROWS, full, S, out[1], accumulate);
                cases++;
                if (memcmp(out[0], out[1], sizeof out[0])) {
                    printf("FAIL lower_bounds trial %d block %td\n", trial, b);
                    failures++;
                }
            }
        free(full);
        for (int k = 0; k < 2; k++) {
            free(rows[k]);
            free(keys[k]);
            free(count[k]);
        }
        free(codes), free(codes4), free(groups), free(tables), free(acc_of), free(ctables);
        free(order), free(lim), free(reach), free(L), free(room_all), free(coarse);
    }
    printf("%d cases, %d rows kept in filter mode, %d failures\n", cases, kept_total, failures);
    return failures != 0;
}
