"""Options that several commands share, declared once so they read and behave the same."""

from collections.abc import Iterator
from contextlib import contextmanager

import click

from crashsafe import WriteTargetError
from fdn.errors import FdnError
from fdn.shipped_models import DEFAULT_MODEL, resolve_model_dir
from hashindex.errors import HashIndexError

# What the library raises on purpose for bad input: every command turns these into a clean
# error message (click.ClickException, exit code 1) and nothing else. ValueError covers the
# argument checks of numpy-facing functions (and fdn.archive_index.queries.QueryError).
LIBRARY_ERRORS = (FdnError, HashIndexError, WriteTargetError, ValueError)

DEVICES = ("auto", "cpu", "cuda")


@contextmanager
def scheduler_errors(scheduler: str | None) -> Iterator[None]:
    """An OSError of a command that may reach a Dask scheduler, as a command-line error: it
    names ``--scheduler`` where one was given (dask.distributed raises OSError for a
    scheduler it cannot reach), else the file the error names. The library's own errors
    (WriteTargetError is an OSError) pass to the command group as they are."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, LIBRARY_ERRORS):
            raise
        where = f"--scheduler {scheduler}: " if scheduler else ""
        raise click.ClickException(f"{where}{exc}") from None


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


class ModelDir(click.Path):
    """A model directory, or the name of a shipped model (`fdn-index models`), as its path."""

    name = "model"

    def __init__(self):
        super().__init__(file_okay=False, path_type=str)

    def convert(self, value, param, ctx):
        try:
            return str(resolve_model_dir(value))
        except FdnError as exc:
            self.fail(str(exc), param, ctx)


def model_option(what: str):
    """`--model MODEL` (default: the shipped model cpu-64-null): a model directory or the name
    of a shipped model; `what` says what the command does with it."""
    return click.option(
        "--model",
        "model_dir",
        type=ModelDir(),
        default=DEFAULT_MODEL,
        show_default=True,
        help=f"Model that {what}: a directory written by `fdn-index train`, or the name of a "
        "shipped model (`fdn-index models` lists them).",
    )
