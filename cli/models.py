"""`fdn-index models`: the shipped models, what they were trained on, and the default."""

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the models as JSON.")
def models(as_json):
    """List the trained models that ship with fdn-index.

    Pass a name as `--model NAME` to `build` (or as MODEL to `evaluate-model`); the one marked
    default is used without it.
    """
    from fdn.shipped_models import shipped_models

    found = shipped_models()
    if as_json:
        click.echo(json.dumps([m.to_dict() for m in found], indent=2))
        return
    for m in found:
        grid = f"{m.latent_size}×{m.latent_size}" if m.latent_size else "?"
        click.echo(
            f"{m.name}{'  (default)' if m.default else ''}\n"
            f"  preset {m.preset}: {m.image_size}² input, {grid} codes, D = {m.code_dim}, "
            f"K = {m.codebook_size}, distribution matching "
            f"{'on' if m.distribution_matching else 'off'}"
            f"{', null code' if m.null_code else ''}"
        )
        click.echo(
            f"  trained {m.steps} steps ({m.epochs} epochs, {m.train_minutes} min)"
            + (
                f", lesion Dice {m.train_dice_lesion:.3f} on its last epoch"
                if m.train_dice_lesion
                else ""
            )
        )
        if m.train_archive:
            click.echo(f"  on the archive of: {m.train_archive}")
        for command in m.train_commands:
            click.echo(f"  by: {command}")
        if m.versions:
            click.echo(f"  with {m.versions}")
        click.echo(f"  at {m.path}")
