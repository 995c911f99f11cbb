"""Region queries: the time of an exact volume-wise top-10 whose distance counts only a region's
grid positions, against the same query over the whole slice.

Run ``python -m benchmarks.region`` (``--help`` for options). Writes
``benchmarks/results/region/{results.json,report.md}`` (``--out`` for another folder).

The regions are centred square boxes of the 8 × 8 grid (the positions a `--region` box covers):
the whole grid, 6 × 6 (56 %), 4 × 4 (25 %, the issue's target: at most half the whole-slice
cost) and 2 × 2 (6 %). For each region, mode and distance it measures the single-query p50 of
the ``lut`` engine (the default engine of a region query), and for the whole grid also the
default engine of a whole-slice query (fastscan for D_H and D_E). Every region answer is
checked against the ``numpy`` engine on a slice of the rows (bit for bit).
"""

from __future__ import annotations

import json
import time

import click
import numpy as np

from benchmarks import report as rp
from benchmarks import workload as wl
from benchmarks.options import out_option
from benchmarks.speed_measure import TOPQ

REGIONS = {"whole grid": 8, "6x6 (56%)": 6, "4x4 (25%)": 4, "2x2 (6%)": 2}
CASES = (("sum", "hamming"), ("sum", "euclidean"), ("abnormal", "angular"), ("normal", "euclidean"))


def time_query(fn, n_queries: int, max_calls: int, max_seconds: float) -> dict:
    """p50 wall and CPU milliseconds of ``fn(ids)``, one query per call (two warm-up calls).

    The CPU time (of every thread of this process) is reported beside the wall time because
    the development machine is shared: there a parallel scan waits for its slowest thread to
    be scheduled, which inflates and scatters wall times, while CPU time counts the work."""
    for i in range(min(2, n_queries)):
        fn(np.array([i]))
    walls, cpus, start = [], [], time.perf_counter()
    for i in range(max_calls):
        ids = np.array([i % n_queries])
        w, c = time.perf_counter(), time.process_time()
        fn(ids)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
        if len(walls) >= 5 and time.perf_counter() - start > max_seconds:
            break
    return {
        "calls": len(walls),
        "p50_ms": float(np.median(walls)) * 1000,
        "cpu_p50_ms": float(np.median(cpus)) * 1000,
    }


def centred_box(grid: tuple[int, int], side: int) -> np.ndarray | None:
    """(h, w) bool: a centred side × side box of the grid (None for the whole grid)."""
    h, w = grid
    if side >= min(h, w):
        return None
    mask = np.zeros(grid, bool)
    i, j = (h - side) // 2, (w - side) // 2
    mask[i : i + side, j : j + side] = True
    return mask


def same_as_numpy(small, qn, qa, mode, distance, mask) -> bool:
    """lut and numpy agree bit for bit on the index ``small`` (row-wise top-50)."""
    a, b = (
        small.search(qn, qa, 50, mode=mode, distance=distance, engine=e, positions=mask)
        for e in ("lut", "numpy")
    )
    return bool(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]))


@click.command()
@click.option("--n", "n", type=int, default=1_000_000, show_default=True, help="Rows.")
@click.option("--K", "K", type=int, default=512, show_default=True, help="Codebook size.")
@click.option("--queries", type=int, default=20, show_default=True, help="Query slices.")
@click.option("--max-seconds", type=float, default=3.0, show_default=True, help="Per case.")
@click.option("--seed", type=int, default=0, show_default=True, help="Workload seed.")
@out_option("region")
def main(n, K, queries, max_seconds, seed, out):
    """Time region queries against whole-slice queries (lut; fastscan for reference)."""

    say = lambda msg: click.echo(msg, err=True)  # noqa: E731
    say(f"generating {n:,} slices (K={K})")
    w = wl.synthetic(n, queries, seed=seed, K=K)
    idx = w.hash_index(seed)
    # the numpy engine checks lut's region answers on the first 20,000 rows (same codebooks)
    small = w.head(min(20_000, w.n)).hash_index(seed)
    grid = idx.grid
    qn, qa = w.query_normal, w.query_abnormal
    rows = []
    for mode, distance in CASES:
        for name, side in REGIONS.items():
            mask = centred_box(grid, side)
            engines = ["lut"] if mask is not None else ["lut", idx.default_engine(distance)]
            for engine in dict.fromkeys(engines):
                say(f"{mode}, {distance}, {name}, {engine}")

                def fn(ids, engine=engine, mask=mask, mode=mode, distance=distance):
                    return idx.search_volumes(
                        qn[ids],
                        qa[ids],
                        TOPQ,
                        mode=mode,
                        distance=distance,
                        engine=engine,
                        positions=mask,
                    )

                lat = time_query(fn, queries, 200, max_seconds)
                row = {
                    "mode": mode,
                    "distance": distance,
                    "region": name,
                    "positions": int(np.prod(grid)) if mask is None else int(mask.sum()),
                    "engine": engine,
                    **lat,
                }
                if mask is not None:
                    row["same_as_numpy"] = same_as_numpy(
                        small, qn[:2], qa[:2], mode, distance, mask
                    )
                rows.append(row)
    for key in ("p50_ms", "cpu_p50_ms"):
        whole = {
            (r["mode"], r["distance"]): r[key]
            for r in rows
            if r["region"] == "whole grid" and r["engine"] == "lut"
        }
        for r in rows:
            r[f"{key}_share_of_whole_lut"] = r[key] / whole[(r["mode"], r["distance"])]
    results = {
        "machine": rp.machine_info(),
        "workload": w.source,
        "n": n,
        "rows": rows,
    }
    lines = [
        "# Region queries against whole-slice queries\n",
        f"Generated by `python -m benchmarks.region`; N = {n:,}, {w.source}; top-{TOPQ} "
        "volumes, single-query p50 of the wall time and of the process's CPU time (ms; the CPU "
        "time is the steadier figure on a shared machine); regions are centred boxes of the "
        "8 x 8 grid.\n",
        rp.machine_markdown(results["machine"]),
        "| mode | distance | region | positions | engine | wall p50 ms | / whole lut | "
        "CPU p50 ms | / whole lut | same as numpy |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        same = {True: "yes", False: "NO"}.get(r.get("same_as_numpy"), "")
        lines.append(
            f"| {r['mode']} | {r['distance']} | {r['region']} | {r['positions']} | {r['engine']} "
            f"| {r['p50_ms']:.1f} | {r['p50_ms_share_of_whole_lut']:.2f} "
            f"| {r['cpu_p50_ms']:.1f} | {r['cpu_p50_ms_share_of_whole_lut']:.2f} | {same} |"
        )
    rp.write_report(out, results, lines)
    click.echo(json.dumps(rp.jsonable(results)["rows"], indent=1))


if __name__ == "__main__":
    main()
