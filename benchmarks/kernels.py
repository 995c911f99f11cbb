"""fastscan's kernels side by side with lut: single-query p50 of an exact volume-wise top-10 with
each kernel this CPU runs forced (FDN_FASTSCAN_KERNEL), in one run on one index.

Run ``python -m benchmarks.kernels`` (``--help`` for options). Writes
``benchmarks/results/kernels/{results.json,report.md}`` (``--out`` for another folder).

For every mode and distance asked for it times ``lut`` and then ``fastscan`` with each kernel
(vbmi, avx2, portable: those the CPU has), alternating nothing else, and checks each fastscan
answer against lut's for every query, bit for bit. The report names the CPU, its SIMD flags and
the kernel the engine would pick by itself.
"""

from __future__ import annotations

import json
import os
import time

import click
import numpy as np

from benchmarks import report as rp
from benchmarks import workload as wl
from benchmarks.options import out_option
from benchmarks.speed_measure import TOPQ, time_single

SIMD_FLAGS = ("avx2", "bmi2", "avx512f", "avx512bw", "avx512vbmi", "asimd")


def simd_flags() -> list[str]:
    """The SIMD flags of SIMD_FLAGS this CPU has, from /proc/cpuinfo (x86 "flags", ARM
    "Features"); empty where it cannot be read."""
    try:
        for line in open("/proc/cpuinfo").read().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return [f for f in SIMD_FLAGS if f in have]
    except OSError:
        pass
    return []


@click.command()
@click.option("--n", "n", type=int, default=1_000_000, show_default=True, help="Rows.")
@click.option("--K", "K", type=int, default=512, show_default=True, help="Codebook size.")
@click.option("--queries", type=int, default=20, show_default=True, help="Query slices.")
@click.option("--max-seconds", type=float, default=3.0, show_default=True, help="Per case.")
@click.option(
    "--modes", default="sum", show_default=True, help="Comma-separated: normal, abnormal, sum."
)
@click.option(
    "--distances",
    default="hamming,euclidean,angular",
    show_default=True,
    help="Comma-separated distances.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Workload seed.")
@out_option("kernels")
def main(n, K, queries, max_seconds, modes, distances, seed, out):
    """Time lut against fastscan with each kernel this CPU runs."""
    from hashindex.fastscan_kernels import KERNEL_ENV, available_kernels

    say = lambda msg: click.echo(msg, err=True)  # noqa: E731
    kernels = available_kernels()
    saved = os.environ.pop(KERNEL_ENV, None)
    say(f"generating {n:,} slices (K={K}); kernels here: {', '.join(kernels)}")
    w = wl.synthetic(n, queries, seed=seed, K=K)
    idx = w.hash_index(seed)
    qn, qa = w.query_normal, w.query_abnormal
    machine = rp.machine_info()  # at the start, with no kernel forced: it names the default
    rows = []
    try:
        for mode in modes.split(","):
            for distance in distances.split(","):
                answers = {}
                for engine in ["lut", *(f"fastscan/{k}" for k in kernels)]:
                    name, _, kernel = engine.partition("/")
                    if kernel:
                        os.environ[KERNEL_ENV] = kernel
                    say(f"{mode}, {distance}, {engine}")

                    def fn(ids, name=name, mode=mode, distance=distance):
                        return idx.search_volumes(
                            qn[ids], qa[ids], TOPQ, mode=mode, distance=distance, engine=name
                        )

                    lat = time_single(fn, queries, 200, max_seconds)
                    answers[engine] = [fn(np.array([i])) for i in range(queries)]
                    same = all(
                        np.array_equal(getattr(a, f), getattr(b, f))
                        for a, b in zip(answers["lut"], answers[engine], strict=True)
                        for f in ("distances", "rows", "volumes")
                    )
                    rows.append(
                        {
                            "mode": mode,
                            "distance": distance,
                            "engine": name,
                            "kernel": kernel or "",
                            "identical_to_lut": same,
                            **lat,
                        }
                    )
                    os.environ.pop(KERNEL_ENV, None)
    finally:
        if saved is not None:
            os.environ[KERNEL_ENV] = saved
    results = {
        "machine": machine,
        "simd_flags": simd_flags(),
        "kernels_available": kernels,
        "default_kernel": kernels[0],
        "workload": w.source,
        "n": n,
        "rows": rows,
        "load_average_1m_end": os.getloadavg()[0],
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out_dir = rp.results_dir(out)
    rp.write_json(out_dir / "results.json", results)
    lut = {(r["mode"], r["distance"]): r["p50_ms"] for r in rows if r["engine"] == "lut"}
    lines = [
        "# fastscan kernels against lut\n",
        f"Generated by `python -m benchmarks.kernels`; N = {n:,}, {w.source}; top-{TOPQ} "
        "volumes, single-query p50 (ms), every kernel forced through FDN_FASTSCAN_KERNEL in "
        "one run on one index.\n",
        rp.machine_markdown(machine),
        f"SIMD flags: {', '.join(results['simd_flags']) or 'none of ' + ', '.join(SIMD_FLAGS)}; "
        f"kernels: {', '.join(kernels)} (default {kernels[0]}).\n",
        "| mode | distance | engine | kernel | p50 ms | p95 ms | lut / this | same as lut |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        speedup = lut[(r["mode"], r["distance"])] / r["p50_ms"]
        lines.append(
            f"| {r['mode']} | {r['distance']} | {r['engine']} | {r['kernel'] or '-'} | "
            f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {speedup:.2f}x | "
            f"{'yes' if r['identical_to_lut'] else 'NO'} |"
        )
    rp.write_text(out_dir / "report.md", "\n".join(lines) + "\n")
    click.echo(json.dumps(rp.jsonable(rows), indent=1))


if __name__ == "__main__":
    main()
