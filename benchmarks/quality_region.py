"""Region queries on the quality benchmark: S_abnormal with the region set to the query's lesion
bounding box, as a share of the Dice oracle, beside the same query over the whole slice.

Run ``python -m benchmarks.quality_region`` (``--help`` for options). Writes
``benchmarks/results/quality-region/{results.json,report.md}`` (``--out`` for another folder);
the test archive and its index go to ``work/`` there (never committed).

The protocol is the quality benchmark's (`benchmarks.quality`, paper 4.4.6): a synthetic test
archive the model never saw, the largest-lesion slice of every diseased case as the query,
volume-wise top-10 with the query's case excluded, each hit list scored by the mean lesion Dice
of its hits, the oracle the top-10 volumes by lesion Dice itself. The region is the bounding box
of the query's lesion labels on its slice (voxels, ends included), as a user would draw it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np

from benchmarks import report as rp
from benchmarks.options import out_option
from benchmarks.quality.dice import LESION_CLASSES, LabelDice, best_volumes
from benchmarks.quality.inputs import choose_queries, load_test_slices

TOPQ = 10
DISTANCES = ("angular", "euclidean", "hamming")


def lesion_box(lesion: np.ndarray) -> str:
    """The bounding box "x0,y0,x1,y1" of the nonzero voxels of a (H, W) label map."""
    xs, ys = np.nonzero(lesion)
    return f"{xs.min()},{ys.min()},{xs.max()},{ys.max()}"


@click.command()
@click.option("--model", default="cpu-64", show_default=True, help="Model directory or name.")
@click.option("--test-cases", type=int, default=60, show_default=True)
@click.option("--test-seed", type=int, default=1000, show_default=True)
@click.option("--healthy-fraction", type=float, default=0.25, show_default=True)
@out_option("quality-region")
def main(model, test_cases, test_seed, healthy_fraction, out):
    """S_abnormal with the lesion's bounding box as region vs the whole slice (share of the oracle)."""
    from fdn.archive_index.build import build_index
    from fdn.archive_index.queries import query_options, run_slice_query
    from fdn.archive_index.retrieval import open_index
    from fdn.shipped_models import resolve_model_dir
    from fdn.synth import synthesize_archive
    from fdn.training.checkpoint import load_model, model_checksum

    started = time.monotonic()
    out_dir = rp.results_dir(out)
    work = out_dir / "work"
    work.mkdir(exist_ok=True)
    rp.write_text(work / ".gitignore", "# benchmark scratch: never committed\n*\n")
    model_dir = Path(resolve_model_dir(model))
    _, config = load_model(model_dir, device="cpu")
    size = config.image_size
    archive = work / f"test-archive-n{test_cases}-s{test_seed}-{size}-h{healthy_fraction:g}"
    if not archive.exists():
        synthesize_archive(archive, test_cases, healthy_fraction, test_seed, size=size)
    index_dir = work / f"index-{model_checksum(model_dir)[:12]}-{archive.name}"
    build_index(archive, model_dir, index_dir)
    index = open_index(index_dir)
    test = load_test_slices(index, archive, size, 8)
    queries = choose_queries(index, test.lesion)
    dice = LabelDice(test.lesion, LESION_CLASSES)
    volume = np.asarray(index.table["volume"], np.int64)
    rows = []
    for q in queries:
        scores = dice.against(test.lesion[q["row"]])
        oracle = best_volumes(scores, volume, TOPQ, int(volume[q["row"]]))
        box = lesion_box(test.lesion[q["row"]])
        row = {"case": q["case"], "slice": q["slice"], "box": box, "oracle": scores[oracle].mean()}
        for distance in DISTANCES:
            for name, region in (("whole", None), ("region", box)):
                options = query_options("abnormal", distance=distance, topq=TOPQ, region=region)
                result = run_slice_query(index, q["case"], q["slice"], options)
                hits = [h.row for h in result.hits("abnormal")]
                row[f"{name}/{distance}"] = float(scores[hits].mean()) if hits else float("nan")
                if region is not None:
                    row["positions"] = len(result.region.positions["abnormal"])
        rows.append(row)
    oracle = float(np.mean([r["oracle"] for r in rows]))
    summary = {
        f"{name}/{d}": float(np.nanmean([r[f"{name}/{d}"] for r in rows]))
        for name in ("whole", "region")
        for d in DISTANCES
    }
    results = {
        "machine": rp.machine_info(),
        "model": str(model_dir),
        "archive": archive.name,
        "n_queries": len(rows),
        "oracle_lesion_dice": oracle,
        "mean_lesion_dice": summary,
        "share_of_oracle": {k: v / oracle for k, v in summary.items()},
        "mean_region_positions": float(np.mean([r["positions"] for r in rows])),
        "queries": rows,
        "seconds": time.monotonic() - started,
    }
    grid = int(np.prod(index.manifest.grid))
    lines = [
        "# S_abnormal with a region: the query's lesion bounding box against the whole slice\n",
        f"Generated by `python -m benchmarks.quality_region` in {results['seconds']:.0f} s; "
        f"model `{model_dir.name}`, test archive `{archive.name}` (never trained on), "
        f"{len(rows)} queries (the largest-lesion slice of each diseased case), volume-wise "
        f"top-{TOPQ}, the query's case excluded; mean lesion Dice of the hits, and its share of "
        f"the Dice oracle's {oracle:.3f}. The region is the bounding box of the query's lesion "
        f"labels: on average {results['mean_region_positions']:.1f} of the {grid} grid "
        "positions.\n",
        rp.machine_markdown(results["machine"]),
        "| distance | whole slice | share of oracle | lesion box region | share of oracle |",
        "|---|---:|---:|---:|---:|",
    ]
    for d in DISTANCES:
        w, r = summary[f"whole/{d}"], summary[f"region/{d}"]
        lines.append(f"| {d} | {w:.3f} | {w / oracle:.0%} | {r:.3f} | {r / oracle:.0%} |")
    rp.write_report(out_dir, results, lines)
    click.echo(json.dumps(rp.jsonable(results["share_of_oracle"]), indent=1))


if __name__ == "__main__":
    main()
