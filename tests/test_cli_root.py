import click
import pytest
from click.testing import CliRunner

from fdn import __version__
from fdn_index_cli.main import COMMANDS, main


def test_version_matches_package():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    assert __version__ in result.output


def test_help_lists_the_group():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    assert "normal anatomy" in result.output


def test_every_command_loads_under_its_name_and_has_help():
    ctx = click.Context(main)
    assert main.list_commands(ctx) == sorted(COMMANDS)
    for name in COMMANDS:
        command = main.get_command(ctx, name)
        assert command is not None and command.name == name
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"Usage: main {name} [OPTIONS]")
    assert main.get_command(ctx, "no-such-command") is None


def test_an_unknown_command_is_a_clear_error():
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code != 0
    assert "No such command 'no-such-command'" in result.output


def test_an_os_error_names_the_scheduler_or_the_file_and_library_errors_pass():
    """Commands that may reach a Dask scheduler word its OSError once (`scheduler_errors`)."""
    from crashsafe import WriteTargetError
    from fdn_index_cli.options import scheduler_errors

    refused = ConnectionRefusedError(111, "Connection refused")
    with pytest.raises(click.ClickException) as caught, scheduler_errors("tcp://127.0.0.1:9"):
        raise refused
    assert caught.value.message == f"--scheduler tcp://127.0.0.1:9: {refused}"
    missing = FileNotFoundError(2, "No such file or directory", "case.nii.gz")
    with pytest.raises(click.ClickException) as caught, scheduler_errors(None):
        raise missing
    assert caught.value.message == str(missing) and "case.nii.gz" in caught.value.message
    with pytest.raises(WriteTargetError), scheduler_errors("tcp://127.0.0.1:9"):
        raise WriteTargetError("out.png: a folder")  # the command group words it
