"""`fdn-index query`: the nearest volumes by normal anatomy, by lesion, or by both."""

import json
import time
from dataclasses import asdict
from pathlib import Path

import click
import numpy as np

from fdn.errors import FdnError
from hashindex import DISTANCES, ENGINES, MODES
from hashindex.errors import HashIndexError
from hashindex.fileio import WriteTargetError, check_write_target


@click.command()
@click.option(
    "--index",
    "index_dir",
    type=click.Path(file_okay=False),
    default="index",
    show_default=True,
    help="Index directory written by `fdn-index build`.",
)
@click.option("--case", help="Query with a slice of this case, already in the index.")
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
    default="hamming",
    show_default=True,
    help="Per-image distance between code grids.",
)
@click.option(
    "--topq",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Number of volumes to return (each hit from a different volume).",
)
@click.option(
    "--backend",
    type=click.Choice(ENGINES),
    default="lut",
    show_default=True,
    help="Search engine: exact look-up tables, FAISS flat/IVF on packed bits, or numpy.",
)
@click.option(
    "--nprobe",
    type=click.IntRange(1),
    default=None,
    help="Lists probed by --backend faiss-ivf (1 to the index's nlist; only for faiss-ivf).",
)
@click.option(
    "--normalized-sum",
    is_flag=True,
    help="For --mode sum: add the two distances after dividing each by its scale.",
)
@click.option("--include-same-volume", is_flag=True, help="Allow hits from the query's own volume.")
@click.option(
    "--montage",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a PNG of the query and its hits with label overlays.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON.")
def query(
    index_dir,
    case,
    inputs,
    slice_index,
    mode,
    distance,
    topq,
    backend,
    nprobe,
    normalized_sum,
    include_same_volume,
    montage,
    as_json,
):
    """Return the top-Q most similar volumes to one query slice."""
    from fdn.data import case_files_from_paths, load_case_files
    from fdn.data.render import default_slice
    from fdn.retrieval import open_index

    if bool(case) == bool(inputs):
        raise click.UsageError("Give the query as either --case ID or --input PATH (not both).")
    options = dict(
        distance=distance, topq=topq, engine=backend, nprobe=nprobe, normalized_sum=normalized_sum
    )
    modes = list(MODES) if mode == "all" else [mode]
    try:
        if montage:
            check_write_target(montage)  # refuse /dev/null, a folder, a link before any work
        started = time.perf_counter()
        index = open_index(index_dir)
        opened = time.perf_counter()
        query_image = query_labels = None
        if case:
            if slice_index is None:
                slice_index = index.default_slice(case)
            row = index.row_of(case, slice_index)
            query_name = f"{case} slice {slice_index}"
            results = {}
            for m in modes:
                t0 = time.perf_counter()
                results[m] = (
                    index.query_slice(
                        case,
                        slice_index,
                        mode=m,
                        include_same_volume=include_same_volume,
                        **options,
                    ),
                    time.perf_counter() - t0,
                )
            query_source = index.table.value("source", row)
        else:
            case_id, files = case_files_from_paths([Path(p) for p in inputs])
            volume = load_case_files(files, index.manifest.input_size, case_id)
            if slice_index is None:
                seg = None if volume.seg is None else np.moveaxis(volume.seg, 0, -1)  # (H, W, Z)
                slice_index = default_slice(seg, volume.image.shape[0])
            if slice_index >= volume.image.shape[0]:
                raise click.BadParameter(
                    f"{case_id} has slices 0..{volume.image.shape[0] - 1}", param_hint="--slice"
                )
            query_name = f"{case_id} slice {slice_index} (external)"
            query_image = volume.image[slice_index]
            query_labels = (
                None if volume.seg is None else volume.seg[slice_index],
                None if volume.anat is None else volume.anat[slice_index],
            )
            normal, abnormal = index.encode(query_image)
            exclude = None if include_same_volume else index.volume_of(case_id)
            results = {}
            for m in modes:
                t0 = time.perf_counter()
                results[m] = (
                    index.search_codes(normal, abnormal, mode=m, exclude_volume=exclude, **options),
                    time.perf_counter() - t0,
                )
            query_source = None
        total = time.perf_counter() - started
        if montage:
            from fdn.montage import draw_retrieval_montage

            draw_retrieval_montage(
                Path(montage),
                index,
                query_name,
                {m: hits for m, (hits, _) in results.items()},
                query_case=case,
                query_slice=slice_index,
                query_source=query_source,
                query_image=query_image,
                query_labels=query_labels,
            )
    except (FdnError, HashIndexError, ValueError, WriteTargetError) as exc:
        raise click.ClickException(str(exc)) from exc

    if as_json:
        click.echo(
            json.dumps(
                {
                    "query": query_name,
                    "index": str(index_dir),
                    "distance": distance,
                    "backend": backend,
                    "open_seconds": opened - started,
                    "total_seconds": total,
                    "results": {
                        m: {"search_seconds": secs, "hits": [asdict(h) for h in hits]}
                        for m, (hits, secs) in results.items()
                    },
                    "montage": montage,
                },
                indent=2,
            )
        )
        return
    for m, (hits, secs) in results.items():
        click.echo(
            f"\nQuery {query_name} — mode {m}, {distance} distance, {backend}: "
            f"{len(hits)} volumes in {secs * 1000:.1f} ms"
        )
        dicom = any(h.study_uid for h in hits)  # imported with import-dicom: show the study
        click.echo(f"{'rank':>4}  {'case':<16} {'slice':>5}  {'distance':>12}  lesion px"
                   + ("  study" if dicom else ""))
        for h in hits:
            area = "-" if h.lesion_area is None else str(h.lesion_area)
            study = f"  {h.study_uid or '-'}" if dicom else ""
            click.echo(f"{h.rank:>4}  {h.case:<16} {h.slice:>5}  {h.distance:>12.4f}  {area:>9}"
                       + study)
    click.echo(
        f"\nIndex opened in {(opened - started) * 1000:.0f} ms; total {total * 1000:.0f} ms."
    )
    if montage:
        click.echo(f"Montage: {montage}")
