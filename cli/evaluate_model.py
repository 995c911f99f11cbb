"""`fdn-index evaluate-model`: reconstruction, segmentation, compactness and leakiness."""

import json
from pathlib import Path

import click

from .options import ModelDir, device_option, skip_bad_option


def _fmt(v, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


@click.command("evaluate-model")
@click.argument(
    "paths", nargs=-1, required=True, metavar="[MODEL] ARCHIVE", type=click.Path(file_okay=False)
)
@click.option(
    "--histogram",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="PNG of the codebook norm histogram [default: MODEL/codebook_norms.png, or "
    "./codebook_norms.png for a shipped model].",
)
@skip_bad_option
@device_option("the model")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def evaluate_model(paths, histogram, skip_bad, device, as_json):
    """Evaluate MODEL on the cases of ARCHIVE (paper 4.4).

    MODEL is a directory written by `fdn-index train` or the name of a shipped model
    (`fdn-index models`); without it, the default shipped model.
    """
    from fdn.shipped_models import DEFAULT_MODEL, is_shipped
    from fdn.training.checkpoint import load_model
    from fdn.training.evaluate import evaluate_model as run

    if len(paths) > 2:
        raise click.UsageError("give at most MODEL and ARCHIVE")
    *model, archive = paths
    model_dir = ModelDir().convert(model[0] if model else DEFAULT_MODEL, None, None)
    archive = click.Path(exists=True, file_okay=False).convert(archive, None, None)
    if histogram:
        hist = Path(histogram)
    elif is_shipped(model_dir):  # never written into the installed package
        hist = Path("codebook_norms.png")
    else:
        hist = Path(model_dir) / "codebook_norms.png"
    model, config = load_model(model_dir, device="cpu")
    r = run(
        model,
        config,
        archive,
        skip_bad=skip_bad,
        device=device,
        histogram_path=hist,
        progress=not as_json,
    )
    if as_json:
        click.echo(json.dumps(r))
        return
    rec = r["reconstruction"]
    lines = [
        f"{r['cases']} cases, {r['slices']} slices with brain",
        "reconstruction (4.4.1)             per slice   per pixel",
        f"  Σ|x - x̂+|                      {rec['l1_plus_per_slice']:10.2f}  "
        f"{rec['l1_plus_per_pixel']:10.4f}",
        f"  Σ|M- ⊙ x - M- ⊙ x̂-|            {rec['l1_minus_per_slice']:10.2f}  "
        f"{rec['l1_minus_per_pixel']:10.4f}",
        "volume-wise Dice (4.4.2)           mean     std  volumes",
    ]
    for name, d in r["dice"].items():
        lines.append(
            f"  {name:<32}{_fmt(d['mean'], 3):>6}  {_fmt(d['std'], 3):>6}  {d['volumes']:>7}"
        )
    c = r["compactness"]
    lines += [
        "codebook compactness (4.4.4, share of norms < 1e-5)",
        f"  normal   {c['normal']:.3f}  ({r['codes_used']['normal']} of "
        f"{c['codebook_size']} codes used on this archive)",
        f"  abnormal {c['abnormal']:.3f}  ({r['codes_used']['abnormal']} of "
        f"{c['codebook_size']} codes used on this archive)",
        f"  histogram: {r['histogram']}",
    ]
    leak = r["leakiness"]
    if leak:
        lines += [
            "leakiness vs _pseudohealthy (mean |error| per voxel)",
            f"  x̂- in lesion      {leak['mae_xhat_minus_vs_pseudohealthy_in_lesion']:.4f}"
            f"   (input x in lesion: {leak['mae_x_vs_pseudohealthy_in_lesion']:.4f})",
            f"  x̂- outside lesion {leak['mae_xhat_minus_vs_pseudohealthy_outside']:.4f}",
        ]
    click.echo("\n".join(lines))
