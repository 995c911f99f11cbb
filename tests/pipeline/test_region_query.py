"""Region queries and hit explanations end to end: the box or mask on the query slice becomes
grid positions (checked by hand), the hits equal the numpy brute force on the grids restricted
to those positions (and to the rows a lesion query may return), sharded and unsharded, and each
hit's contributions add up to its distance; `query --region/--region-mask/--explain --json`."""

import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from fdn.archive_index.queries import QueryError, query_options, run_slice_query
from fdn.archive_index.region import RegionSpec, cell_cover, positions_from_cover, resolve_region
from fdn.archive_index.retrieval import open_index
from fdn.archive_index.shards import open_sharded, split_index
from fdn_index_cli.main import main
from tests.conftest import TINY_SIZE
from tests.hashindex.hashindex_reference import all_distances, lesion_candidates, volume_topq
from tests.pipeline.conftest import loopback_cluster

GRID = (4, 4)  # the tiny preset's grid on its 32 x 32 slices: 8 x 8 voxels per cell


# ---------------------------------------------------------------------------- geometry
def test_cell_cover_is_the_share_of_each_cell_inside_the_region():
    mask = np.zeros((32, 32), bool)
    mask[4:12, 0:8] = True  # half of cell (0, 0), half of cell (1, 0)
    cover = cell_cover(mask, GRID)
    want = np.zeros(GRID)
    want[0, 0] = want[1, 0] = 0.5
    np.testing.assert_allclose(cover, want, atol=1e-12)
    assert positions_from_cover(cover).sum() == 2  # half counts


def test_cells_of_an_uneven_slice_are_split_in_proportion():
    # 30 voxels over 4 cells: cell 0 spans [0, 7.5); voxels 0..3 cover 4 / 7.5 of it
    mask = np.zeros((30, 8), bool)
    mask[0:4, :] = True
    cover = cell_cover(mask, (4, 1))
    np.testing.assert_allclose(cover[:, 0], [4 / 7.5, 0, 0, 0], atol=1e-12)


def test_a_region_smaller_than_half_a_cell_uses_the_cells_it_covers_most():
    spec = RegionSpec(box=(9, 9, 11, 12))  # inside cell (1, 1): 3 x 4 of its 64 voxels
    region = resolve_region(spec, (32, 32), {"normal": GRID, "abnormal": GRID}, 0)
    for book in ("normal", "abnormal"):
        assert np.argwhere(region.positions[book]).tolist() == [[1, 1]]
        assert region.cover[book][1, 1] == pytest.approx(12 / 64)
    echoed = region.to_dict()
    assert echoed["box"] == [9, 9, 11, 12] and echoed["positions"]["normal"] == [[1, 1]]
    assert echoed["share"]["normal"] == 1 / 16


@pytest.mark.parametrize(
    "box, text",
    [
        ("1,2,3", "four integers"),
        ("5,5,4,9", "x0 <= x1"),
        ("0,0,32,10", "reaches past the query slice"),
        ("a,b,c,d", "four integers"),
    ],
)
def test_a_bad_box_is_refused_with_its_fault(box, text):
    with pytest.raises(QueryError, match=text):
        spec = query_options("sum", region=box).region
        resolve_region(spec, (32, 32), {"normal": GRID}, 0)


def test_a_region_refuses_an_engine_without_a_position_mask():
    with pytest.raises(QueryError, match="engine fastscan cannot restrict the distance"):
        query_options("sum", region="0,0,15,15", engine="fastscan")


# ---------------------------------------------------------------------------- exact search
@pytest.fixture(scope="module")
def shards(tmp_path_factory, built_index):
    out = tmp_path_factory.mktemp("region-shards") / "shards"
    split_index(built_index, out, 2)
    return out


def _key(hits):
    return [(h.case, h.slice, h.row, h.distance) for h in hits]


@pytest.mark.parametrize("mode", ["normal", "abnormal", "sum"])
def test_region_hits_equal_the_brute_force_on_the_region_sharded_and_not(built_index, shards, mode):
    full, sharded = open_index(built_index), open_sharded(shards)
    cn = np.load(built_index / "codebook_normal.npy")
    ca = np.load(built_index / "codebook_abnormal.npy")
    volumes = np.asarray(full.table["volume"], np.int64)
    keep = lesion_candidates(built_index, mode, full.ntotal)
    case = full.cases[1]
    slice_index = full.default_slice(case)
    row = full.row_of(case, slice_index)
    for box in ("0,0,15,15", "8,4,27,19", "20,20,22,22"):
        for distance in ("hamming", "euclidean", "angular"):
            options = query_options(mode, distance=distance, topq=3, region=box, explain=True)
            a = run_slice_query(full, case, slice_index, options)
            b = run_slice_query(sharded, case, slice_index, options)
            assert _key(a.hits(mode)) == _key(b.hits(mode))
            assert a.to_dict()["region"] == b.to_dict()["region"]
            positions = a.region.positions
            assert a.results[mode].engine == "lut"  # the default for a region: exact, masked
            m = positions["normal"]
            gn = full.codes_normal[:, m][:, :, None]
            ga = full.codes_abnormal[:, m][:, :, None]
            dist = all_distances(full.hash_index, cn, ca, gn, ga, gn[row], ga[row], mode, distance)
            dist[~keep] = np.inf
            want = volume_topq(dist, volumes, 3, exclude=volumes[row])
            want = [w for w in want if np.isfinite(w[0])]
            got = [(h.distance, h.row) for h in a.hits(mode)]
            assert [r for _, r in got] == [r for _, r, _ in want]
            np.testing.assert_allclose(
                [d for d, _ in got], [d for d, _, _ in want], rtol=1e-9, atol=1e-7
            )
            for hit in a.hits(mode) + b.hits(mode):
                e = hit.explanation
                assert e["distance"] == hit.distance
                total = sum(np.sum(book["contributions"]) for book in e["books"].values())
                assert abs(total - hit.distance) <= 16 * 16 * np.finfo(float).eps * max(
                    hit.distance, 1
                )
                for book in e["books"].values():
                    assert np.all(np.asarray(book["contributions"])[~m] == 0)


# ---------------------------------------------------------------------------- the CLI
def _query(index, *args):
    result = CliRunner().invoke(main, ["query", "--index", str(index), *args])
    return result


def test_cli_region_box_echoes_the_region_and_explains_hits(built_index):
    full = open_index(built_index)
    case = full.cases[0]
    result = _query(
        built_index,
        "--case",
        case,
        "--slice",
        "10",
        "--mode",
        "all",
        "--region",
        "0,0,15,15",
        "--explain",
        "--json",
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    region = out["region"]
    assert region["box"] == [0, 0, 15, 15] and region["slice_shape"] == [TINY_SIZE, TINY_SIZE]
    assert region["positions"]["normal"] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    for r in out["results"].values():
        assert r["engine"] == "lut"
        for hit in r["hits"]:
            books = hit["explanation"]["books"]
            total = sum(np.sum(b["contributions"]) for b in books.values())
            assert total == pytest.approx(hit["distance"], rel=1e-12, abs=1e-12)
    text = _query(
        built_index, "--case", case, "--slice", "10", "--region", "0,0,15,15", "--explain"
    )
    assert text.exit_code == 0, text.output
    assert "Region 0,0,15,15: 4 of 16 grid positions" in text.output
    assert "most of its distance at" in text.output


def test_cli_region_mask_equals_the_same_box(built_index, tmp_path):
    full = open_index(built_index)
    case = full.cases[0]
    mask = np.zeros((TINY_SIZE, TINY_SIZE, full.slice_range(case).stop), np.uint8)
    mask[8:24, 0:16, 10] = 1
    path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, np.eye(4)), path)
    a = _query(built_index, "--case", case, "--slice", "10", "--region-mask", str(path), "--json")
    b = _query(built_index, "--case", case, "--slice", "10", "--region", "8,0,23,15", "--json")
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    ja, jb = json.loads(a.output), json.loads(b.output)
    assert ja["region"]["positions"] == jb["region"]["positions"]
    assert ja["region"]["mask"] == str(path)
    assert ja["results"] == {
        m: {**r, "search_seconds": ja["results"][m]["search_seconds"]}
        for m, r in jb["results"].items()
    }


def test_cli_refuses_a_bad_region_naming_the_fault(built_index, tmp_path):
    case = open_index(built_index).cases[0]
    wrong = tmp_path / "wrong.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((7, 9, 2), np.uint8), np.eye(4)), wrong)
    for args, text in (
        (["--region", "0,0,40,4"], "reaches past the query slice"),
        (["--region", "0,0,4,4", "--engine", "fastscan"], "engine fastscan cannot restrict"),
        (["--region-mask", str(wrong)], "must be on the query case's grid"),
        (["--region", "0,0,4,4", "--region-mask", str(wrong)], "not both"),
    ):
        result = _query(built_index, "--case", case, "--slice", "10", *args)
        assert result.exit_code != 0
        assert text in result.output, result.output


def test_cli_montage_draws_the_heat_maps_over_the_hits(built_index, tmp_path):
    import matplotlib.image as mpimg

    case = open_index(built_index).cases[0]
    plain, explained = tmp_path / "plain.png", tmp_path / "explained.png"
    common = ["--case", case, "--slice", "10", "--region", "0,0,15,15", "--topq", "2"]
    a = _query(built_index, *common, "--montage", str(plain))
    b = _query(built_index, *common, "--explain", "--montage", str(explained))
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    pa, pb = mpimg.imread(plain), mpimg.imread(explained)
    assert pa.shape == pb.shape
    # the query cell (left quarter) is the same; the hit cells now carry the heat maps
    third = pa.shape[1] // 3
    assert np.array_equal(pa[:, :third], pb[:, :third])
    assert not np.array_equal(pa[:, third:], pb[:, third:])


def test_an_external_case_takes_the_same_region_as_its_indexed_copy(built_index, tiny_archive):
    """An external query reads its slice shape from its own files: the same case given as
    --input resolves the box to the same positions and finds the same hits (its own volume
    excluded by case id)."""
    case = open_index(built_index).cases[2]
    common = ["--slice", "9", "--mode", "normal", "--region", "4,4,19,27", "--json"]
    a = _query(built_index, "--case", case, *common)
    b = _query(built_index, "--input", str(tiny_archive / case), *common)
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    ja, jb = json.loads(a.output), json.loads(b.output)
    assert jb["external"] and jb["region"] == ja["region"]
    rows = lambda j: [(h["row"], h["distance"]) for h in j["results"]["normal"]["hits"]]  # noqa: E731
    got, want = rows(jb), rows(ja)
    assert [r for r, _ in got] == [r for r, _ in want]
    np.testing.assert_allclose([d for _, d in got], [d for _, d in want], rtol=0, atol=1e-12)


def test_region_and_explanations_on_dask_workers(built_index, shards):
    """The positions and the explain option travel to the workers that hold the shards; the
    hits and their explanations equal the unsharded index's."""
    full = open_index(built_index)
    options = query_options("abnormal", topq=3, region="8,0,23,15", explain=True)
    with loopback_cluster() as client:
        sharded = open_sharded(shards, client)
        for case in full.cases[:2]:
            a = run_slice_query(full, case, 12, options)
            b = run_slice_query(sharded, case, 12, options)
            assert _key(a.hits("abnormal")) == _key(b.hits("abnormal"))
            assert [h.explanation for h in a.hits("abnormal")] == [
                h.explanation for h in b.hits("abnormal")
            ]
            assert a.to_dict()["region"] == b.to_dict()["region"]
