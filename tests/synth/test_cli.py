"""`fdn-index synth` and `fdn-index show` through click's test runner."""

import json
import shutil

import matplotlib.image
import numpy as np
from click.testing import CliRunner

from fdn_index_cli.main import main


def test_synth_writes_an_archive_and_reports_it(tmp_path):
    out = tmp_path / "archive"
    result = CliRunner().invoke(
        main,
        [
            "synth",
            str(out),
            "--cases",
            "2",
            "--healthy-fraction",
            "0.5",
            "--seed",
            "3",
            "--size",
            "16",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["cases"] == ["SYN_000", "SYN_001"] and len(summary["healthy"]) == 1
    assert sorted(p.name for p in (out / "SYN_001").iterdir()) == [
        f"SYN_001_{k}.nii.gz"
        for k in sorted(["anat", "flair", "pseudohealthy", "seg", "t1", "t1ce", "t2"])
    ]

    text = CliRunner().invoke(
        main,
        [
            "synth",
            str(out),
            "--cases",
            "2",
            "--healthy-fraction",
            "0.5",
            "--seed",
            "3",
            "--size",
            "16",
        ],
    )
    assert text.exit_code == 0, text.output
    assert "Wrote 2 cases (1 healthy)" in text.output


def test_synth_refuses_a_folder_holding_other_files(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    result = CliRunner().invoke(main, ["synth", str(tmp_path), "--cases", "1", "--size", "16"])
    assert result.exit_code != 0
    assert "already exists" in result.output and "--overwrite" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_synth_rejects_bad_options(tmp_path):
    result = CliRunner().invoke(main, ["synth", str(tmp_path / "a"), "--healthy-fraction", "2"])
    assert result.exit_code == 2 and "healthy-fraction" in result.output
    assert not (tmp_path / "a").exists()


def test_show_renders_the_largest_lesion_slice(small_archive, tmp_path):
    png = tmp_path / "preview.png"
    result = CliRunner().invoke(
        main, ["show", str(small_archive / "SYN_000"), "-o", str(png), "--json"]
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    import nibabel as nib

    seg = np.asarray(nib.load(small_archive / "SYN_000" / "SYN_000_seg.nii.gz").dataobj)
    assert shown["slice"] == int(np.argmax((seg > 0).sum((0, 1))))
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
    assert image[..., :3].std() > 0.05  # not blank


def test_show_defaults_to_the_middle_slice_of_a_healthy_case(small_archive, tmp_path):
    result = CliRunner().invoke(
        main, ["show", str(small_archive / "SYN_001"), "-o", str(tmp_path / "p.png")]
    )
    assert result.exit_code == 0, result.output
    assert "slice 13" in result.output  # 26 slices at size 40, no lesion


def test_show_reports_bad_input_clearly(small_archive, tmp_path):
    runner = CliRunner()
    out_of_range = runner.invoke(
        main,
        ["show", str(small_archive / "SYN_000"), "--slice", "99", "-o", str(tmp_path / "a.png")],
    )
    assert out_of_range.exit_code != 0 and "out of range" in out_of_range.output
    assert not (tmp_path / "a.png").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    no_files = runner.invoke(main, ["show", str(empty), "-o", str(tmp_path / "b.png")])
    assert no_files.exit_code != 0 and "holds no file named empty_t1.nii.gz" in no_files.output

    broken = tmp_path / "SYN_000"
    shutil.copytree(small_archive / "SYN_000", broken)
    raw = (broken / "SYN_000_flair.nii.gz").read_bytes()
    (broken / "SYN_000_flair.nii.gz").write_bytes(raw[:100])
    truncated = runner.invoke(main, ["show", str(broken), "-o", str(tmp_path / "c.png")])
    assert truncated.exit_code != 0
    assert "SYN_000_flair.nii.gz" in truncated.output and "truncated" in truncated.output
    assert not (tmp_path / "c.png").exists()
