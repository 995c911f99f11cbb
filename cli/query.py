"""`fdn-index query`: the nearest volumes by normal anatomy, by lesion, or by both."""

import json
import time
from pathlib import Path

import click

from crashsafe import check_write_target
from hashindex import DISTANCES, ENGINES, MODES

from .options import index_option, scheduler_errors


@click.command()
@index_option("Index directory written by `fdn-index build`, or a folder of its shards.")
@click.option(
    "--scheduler",
    metavar="tcp://HOST:PORT",
    default=None,
    help="Search the shards on this Dask cluster's workers (with a folder of shards).",
)
@click.option(
    "--case",
    help="Query with a slice of this case, already in the index [default, without --input: "
    "the indexed slice with the largest lesion].",
)
@click.option(
    "--input",
    "inputs",
    multiple=True,
    type=click.Path(exists=True),
    help="Query with an external case: its folder, or its NIfTI files "
    "(repeat: CASE_t1.nii.gz, CASE_t1ce…, CASE_t2…, CASE_flair…).",
)
@click.option(
    "--slice",
    "slice_index",
    type=click.IntRange(0),
    default=None,
    help="Axial slice of the query case [default: its largest-lesion slice, else the middle one].",
)
@click.option(
    "--mode",
    type=click.Choice([*MODES, "all"]),
    default="sum",
    show_default=True,
    help="Similarity: normal anatomy, lesion, their sum, or all three side by side.",
)
@click.option(
    "--distance",
    type=click.Choice(DISTANCES),
    default=None,
    help="Per-image distance between code grids [default: each mode's best on the quality "
    "benchmark: euclidean for normal and sum, angular for abnormal].",
)
@click.option(
    "--topq",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Number of volumes to return (each hit from a different volume).",
)
@click.option(
    "--engine",
    "--backend",
    "engine",
    type=click.Choice(ENGINES),
    default=None,
    help="Search engine: exact look-up tables (lut, fastscan, torch on a GPU), FAISS flat/IVF "
    "on packed bits, or numpy [default: fastscan where the index's codebooks have at most 256 "
    "distinct vectors, except for D_A, else lut].",
)
@click.option(
    "--nprobe",
    type=click.IntRange(1),
    default=None,
    help="Lists probed by --engine faiss-ivf (1 to the index's nlist; only for faiss-ivf).",
)
@click.option(
    "--normalized-sum",
    is_flag=True,
    help="For --mode sum: add the two distances after dividing each by its scale.",
)
@click.option("--include-same-volume", is_flag=True, help="Allow hits from the query's own volume.")
@click.option(
    "--where",
    default=None,
    metavar="FILTER",
    help="Return only slices whose slice-table row passes FILTER, e.g. "
    "'age >= 60 and sex == \"F\"' (==, !=, <, <=, >, >=, in [..], and, or, not, parentheses; "
    "columns: case, slice, lesion_area and the case metadata). The search is exact over those "
    "rows.",
)
@click.option(
    "--region",
    default=None,
    metavar="X0,Y0,X1,Y1",
    help="Compare only this box of the query slice: voxels X0..X1 along the NIfTI's first axis "
    "and Y0..Y1 along its second, ends included. It becomes the grid cells it covers by at least "
    "half (docs/region-queries.md); hits are compared at the same cells. Runs on an exact engine "
    "that takes a region (lut by default, or numpy).",
)
@click.option(
    "--region-mask",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Compare only the nonzero voxels of this NIfTI mask on the query slice: a volume of "
    "the query case's shape, or one slice of it (instead of --region).",
)
@click.option(
    "--explain",
    is_flag=True,
    help="For each hit, the per-position contributions to its distance (they add up to it): "
    "in --json, in the text output (where most of it lies) and as heat maps in --montage.",
)
@click.option(
    "--montage",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a PNG of the query and its hits with label overlays.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON.")
def query(
    index_dir,
    scheduler,
    case,
    inputs,
    slice_index,
    mode,
    distance,
    topq,
    engine,
    nprobe,
    normalized_sum,
    include_same_volume,
    where,
    region,
    region_mask,
    explain,
    montage,
    as_json,
):
    """Return the top-Q most similar volumes to one query slice.

    --index may also be a folder of shards (`fdn-index shard`): the query then runs on every
    shard in parallel, in threads here or, with --scheduler, on the Dask cluster's workers.
    """
    from fdn.archive_index.distributed import cluster_client
    from fdn.archive_index.queries import (
        default_query_slice,
        query_options,
        run_external_query,
        run_slice_query,
    )
    from fdn.archive_index.retrieval import open_index
    from fdn.archive_index.shards import is_sharded, open_sharded

    if case and inputs:
        raise click.UsageError("Give the query as either --case ID or --input PATH (not both).")
    if slice_index is not None and not (case or inputs):
        raise click.UsageError("--slice is a slice of --case ID or --input PATH: give one.")
    sharded = is_sharded(index_dir)
    if scheduler and not sharded:
        raise click.UsageError(
            f"--scheduler needs a folder of shards (fdn-index shard); {index_dir} is one index."
        )
    with scheduler_errors(scheduler):
        options = query_options(
            mode,
            distance=distance,
            topq=topq,
            engine=engine,
            nprobe=nprobe,
            normalized_sum=normalized_sum,
            include_same_volume=include_same_volume,
            where=where,
            region=region,
            region_mask=region_mask,
            explain=explain,
        )
        if montage:
            check_write_target(montage)  # refuse /dev/null, a folder, a link before any work
        with cluster_client(None, scheduler) as client:
            started = time.perf_counter()
            index = open_sharded(index_dir, client) if sharded else open_index(index_dir)
            opened = time.perf_counter()
            if inputs:
                result = run_external_query(index, list(inputs), slice_index, options)
            else:
                if not case:
                    case, slice_index = default_query_slice(index)
                result = run_slice_query(index, case, slice_index, options)
            total = time.perf_counter() - started
        if montage:
            from fdn.archive_index.montage import draw_retrieval_montage

            draw_retrieval_montage(
                Path(montage),
                index,
                result.query,
                {m: r.hits for m, r in result.results.items()},
                query_case=None if result.external else result.query_case,
                query_slice=result.query_slice,
                query_source=result.query_source,
                query_image=result.query_image,
                query_labels=result.query_labels,
                region=result.region,
            )

    if as_json:
        out = result.to_dict()
        out.update(
            index=str(index_dir),
            open_seconds=opened - started,
            total_seconds=total,
            montage=montage,
        )
        click.echo(json.dumps(out, indent=2))
        return
    query_name = result.query
    for m, mode_result in result.results.items():
        hits, secs = mode_result.hits, mode_result.search_seconds
        engine = mode_result.engine + (f" ({mode_result.kernel})" if mode_result.kernel else "")
        click.echo(
            f"\nQuery {query_name} — mode {m}, {mode_result.distance} distance, "
            f"{engine}: {len(hits)} volumes in {secs * 1000:.1f} ms"
        )
        dicom = any(h.study_uid for h in hits)  # imported with import-dicom: show the study
        click.echo(
            f"{'rank':>4}  {'case':<16} {'slice':>5}  {'distance':>12}  lesion px"
            + ("  study" if dicom else "")
        )
        for h in hits:
            area = "-" if h.lesion_area is None else str(h.lesion_area)
            study = f"  {h.study_uid or '-'}" if dicom else ""
            click.echo(
                f"{h.rank:>4}  {h.case:<16} {h.slice:>5}  {h.distance:>12.4f}  {area:>9}" + study
            )
            if h.explanation is not None:
                click.echo(f"      {_top_cells(h.explanation)}")
    if result.region is not None:
        echoed = result.region.to_dict()
        given = region if region is not None else f"mask {region_mask}"
        for book in ("normal", "abnormal"):
            cells = echoed["positions"][book]
            h, w = echoed["grid"][book]
            click.echo(
                f"\nRegion {given}: {len(cells)} of {h * w} grid positions ({book} grid {h}x{w}): "
                + " ".join(f"({i},{j})" for i, j in cells)
            )
    if where is not None:
        click.echo(f"\nFilter {where}: {result.rows_passing} rows pass.")
    click.echo(
        f"\nIndex opened in {(opened - started) * 1000:.0f} ms; total {total * 1000:.0f} ms."
    )
    if montage:
        click.echo(f"Montage: {montage}")


def _top_cells(explanation: dict, n: int = 3) -> str:
    """Where a hit's distance lies, as text: the n grid cells holding its largest shares (only
    cells that hold some); a hit at distance 0 matches at every position compared."""
    import numpy as np

    maps = [np.asarray(b["contributions"]) for b in explanation["books"].values()]
    total = np.sum(maps, axis=0)
    distance = explanation["distance"]
    if not distance > 0:
        return "equal to the query at every position compared"
    order = np.argsort(-total, axis=None, kind="stable")[:n]
    cells = []
    for flat in order:
        i, j = np.unravel_index(flat, total.shape)
        if total[i, j] > 0:
            cells.append(f"({i},{j}) {total[i, j] / distance:.0%}")
    return "most of its distance at " + ", ".join(cells)
