"""``python -m benchmarks.quality``: the quality benchmark's command line (see
`benchmarks.quality.run` for what one run measures and writes)."""

from __future__ import annotations

import json
import logging

import click

from benchmarks import report as rp
from benchmarks.options import out_option
from benchmarks.quality.config import QualityConfig
from benchmarks.quality.run import run_quality


@click.command()
@click.option(
    "--model",
    "model",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Model directory (fdn-index train --out) to index and evaluate; trained with "
    "distribution matching.",
)
@click.option(
    "--model-no-dm",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="The same model trained with --no-dm, for the with/without DM figures.",
)
@click.option(
    "--train-archive",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Archive the models were trained on (the leakiness classifier trains on "
    "its slices) [default: read from MODEL/TRAIN_COMMAND.txt].",
)
@click.option(
    "--test-archive",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Test archive never trained on [default: synthesise one into OUT/work].",
)
@click.option(
    "--test-cases",
    type=click.IntRange(min=2),
    default=60,
    show_default=True,
    help="Cases of the synthesised test archive.",
)
@click.option(
    "--test-seed",
    type=int,
    default=1000,
    show_default=True,
    help="Seed of the synthesised test archive (must differ from the training one).",
)
@click.option(
    "--test-healthy-fraction",
    type=click.FloatRange(0, 1),
    default=0.25,
    show_default=True,
    help="Share of healthy cases in the synthesised test archive.",
)
@click.option(
    "--size",
    type=click.IntRange(min=8),
    default=None,
    help="In-plane size of the synthesised test archive [default: the model's input].",
)
@out_option("quality-cpu")
@click.option(
    "--topq",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Volumes retrieved per query.",
)
@click.option(
    "--random-draws",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Draws of the random baseline, averaged.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the random baseline and the classifiers.",
)
@click.option(
    "--classifier-seconds",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Time budget of each leakiness classifier.",
)
@click.option(
    "--classifier-seeds",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Leakiness classifiers trained per input (different seeds), averaged.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="torch CPU threads (the machine is shared: keep it small).",
)
@click.option(
    "--quick",
    is_flag=True,
    help="Fewer random draws, repeats and classifier steps (a check, not a result).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def main(
    model,
    model_no_dm,
    train_archive,
    test_archive,
    test_cases,
    test_seed,
    test_healthy_fraction,
    size,
    out,
    topq,
    random_draws,
    seed,
    classifier_seconds,
    classifier_seeds,
    threads,
    quick,
    as_json,
):
    """Retrieval quality against the Dice oracle, binarization and model figures (4.4)."""
    import torch

    from fdn.errors import FdnError
    from hashindex.errors import HashIndexError

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    try:
        cfg = QualityConfig(
            model=model,
            model_no_dm=model_no_dm,
            train_archive=train_archive,
            test_archive=test_archive,
            test_cases=test_cases,
            test_seed=test_seed,
            test_healthy_fraction=test_healthy_fraction,
            size=size,
            out=out,
            topq=topq,
            random_draws=random_draws,
            seed=seed,
            classifier_seconds=classifier_seconds,
            classifier_seeds=classifier_seeds,
            quick=quick,
        )
        results = run_quality(cfg, progress=not as_json)
    except (FdnError, HashIndexError, ValueError, FileExistsError) as error:
        raise click.ClickException(str(error)) from None
    out_dir = rp.results_dir(out)
    if as_json:
        click.echo(json.dumps(rp.jsonable({"out": str(out_dir), **results["summary"]})))
        return
    click.echo((out_dir / "report.md").read_text())
    click.echo(f"written: {out_dir}/report.md, results.json, {', '.join(results['figures'])}")
