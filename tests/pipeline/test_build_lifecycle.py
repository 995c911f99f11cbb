"""The index directory's lifecycle: --add and resume never strand an index, the journal follows
its inputs, one build at a time, readers stay on the last complete index, no leftovers."""

import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

import fdn.archive_index.assemble
from fdn.archive_index.build import BuildOptions, build_index
from fdn.archive_index.layout import ENCODED_DIR
from fdn.archive_index.locks import build_lock
from fdn.archive_index.retrieval import open_index
from fdn.data import Archive
from fdn.errors import ArchiveError, IndexDirError
from fdn_index_cli.main import main


def codes_of(index_dir):
    index = open_index(index_dir)
    return index.codes_normal.copy(), index.codes_abnormal.copy(), list(index.cases)


def assert_same_index(a, b):
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]


@pytest.fixture
def index(tmp_path, built_index):
    target = tmp_path / "index"
    shutil.copytree(built_index, target)
    return target


@pytest.fixture
def bad_extra_archive(tmp_path, extra_archive):
    """extra_archive with one case missing its FLAIR: an --add of it fails without --skip-bad."""
    root = tmp_path / "extra"
    shutil.copytree(extra_archive, root)
    bad = Archive(root).case_ids[-1]
    Archive(root).case_files(bad)["flair"].unlink()
    return root, bad


def test_a_failed_add_leaves_the_previous_index_queryable(
    index, built_index, bad_extra_archive, model_dir
):
    before = codes_of(index)
    root, bad = bad_extra_archive
    with pytest.raises(ArchiveError, match=bad):
        build_index(root, model_dir, index, BuildOptions(add=True))
    assert_same_index(codes_of(index), before)
    case = before[2][0]
    result = CliRunner().invoke(
        main, ["query", "--index", str(index), "--case", case, "--slice", "0"]
    )
    assert result.exit_code == 0, result.output


def test_a_query_during_an_add_sees_the_previous_index(index, extra_archive, model_dir):
    before = codes_of(index)
    seen = []

    def during_encoding(case):  # called by the build after each case it encodes
        opened = open_index(index)
        seen.append(opened.ntotal)
        hits = opened.query_slice(opened.cases[0], 0, topq=2)
        assert len(hits) == 2

    report = build_index(
        extra_archive, model_dir, index, BuildOptions(add=True), on_case=during_encoding
    )
    assert len(report.encoded_now) == 2
    assert seen and set(seen) == {before[0].shape[0]}
    assert open_index(index).ntotal > before[0].shape[0]


def test_an_index_opened_before_an_add_keeps_answering_from_its_own_files(
    index, extra_archive, model_dir
):
    old = open_index(index)
    case = old.cases[0]
    build_index(
        extra_archive, model_dir, index, BuildOptions(add=True)
    )  # renames new files over the old
    hits = old.query_slice(case, 0, topq=10, engine="faiss-flat", mode="sum", distance="hamming")
    expect = old.query_slice(case, 0, topq=10, engine="lut", mode="sum", distance="hamming")
    assert [(h.row, h.distance) for h in hits] == [(h.row, h.distance) for h in expect]
    assert max(h.row for h in hits) < old.ntotal


def damage_truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def damage_drop_key(path):
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != "lesion_area"}
    np.savez(path, **arrays)


def damage_wrong_shape(path):
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["normal"] = arrays["normal"][:, :2]
    np.savez(path, **arrays)


def damage_bad_crc(path):
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    body = bytearray(members["normal.npy"])
    body[-1] ^= 0xFF
    members["normal.npy"] = bytes(body)
    with zipfile.ZipFile(path, "w") as z:  # a fresh CRC of the damaged member...
        for name, data in members.items():
            z.writestr(name, data)
    raw = bytearray(path.read_bytes())  # ...then the member's bytes damaged behind it
    at = raw.find(bytes(body[-16:]))
    raw[at + 15] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "damage", [damage_truncate, damage_drop_key, damage_wrong_shape, damage_bad_crc]
)
def test_a_damaged_journal_entry_is_encoded_again(
    index, built_index, tiny_archive, model_dir, damage
):
    case = Archive(tiny_archive).case_ids[1]
    damage(index / ENCODED_DIR / f"{case}.npz")
    report = build_index(tiny_archive, model_dir, index)
    assert report.encoded_now == [case]
    assert_same_index(codes_of(index), codes_of(built_index))
    # and so is the same damage before an --add
    damage(index / ENCODED_DIR / f"{case}.npz")
    report = build_index(tiny_archive, model_dir, index, BuildOptions(add=True))
    assert report.encoded_now == [case]


def test_a_case_whose_files_changed_is_encoded_again(tmp_path, tiny_archive, model_dir):
    root = tmp_path / "archive"
    shutil.copytree(tiny_archive, root)
    index = tmp_path / "index"
    build_index(root, model_dir, index)
    cases = Archive(root).case_ids
    # case 0 gets case 1's images (same size: only the content and mtime change)
    for key in ("t1", "t1ce", "t2", "flair"):
        src = Archive(root).case_files(cases[1])[key]
        dst = Archive(root).case_files(cases[0])[key]
        dst.write_bytes(src.read_bytes())
    report = build_index(root, model_dir, index)
    assert report.encoded_now == [cases[0]] and len(report.reused) == len(cases) - 1
    opened = open_index(index)
    n0 = int(opened.table.counts[0])
    start1 = int(opened.table.starts[1])
    np.testing.assert_array_equal(
        opened.codes_normal[:n0], opened.codes_normal[start1 : start1 + n0]
    )


def test_a_skipped_case_is_retried_once_its_files_are_fixed(tmp_path, tiny_archive, model_dir):
    root = tmp_path / "archive"
    shutil.copytree(tiny_archive, root)
    bad = Archive(root).case_ids[1]
    flair = Archive(root).case_files(bad)["flair"]
    kept = tmp_path / "flair.nii.gz"
    shutil.move(flair, kept)
    index = tmp_path / "index"
    report = build_index(root, model_dir, index, BuildOptions(skip_bad=True))
    assert [e["case"] for e in report.skipped] == [bad]
    report = build_index(
        root, model_dir, index, BuildOptions(skip_bad=True)
    )  # unchanged: still skipped
    assert [e["case"] for e in report.skipped] == [bad] and report.encoded_now == []
    shutil.move(kept, flair)
    report = build_index(root, model_dir, index, BuildOptions(skip_bad=True))
    assert report.encoded_now == [bad] and report.skipped == []
    opened = open_index(index)
    assert bad in opened.cases and opened.manifest.skipped_cases == []


def test_a_second_build_of_the_same_directory_fails_at_once(index, tiny_archive, model_dir):
    with build_lock(index):
        with pytest.raises(IndexDirError, match="another build holds"):
            build_index(tiny_archive, model_dir, index)
        result = CliRunner().invoke(
            main, ["build", str(tiny_archive), "--model", str(model_dir), "--index", str(index)]
        )
        assert result.exit_code != 0
        assert "another build holds" in result.output
        assert open_index(index).ntotal > 0  # readers are not blocked by a build
    build_index(tiny_archive, model_dir, index)  # the lock is released with its holder


def test_leftovers_of_killed_writers_are_removed(index, built_index, tiny_archive, model_dir):
    planted = [
        index / ".manifest.json.k1.tmp",
        index / ".faiss_sum.index.k2.tmp",
        index / "codes.zarr" / "normal" / ".zarr.json.k3.tmp",
        index / ENCODED_DIR / ".CASE.npz.k4.tmp",
        index / "model" / ".weights.pt.k5.tmp",
    ]
    for path in planted:
        path.write_bytes(b"\0" * 2048)
    (index / ".assemble.k6.tmp" / "codes.zarr").mkdir(parents=True)
    build_index(tiny_archive, model_dir, index)
    assert [p for p in index.rglob(".*.tmp")] == []
    assert_same_index(codes_of(index), codes_of(built_index))


def test_a_build_killed_during_the_swap_is_refused_then_finished(
    index, built_index, tiny_archive, model_dir, monkeypatch
):
    calls = []
    real_replace = os.replace

    def replace_then_die(src, dst):
        if ".assemble." in str(src) and os.path.dirname(dst) == str(index):  # the swap's renames
            calls.append(dst)
            if len(calls) == 3:
                raise KeyboardInterrupt  # stands for a kill between two renames of the swap
        return real_replace(src, dst)

    monkeypatch.setattr(fdn.archive_index.assemble.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_index(tiny_archive, model_dir, index)
    monkeypatch.undo()
    assert len(calls) == 3
    with pytest.raises(IndexDirError, match="interrupted build"):
        open_index(index)
    report = build_index(tiny_archive, model_dir, index)
    assert report.encoded_now == []  # the journal was intact: only assembled again
    assert_same_index(codes_of(index), codes_of(built_index))


def test_a_rebuild_without_ivf_removes_the_old_ivf_files(tmp_path, tiny_archive, model_dir):
    index = tmp_path / "index"
    build_index(tiny_archive, model_dir, index, BuildOptions(ivf_nlist=2))
    assert (index / "faiss_ivf_sum.index").is_file()
    build_index(tiny_archive, model_dir, index)
    assert not list(index.glob("faiss_ivf_*"))
    assert "faiss_ivf_sum.index" not in json.loads((index / "manifest.json").read_text())["files"]
    assert open_index(index).ntotal > 0


def test_build_into_the_archive_itself_is_refused(tmp_path, tiny_archive, model_dir):
    root = tmp_path / "archive"
    shutil.copytree(tiny_archive, root)
    before = sorted(p.name for p in root.iterdir())
    with pytest.raises(IndexDirError, match="looks like an image archive"):
        build_index(root, model_dir, root)
    assert sorted(p.name for p in root.iterdir()) == before


def test_two_build_processes_never_run_at_once(tmp_path, tiny_archive, model_dir):
    import subprocess
    import sys
    import textwrap
    import time

    index, holding, release = tmp_path / "index", tmp_path / "holding", tmp_path / "release"
    # The first build pauses inside its run (after its first case, so it holds the lock) until
    # the test lets it go: the second build is sure to meet a held lock.
    script = textwrap.dedent(f"""
        import pathlib, sys, time
        from fdn.archive_index.build import build_index
        def pause(case):
            if not pathlib.Path({str(holding)!r}).exists():
                pathlib.Path({str(holding)!r}).write_text(case)
                deadline = time.monotonic() + 120
                while not pathlib.Path({str(release)!r}).exists():
                    assert time.monotonic() < deadline, "never released"
                    time.sleep(0.01)
        build_index({str(tiny_archive)!r}, {str(model_dir)!r}, {str(index)!r}, on_case=pause)
    """)
    first = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 120
    while not holding.exists():
        assert first.poll() is None, first.communicate()[0].decode()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    second = CliRunner().invoke(
        main, ["build", str(tiny_archive), "--model", str(model_dir), "--index", str(index)]
    )
    release.write_text("go")
    assert second.exit_code != 0
    assert "another build holds" in second.output and str(index) in second.output
    output = first.communicate(timeout=300)[0].decode()
    assert first.returncode == 0, output
    assert open_index(index).ntotal > 0
