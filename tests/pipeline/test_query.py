"""`fdn-index query` and the library API: hits checked against a numpy brute force, bad input refused."""

import json
import shutil

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from fdn.archive_index.retrieval import open_index
from fdn.data import Archive
from fdn.training.checkpoint import load_model
from fdn_index_cli.main import main
from tests.hashindex.hashindex_reference import lesion_candidates


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def brute_force_volume_topq(
    codebook, codes, volumes, query_codes, exclude_volume, topq, candidates=None
):
    """Euclidean distance between quantized grids, closest slice per volume, ties by row;
    only the rows where ``candidates`` (N,) bool is true, when given."""
    quantized = codebook[codes.astype(np.int64)].reshape(len(codes), -1)
    query = codebook[query_codes.astype(np.int64)].reshape(-1)
    distances = np.sqrt(((quantized - query) ** 2).sum(axis=1))
    if candidates is not None:
        distances = np.where(candidates, distances, np.inf)
    best = {}
    for row in np.lexsort((np.arange(len(codes)), distances)):
        volume = int(volumes[row])
        if np.isfinite(distances[row]) and volume != exclude_volume and volume not in best:
            best[volume] = int(row)
    return list(best.values())[:topq]


def lesion_query(index):
    """The largest-lesion slice of the first diseased case in the index."""
    areas = np.array([-1 if a is None else a for a in index.table["lesion_area"]], dtype=float)
    row = int(np.nanargmax(areas))
    return str(index.table["case"][row]), int(index.table["slice"][row])


@pytest.mark.parametrize("mode", ["normal", "abnormal"])
def test_cli_hits_equal_a_numpy_brute_force(built_index, mode):
    index = open_index(built_index)
    case, z = lesion_query(index)
    result = run(
        "query",
        "--index",
        built_index,
        "--case",
        case,
        "--slice",
        z,
        "--mode",
        mode,
        "--distance",
        "euclidean",
        "--topq",
        2,
        "--json",
    )
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)["results"][mode]["hits"]
    codebook = np.load(built_index / f"codebook_{mode}.npy")
    codes = index.codes_normal if mode == "normal" else index.codes_abnormal
    row = index.row_of(case, z)
    expected = brute_force_volume_topq(
        codebook,
        codes,
        index.table["volume"],
        codes[row],
        exclude_volume=int(index.table["volume"][row]),
        topq=2,
        candidates=lesion_candidates(built_index, mode, index.ntotal),
    )
    assert [h["row"] for h in hits] == expected
    assert case not in {h["case"] for h in hits}
    assert len({h["case"] for h in hits}) == len(hits) == 2
    assert [h["rank"] for h in hits] == [1, 2]


def test_include_same_volume_finds_the_query_itself(built_index):
    index = open_index(built_index)
    case, z = lesion_query(index)
    hits = index.query_slice(
        case, z, mode="sum", distance="hamming", topq=1, include_same_volume=True
    )
    row = index.row_of(case, z)
    assert hits[0].distance == 0.0  # the query itself, or a slice with the very same codes
    np.testing.assert_array_equal(index.codes_normal[hits[0].row], index.codes_normal[row])
    np.testing.assert_array_equal(index.codes_abnormal[hits[0].row], index.codes_abnormal[row])


def test_all_modes_with_montage_and_readable_table(built_index, tmp_path):
    index = open_index(built_index)
    case, z = lesion_query(index)
    png = tmp_path / "montage.png"
    result = run(
        "query",
        "--index",
        built_index,
        "--case",
        case,
        "--slice",
        z,
        "--mode",
        "all",
        "--topq",
        3,
        "--montage",
        png,
    )
    assert result.exit_code == 0, result.output
    for mode in ("normal", "abnormal", "sum"):
        assert f"mode {mode}" in result.output
    assert "rank" in result.output and " ms" in result.output
    assert png.stat().st_size > 10_000


def test_external_case_folder_gives_the_same_hits(built_index, tiny_archive):
    index = open_index(built_index)
    case, z = lesion_query(index)
    case_dir = Archive(tiny_archive).case_files(case)["t1"].parent
    inside = run("query", "--index", built_index, "--case", case, "--slice", z, "--json")
    outside = run("query", "--index", built_index, "--input", case_dir, "--slice", z, "--json")
    assert inside.exit_code == 0 and outside.exit_code == 0, inside.output + outside.output
    rows = lambda r: [h["row"] for h in json.loads(r.output)["results"]["sum"]["hits"]]  # noqa: E731
    assert rows(inside) == rows(outside)


def test_library_encode_matches_the_index(built_index, tiny_archive, model_dir):
    index = open_index(built_index)
    case = index.cases[0]
    volume = Archive(tiny_archive).load(case, index.manifest.input_size)
    normal, abnormal = index.encode(volume.image[3])
    row = index.row_of(case, 3)
    np.testing.assert_array_equal(normal, index.codes_normal[row])
    np.testing.assert_array_equal(abnormal, index.codes_abnormal[row])
    model, _ = load_model(model_dir)
    assert index.model().config == model.config


@pytest.mark.parametrize(
    "args, message",
    [
        (["--case", "NO_SUCH_CASE", "--slice", 0], "no case 'NO_SUCH_CASE'"),
        (["--case", "{case}", "--slice", 999], "out of range"),
        (["--slice", 0], "--slice is a slice of --case"),
    ],
)
def test_bad_queries_fail_clearly_and_write_nothing(built_index, tmp_path, args, message):
    case = open_index(built_index).cases[0]
    png = tmp_path / "m.png"
    args = [a.format(case=case) if isinstance(a, str) else a for a in args]
    result = run("query", "--index", built_index, *args, "--montage", png)
    assert result.exit_code != 0
    assert message in result.output
    assert not png.exists()


def test_missing_index_fails_clearly(tmp_path):
    result = run("query", "--index", tmp_path / "nowhere", "--case", "X", "--slice", 0)
    assert result.exit_code != 0
    assert "no index directory" in result.output


def corrupt_rows(index):
    """The rows a query reads (codes.zarr is not among them: see test_index_integrity)."""
    raw = bytearray((index / "codes_abnormal.npy").read_bytes())
    raw[-1] ^= 0x10
    (index / "codes_abnormal.npy").write_bytes(bytes(raw))


def corrupt_parquet(index):
    data = (index / "slices.parquet").read_bytes()
    (index / "slices.parquet").write_bytes(data[: len(data) // 2])


def incomplete_build(index):
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["status"] = "building"
    (index / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage, message",
    [
        (corrupt_rows, "codes_abnormal.npy: sum64"),
        (corrupt_parquet, "slices.parquet"),
        (incomplete_build, "did not finish"),
    ],
)
def test_damaged_index_is_refused(built_index, tmp_path, damage, message):
    index = tmp_path / "index"
    shutil.copytree(built_index, index)
    damage(index)
    case = open_index(built_index).cases[0]
    result = run("query", "--index", index, "--case", case, "--slice", 0)
    assert result.exit_code != 0
    assert message in result.output


def test_zarr_arrays_are_chunked_along_slices(built_index):
    normal = zarr.open_group(built_index / "codes.zarr", mode="r")["normal"]
    assert normal.chunks[1:] == normal.shape[1:]


def test_default_slice_is_the_largest_lesion(built_index):
    index = open_index(built_index)
    case, z = lesion_query(index)
    result = run("query", "--index", built_index, "--case", case, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["query"] == f"{case} slice {z}"


def test_external_case_missing_a_sequence_fails_clearly(built_index, tiny_archive, tmp_path):
    case = open_index(built_index).cases[0]
    source = Archive(tiny_archive).case_files(case)["t1"].parent
    broken = tmp_path / case
    shutil.copytree(source, broken)
    next(broken.glob("*_t2.nii.gz")).unlink()
    png = tmp_path / "m.png"
    result = run("query", "--index", built_index, "--input", broken, "--montage", png)
    assert result.exit_code != 0
    assert "t2" in result.output
    assert not png.exists()


def test_a_query_without_case_runs_on_the_largest_lesion_slice(built_index):
    """`fdn-index query` alone (README: `fdn-index build archive/ && fdn-index query`) queries
    the indexed slice with the largest lesion, as if named by --case and --slice."""
    table = open_index(built_index).table
    areas = np.nan_to_num(np.asarray(table["lesion_area"], dtype=np.float64), nan=-1)
    assert areas.max() > 0
    row = int(np.argmax(areas))
    case, slice_index = table.value("case", row), table.value("slice", row)
    named = run("query", "--index", built_index, "--case", case, "--slice", slice_index, "--json")
    default = run("query", "--index", built_index, "--json")
    assert named.exit_code == 0 and default.exit_code == 0, named.output + default.output
    named, default = json.loads(named.output), json.loads(default.output)
    assert default["query_case"] == case and default["query_slice"] == slice_index
    hits = {m: r["hits"] for m, r in named["results"].items()}
    assert {m: r["hits"] for m, r in default["results"].items()} == hits


def test_each_mode_runs_with_its_best_distance_unless_one_is_named(built_index):
    """No --distance: D_E for normal and sum, D_A for abnormal (the quality benchmark's best),
    each named in its result and answering as the same distance named explicitly."""
    default = run("query", "--index", built_index, "--mode", "all", "--topq", 3, "--json")
    assert default.exit_code == 0, default.output
    out = json.loads(default.output)
    assert out["distance"] is None and out["engine"] is None  # none was named
    used = {m: r["distance"] for m, r in out["results"].items()}
    assert used == {"normal": "euclidean", "abnormal": "angular", "sum": "euclidean"}
    for mode, distance in used.items():
        named = run(
            "query",
            "--index",
            built_index,
            "--mode",
            mode,
            "--distance",
            distance,
            "--topq",
            3,
            "--json",
        )
        assert named.exit_code == 0, named.output
        mode_result = json.loads(named.output)["results"][mode]
        assert [h["row"] for h in mode_result["hits"]] == [
            h["row"] for h in out["results"][mode]["hits"]
        ]
        assert mode_result["engine"] == out["results"][mode]["engine"]


def test_an_engine_without_the_best_distance_runs_its_next_best(built_index):
    """faiss-flat answers Hamming only: the lesion query falls back to it, as it says."""
    result = run(
        "query",
        "--index",
        built_index,
        "--mode",
        "abnormal",
        "--engine",
        "faiss-flat",
        "--topq",
        2,
        "--json",
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)["results"]["abnormal"]
    assert (out["distance"], out["engine"]) == ("hamming", "faiss-flat")
    text = run("query", "--index", built_index, "--mode", "abnormal", "--topq", 2)
    assert "mode abnormal, angular distance" in text.output


def test_json_names_the_fastscan_kernel_that_answered(built_index, monkeypatch):
    """fastscan results say which kernel ran (the one FDN_FASTSCAN_KERNEL forces, else the
    CPU's best), other engines' say null; every kernel gives the same hits."""
    from hashindex import available_kernels

    hits = {}
    for kernel in available_kernels():
        monkeypatch.setenv("FDN_FASTSCAN_KERNEL", kernel)
        result = run(
            "query", "--index", built_index, "--mode", "sum", "--engine", "fastscan",
            "--distance", "hamming", "--topq", 3, "--json",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)["results"]["sum"]
        assert (out["engine"], out["kernel"]) == ("fastscan", kernel)
        hits[kernel] = out["hits"]
    assert all(h == hits["portable"] for h in hits.values())
    monkeypatch.delenv("FDN_FASTSCAN_KERNEL")
    lut = run("query", "--index", built_index, "--mode", "sum", "--engine", "lut", "--json")
    assert lut.exit_code == 0, lut.output
    assert json.loads(lut.output)["results"]["sum"]["kernel"] is None


def test_a_kernel_the_cpu_lacks_is_refused_by_name(built_index, monkeypatch):
    monkeypatch.setenv("FDN_FASTSCAN_KERNEL", "sse9")
    result = run("query", "--index", built_index, "--mode", "sum", "--engine", "fastscan")
    assert result.exit_code != 0
    assert "FDN_FASTSCAN_KERNEL='sse9'" in result.output
