"""`fdn-index synth`: write a semi-synthetic BraTS-layout archive."""

import json

import click


@click.command()
@click.argument("out", type=click.Path(file_okay=False, writable=True))
@click.option(
    "--cases",
    "n_cases",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Number of cases (patients) to generate.",
)
@click.option(
    "--healthy-fraction",
    type=click.FloatRange(0.0, 1.0),
    default=0.3,
    show_default=True,
    help="Fraction of cases without a lesion (rounded).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Random seed; the same seed gives byte-identical volumes.",
)
@click.option(
    "--size",
    type=click.IntRange(min=8),
    default=240,
    show_default=True,
    help="In-plane size H: volumes are H×H×round(155·H/240) voxels (BraTS FOV).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace OUT if it already exists (by default an existing OUT is refused "
    "unless it is this very archive).",
)
@click.option(
    "--lesion-family",
    "lesion_families",
    default="glioma",
    show_default=True,
    metavar="NAME[,NAME...]",
    help="Lesion families the diseased cases draw from, uniformly per case: "
    "glioma (what the shipped models were trained on), non-enhancing, multifocal, small, "
    "large, cortical, deep, no-mass-effect, irregular; or 'all'. See docs/synth.md.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of text.")
def synth(out, n_cases, healthy_fraction, seed, size, overwrite, lesion_families, as_json):
    """Generate OUT, an archive of synthetic cases built from the MNI152 anatomy.

    Each case gets the four sequences (t1, t1ce, t2, flair), its lesion labels (_seg, empty
    for healthy cases), normal-anatomy labels (_anat) and a lesion-free rendering
    (_pseudohealthy).
    """
    from fdn.synth import FAMILIES, healthy_cases, parse_families, synthesize_archive

    try:
        families = (
            tuple(FAMILIES) if lesion_families.strip() == "all" else parse_families(lesion_families)
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--lesion-family") from None
    try:
        ids = synthesize_archive(
            out,
            n_cases,
            healthy_fraction,
            seed,
            size=size,
            progress=not as_json,
            overwrite=overwrite,
            families=families,
        )
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    healthy = healthy_cases(n_cases, healthy_fraction, seed)
    healthy_ids = [cid for cid, is_healthy in zip(ids, healthy, strict=True) if is_healthy]
    summary = {
        "archive": str(out),
        "cases": ids,
        "healthy": healthy_ids,
        "seed": seed,
        "size": size,
        "lesion_families": list(families),
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"Wrote {len(ids)} cases ({int(healthy.sum())} healthy) to {out}")
