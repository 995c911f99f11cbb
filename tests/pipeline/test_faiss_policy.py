"""`build --faiss-indexes auto|always|never`: the FAISS copies of the packed bits are optional.

With the full bit length they take kilobytes per slice (hundreds of GB at 10M slices), so
`auto` leaves them out above a size limit; the default engines answer the same without them.
"""

import json

import pytest
from click.testing import CliRunner

import fdn.archive_index.assemble
from fdn.archive_index.build import BuildOptions, build_index
from fdn.archive_index.retrieval import open_index
from fdn_index_cli.main import main


def _faiss_files(index):
    listed = json.loads((index / "manifest.json").read_text())["files"]
    on_disk = sorted(p.name for p in index.glob("faiss_*"))
    return on_disk, sorted(n for n in listed if n.startswith("faiss_"))


def _hits(index_dir, engine=None):
    index = open_index(index_dir)
    case = index.cases[0]
    return [
        (h.case, h.slice, h.distance)
        for h in index.query_slice(
            case, 0, topq=3, mode="sum", **({"engine": engine} if engine else {})
        )
    ]


def test_never_writes_no_faiss_file_and_the_default_engine_answers_the_same(
    tmp_path, tiny_archive, model_dir, built_index
):
    assert _faiss_files(built_index)[0], "a small index keeps its FAISS files under auto"
    index = tmp_path / "index"
    build_index(tiny_archive, model_dir, index, BuildOptions(faiss_indexes="never"))
    assert _faiss_files(index) == ([], [])
    assert json.loads((index / "manifest.json").read_text())["hashindex"]["faiss_indexes"] == (
        "never"
    )
    assert _hits(index) == _hits(built_index)
    with pytest.raises(ValueError, match="no FAISS files.*--faiss-indexes always"):
        _hits(index, engine="faiss-flat")


def test_auto_leaves_them_out_above_the_limit_unless_an_ivf_is_asked_for(
    tmp_path, tiny_archive, model_dir, monkeypatch
):
    monkeypatch.setattr(fdn.archive_index.assemble, "FAISS_AUTO_LIMIT_GIB", 0)
    index = tmp_path / "index"
    report = build_index(tiny_archive, model_dir, index)
    assert _faiss_files(index) == ([], [])
    with_ivf = tmp_path / "with_ivf"
    build_index(tiny_archive, model_dir, with_ivf, BuildOptions(ivf_nlist=2))
    on_disk, listed = _faiss_files(with_ivf)
    assert "faiss_ivf_sum.index" in on_disk and on_disk == listed
    # the assembly's steps are reported, and they account for its time
    steps = {k: v for k, v in report.stages.items() if k.startswith("assemble_")}
    assert {"assemble_read_s", "assemble_hash_s", "assemble_swap_s"} <= set(steps)
    parts = sum(v for k, v in steps.items() if k != "assemble_s")
    assert 0 < parts <= report.stages["assemble_s"]


def test_an_ivf_without_faiss_files_is_a_usage_error(tmp_path, tiny_archive, model_dir):
    result = CliRunner().invoke(
        main,
        ["build", str(tiny_archive), "--model", str(model_dir), "--index", str(tmp_path / "i")]
        + ["--faiss-indexes", "never", "--ivf-nlist", "2"],
    )
    assert result.exit_code == 2 and "--ivf-nlist builds a FAISS index" in result.output
    assert not (tmp_path / "i").exists()
