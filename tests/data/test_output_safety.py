"""Figure outputs never replace what is at the target, and montages read only inside the archive.

Targets are built inside tmp_path (a FIFO, a symlink, a folder, a path under a regular file);
no test points at /dev or /proc.
"""

import os
import re
import shutil
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from crashsafe import WriteTargetError
from fdn.archive_index.montage import SliceLoader, draw_retrieval_montage
from fdn.archive_index.retrieval import Hit
from fdn.data.render import render_case
from fdn.errors import ArchiveError
from fdn_index_cli.main import main

SIZE = 16


def bad_targets(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (target path, words of the expected message); each target exists beforehand."""
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "link.png"
    link.symlink_to(victim)
    folder = tmp_path / "folder.png"
    folder.mkdir()
    a_file = tmp_path / "plain.txt"
    a_file.write_text("a file, not a folder")
    return {
        "fifo": (fifo, "special file"),
        "symlink": (link, "symbolic link"),
        "folder": (folder, "a folder"),
        "parent is a file": (a_file / "out.png", "does not exist (or is not a folder)"),
    }


def assert_untouched(tmp_path: Path) -> None:
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo.png").st_mode)
    assert (tmp_path / "link.png").is_symlink()
    assert (tmp_path / "victim.txt").read_text() == "keep me"
    assert (tmp_path / "folder.png").is_dir() and not any((tmp_path / "folder.png").iterdir())
    assert (tmp_path / "plain.txt").read_text() == "a file, not a folder"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_show_refuses_special_targets_with_a_clean_error(small_archive, tmp_path):
    runner = CliRunner()
    for name, (target, words) in bad_targets(tmp_path).items():
        r = runner.invoke(main, ["show", str(small_archive / "SYN_000"), "-o", str(target)])
        assert r.exit_code != 0, name
        assert r.exception is None or isinstance(r.exception, SystemExit), (name, r.exception)
        if name == "folder":  # click's own check of -o (dir_okay=False) answers first
            words = "is a directory"
        assert "Traceback" not in r.output and words in r.output and target.name in r.output, (
            name,
            r.output,
        )
    assert_untouched(tmp_path)


def test_render_case_raises_write_target_error_before_reading(tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    # the case folder does not even exist: the target is checked first
    with pytest.raises(WriteTargetError, match="special file"):
        render_case(tmp_path / "nope", fifo)


def test_evaluate_model_refuses_a_symlink_histogram(small_archive, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "hist.png"
    link.symlink_to(victim)
    model = tmp_path / "model"
    r = CliRunner().invoke(
        main,
        [
            "train",
            str(small_archive),
            "--preset",
            "tiny",
            "--out",
            str(model),
            "--batch-size",
            "8",
            "--max-steps",
            "1",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        main, ["evaluate-model", str(model), str(small_archive), "--histogram", str(link), "--json"]
    )
    assert r.exit_code != 0 and "symbolic link" in r.output and "hist.png" in r.output, r.output
    assert victim.read_text() == "keep me" and link.is_symlink()


def test_train_refuses_a_symlinked_checkpoint_before_training(small_archive, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (model / "weights.pt").symlink_to(victim)
    r = CliRunner().invoke(
        main,
        [
            "train",
            str(small_archive),
            "--preset",
            "tiny",
            "--out",
            str(model),
            "--batch-size",
            "8",
            "--max-steps",
            "1",
            "--json",
        ],
    )
    assert r.exit_code != 0 and "weights.pt" in r.output and "symbolic link" in r.output, r.output
    assert not (model / "metrics.jsonl").exists()  # refused before the first step
    assert victim.read_text() == "keep me"


def test_train_into_a_folder_under_a_regular_file(small_archive, tmp_path):
    (tmp_path / "plain").write_text("x")
    r = CliRunner().invoke(
        main,
        [
            "train",
            str(small_archive),
            "--preset",
            "tiny",
            "--out",
            str(tmp_path / "plain" / "model"),
            "--max-steps",
            "1",
        ],
    )
    assert r.exit_code != 0 and "cannot create the folder" in r.output, r.output
    assert "Traceback" not in r.output


# --- montages ---------------------------------------------------------------------------------


def fake_index(roots):
    return SimpleNamespace(manifest=SimpleNamespace(input_size=SIZE, archive_roots=list(roots)))


def hit(case: str, source: Path | str, slice_index: int = 10) -> Hit:
    return Hit(
        rank=1,
        row=0,
        case=case,
        slice=slice_index,
        distance=0.5,
        source=str(source),
        lesion_area=None,
    )


def test_montage_reads_inside_the_archive_and_refuses_special_targets(small_archive, tmp_path):
    index = fake_index([small_archive.resolve()])
    results = {"normal": [hit("SYN_001", small_archive / "SYN_001")]}
    out = tmp_path / "montage.png"
    written = draw_retrieval_montage(
        out,
        index,
        "q",
        results,
        query_case="SYN_000",
        query_slice=12,
        query_source=str(small_archive / "SYN_000"),
    )
    assert written == out and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for _name, (target, words) in bad_targets(tmp_path).items():
        with pytest.raises(WriteTargetError, match=re.escape(words)):
            draw_retrieval_montage(
                target,
                index,
                "q",
                results,
                query_case="SYN_000",
                query_slice=12,
                query_source=str(small_archive / "SYN_000"),
            )
    assert_untouched(tmp_path)


@pytest.fixture
def outside_case(small_archive, tmp_path):
    """A valid case folder outside the archive, as an attacker's slice table would name it."""
    folder = tmp_path / "elsewhere" / "SYN_001"
    shutil.copytree(small_archive / "SYN_001", folder)
    return folder


def test_slice_loader_refuses_folders_outside_the_archive(small_archive, tmp_path, outside_case):
    archive = small_archive.resolve()
    loader = SliceLoader(SIZE, [str(archive)])
    image, _, _ = loader.load("SYN_001", str(archive / "SYN_001"), 5)  # inside: fine
    assert image.shape == (4, SIZE, SIZE)

    assert Path(archive / os.path.relpath(outside_case, archive)).resolve() == outside_case
    refused = {
        "outside": str(outside_case),
        "dot-dot": str(archive / os.path.relpath(outside_case, archive)),
        "dot-dot back inside": str(archive / "SYN_002" / ".." / "SYN_001"),
        "relative": "SYN_001",
        "the root itself": str(archive),
    }
    for name, source in refused.items():
        with pytest.raises(ArchiveError, match="SYN_001"):
            SliceLoader(SIZE, [str(archive)]).load("SYN_001", source, 5)
            pytest.fail(f"{name}: {source} was read")
    # a symlink inside the archive root that resolves outside it
    copy = tmp_path / "archive_copy"
    shutil.copytree(small_archive, copy)
    shutil.rmtree(copy / "SYN_001")
    (copy / "SYN_001").symlink_to(outside_case, target_is_directory=True)
    with pytest.raises(ArchiveError, match="outside the archive folders"):
        SliceLoader(SIZE, [str(copy)]).load("SYN_001", str(copy / "SYN_001"), 5)
    # a file inside a case folder that links out
    (copy / "SYN_002" / "SYN_002_t1.nii.gz").unlink()
    (copy / "SYN_002" / "SYN_002_t1.nii.gz").symlink_to(outside_case / "SYN_001_t1.nii.gz")
    with pytest.raises(ArchiveError, match="points outside"):
        SliceLoader(SIZE, [str(copy)]).load("SYN_002", str(copy / "SYN_002"), 5)


def test_slice_loader_without_recorded_roots_reads_nothing(small_archive):
    with pytest.raises(ArchiveError, match="records no archive folder"):
        SliceLoader(SIZE, []).load("SYN_001", str(small_archive.resolve() / "SYN_001"), 5)
    with pytest.raises(ArchiveError, match="records no archive folder"):
        SliceLoader(SIZE, ["relative/root"]).load("SYN_001", "/abs/SYN_001", 5)


def test_slice_out_of_range_is_an_archive_error(small_archive):
    archive = small_archive.resolve()
    with pytest.raises(ArchiveError, match="slice 999 is out of range"):
        SliceLoader(SIZE, [str(archive)]).load("SYN_001", str(archive / "SYN_001"), 999)
    assert np.isfinite(
        SliceLoader(SIZE, [str(archive)]).load("SYN_001", str(archive / "SYN_001"), 0)[0]
    ).all()
