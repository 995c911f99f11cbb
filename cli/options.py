"""Options that several commands share, declared once so they read and behave the same."""

import click

from crashsafe import WriteTargetError
from fdn.errors import FdnError
from hashindex.errors import HashIndexError

# What the library raises on purpose for bad input: every command turns these into a clean
# error message (click.ClickException, exit code 1) and nothing else. ValueError covers the
# argument checks of numpy-facing functions (and fdn.archive_index.queries.QueryError).
LIBRARY_ERRORS = (FdnError, HashIndexError, WriteTargetError, ValueError)

DEVICES = ("auto", "cpu", "cuda")


def device_option(what: str):
    """`--device auto|cpu|cuda` for a command that runs the FDN; `what` says what runs there."""
    return click.option(
        "--device",
        type=click.Choice(DEVICES),
        default="auto",
        show_default=True,
        help=f"Where to run {what}: auto is CUDA when present, else the CPU.",
    )


skip_bad_option = click.option(
    "--skip-bad", is_flag=True, help="List the cases that fail validation and go on without them."
)


def index_option(help: str):
    """`--index DIR` (default "index"), the index directory a command reads or writes."""
    return click.option(
        "--index",
        "index_dir",
        type=click.Path(file_okay=False),
        default="index",
        show_default=True,
        help=help,
    )
