"""Sharded indexes: split a built index, query every shard in parallel (threads, or a Dask
LocalCluster) and merge; the hits equal the unsharded index's and the numpy brute force."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fdn.archive_index.queries import query_options, run_slice_query
from fdn.archive_index.retrieval import open_index
from fdn.archive_index.shards import open_sharded, split_index
from fdn.errors import IndexDirError
from fdn_index_cli.main import main


@pytest.fixture(scope="module")
def ref():
    import tests.hashindex.hashindex_reference as reference

    return reference


@pytest.fixture(scope="module")
def three_shards(tmp_path_factory, built_index):
    out = tmp_path_factory.mktemp("shards") / "shards"
    listing = split_index(built_index, out, 3)
    return out, listing


def _key(hits):
    return [(h.case, h.slice, h.row, h.distance) for h in hits]


def test_shards_hold_whole_volumes_in_row_order(three_shards, built_index):
    out, listing = three_shards
    full = open_index(built_index)
    assert [c for s in listing["shards"] for c in s["cases"]] == full.cases
    assert sum(s["n_slices"] for s in listing["shards"]) == full.ntotal == listing["n_slices"]
    for s in listing["shards"]:
        shard = open_index(out / s["path"])
        assert shard.cases == s["cases"]
        rows = np.arange(shard.ntotal) + s["row_offset"]  # shard row r is source row offset + r
        np.testing.assert_array_equal(shard.codes_normal, full.codes_normal[rows])
        np.testing.assert_array_equal(shard.codes_abnormal, full.codes_abnormal[rows])


@pytest.mark.parametrize("mode", ["normal", "abnormal", "sum"])
def test_sharded_hits_equal_the_unsharded_index_and_the_brute_force(
    three_shards, built_index, ref, mode
):
    out, _ = three_shards
    full, sharded = open_index(built_index), open_sharded(out)
    cn, ca = (
        np.load(built_index / "codebook_normal.npy"),
        np.load(built_index / "codebook_abnormal.npy"),
    )
    volumes = np.asarray(full.table["volume"], np.int64)
    for distance in ("hamming", "euclidean", "angular"):
        for case in full.cases:
            slice_index = full.default_slice(case)
            kw = dict(distance=distance, topq=3)
            a = run_slice_query(full, case, slice_index, query_options(mode, **kw)).hits(mode)
            b = run_slice_query(sharded, case, slice_index, query_options(mode, **kw)).hits(mode)
            assert _key(a) == _key(b)
            row = full.row_of(case, slice_index)
            brute = ref.volume_topq(
                ref.all_distances(
                    full.hash_index,
                    cn,
                    ca,
                    full.codes_normal,
                    full.codes_abnormal,
                    full.codes_normal[row],
                    full.codes_abnormal[row],
                    mode,
                    distance,
                ),
                volumes,
                3,
                exclude=int(volumes[row]),
            )
            np.testing.assert_allclose(
                [h.distance for h in b], [d for d, _, _ in brute], rtol=1e-9, atol=1e-7
            )
            if distance == "hamming":
                assert [h.row for h in b] == [r for _, r, _ in brute]


def test_sharded_query_on_a_dask_cluster(three_shards, built_index):
    from distributed import Client, LocalCluster

    out, _ = three_shards
    full = open_index(built_index)
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
    ):
        sharded = open_sharded(out, client)
        assert len(set(sharded.workers)) == 2  # the shards are spread over both workers
        for case in full.cases:
            a = run_slice_query(full, case, None, query_options("sum", topq=4)).hits("sum")
            b = run_slice_query(sharded, case, None, query_options("sum", topq=4)).hits("sum")
            assert _key(a) == _key(b)


def test_cli_shard_and_query(tmp_path, built_index):
    out = tmp_path / "shards"
    result = CliRunner().invoke(main, ["shard", str(built_index), str(out), "--shards", "2"])
    assert result.exit_code == 0, result.output
    case = open_index(built_index).cases[0]
    args = ["query", "--case", case, "--mode", "all", "--json", "--topq", "3"]
    a = json.loads(CliRunner().invoke(main, [*args, "--index", str(built_index)]).output)
    b = CliRunner().invoke(main, [*args, "--index", str(out)])
    assert b.exit_code == 0, b.output
    b = json.loads(b.output)
    for m in ("normal", "abnormal", "sum"):
        assert [(h["case"], h["slice"], h["distance"]) for h in a["results"][m]["hits"]] == [
            (h["case"], h["slice"], h["distance"]) for h in b["results"][m]["hits"]
        ]
    again = CliRunner().invoke(main, ["shard", str(built_index), str(out), "--shards", "2"])
    assert again.exit_code != 0 and "not empty" in again.output
    one = CliRunner().invoke(
        main,
        ["query", "--index", str(built_index), "--case", case, "--scheduler", "tcp://127.0.0.1:1"],
    )
    assert one.exit_code != 0 and "folder of shards" in one.output


def test_bad_shard_counts_and_listings_are_refused(tmp_path, built_index, three_shards):
    with pytest.raises(IndexDirError, match="--shards must be"):
        split_index(built_index, tmp_path / "x", 99)
    out, listing = three_shards
    bad = tmp_path / "bad"
    bad.mkdir()
    listing = {**listing, "shards": [{**listing["shards"][0], "path": "../../etc"}]}
    (bad / "shards.json").write_text(json.dumps(listing))
    with pytest.raises(IndexDirError, match="not a shard listing"):
        open_sharded(bad)
