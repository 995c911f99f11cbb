"""`fdn-index show`: render one case (four contrasts with seg and anat overlays) to a PNG."""

import json
from pathlib import Path

import click


@click.command()
@click.argument("case_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--slice",
    "slice_index",
    type=int,
    default=None,
    help="Axial slice to show (default: the slice with the largest lesion, or the "
    "middle slice when the case has no lesion).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    required=True,
    help="PNG file to write.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of text.")
def show(case_dir, slice_index, output, as_json):
    """Render the case in CASE_DIR (BraTS layout, CASE_DIR/CASE_t1.nii.gz, …) to a PNG."""
    from fdn.data.render import render_case

    shown = render_case(Path(case_dir), Path(output), slice_index)
    if as_json:
        click.echo(json.dumps({"case": shown.case, "slice": shown.slice, "output": output}))
    else:
        click.echo(f"Wrote {output} (case {shown.case}, slice {shown.slice})")
