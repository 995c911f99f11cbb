"""`fdn-index remove`: take cases out of an index (withdrawn consent)."""

import json

import click

from .options import index_option


@click.command()
@index_option("Index directory written by `fdn-index build`, or a folder of its shards.")
@click.argument("cases", nargs=-1, metavar="CASE...")
@click.option(
    "--compact",
    is_flag=True,
    help="Also assemble the index again without every removed case and delete their build "
    "journal entries (encoded/CASE.npz), so that their data leaves the index folder.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def remove(index_dir, cases, compact, as_json):
    """Remove CASE... from the index: no query returns them from now on, and none may be a
    query.

    The removal is recorded at once (removed.json, written atomically; it names no case, only
    a digest of each id keyed with the folder's own .removal-key) and honoured by every query,
    a running server's included. The data stays in the folder until --compact (or the next
    `fdn-index build`, which also leaves the cases out for good). On a folder of shards each
    case is removed from the shard that holds it. An unknown case is an error, and then nothing is removed.
    """
    if not cases and not compact:
        raise click.UsageError("name at least one CASE to remove, or pass --compact")
    from fdn.archive_index.removal import remove_cases

    report = remove_cases(index_dir, list(cases), compact=compact)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for part in report["indexes"]:
        for case in part["removed"]:
            click.echo(f"{part['index']}: removed {case}")
        for case in part["removed_before"]:
            click.echo(f"{part['index']}: {case} was already removed")
        if part["compacted"]:
            click.echo(
                f"{part['index']}: compacted; {part['journal_entries_deleted']} journal "
                "entries deleted"
            )
