"""Root of the `fdn-index` command: one click group, each command in its own module."""

import logging

import click

from fdn import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fdn-index")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages to stderr.")
def main(verbose: bool) -> None:
    """Content-based retrieval of brain MRI by normal anatomy and by lesion.

    A feature decomposing network (FDN) splits each axial slice into a normal anatomy code
    and an abnormal anatomy code; `build` indexes them and `query` returns the most
    similar volumes by either or both.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


# Commands register themselves below, one module each (cli/<command>.py).
from cli.synth import synth  # noqa: E402

main.add_command(synth)
from cli.show import show  # noqa: E402

main.add_command(show)
from cli.build import build  # noqa: E402

main.add_command(build)
from cli.query import query  # noqa: E402

main.add_command(query)
from cli.train import train  # noqa: E402

main.add_command(train)
from cli.evaluate_model import evaluate_model  # noqa: E402

main.add_command(evaluate_model)
from cli.import_dicom import import_dicom  # noqa: E402

main.add_command(import_dicom)
from cli.serve import serve  # noqa: E402

main.add_command(serve)
from cli.shard import shard  # noqa: E402

main.add_command(shard)
