"""``python -m benchmarks.quality.generalisation``: retrieval on lesion families a model never saw.

The shipped models were trained on one lesion family (`glioma`, `fdn.synth.families`). For each
family asked for, this synthesises a test archive of that family alone (a seed never trained
on), builds an index with the model and scores the Table 2 protocol of the quality benchmark
(`benchmarks.quality.retrieval`): the largest-lesion slice of each diseased case as the query,
volume-wise top-Q, the query's own case excluded, each mode × distance and the mode's default
(the distance a query without ``--distance`` runs with), as a share of the Dice oracle and of
the grid-truth references (lesion classes counted per cell of an 8×8, 16×16 and 32×32 grid: the
best a code grid of that size can do on lesion Dice). A family the model was trained on is
marked as such; the others are the held-out test the issue asks for.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click
import numpy as np

from benchmarks import report as rp
from benchmarks.options import out_option
from benchmarks.quality.baselines import grid_truth_hits
from benchmarks.quality.dice import LESION_CLASSES, NORMAL_CLASSES, LabelDice, best_volumes
from benchmarks.quality.inputs import choose_queries, load_test_slices, training_archive_of
from benchmarks.quality.labels import DISTANCE_NAMES, DISTANCES, MODE_NAMES
from benchmarks.quality.scores import score_methods

MODES = ("normal", "abnormal", "sum")
METRIC_OF_MODE = {"normal": "normal", "abnormal": "lesion", "sum": "sum"}
GRID_TRUTH_SIDES = (8, 16, 32)
RAW_SIDE = 16  # `load_test_slices` also downsamples images; unused here


def trained_families(model_dir: Path) -> tuple[str, ...]:
    """The lesion families of the archive a model was trained on (its synth.json; an archive
    from before families, or one not at hand, is the default family)."""
    from fdn.synth.families import DEFAULT_FAMILIES

    archive = training_archive_of(model_dir)
    listing = None if archive is None else archive / "synth.json"
    if listing is None or not listing.is_file():
        return DEFAULT_FAMILIES
    return tuple(json.loads(listing.read_text()).get("lesion_families", DEFAULT_FAMILIES))


def family_methods(index, test, queries, topq: int) -> dict:
    """{method: [(≤Q,) hit rows per query]}: every mode × distance, each mode's default, the
    three oracles and the grid-truth references."""
    volume = np.asarray(index.table["volume"], dtype=np.int64)
    methods: dict[str, list] = {}
    for mode in MODES:
        for distance in (*DISTANCES, None):
            methods[f"{mode}/{distance or 'default'}"] = [
                np.array(
                    [
                        h.row
                        for h in index.search_codes(
                            index.codes_normal[q["row"]],
                            index.codes_abnormal[q["row"]],
                            mode=mode,
                            distance=distance,
                            topq=topq,
                            exclude_volume=int(volume[q["row"]]),
                        )
                    ],
                    np.int64,
                )
                for q in queries
            ]
    return methods


def score_family(model: Path, family: str, cases: int, seed: int, work: Path, topq: int) -> dict:
    """Synthesise, index and score one family; the scores as shares of the oracles."""
    from fdn.archive_index.build import build_index
    from fdn.archive_index.retrieval import open_index
    from fdn.synth import synthesize_archive
    from fdn.training.checkpoint import load_model, model_checksum

    _, config = load_model(model, device="cpu")
    size = config.image_size
    archive = work / f"test-{family}-n{cases}-s{seed}-{size}"
    started = time.monotonic()
    synthesize_archive(archive, cases, 0.25, seed, size=size, families=(family,))
    index_dir = work / f"index-{model_checksum(model)[:12]}-{archive.name}"
    build_index(archive, model, index_dir)
    index = open_index(index_dir)
    test = load_test_slices(index, archive, size, RAW_SIDE)
    queries = choose_queries(index, test.lesion)
    if len(queries) < 2:
        raise ValueError(f"{archive}: {len(queries)} diseased case(s); raise --cases")
    normal = LabelDice(test.anat, NORMAL_CLASSES)
    lesion = LabelDice(test.lesion, LESION_CLASSES)
    dice_normal = np.stack([normal.against(test.anat[q["row"]]) for q in queries])
    dice_lesion = np.stack([lesion.against(test.lesion[q["row"]]) for q in queries])
    volume = np.asarray(index.table["volume"], dtype=np.int64)
    methods = family_methods(index, test, queries, topq)
    for name, scores in (
        ("oracle/normal", dice_normal),
        ("oracle/lesion", dice_lesion),
        ("oracle/sum", dice_normal + dice_lesion),
    ):
        methods[name] = [
            best_volumes(scores[i], volume, topq, int(volume[q["row"]]))
            for i, q in enumerate(queries)
        ]
    rows = [q["row"] for q in queries]
    for side in GRID_TRUTH_SIDES:
        methods[f"grid-truth/{side}"] = grid_truth_hits(test.lesion, side, rows, volume, topq)
    scores = {k: {m: v["mean"] for m, v in s.items()} for k, s in score_methods(
        methods, dice_normal, dice_lesion
    ).items()}  # fmt: skip
    table = {}
    for mode in MODES:
        metric = METRIC_OF_MODE[mode]
        oracle = scores[f"oracle/{metric}"][metric]
        table[mode] = {
            d: scores[f"{mode}/{d}"][metric] / oracle if oracle else None
            for d in (*DISTANCES, "default")
        }
    oracle_lesion = scores["oracle/lesion"]["lesion"]
    references = {
        side: scores[f"grid-truth/{side}"]["lesion"] / oracle_lesion if oracle_lesion else None
        for side in GRID_TRUTH_SIDES
    }
    return {
        "family": family,
        "archive": str(archive),
        "cases": len(index.cases),
        "queries": len(queries),
        "share_of_oracle": table,
        "grid_truth_share": references,
        "lesion_dice_abnormal_over_normal": (
            scores["abnormal/default"]["lesion"] / scores["normal/default"]["lesion"]
            if scores["normal/default"]["lesion"]
            else None
        ),
        "seconds": round(time.monotonic() - started, 1),
    }


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.0f} %"


def markdown(results: dict) -> str:
    """The report: one table per family, the held-out summary first."""
    lines = [
        "# Lesion retrieval on families the model never saw",
        "",
        f"Written by `python -m benchmarks.quality.generalisation` in {results['seconds']:.0f} s.",
        "",
        f"- Model: `{results['model']}`, trained on the lesion families "
        f"{', '.join(results['trained_on'])}.",
        f"- Each family: {results['cases']} synthetic cases of that family alone (seed "
        f"{results['seed']}, 25 % healthy), its own index; queries are the largest-lesion slice "
        f"of each diseased case; volume-wise top-{results['topq']}, own case excluded.",
        "- Shares of the Dice oracle of each mode (normal Dice for S_normal, lesion Dice for "
        "S_abnormal, their sum for S_sum); `default` is the distance a query without "
        "`--distance` runs with. Grid truth: lesion classes counted per cell, the best a code "
        "grid of that size can do on lesion Dice.",
        "",
        rp.machine_markdown(results["machine"]),
        "",
        "## Summary (default distance)",
        "",
        "| family | held out | S_normal | S_abnormal | S_sum | grid truth 8×8 / 16×16 / 32×32 "
        "| lesion Dice S_abnormal / S_normal |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in results["families"]:
        share = f["share_of_oracle"]
        grid = " / ".join(_pct(f["grid_truth_share"][s]) for s in GRID_TRUTH_SIDES)
        ratio = f["lesion_dice_abnormal_over_normal"]
        lines.append(
            f"| {f['family']} | {'no' if f['family'] in results['trained_on'] else 'yes'} "
            f"| {_pct(share['normal']['default'])} | {_pct(share['abnormal']['default'])} "
            f"| {_pct(share['sum']['default'])} | {grid} "
            f"| {'—' if ratio is None else f'{ratio:.1f}×'} |"
        )
    lines += ["", "## Every distance", ""]
    header = " | ".join(DISTANCE_NAMES[d] for d in DISTANCES)
    lines += [f"| family | mode | {header} | default |", "|---|---|---|---|---|---|"]
    for f in results["families"]:
        for mode in MODES:
            share = f["share_of_oracle"][mode]
            cells = " | ".join(_pct(share[d]) for d in (*DISTANCES, "default"))
            lines.append(f"| {f['family']} | {MODE_NAMES[mode]} | {cells} |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option(
    "--model",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path(__file__).resolve().parents[2] / "models" / "cpu-64-null",
    show_default=True,
    help="Model directory to index with.",
)
@click.option(
    "--families",
    default="all",
    show_default=True,
    help="Comma-separated lesion families to test (`fdn-index synth --help`), or 'all'.",
)
@click.option("--cases", type=click.IntRange(min=4), default=24, show_default=True)
@click.option(
    "--seed", type=int, default=2000, show_default=True, help="Seed of the test archives."
)
@click.option("--topq", type=click.IntRange(min=1), default=10, show_default=True)
@out_option("generalisation")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def main(model, families, cases, seed, topq, out, as_json):
    """Score retrieval on test archives of each lesion family; write OUT/report.md."""
    from fdn.synth.families import FAMILIES, parse_families

    logging.basicConfig(level=logging.WARNING)
    try:
        names = tuple(FAMILIES) if families.strip() == "all" else parse_families(families)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--families") from None
    out_dir = rp.results_dir(out)
    work = out_dir / "work"
    work.mkdir(exist_ok=True)
    rp.write_text(work / ".gitignore", "# benchmark scratch: never committed\n*\n")
    started = time.monotonic()
    per_family = []
    for name in names:
        click.echo(f"family {name} ...", err=True)
        per_family.append(score_family(model, name, cases, seed, work, topq))
    results = {
        "model": str(model),
        "trained_on": list(trained_families(model)),
        "cases": cases,
        "seed": seed,
        "topq": topq,
        "machine": rp.machine_info(),
        "families": per_family,
        "seconds": round(time.monotonic() - started, 1),
    }
    rp.write_json(out_dir / "results.json", results)
    rp.write_text(out_dir / "report.md", markdown(results))
    if as_json:
        click.echo(json.dumps(rp.jsonable(results)))
    else:
        click.echo((out_dir / "report.md").read_text())


if __name__ == "__main__":
    main()
