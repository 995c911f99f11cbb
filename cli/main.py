"""Root of the `fdn-index` command: one click group, each command in its own module."""

import importlib
import logging

import click

from fdn import __version__

from .options import LIBRARY_ERRORS

# Commands, one module each (cli/<command>.py): name -> ".module:attribute", relative to this
# package (the repository's cli/, installed as fdn_index_cli). A command's module is imported
# when that command runs (or when --help lists them all), so that `fdn-index query` does not
# import what `build`, `train` or `import-dicom` need at start-up.
COMMANDS = {
    "build": ".build:build",
    "evaluate-model": ".evaluate_model:evaluate_model",
    "import-dicom": ".import_dicom:import_dicom",
    "models": ".models:models",
    "query": ".query:query",
    "remove": ".remove:remove",
    "serve": ".serve:serve",
    "shard": ".shard:shard",
    "show": ".show:show",
    "synth": ".synth:synth",
    "train": ".train:train",
}


class LazyGroup(click.Group):
    """A click group whose commands (`lazy_commands`, name -> ".module:attribute" in this
    package) are imported on first use, and whose commands' library errors become clean command-line errors.

    Commands only parse and call the library: what the library raises on purpose for bad
    input (`LIBRARY_ERRORS`) is reported here, once for all of them, as its message and exit
    code 1 (click.ClickException), never as a traceback.
    """

    def __init__(self, *args, lazy_commands: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            module, attribute = self.lazy_commands[cmd_name].split(":")
            command = getattr(importlib.import_module(module, __package__), attribute)
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LIBRARY_ERRORS as exc:
            raise click.ClickException(str(exc) + self._skip_bad_hint(ctx, exc)) from None

    def _skip_bad_hint(self, ctx: click.Context, exc: Exception) -> str:
        """For a bad case of an archive, the way around it, where the command has one: the
        library's message cannot know whether its caller takes --skip-bad (a query does not)."""
        from fdn.data.case import CaseError

        name = ctx.invoked_subcommand
        command = self.get_command(ctx, name) if name else None
        if not isinstance(exc, CaseError) or command is None:
            return ""
        if any(param.name == "skip_bad" for param in command.params):
            return f"; or run `fdn-index {name}` with --skip-bad to leave such cases out"
        return ""


@click.group(
    cls=LazyGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
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
