"""`fdn-index shard`: split a built index into shards that can live on different workers."""

import json

import click


@click.command()
@click.argument("index_dir", metavar="INDEX", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", metavar="OUT", type=click.Path(file_okay=False))
@click.option(
    "--shards",
    "n_shards",
    type=click.IntRange(1),
    required=True,
    help="Number of shards (whole volumes each, about equal slice counts).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the shard listing as JSON.")
def shard(index_dir, out_dir, n_shards, as_json):
    """Split INDEX into shard indexes in OUT, for `fdn-index query --index OUT`.

    Each shard is a complete index of a contiguous run of INDEX's cases, assembled from its
    build journal; a query on OUT searches every shard and merges the hits exactly.
    """
    from tqdm import tqdm  # here: every command's start-up would pay for it

    from fdn.archive_index.shards import split_index

    with tqdm(total=n_shards, desc="assemble", unit="shard", disable=as_json) as bar:
        listing = split_index(index_dir, out_dir, n_shards, on_shard=lambda s: bar.update(1))
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    for s in listing["shards"]:
        click.echo(
            f"{out_dir}/{s['path']}: {len(s['cases'])} cases, {s['n_slices']} slices "
            f"(rows {s['row_offset']}..{s['row_offset'] + s['n_slices'] - 1})"
        )
    click.echo(f"Query them with: fdn-index query --index {out_dir} --case CASE")
