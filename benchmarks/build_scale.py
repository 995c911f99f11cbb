"""Build throughput in one process and on a Dask LocalCluster, per-stage costs, and the projected
time for a 65k-volume PACS.

Run ``python -m benchmarks.build_scale`` (``--help`` for options). Writes
``benchmarks/results/build-scale/{results.json,report.md}``.

With ``--scheduler tcp://HOST:PORT`` it builds in this process and on that running cluster
(started with ``dask scheduler`` and ``dask worker``) instead of on LocalClusters, records the
cluster's workers as the scheduler reports them and, from ``--started-with``, the commands that
started them, and writes ``benchmarks/results/build-scale-cluster/``.

It synthesises an archive of BraTS-size cases (240 × 240 × 155 by default) once, then builds
the same index with the shipped model three ways — in this process, on 1 worker and on 2 —
into fresh folders, checks that the three indexes are identical (the sha256 of every code
chunk and of the slice table), and reports slices/s and where the time goes (reading and
decompressing the NIfTI files, preprocessing, encoding, writing the journal, assembling).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import click

from benchmarks import build_cpu
from benchmarks import report as rp
from benchmarks.options import out_option

STAGES = ("read_s", "preprocess_s", "encode_s", "write_s", "model_s")


def _build(
    archive: Path, model: Path, index: Path, workers: int | None, scheduler: str | None = None
) -> dict:
    from fdn.archive_index.build import build_index
    from fdn.archive_index.distributed import cluster_client

    shutil.rmtree(index, ignore_errors=True)
    with cluster_client(workers, scheduler) as client:
        if scheduler:
            workers = len(client.scheduler_info(n_workers=-1)["workers"])
        t = time.perf_counter()
        report = build_index(archive, model, index, client=client)
        wall = time.perf_counter() - t
    files = json.loads((index / "manifest.json").read_text())["files"]
    data = {k: v for k, v in files.items() if k.startswith("codes.zarr/") or k == "slices.parquet"}
    encode_wall = wall - report.stages.get("assemble_s", 0.0)
    return {
        "workers": workers or 0,
        "scheduler": scheduler,
        "wall_s": wall,
        "slices": report.n_slices,
        "cases": report.n_cases,
        "slices_per_s": report.n_slices / wall,
        "encode_slices_per_s": report.n_slices / encode_wall,
        "stages": report.stages,
        "workers_used": len(report.workers),
        "data_files": data,
    }


def _old_read_and_preprocess(files: dict, case: str, size: int) -> tuple[float, float]:
    """(read s, preprocess s) of one case through the path this branch replaced, kept here only
    to compare: the standard zlib, np.stack of the (H, W, Z) volumes, np.where for the z-score
    and a batched matmul per slice on a transposed view."""
    import zlib

    import numpy as np

    import fdn.data.nifti as nifti
    from fdn.data.case import read_case, zscore
    from fdn.data.resize import bilinear_weights, resize_labels

    backend, nifti._inflate = nifti._inflate, zlib
    try:
        t = time.perf_counter()
        raw = read_case(files, case)
        image = np.stack([np.ascontiguousarray(raw.image[c]) for c in range(4)])
        pseudo = None if raw.pseudohealthy is None else np.ascontiguousarray(raw.pseudohealthy)
        read_s = time.perf_counter() - t
    finally:
        nifti._inflate = backend
    t = time.perf_counter()
    brain = np.any(image != 0, axis=0)
    mean, std = zscore(image, brain)
    shift = mean.astype(np.float32).reshape(-1, 1, 1, 1)
    scale = std.astype(np.float32).reshape(-1, 1, 1, 1)
    rows, cols = bilinear_weights(image.shape[1], size), bilinear_weights(image.shape[2], size)
    for x in (image, pseudo):
        if x is not None:
            z = np.where(brain, (x - shift) / scale, np.float32(0))
            rows @ np.transpose(z, (3, 0, 1, 2)) @ cols.T
    for y in (brain, raw.seg, raw.anat):
        if y is not None:
            np.ascontiguousarray(resize_labels(np.transpose(y, (2, 0, 1)), size))
    return read_s, time.perf_counter() - t


def compare_read_paths(archive: Path, size: int, repeats: int = 2) -> dict:
    """Seconds per case for reading and preprocessing, old path and new, interleaved case by
    case in this process (best of `repeats` per case, to damp a shared machine's noise)."""
    from fdn.data import Archive
    from fdn.data.case import preprocess, read_case
    from fdn.data.nifti import GZIP_BACKEND

    arch = Archive(archive)
    per_case = []
    for case in arch.case_ids:
        files = arch.case_files(case)
        old, new = [], []
        for _ in range(repeats):
            old.append(_old_read_and_preprocess(files, case, size))
            t = time.perf_counter()
            raw = read_case(files, case)
            t1 = time.perf_counter()
            preprocess(raw, size)
            new.append((t1 - t, time.perf_counter() - t1))
        per_case.append(
            {
                "case": case,
                "old_read_s": min(r for r, _ in old),
                "old_preprocess_s": min(p for _, p in old),
                "new_read_s": min(r for r, _ in new),
                "new_preprocess_s": min(p for _, p in new),
            }
        )
    keys = ("old_read_s", "old_preprocess_s", "new_read_s", "new_preprocess_s")
    mean = {k: sum(c[k] for c in per_case) / len(per_case) for k in keys}
    return {"gzip_backend": GZIP_BACKEND, "size": size, "per_case": per_case, "mean": mean}


def render_markdown(results: dict) -> str:
    rows = []
    for r in results["runs"]:
        if r.get("scheduler"):
            where = f"cluster at {r['scheduler']}, {r['workers']} worker(s)"
        elif r["workers"]:
            where = f"LocalCluster, {r['workers']} worker(s)"
        else:
            where = "this process"
        st = r["stages"]
        rows.append(
            [
                where,
                r["cases"],
                r["slices"],
                r["wall_s"],
                r["encode_slices_per_s"],
                *(st.get(k, 0.0) for k in STAGES),
                st.get("assemble_s", 0.0),
            ]
        )
    best = max(r["encode_slices_per_s"] for r in results["runs"])
    cluster = results.get("cluster")
    cluster_md = []
    if cluster:
        cluster_md = [
            "## The cluster\n",
            f"Scheduler `{cluster['scheduler']}`, started with:\n",
            "```\n" + (cluster["started_with"] or "(not given: pass --started-with)") + "\n```\n",
            "Its workers when the build started, as the scheduler reports them (each loads the "
            "model on its first case, the 'model load' column: a run of a few small cases "
            "measures that start, not the workers' throughput):\n",
            rp.markdown_table(
                ["name", "address", "threads", "memory limit GiB"],
                [
                    [w["name"], w["address"], w["nthreads"], w["memory_limit"] / 2**30]
                    for w in cluster["workers"]
                ],
            ),
        ]
    compare = results.get("read_paths")
    compare_md = []
    if compare:
        m = compare["mean"]
        compare_md = [
            "## Reading and preprocessing, old path and new (seconds per case)\n",
            f"Each case read and preprocessed to {compare['size']}² both ways in this process, "
            "interleaved, best of 2 per case. Old: the standard zlib, `np.stack` of the "
            "(H, W, Z) volumes, `np.where` z-score, batched matmul per slice. New: "
            f"`{compare['gzip_backend']}` inflate, volumes kept in NIfTI's (Z, W, H) order, "
            "two GEMMs over all slices. Both include the 4-channel pseudo-healthy volume the "
            "synthetic cases carry (a real archive has none: less to read and resize).\n",
            rp.markdown_table(
                ["case", "read old", "read new", "preprocess old", "preprocess new"],
                [
                    [
                        c["case"],
                        c["old_read_s"],
                        c["new_read_s"],
                        c["old_preprocess_s"],
                        c["new_preprocess_s"],
                    ]
                    for c in compare["per_case"]
                ]
                + [
                    [
                        "mean",
                        m["old_read_s"],
                        m["new_read_s"],
                        m["old_preprocess_s"],
                        m["new_preprocess_s"],
                    ]
                ],
            ),
            f"Read + preprocess per case: {m['old_read_s'] + m['old_preprocess_s']:.2f} s → "
            f"{m['new_read_s'] + m['new_preprocess_s']:.2f} s.\n",
        ]
    return "\n".join(
        [
            "# Building on a Dask cluster\n",
            "Generated by `python -m benchmarks.build_scale`.\n",
            "## Machine\n",
            rp.machine_markdown(results["machine"]),
            f"Archive: {results['cases']} synthetic cases of {results['size']}² × "
            f"{results['depth']} voxels (`fdn-index synth --size {results['size']}`), model "
            f"`{results['model']}`. The {len(results['runs'])} indexes are identical: "
            f"**{'yes' if results['identical'] else 'NO'}** (sha256 of every code chunk and of the "
            "slice table).\n",
            *compare_md,
            "## Throughput and stages, new path (seconds summed over the cases; workers run in "
            "parallel)\n",
            rp.markdown_table(
                [
                    "where",
                    "cases",
                    "slices",
                    "wall s",
                    "slices/s (encode phase)",
                    "read",
                    "preprocess",
                    "encode",
                    "write",
                    "model load",
                    "assemble",
                ],
                rows,
            ),
            f"Best: {best:.1f} slices/s while encoding (wall time less the assembly, which runs "
            "once, in the calling process). The stage columns say where the encode phase goes.\n",
            *build_cpu.render_markdown(results["cpu"], results["projection"]),
            *cluster_md,
        ]
    )


def _cluster_workers(scheduler: str) -> list[dict]:
    """The workers of the cluster at `scheduler`: name, address, threads, memory limit."""
    from distributed import Client

    with Client(scheduler, timeout="30s") as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    return [
        {
            "name": str(w.get("name")),
            "address": address,
            "nthreads": w.get("nthreads"),
            "memory_limit": w.get("memory_limit") or 0,
        }
        for address, w in sorted(workers.items(), key=lambda kv: str(kv[1].get("name")))
    ]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--cases",
    type=click.IntRange(2),
    default=3,
    show_default=True,
    help="Synthetic cases to build (3 keeps a 2-core shared machine's run to a few minutes).",
)
@click.option(
    "--size",
    type=click.IntRange(16),
    default=240,
    show_default=True,
    help="In-plane size of each case (240 is BraTS's).",
)
@click.option(
    "--model",
    type=click.Path(exists=True, file_okay=False),
    default="models/cpu-64-null",
    show_default=True,
    help="Model directory to encode with (the shipped default model).",
)
@click.option(
    "--work",
    type=click.Path(file_okay=False),
    default=None,
    help="Scratch folder for the archive and indexes [default: under the results].",
)
@click.option(
    "--scheduler",
    metavar="tcp://HOST:PORT",
    default=None,
    help="Build on this running Dask cluster (and in this process) instead of on LocalClusters.",
)
@click.option(
    "--started-with",
    default="",
    help="The commands that started the --scheduler cluster, recorded in the report.",
)
@out_option(None, "build-scale, or build-scale-cluster with --scheduler")
def main(cases, size, model, work, out, scheduler, started_with):
    """Time a build in one process and on 1 and 2 Dask workers (or on a running cluster), and
    project a PACS build."""
    from fdn.synth import synthesize_archive

    out_dir = rp.results_dir(out or ("build-scale-cluster" if scheduler else "build-scale"))
    work = Path(work) if work else out_dir / "work"
    archive = work / "archive"
    started = time.perf_counter()
    if not (archive / "synth.json").is_file():
        click.echo(f"synthesising {cases} cases of {size}² ...", err=True)
        shutil.rmtree(archive, ignore_errors=True)
        synthesize_archive(archive, n_cases=cases, healthy_fraction=0.25, seed=3, size=size)
    from fdn.training.checkpoint import load_model

    image_size = load_model(model, device="cpu")[0].config.image_size
    click.echo(f"[{time.perf_counter() - started:6.0f}s] read paths, old and new", err=True)
    read_paths = compare_read_paths(archive, image_size)
    runs = []
    cluster = None
    if scheduler:
        cluster = {
            "scheduler": scheduler,
            "started_with": started_with,
            "workers": _cluster_workers(scheduler),
        }
        click.echo(f"[{time.perf_counter() - started:6.0f}s] build in this process", err=True)
        runs.append(_build(archive, Path(model), work / "index-0", None))
        click.echo(f"[{time.perf_counter() - started:6.0f}s] build on {scheduler}", err=True)
        runs.append(_build(archive, Path(model), work / "index-cluster", None, scheduler))
    for workers in () if scheduler else (None, 1, 2):
        click.echo(f"[{time.perf_counter() - started:6.0f}s] build, workers={workers}", err=True)
        runs.append(_build(archive, Path(model), work / f"index-{workers or 0}", workers))
    click.echo(f"[{time.perf_counter() - started:6.0f}s] CPU seconds per case", err=True)
    cpu = build_cpu.cpu_per_case(archive, Path(model))
    assembly_results = rp.results_dir("assembly-scale") / "results.json"
    assembly = json.loads(assembly_results.read_text()) if assembly_results.is_file() else None
    identical = all(r["data_files"] == runs[0]["data_files"] for r in runs)
    for r in runs:
        del r["data_files"]
    depth = json.loads((archive / "synth.json").read_text()).get("depth", round(155 * size / 240))
    results = {
        "machine": rp.machine_info(),
        "cases": cases,
        "size": size,
        "depth": depth,
        "model": model,
        "read_paths": read_paths,
        "runs": runs,
        "cpu": cpu,
        "projection": build_cpu.projection(cpu, assembly),
        "identical": identical,
        "cluster": cluster,
    }
    rp.write_report(out_dir, results, render_markdown(results))
    click.echo((out_dir / "report.md").read_text())


if __name__ == "__main__":
    main()
