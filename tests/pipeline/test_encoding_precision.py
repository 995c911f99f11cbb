"""The encoder's precision is recorded in the build plan and the manifest; an index never mixes
fp32 and bf16 codes, and its external queries are encoded as its rows were."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from cli.main import main
from fdn.archive_index.build import BuildOptions, build_index
from fdn.archive_index.layout import MANIFEST, PLAN
from fdn.archive_index.retrieval import open_index
from fdn.errors import IndexDirError

torch = pytest.importorskip("torch")
NO_GPU = not torch.cuda.is_available()


@pytest.fixture
def index(tmp_path, built_index):
    target = tmp_path / "index"
    shutil.copytree(built_index, target)
    return target


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_a_default_build_records_fp32_in_its_plan_and_manifest(built_index):
    assert json.loads((built_index / PLAN).read_text())["encoding"]["precision"] == "fp32"
    assert open_index(built_index).manifest.encoding_precision == "fp32"


@pytest.mark.skipif(not NO_GPU, reason="on a GPU machine bf16 is allowed")
def test_bf16_on_the_cpu_is_refused_before_anything_is_written(tmp_path, tiny_archive, model_dir):
    target = tmp_path / "new-index"
    result = CliRunner().invoke(
        main,
        ["build", str(tiny_archive), "--model", str(model_dir), "--index", str(target),
         "--precision", "bf16", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "bf16 runs on a CUDA device" in result.output
    assert not target.exists()


def test_an_add_in_another_precision_is_refused_and_changes_nothing(index, model_dir):
    # as if the index had been built in bf16 on a GPU: its plan says so
    _edit_json(index / PLAN, lambda plan: plan["encoding"].update(precision="bf16"))
    before = {p.name: p.read_bytes() for p in index.iterdir() if p.is_file()}
    archive = json.loads((index / PLAN).read_text())["archive_roots"][0]
    with pytest.raises(IndexDirError, match="encoded in bf16, and this build asks for fp32"):
        build_index(archive, model_dir, index, BuildOptions(add=True))
    assert {p.name: p.read_bytes() for p in index.iterdir() if p.is_file()} == before


def test_a_plan_written_before_precision_was_recorded_reads_as_fp32(index, model_dir):
    _edit_json(index / PLAN, lambda plan: plan["encoding"].pop("precision"))
    archive = json.loads((index / PLAN).read_text())["archive_roots"][0]
    report = build_index(archive, model_dir, index, BuildOptions(add=True))
    assert report.encoded_now == []  # nothing new, nothing refused


@pytest.mark.skipif(not NO_GPU, reason="with a GPU a bf16 index's queries are encoded there")
def test_an_external_query_on_a_bf16_index_is_refused_without_a_gpu(index):
    _edit_json(index / MANIFEST, lambda manifest: manifest.update(encoding_precision="bf16"))
    opened = open_index(index)
    size = opened.manifest.input_size
    with pytest.raises(IndexDirError, match="encoded in bf16 on a GPU"):
        opened.encode(np.zeros((4, size, size), np.float32))


def test_a_manifest_with_an_unknown_precision_is_refused(index):
    _edit_json(index / MANIFEST, lambda manifest: manifest.update(encoding_precision="fp8"))
    with pytest.raises(IndexDirError, match="encoding_precision"):
        open_index(index)
