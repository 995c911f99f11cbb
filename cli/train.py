"""`fdn-index train`: train a feature decomposing network on an archive (Algorithm 1)."""

import json
import shlex
from dataclasses import replace
from pathlib import Path

import click

from fdn.model.config import PRESETS, parse_overrides, resolve_config  # no torch

from .options import device_option, skip_bad_option


def _command_line(ctx: click.Context) -> str:
    """The command as run, rebuilt from the parsed options (defaults left out)."""
    parts = ["fdn-index", ctx.info_name or "train"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, click.Argument):
            parts.append(str(value))
        elif param.multiple:
            flag = max(param.opts, key=len)
            for item in value or ():
                parts += [flag, str(item)]
        elif (param.name == "preset" and ctx.params.get("init_from") is None) or (
            param.name != "preset"
            and value is not None
            and value is not False
            and value != param.default
        ):
            flag = max(param.opts, key=len)
            parts += [flag] if value is True else [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


@click.command()
@click.argument("archive", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default="cpu-64",
    show_default=True,
    help="Model configuration: the paper's fdn-HxW (256² input, GPU), or a CPU "
    "preset (cpu-64: 64² input, 8×8 codes).",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, writable=True),
    help="Model directory to write (config.json, checkpoint.pt, weights.pt, "
    "metrics.jsonl, samples/).",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Number of epochs (default: the preset's).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=2),
    default=None,
    help="Slices per batch, half healthy and half diseased (default: the preset's).",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Adam learning rate (default: the preset's).",
)
@click.option(
    "--max-minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Time budget: stop cleanly with a final checkpoint after this many minutes.",
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many optimizer steps in total.",
)
@click.option(
    "--checkpoint-minutes",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Interval between checkpoints.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out where it stopped: its saved config and RNG states "
    "win over --preset/--batch-size/--lr (only --epochs may change).",
)
@click.option(
    "--init-from",
    "init_from",
    default=None,
    metavar="MODEL",
    help="Fine-tune: start from this model's weights (a model directory or a shipped model's "
    "name, see `fdn-index models`) with its config, fresh optimizers and critic; "
    "--epochs/--lr/--batch-size/--set apply over its config, --preset is not used.",
)
@click.option(
    "--no-dm", is_flag=True, help="Switch off distribution matching (no critic, no L_reg)."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Set any field of the model config over the preset, e.g. --set null_code_weight=1 "
    "or --set spade_masked_layout=false (repeatable; fields as in config.json).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@skip_bad_option
@device_option("training")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads for torch. Default: 1 for inputs up to 128² on CPU (these "
    "small models gain nothing from threads, and threads spin badly on a busy "
    "machine), else torch's choice.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of text.")
def train(
    archive,
    preset,
    out,
    epochs,
    batch_size,
    lr,
    max_minutes,
    max_steps,
    checkpoint_minutes,
    resume,
    init_from,
    no_dm,
    overrides,
    seed,
    skip_bad,
    device,
    threads,
    as_json,
):
    """Train an FDN on the slices of ARCHIVE and write it to --out.

    Every batch holds healthy slices (no lesion label) and diseased ones, half each.
    Progress with live losses goes to stderr; per-epoch metrics to OUT/metrics.jsonl.
    """
    import torch

    from fdn.device import resolve_device, training_threads
    from fdn.training.checkpoint import read_config
    from fdn.training.trainer import train as run_training

    source_dir, base = None, None
    if init_from is not None:
        source_dir, preset = _fine_tuning_source(click.get_current_context(), init_from, resume)
        base = read_config(source_dir)  # the source's own config, not its preset's today
    resolved = resolve_device(device)
    # chosen by the input size of the preset (or the source model), not by --set image_size
    image_size = base.image_size if base is not None else PRESETS[preset].image_size
    threads = training_threads(resolved, image_size, threads)
    if threads is not None:
        torch.set_num_threads(threads)
    changes = {
        k: v
        for k, v in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr))
        if v is not None
    }
    if no_dm:
        changes["distribution_matching"] = False
    try:
        fields = {**changes, **parse_overrides(overrides)}
        config = resolve_config(preset, fields) if base is None else replace(base, **fields)
    except (ValueError, TypeError) as exc:
        raise click.BadParameter(str(exc), param_hint="--set") from None
    command = _command_line(click.get_current_context())
    result = run_training(
        archive,
        out,
        config,
        preset,
        resume=resume,
        seed=seed,
        max_minutes=max_minutes,
        max_steps=max_steps,
        device=device,
        progress=not as_json,
        checkpoint_minutes=checkpoint_minutes,
        skip_bad=skip_bad,
        command=command,
        init_from=source_dir,
    )
    summary = {
        "model_dir": str(result.model_dir),
        "steps": result.steps,
        "epochs": result.epochs_done,
        "stopped": result.stopped,
        "elapsed_s": round(result.elapsed_s, 1),
        "last_metrics": result.last_metrics,
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    m = result.last_metrics
    click.echo(
        f"Trained {result.steps} steps ({result.epochs_done} epochs, "
        f"{result.elapsed_s / 60:.1f} min, stopped: {result.stopped}) -> {out}"
    )
    if m:
        dice = m.get("dice_lesion")
        click.echo(
            f"last epoch: L_rec {m['rec']:.4f}  L_seg {m['seg']:.4f}  "
            f"L_lat {m['lat']:.4f}  lesion Dice {dice if dice is None else round(dice, 3)}"
        )


def _fine_tuning_source(
    ctx: click.Context, init_from: str, resume: bool
) -> tuple[Path, str | None]:
    """The model directory --init-from names and the preset it was trained with; usage
    errors for --resume or an explicit --preset beside it."""
    from fdn.shipped_models import resolve_model_dir
    from fdn.training.checkpoint import read_config, read_config_json

    if resume:
        raise click.UsageError("--init-from starts a new run; it cannot be used with --resume")
    if ctx.get_parameter_source("preset") is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError(
            "--init-from trains the model's own config; drop --preset (use --set to change a field)"
        )
    source = resolve_model_dir(init_from)
    read_config(source)  # a usable config, or the ModelError that says what is wrong
    return source, read_config_json(source).get("preset")
