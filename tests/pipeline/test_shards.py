"""Sharded indexes: split a built index, query every shard in parallel (threads, or a Dask
LocalCluster) and merge; the hits equal the unsharded index's and the numpy brute force."""

import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from fdn.archive_index.queries import query_options, run_slice_query
from fdn.archive_index.retrieval import open_index
from fdn.archive_index.shards import open_sharded, split_index
from fdn.errors import IndexDirError
from fdn_index_cli.main import main
from tests.pipeline.conftest import loopback_cluster


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
            keep = np.flatnonzero(ref.lesion_candidates(built_index, mode, full.ntotal))
            dist = ref.all_distances(
                full.hash_index,
                cn,
                ca,
                full.codes_normal,
                full.codes_abnormal,
                full.codes_normal[row],
                full.codes_abnormal[row],
                mode,
                distance,
            )
            brute = [
                (d, int(keep[r]), v)
                for d, r, v in ref.volume_topq(
                    dist[keep], volumes[keep], 3, exclude=int(volumes[row])
                )
            ]
            np.testing.assert_allclose(
                [h.distance for h in b], [d for d, _, _ in brute], rtol=1e-9, atol=1e-7
            )
            if distance == "hamming":
                assert [h.row for h in b] == [r for _, r, _ in brute]


def test_sharded_query_on_a_dask_cluster(three_shards, built_index):
    out, _ = three_shards
    full = open_index(built_index)
    with loopback_cluster() as client:
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


# ------------------------------------------------------- shards checked against shards.json


@pytest.fixture
def shards_copy(tmp_path, three_shards):
    """A fresh copy of the three shards to damage: (folder, listing)."""
    out = tmp_path / "shards"
    shutil.copytree(three_shards[0], out)
    return out, json.loads((out / "shards.json").read_text())


@pytest.fixture(scope="module")
def other_model_shards(tmp_path_factory, tiny_archive, other_model_dir):
    """The same archive, built with another model and split the same way."""
    from fdn.archive_index.build import build_index

    root = tmp_path_factory.mktemp("other-shards")
    build_index(tiny_archive, other_model_dir, root / "index")
    split_index(root / "index", root / "shards", 3)
    return root / "shards"


def _refused(folder, *patterns):
    with pytest.raises(IndexDirError) as error:
        open_sharded(folder)
    for pattern in patterns:
        assert re.search(pattern, str(error.value)), str(error.value)
    case = json.loads((folder / "shards.json").read_text())["shards"][0]["cases"][0]
    result = CliRunner().invoke(main, ["query", "--index", str(folder), "--case", case])
    assert result.exit_code != 0, result.output
    assert re.search(patterns[0], result.output), result.output
    return str(error.value)


def test_shards_json_and_each_shard_record_model_position_and_rows(three_shards):
    out, listing = three_shards
    assert listing["format_version"] == 2
    offset = 0
    for k, entry in enumerate(listing["shards"]):
        shard = open_index(out / entry["path"])
        assert entry["model_checksum"] == shard.manifest.model_checksum
        assert entry["row_offset"] == offset and entry["n_slices"] == shard.ntotal
        assert re.fullmatch(r"[0-9a-f]{64}", entry["rows_digest"])
        own = json.loads((out / entry["path"] / "shard.json").read_text())
        assert own["shard"] == k
        for key in ("path", "row_offset", "n_slices", "cases", "model_checksum", "rows_digest"):
            assert own[key] == entry[key], key
        offset += entry["n_slices"]
    assert len({e["rows_digest"] for e in listing["shards"]}) == 3


def test_a_shard_built_with_another_model_is_refused(shards_copy, other_model_shards):
    out, _ = shards_copy
    shutil.rmtree(out / "shard-001")
    shutil.copytree(other_model_shards / "shard-001", out / "shard-001")
    message = _refused(out, "shard-001", "model")
    assert "split the index again" in message


def test_a_shard_replaced_by_a_copy_of_another_is_refused(shards_copy):
    out, _ = shards_copy
    shutil.rmtree(out / "shard-002")
    shutil.copytree(out / "shard-000", out / "shard-002")
    _refused(out, "shard-002", "shard-000")


def test_a_copied_shard_is_refused_on_dask_workers_too(shards_copy):
    out, _ = shards_copy
    shutil.rmtree(out / "shard-001")
    shutil.copytree(out / "shard-000", out / "shard-001")
    with loopback_cluster(1) as client:
        with pytest.raises(IndexDirError, match="shard-001: its shard.json says it is shard-000"):
            open_sharded(out, client)


def test_an_edited_row_offset_is_refused(shards_copy):
    out, listing = shards_copy
    listing["shards"][1]["row_offset"] += 1
    (out / "shards.json").write_text(json.dumps(listing))
    _refused(out, "shard-001", "row_offset")


def test_an_edited_rows_digest_is_refused(shards_copy):
    out, listing = shards_copy
    listing["shards"][2]["rows_digest"] = "0" * 64
    (out / "shards.json").write_text(json.dumps(listing))
    _refused(out, "shard-002", "rows")


def _as_version_1(out, listing):
    """shards.json as the first version wrote it, and no shard.json in the shards."""
    listing["format_version"] = 1
    for entry in listing["shards"]:
        entry.pop("model_checksum", None), entry.pop("rows_digest", None)
        (out / entry["path"] / "shard.json").unlink(missing_ok=True)
    (out / "shards.json").write_text(json.dumps(listing))


def test_an_old_listing_opens_with_a_warning_and_its_own_checks(
    shards_copy, built_index, caplog, other_model_shards
):
    out, listing = shards_copy
    _as_version_1(out, listing)
    with caplog.at_level("WARNING"):
        sharded = open_sharded(out)
    assert "version 1" in caplog.text and "fdn-index shard" in caplog.text
    full = open_index(built_index)
    case = full.cases[0]
    a = run_slice_query(full, case, None, query_options("sum", topq=3)).hits("sum")
    b = run_slice_query(sharded, case, None, query_options("sum", topq=3)).hits("sum")
    assert _key(a) == _key(b)
    # what version 1 records is still checked: the model, the cases and the offsets
    shutil.rmtree(out / "shard-000")
    shutil.copytree(other_model_shards / "shard-000", out / "shard-000")
    (out / "shard-000" / "shard.json").unlink(missing_ok=True)
    _refused(out, "shard-000", "model")
