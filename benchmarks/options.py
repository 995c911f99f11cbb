"""Command-line options that every benchmark shares."""

from __future__ import annotations

import click


def out_option(default: str | None, default_note: str | None = None):
    """``--out``: the folder a benchmark writes report.md, results.json and figures into.

    A bare name is a folder under benchmarks/results/, anything else a path, as
    `benchmarks.report.results_dir` resolves it. `default` is that name; a benchmark whose
    default depends on other options passes None and says so in `default_note`.
    """
    help_text = "Results folder: a bare name is a folder under benchmarks/results/, else a path."
    if default_note:
        help_text += f" [default: {default_note}]"
    return click.option(
        "--out",
        type=click.Path(file_okay=False),
        default=default,
        show_default=default is not None,
        help=help_text,
    )
