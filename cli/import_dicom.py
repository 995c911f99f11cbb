"""`fdn-index import-dicom`: DICOM MR studies, from files or a PACS, into a BraTS-layout archive."""

import json
from dataclasses import asdict
from functools import partial

import click


@click.command("import-dicom")
@click.argument(
    "paths", nargs=-1, required=True, metavar="[SOURCE] ARCHIVE", type=click.Path(file_okay=False)
)
@click.option(
    "--pacs",
    metavar="URL",
    default=None,
    help="Sync from this DICOMweb root (QIDO-RS/WADO-RS), e.g. "
    "http://pacs:8042/dicom-web, instead of reading SOURCE.",
)
@click.option(
    "--mapping",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="JSON rules that override the sequence identification, e.g. "
    '{"t1ce": ["AX T1 POST"], "ignore": ["T2 STAR"]}.',
)
@click.option(
    "--auth-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help='PACS credentials: JSON {"username": …, "password": …} or {"token": …} '
    "[default: FDN_PACS_USERNAME/FDN_PACS_PASSWORD or FDN_PACS_TOKEN].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="With --pacs: the longest the study listing, and each study's fetch, may take; a "
    "server still sending when it is up is cut off  [default: 120].",
)
@click.option(
    "--remove",
    "remove",
    multiple=True,
    metavar="CASE",
    help="Delete this imported study (its case id, or its StudyInstanceUID) from ARCHIVE "
    "instead of importing; repeat for more.",
)
@click.option(
    "--index",
    "indexes",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="With --remove: first remove the cases from this index directory (or folder of "
    "shards) built from ARCHIVE, as `fdn-index remove` does; repeat for more.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the report (imported and skipped studies, with reasons) as JSON.",
)
def import_dicom(paths, pacs, mapping, auth_file, timeout, remove, indexes, as_json):
    """Import the complete MR studies (T1, T1Gd, T2, FLAIR) of SOURCE, a folder of DICOM files
    of any layout, or of a PACS (--pacs URL), into ARCHIVE, one case folder per study.

    With --remove CASE ARCHIVE, delete imported studies from ARCHIVE instead (withdrawn
    consent): each case folder is renamed away and deleted under the archive's lock, with its
    provenance. Indexes built from ARCHIVE keep the case until `fdn-index remove --index DIR
    CASE`, which --index DIR runs first.

    Studies already in ARCHIVE are not imported again. Bad studies and files are listed with
    the reason and nothing is written for them; the command fails when nothing was imported
    and something new went wrong (a study or file that failed the same way in the previous
    run is listed "as in an earlier run" and fails nothing, so a nightly re-run stays quiet).
    """
    from tqdm import tqdm  # here: every command's start-up would pay for it

    from fdn.dicom.dicomweb import DEFAULT_TIMEOUT_S
    from fdn.dicom.importer import import_dicom as run_import
    from fdn.dicom.pacs import load_credentials, sync_pacs
    from fdn.dicom.sequences import load_mapping

    if remove:
        _remove(
            paths,
            remove,
            indexes,
            as_json,
            pacs=pacs,
            mapping=mapping,
            auth_file=auth_file,
            timeout=timeout,
        )
        return
    if indexes:
        raise click.UsageError("--index is for --remove")
    if pacs is not None and len(paths) != 1:
        raise click.UsageError("with --pacs URL give only ARCHIVE")
    if pacs is None and len(paths) != 2:
        raise click.UsageError("give SOURCE and ARCHIVE (or --pacs URL ARCHIVE)")
    if auth_file and pacs is None:
        raise click.UsageError("--auth-file is for --pacs")
    if timeout is not None and pacs is None:
        raise click.UsageError("--timeout is for --pacs")
    progress = partial(tqdm, disable=as_json, leave=False)
    rules = load_mapping(mapping) if mapping else None
    if pacs is not None:
        report = sync_pacs(
            pacs,
            paths[0],
            mapping=rules,
            auth=load_credentials(auth_file),
            timeout=DEFAULT_TIMEOUT_S if timeout is None else timeout,
            progress=progress,
        )
    else:
        report = run_import(paths[0], paths[1], mapping=rules, progress=progress)
    if as_json:
        click.echo(json.dumps({**asdict(report), "failed": report.failed}, indent=2))
    else:
        _print_report(report)
    if report.failed:
        raise click.ClickException(
            "no study was imported"
            + ("; see the reasons above" if report.new_failures else ": no DICOM study found")
        )


def _remove(paths, cases, indexes, as_json, **others) -> None:
    from fdn.archive_index.removal import remove_studies_and_cases

    used = [f"--{name.replace('_', '-')}" for name, value in others.items() if value]
    if used:
        raise click.UsageError(f"--remove takes only ARCHIVE and --index, not {', '.join(used)}")
    if len(paths) != 1:
        raise click.UsageError("with --remove CASE give only ARCHIVE")
    report = remove_studies_and_cases(paths[0], list(cases), list(indexes))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for entry in report["removed"]:
        click.echo(f"{report['archive']}: removed {entry['case']} (study {entry['study_uid']})")
    for part in (p for index in report["indexes"] for p in index["indexes"]):
        for case in part["removed"] + part["removed_before"]:
            click.echo(
                f"{part['index']}: {case} removed; `fdn-index remove --compact` deletes its data"
            )
    if not indexes:
        names = " ".join(e["case"] for e in report["removed"])
        click.echo(
            f"Indexes built from {report['archive']} still hold these cases: run "
            f"`fdn-index remove --index DIR {names}` on each (add --compact to delete their data)."
        )


def _print_report(report) -> None:
    known = sum(bool(e.get("known")) for e in [*report.skipped, *report.bad_files])
    click.echo(
        f"Archive {report.archive}: {len(report.imported)} studies imported, "
        f"{len(report.already)} already there, {len(report.skipped)} skipped, "
        f"{len(report.bad_files)} files not read"
        + (f" ({known} as in an earlier run)" if known else "")
        + f" ({report.bytes_read / 1e6:.1f} MB read)."
    )
    for entry in report.imported:
        click.echo(f"  imported {entry['case']}  (study {entry['study_uid']})")
    for entry in report.skipped:
        where = (
            (f"study {entry['study_uid']}" if entry["study_uid"] else "a listed study")
            + (f", series {entry['series_uid']}" if entry.get("series_uid") else "")
            + (f", file {entry['file']}" if entry.get("file") else "")
        )
        click.echo(f"  skipped {where}: {entry['reason']}{_as_before(entry)}")
    for entry in report.bad_files:
        click.echo(f"  not read {entry['file']}: {entry['reason']}{_as_before(entry)}")
    for entry in report.duplicates:
        click.echo(
            f"  dropped duplicate {entry['file']}: the same image as {entry['same_as']} "
            f"(study {entry['study_uid']}, series {entry['series_uid']})"
        )


def _as_before(entry: dict) -> str:
    return " (as in an earlier run)" if entry.get("known") else ""
