"""A damaged or tampered index directory is refused with a clear error, never answered silently.

Each test damages a copy of the built index the way a red-team probe did, then checks that
`fdn-index query` exits non-zero with a message naming the file (and that undamaged parts still
answer where they do not need the damaged file).
"""

import hashlib
import json
import os
import shutil

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from fdn.archive_index.retrieval import open_index
from fdn.errors import IndexDirError
from fdn_index_cli.main import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def index(tmp_path, built_index):
    target = tmp_path / "index"
    shutil.copytree(built_index, target)
    return target


def some_case(index):
    return open_index(index).cases[0]


def query(index, *extra):
    return run("query", "--index", index, "--case", some_case_of(index), "--slice", 0, *extra)


_CASES = {}


def some_case_of(index):
    """A case id of the index, read from the (undamaged) build plan."""
    if index not in _CASES:
        _CASES[index] = json.loads((index / "build_plan.json").read_text())["cases"][0]
    return _CASES[index]


def relist(index, name, listing="manifest.json"):
    """Record the current content of `name` in the manifest (or hashindex.json), as a consistent
    but wrong writer would: the structural checks behind the checksums must still catch it."""
    data = (index / name).read_bytes()
    entry = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    doc = json.loads((index / listing).read_text())
    doc["files"][name] = entry
    if listing == "manifest.json" and name == "model/weights.pt":
        doc["model_checksum"] = entry["sha256"]
    (index / listing).write_text(json.dumps(doc))
    if listing == "hashindex.json":
        relist(index, "hashindex.json")


def first_chunk(index, array="normal"):
    return sorted(p for p in (index / "codes.zarr" / array / "c").rglob("*") if p.is_file())[0]


def test_manifest_lists_every_file_with_its_sha256(built_index):
    files = json.loads((built_index / "manifest.json").read_text())["files"]
    on_disk = {
        p.relative_to(built_index).as_posix()
        for p in built_index.rglob("*")
        if p.is_file()
        and p.parts[len(built_index.parts)] not in ("encoded",)
        and p.name not in ("manifest.json", "build_plan.json", ".build.lock", ".swap.lock")
    }
    assert set(files) == on_disk
    for name, entry in files.items():
        data = (built_index / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def test_a_deleted_zarr_chunk_is_an_error_not_zeros(index):
    first_chunk(index).unlink()
    assert query(index).exit_code == 0  # a query reads the hash index's rows, not codes.zarr
    with pytest.raises(IndexDirError, match="codes.zarr/normal/c.* missing"):
        assert open_index(index).codes_normal is None


def test_a_chunk_deleted_together_with_its_manifest_entry_is_an_error(index):
    chunk = first_chunk(index, "abnormal")
    chunk.unlink()
    manifest = json.loads((index / "manifest.json").read_text())
    del manifest["files"][chunk.relative_to(index).as_posix()]
    (index / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexDirError, match="0 of its 1 chunks are present"):
        assert open_index(index).codes_abnormal is None


def test_a_one_byte_flip_in_a_codebook_is_refused(index):
    raw = bytearray((index / "codebook_normal.npy").read_bytes())
    raw[-1] ^= 0x01
    (index / "codebook_normal.npy").write_bytes(bytes(raw))
    result = query(index)
    assert result.exit_code != 0
    assert "codebook_normal.npy: sha256" in result.output
    assert "fdn-index build" in result.output  # the fix


def test_reordered_rows_of_faiss_sum_are_refused_on_first_faiss_use(index):
    flat = faiss.deserialize_index_binary(
        np.frombuffer((index / "faiss_sum.index").read_bytes(), np.uint8)
    )
    rows = flat.reconstruct_n(0, flat.ntotal)
    order = np.arange(flat.ntotal)[::-1]
    assert not np.array_equal(rows, rows[order])
    swapped = faiss.IndexBinaryFlat(flat.d)
    swapped.add(np.ascontiguousarray(rows[order]))
    (index / "faiss_sum.index").write_bytes(faiss.serialize_index_binary(swapped).tobytes())
    assert query(index, "--engine", "lut").exit_code == 0  # lut never reads the FAISS files
    result = query(index, "--engine", "faiss-flat", "--mode", "sum")
    assert result.exit_code != 0
    assert "faiss_sum.index: sha256" in result.output


def test_swapped_case_names_in_the_slice_table_are_refused(index):
    table = pq.read_table(index / "slices.parquet")
    cases = np.array(table.column("case").to_pylist(), dtype=object)
    names = sorted(set(cases))
    swapped = np.where(cases == names[0], names[1], np.where(cases == names[1], names[0], cases))
    table = table.set_column(
        table.column_names.index("case"), "case", pa.array(swapped.tolist(), pa.string())
    )
    pq.write_table(table, index / "slices.parquet")
    result = query(index)
    assert result.exit_code != 0
    assert "slices.parquet" in result.output


def test_swapped_model_weights_are_refused_for_external_queries(
    index, other_model_dir, tiny_archive
):
    shutil.copy(other_model_dir / "weights.pt", index / "model" / "weights.pt")
    case = some_case_of(index)
    result = run("query", "--index", index, "--input", tiny_archive / case)
    assert result.exit_code != 0
    assert "model/weights.pt: sha256" in result.output


def test_a_manifest_that_is_a_json_list_is_a_clear_error(index):
    (index / "manifest.json").write_text("[1, 2, 3]")
    result = query(index)
    assert result.exit_code != 0
    assert "expected a JSON object" in result.output and "found a JSON list" in result.output


def test_a_slice_table_without_the_volume_column_is_a_clear_error(index):
    table = pq.read_table(index / "slices.parquet").drop_columns(["volume"])
    pq.write_table(table, index / "slices.parquet")
    result = query(index)
    assert result.exit_code != 0 and "slices.parquet" in result.output
    relist(index, "slices.parquet")
    result = query(index)
    assert result.exit_code != 0
    assert "no column 'volume'" in result.output


def test_a_truncated_bits_npz_is_a_clear_error(index):
    raw = (index / "bits_normal.npz").read_bytes()
    (index / "bits_normal.npz").write_bytes(raw[: len(raw) // 2])
    result = query(index)
    assert result.exit_code != 0 and "bits_normal.npz" in result.output
    relist(index, "bits_normal.npz")
    relist(index, "bits_normal.npz", listing="hashindex.json")
    result = query(index)
    assert result.exit_code != 0
    assert "bits_normal.npz: corrupt" in result.output


@pytest.mark.parametrize("names", [[], ["../../manifest.json"], ["faiss_x.index"]])
def test_faiss_files_come_from_a_fixed_list(index, names):
    meta = json.loads((index / "hashindex.json").read_text())
    meta["faiss_files"] = names
    (index / "hashindex.json").write_text(json.dumps(meta))
    relist(index, "hashindex.json")
    result = query(index)
    assert result.exit_code != 0
    assert "faiss_files" in result.output


def test_manifest_names_outside_the_folder_are_refused(index):
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["files"]["codes.zarr/../../secret"] = {"sha256": "0" * 64, "size": 1}
    (index / "manifest.json").write_text(json.dumps(manifest))
    result = query(index)
    assert result.exit_code != 0
    assert "'files' should be" in result.output


@pytest.mark.parametrize("name", ["slices.parquet", "faiss_sum.index", "hashindex.json"])
def test_a_fifo_in_place_of_a_file_is_refused_without_hanging(index, name):
    (index / name).unlink()
    os.mkfifo(index / name)
    result = query(index, "--engine", "faiss-flat")
    assert result.exit_code != 0
    assert f"{name}: not a regular file" in result.output


def test_verification_can_be_skipped_but_sizes_are_still_checked(index):
    meta = (index / "hashindex.json").read_text()
    stamp = json.loads(meta)["written"]  # a change no structural check can see
    changed = stamp[:-1] + ("1" if stamp[-1] != "1" else "2")
    (index / "hashindex.json").write_text(meta.replace(stamp, changed))
    with pytest.raises(IndexDirError, match="hashindex.json: sha256"):
        open_index(index)
    assert open_index(index, verify=False).ntotal > 0
    raw = (index / "codebook_normal.npy").read_bytes()
    (index / "codebook_normal.npy").write_bytes(raw[:-1])
    with pytest.raises(IndexDirError, match="bytes, hashindex.json records"):
        open_index(index, verify=False)


def test_a_huge_topq_is_capped_at_the_number_of_volumes(built_index):
    case = open_index(built_index).cases[0]
    result = run(
        "query",
        "--index",
        built_index,
        "--case",
        case,
        "--slice",
        0,
        "--topq",
        1_000_000_000,
        "--json",
    )
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)["results"]["sum"]["hits"]
    n_cases = len(open_index(built_index).cases)
    assert len(hits) == n_cases - 1  # every other volume once; the query's own excluded
    assert len({h["case"] for h in hits}) == n_cases - 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--engine", "lut", "--nprobe", 2], "nprobe"),
        (["--engine", "faiss-flat", "--nprobe", 2], "nprobe"),
        (["--engine", "faiss-ivf", "--nprobe", 0], "--nprobe"),
    ],
)
def test_nprobe_is_refused_where_it_does_nothing(built_index, args, message):
    case = open_index(built_index).cases[0]
    result = run("query", "--index", built_index, "--case", case, "--slice", 0, *args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_an_archive_given_as_index_is_named_as_such(tiny_archive):
    result = run("query", "--index", tiny_archive, "--case", "X", "--slice", 0)
    assert result.exit_code != 0
    assert "looks like an image archive" in result.output
    assert "interrupted" not in result.output


def special_targets(tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    regular = tmp_path / "file"
    regular.write_bytes(b"x")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    return {"fifo": fifo, "under a regular file": regular / "m.png", "folder": folder}


@pytest.mark.parametrize("kind", ["fifo", "under a regular file", "folder"])
def test_an_unwritable_montage_target_is_a_clean_error(built_index, tmp_path, kind):
    target = special_targets(tmp_path)[kind]
    case = open_index(built_index).cases[0]
    result = run("query", "--index", built_index, "--case", case, "--montage", target)
    assert result.exit_code != 0
    assert str(target) in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    if kind == "fifo":
        assert (tmp_path / "fifo.png").is_fifo()  # left alone
