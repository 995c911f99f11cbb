"""`fdn-index build`: encode an archive into an index directory."""

import json
from dataclasses import asdict

import click
from tqdm import tqdm

from cli.options import device_option, skip_bad_option
from fdn.errors import FdnError
from hashindex.errors import HashIndexError
from hashindex.fileio import WriteTargetError


@click.command()
@click.argument("archive", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--model",
    "model_dir",
    type=click.Path(file_okay=False),
    default="model",
    show_default=True,
    help="Model directory written by `fdn-index train`.",
)
@click.option(
    "--index",
    "index_dir",
    type=click.Path(file_okay=False),
    default="index",
    show_default=True,
    help="Index directory to write (resumed if a build was interrupted).",
)
@click.option("--add", is_flag=True, help="Append the archive's new cases to an existing index.")
@skip_bad_option
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Slices encoded per forward pass.",
)
@click.option(
    "--bit-budget",
    type=click.IntRange(8),
    default=None,
    help="Bits kept per grid position for the packed FAISS codes (default: Algorithm A.1's length).",
)
@click.option(
    "--ivf-nlist",
    type=click.IntRange(1),
    default=None,
    help="Also build a FAISS IndexBinaryIVF with this many lists (approximate search).",
)
@device_option("the encoder")
@click.option("--json", "as_json", is_flag=True, help="Print the build report as JSON.")
def build(
    archive, model_dir, index_dir, add, skip_bad, batch_size, bit_budget, ivf_nlist, device, as_json
):
    """Encode every slice of ARCHIVE into Zarr code grids and build the hash indexes."""
    from fdn.build import build_index
    from fdn.data import Archive

    try:
        n_cases = len(Archive(archive).case_ids)
        with tqdm(total=n_cases, desc="encode", unit="case", disable=as_json) as bar:
            report = build_index(
                archive,
                model_dir,
                index_dir,
                add=add,
                skip_bad=skip_bad,
                batch_size=batch_size,
                bit_budget=bit_budget,
                ivf_nlist=ivf_nlist,
                device=None if device == "auto" else device,
                on_case=lambda case: bar.update(1),
            )
    except (FdnError, HashIndexError, WriteTargetError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(asdict(report), indent=2, default=str))
        return
    click.echo(
        f"Index {report.index_dir}: {report.n_cases} cases, {report.n_slices} slices "
        f"({len(report.encoded_now)} encoded now, {len(report.reused)} reused)."
    )
    for bad in report.skipped:
        click.echo(f"  skipped {bad['case']}: {bad['fault']}")
    for book in ("normal", "abnormal"):
        info = report.hashindex.get(book, {}) if isinstance(report.hashindex, dict) else {}
        if info:
            click.echo(
                f"  {book} codebook: "
                + ", ".join(f"{k}={v}" for k, v in info.items() if not isinstance(v, (dict, list)))
            )
