"""`fdn-index build`: the index directory matches a direct encoding, resumes exactly, refuses mixes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from click.testing import CliRunner

from fdn.archive_index.build import BuildOptions, build_index
from fdn.archive_index.layout import ENCODED_DIR, MANIFEST
from fdn.archive_index.retrieval import open_index
from fdn.data import Archive
from fdn.errors import IndexDirError
from fdn.model import PRESETS
from fdn.training.checkpoint import load_model
from fdn_index_cli.main import main
from tests.checkout import CHILD_PRELUDE

SIZE = PRESETS["tiny"].image_size


def without_timings(obj):
    """A JSON document minus the wall-clock figures, which differ from run to run."""
    if isinstance(obj, dict):
        return {
            k: without_timings(v)
            for k, v in obj.items()
            if not any(word in k for word in ("seconds", "time", "elapsed", "written"))
        }
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def comparable(path):
    """A file of the hash index as something `==` can compare (npz members, JSON minus timings)."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k].tobytes() for k in sorted(data.files)}
    if path.suffix == ".json":
        return without_timings(json.loads(path.read_text()))
    return path.read_bytes()


def index_contents(index_dir):
    """Everything a reader of the index sees, as comparable Python objects."""
    group = zarr.open_group(index_dir / "codes.zarr", mode="r")
    table = pq.read_table(index_dir / "slices.parquet").to_pydict()
    manifest = json.loads((index_dir / MANIFEST).read_text())
    hashed = {
        p.name: comparable(p)
        for p in sorted(index_dir.iterdir())
        if p.is_file()
        and not p.name.startswith(".")
        and p.name not in (MANIFEST, "slices.parquet", "build_plan.json")
    }
    return group["normal"][:], group["abnormal"][:], table, manifest, hashed


def test_codes_equal_a_direct_encoding(built_index, tiny_archive, model_dir):
    model, config = load_model(model_dir)
    archive = Archive(tiny_archive)
    normal, abnormal, table, manifest, _ = index_contents(built_index)
    assert manifest["status"] == "complete"
    assert manifest["n_cases"] == len(archive.case_ids) == 4
    row = 0
    for volume_id, case in enumerate(archive.case_ids):
        volume = archive.load(case, SIZE)
        x = np.ascontiguousarray(volume.image)
        import torch

        with torch.no_grad():
            expect_n, expect_a = model.encode(torch.from_numpy(x))
        n = len(x)
        np.testing.assert_array_equal(normal[row : row + n], expect_n.numpy())
        np.testing.assert_array_equal(abnormal[row : row + n], expect_a.numpy())
        assert table["case"][row : row + n] == [case] * n
        assert table["slice"][row : row + n] == list(range(n))
        assert table["volume"][row : row + n] == [volume_id] * n
        if volume.seg is not None:
            areas = (volume.seg > 0).reshape(n, -1).sum(1).tolist()
            assert table["lesion_area"][row : row + n] == areas
        row += n
    assert row == normal.shape[0] == manifest["n_slices"] == len(table["row"])
    assert normal.dtype == np.uint16 and normal.shape[1:] == (4, 4)


def test_rebuild_of_a_complete_index_changes_nothing(built_index, tiny_archive, model_dir):
    before = index_contents(built_index)
    report = build_index(tiny_archive, model_dir, built_index)
    assert report.encoded_now == [] and len(report.reused) == 4
    after = index_contents(built_index)
    for a, b in zip(before[:2], after[:2]):
        np.testing.assert_array_equal(a, b)
    assert before[2] == after[2] and before[4] == after[4]


BUILD_SCRIPT = CHILD_PRELUDE + "import sys; from fdn_index_cli.main import main; sys.exit(main())"


def run_build(archive, model, index, **popen):
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            BUILD_SCRIPT,
            "build",
            str(archive),
            "--model",
            str(model),
            "--index",
            str(index),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **popen,
    )


def kill_when(process, condition, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if condition():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.01)
    process.kill()
    raise AssertionError("the condition to kill the build never came true")


@pytest.mark.parametrize("stage", ["encoding", "assembling"])
def test_sigkilled_build_resumes_to_the_uninterrupted_result(
    stage, tmp_path, built_index, tiny_archive, model_dir
):
    index = tmp_path / "index"
    encoded = index / ENCODED_DIR

    def n_encoded():
        return len(list(encoded.glob("*.npz"))) if encoded.is_dir() else 0

    if stage == "encoding":
        condition = lambda: n_encoded() >= 1  # noqa: E731
    else:  # the staging folder of the assembly exists
        condition = lambda: any(index.glob(".assemble.*.tmp"))  # noqa: E731
    process = run_build(tiny_archive, model_dir, index)
    killed = kill_when(process, condition)
    assert killed and process.returncode == -signal.SIGKILL, "the build finished before the kill"
    with pytest.raises(IndexDirError):  # incomplete at the moment of the kill
        open_index(index)
    finished = run_build(tiny_archive, model_dir, index)
    output = finished.communicate(timeout=300)[0].decode()
    assert finished.returncode == 0, output
    expected, got = index_contents(built_index), index_contents(index)
    for a, b in zip(expected[:2], got[:2]):
        np.testing.assert_array_equal(a, b)
    assert expected[2] == got[2]
    assert expected[4] == got[4]  # codebooks, bit tables, FAISS files: byte for byte
    assert open_index(index).ntotal == expected[0].shape[0]
    assert not [p for p in index.rglob(".*.tmp")]  # the killed build's temporaries are gone


def test_add_appends_new_cases_and_keeps_old_rows(
    tmp_path, built_index, extra_archive, tiny_archive, model_dir
):
    index = tmp_path / "index"
    shutil.copytree(built_index, index)
    old_normal, _, old_table, _, _ = index_contents(index)
    report = build_index(extra_archive, model_dir, index, BuildOptions(add=True))
    assert sorted(report.encoded_now) == sorted(Archive(extra_archive).case_ids)
    normal, _, table, manifest, _ = index_contents(index)
    n_old = old_normal.shape[0]
    np.testing.assert_array_equal(normal[:n_old], old_normal)
    assert table["case"][:n_old] == old_table["case"]
    assert manifest["n_cases"] == 6
    assert set(table["volume"][n_old:]) == {4, 5}
    assert open_index(index).ntotal == normal.shape[0]


def test_another_model_is_refused(tmp_path, built_index, tiny_archive, other_model_dir):
    index = tmp_path / "index"
    shutil.copytree(built_index, index)
    with pytest.raises(IndexDirError, match="another model"):
        build_index(tiny_archive, other_model_dir, index)


def test_a_changed_encoding_of_the_same_weights_is_refused(
    tmp_path, tiny_archive, extra_archive, model_dir
):
    """config.json turned to the fixed-point gate after the build: same weights, other codes."""
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config.update(null_code_weight=1.0, gate_abnormal_codes=True, gate_to_fixed_point=False)
    (model / "config.json").write_text(json.dumps(config))
    index = tmp_path / "index"
    build_index(tiny_archive, model, index)
    plan = json.loads((index / "build_plan.json").read_text())
    assert plan["encoding"] == {
        "gate_abnormal_codes": True,
        "gate_to_fixed_point": False,
        "precision": "fp32",
    }
    before = {f: f.read_bytes() for f in sorted(index.rglob("*")) if f.is_file()}
    config["gate_to_fixed_point"] = True
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(IndexDirError, match="gate_to_fixed_point=False.*gate_to_fixed_point=True"):
        build_index(extra_archive, model, index, BuildOptions(add=True))
    assert {f: f.read_bytes() for f in sorted(index.rglob("*")) if f.is_file()} == before
    # a plan written before the encoding was recorded had no fixed-point gate
    del plan["encoding"]
    (index / "build_plan.json").write_text(json.dumps(plan))
    with pytest.raises(IndexDirError, match="gate_to_fixed_point=False"):
        build_index(tiny_archive, model, index)


def test_another_format_version_is_refused(tmp_path, built_index, tiny_archive, model_dir):
    index = tmp_path / "index"
    shutil.copytree(built_index, index)
    manifest = json.loads((index / MANIFEST).read_text())
    manifest["format_version"] = 999
    (index / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(IndexDirError, match="version 999"):
        open_index(index)
    with pytest.raises(IndexDirError, match="version 999"):
        build_index(tiny_archive, model_dir, index)


def test_a_foreign_directory_is_not_overwritten(tmp_path, tiny_archive, model_dir):
    target = tmp_path / "photos"
    target.mkdir()
    (target / "holiday.jpg").write_bytes(b"not an index")
    with pytest.raises(IndexDirError, match="not an fdn-index directory"):
        build_index(tiny_archive, model_dir, target)
    assert os.listdir(target) == ["holiday.jpg"]


def archive_with_a_bad_case(tmp_path, tiny_archive):
    """A copy of the archive whose second case has lost its FLAIR; returns (root, bad case)."""
    root = tmp_path / "archive"
    shutil.copytree(tiny_archive, root)
    bad = Archive(root).case_ids[1]
    Archive(root).case_files(bad)["flair"].unlink()
    return root, bad


def test_skip_bad_lists_the_bad_case_and_indexes_the_rest(tmp_path, tiny_archive, model_dir):
    root, bad = archive_with_a_bad_case(tmp_path, tiny_archive)
    report = build_index(root, model_dir, tmp_path / "index", BuildOptions(skip_bad=True))
    assert [entry["case"] for entry in report.skipped] == [bad]
    assert "flair" in report.skipped[0]["fault"]
    index = open_index(tmp_path / "index")
    assert bad not in index.cases and len(index.cases) == 3
    assert index.manifest.skipped_cases == [bad]


def test_a_bad_case_is_fatal_without_skip_bad(tmp_path, tiny_archive, model_dir):
    root, bad = archive_with_a_bad_case(tmp_path, tiny_archive)
    result = CliRunner().invoke(
        main, ["build", str(root), "--model", str(model_dir), "--index", str(tmp_path / "index")]
    )
    assert result.exit_code != 0
    assert bad in result.output and "flair" in result.output
    with pytest.raises(IndexDirError):  # nothing loadable was left behind
        open_index(tmp_path / "index")


def test_sources_are_absolute_when_the_archive_is_given_relative(
    tmp_path, tiny_archive, model_dir, monkeypatch
):
    monkeypatch.chdir(tiny_archive.parent)
    build_index(tiny_archive.name, model_dir, tmp_path / "index")
    table = pq.read_table(tmp_path / "index" / "slices.parquet").to_pydict()
    assert {os.path.isabs(s) for s in table["source"]} == {True}
    assert {os.path.basename(s) for s in table["source"]} == set(Archive(tiny_archive).case_ids)
