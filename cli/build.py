"""`fdn-index build`: encode an archive into an index directory."""

import json
from dataclasses import asdict

import click

from fdn.archive_index.layout import FAISS_AUTO_LIMIT_GIB, FAISS_POLICIES

from .options import (
    device_option,
    index_option,
    model_option,
    scheduler_errors,
    skip_bad_option,
)


@click.command()
@click.argument("archive", type=click.Path(exists=True, file_okay=False))
@model_option("encodes the archive")
@index_option("Index directory to write (resumed if a build was interrupted).")
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
@click.option(
    "--faiss-indexes",
    type=click.Choice(FAISS_POLICIES),
    default="auto",
    show_default=True,
    help="Write the FAISS copies of the packed bits (engines faiss-flat, faiss-ivf): auto writes "
    f"them while they take at most {FAISS_AUTO_LIMIT_GIB} GiB (kilobytes per slice with the "
    "full bit length: not at PACS scale); the default engines never need them.",
)
@device_option("the encoder")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16"]),
    default="fp32",
    show_default=True,
    help="The encoder's arithmetic: fp32 gives the same codes on a GPU as on a CPU; bf16 "
    "(CUDA only) is faster but gives other codes, and then queries must be encoded on a GPU. "
    "Recorded in the index, which never mixes the two.",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=None,
    help="Encode on a local Dask cluster of this many worker processes (one case per task).",
)
@click.option(
    "--scheduler",
    metavar="tcp://HOST:PORT",
    default=None,
    help="Encode on an existing Dask cluster; its workers must see the archive, the model and "
    "the index at the same paths (a shared file system).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the build report as JSON.")
def build(
    archive,
    model_dir,
    index_dir,
    add,
    skip_bad,
    batch_size,
    bit_budget,
    ivf_nlist,
    faiss_indexes,
    device,
    precision,
    workers,
    scheduler,
    as_json,
):
    """Encode every slice of ARCHIVE into Zarr code grids and build the hash indexes."""
    from tqdm import tqdm  # here: every command's start-up would pay for it

    from fdn.archive_index.build import BuildOptions, build_index
    from fdn.archive_index.distributed import cluster_client
    from fdn.data import Archive

    if workers and scheduler:
        raise click.UsageError("Give --workers (a local cluster) or --scheduler, not both.")
    if ivf_nlist and faiss_indexes == "never":
        raise click.UsageError(
            "--ivf-nlist builds a FAISS index: it needs FAISS files, not --faiss-indexes never."
        )
    options = BuildOptions(
        add=add,
        skip_bad=skip_bad,
        batch_size=batch_size,
        bit_budget=bit_budget,
        ivf_nlist=ivf_nlist,
        faiss_indexes=faiss_indexes,
        device=None if device == "auto" else device,
        precision=precision,
    )
    with scheduler_errors(scheduler):
        n_cases = len(Archive(archive).case_ids)
        with (
            cluster_client(workers, scheduler) as client,
            tqdm(total=n_cases, desc="encode", unit="case", disable=as_json) as bar,
        ):
            report = build_index(
                archive,
                model_dir,
                index_dir,
                options,
                on_case=lambda case: bar.update(1),
                client=client,
            )
    if as_json:
        click.echo(json.dumps(asdict(report), indent=2, default=str))
        return
    click.echo(
        f"Index {report.index_dir}: {report.n_cases} cases, {report.n_slices} slices "
        f"({len(report.encoded_now)} encoded now, {len(report.reused)} reused)."
    )
    for bad in report.skipped:
        click.echo(f"  skipped {bad['case']}: {bad['fault']}")
    stages = report.stages
    if stages.get("slices"):
        click.echo(
            "  seconds: "
            + ", ".join(
                f"{k.removesuffix('_s')} {v:.1f}" for k, v in stages.items() if k.endswith("_s")
            )
            + f" ({stages['slices']} slices encoded now"
            + (f", on {len(report.workers)} workers" if len(report.workers) > 1 else "")
            + ")"
        )
    for book in ("normal", "abnormal"):
        info = report.hashindex.get(book, {}) if isinstance(report.hashindex, dict) else {}
        if info:
            click.echo(
                f"  {book} codebook: "
                + ", ".join(f"{k}={v}" for k, v in info.items() if not isinstance(v, (dict, list)))
            )
