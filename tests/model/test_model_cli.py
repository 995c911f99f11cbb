"""`fdn-index train` and `fdn-index evaluate-model` through click's CliRunner."""

import json

from click.testing import CliRunner

from fdn_index_cli.main import main


def test_train_then_evaluate(small_archive, tmp_path):
    runner = CliRunner()
    out = tmp_path / "model"
    r = runner.invoke(
        main,
        [
            "train",
            str(small_archive),
            "--preset",
            "tiny",
            "--out",
            str(out),
            "--batch-size",
            "8",
            "--max-steps",
            "3",
            "--threads",
            "1",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["steps"] == 3 and summary["stopped"] == "max steps"
    assert (out / "TRAIN_COMMAND.txt").read_text().startswith("fdn-index train ")
    # resume continues to 5 steps
    r = runner.invoke(
        main,
        ["train", str(small_archive), "--out", str(out), "--resume", "--max-steps", "5", "--json"],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["steps"] == 5
    r = runner.invoke(main, ["evaluate-model", str(out), str(small_archive), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["cases"] == 3 and res["slices"] > 0
    assert res["dice"]["ED"]["volumes"] == 2  # the two lesion cases
    assert 0 <= res["compactness"]["normal"] <= 1
    assert res["leakiness"]["lesion_pixels"] > 0
    assert (out / "codebook_norms.png").is_file()
    r = runner.invoke(main, ["evaluate-model", str(out), str(small_archive)])
    assert r.exit_code == 0, r.output
    assert "volume-wise Dice" in r.output and "leakiness" in r.output


def test_evaluate_model_rejects_a_non_model_dir(small_archive, tmp_path):
    r = CliRunner().invoke(main, ["evaluate-model", str(tmp_path), str(small_archive)])
    assert r.exit_code != 0
    assert "config.json: missing" in r.output


def test_train_refuses_existing_model_without_resume(small_archive, tmp_path):
    runner = CliRunner()
    args = [
        "train",
        str(small_archive),
        "--preset",
        "tiny",
        "--out",
        str(tmp_path / "m"),
        "--batch-size",
        "8",
        "--max-steps",
        "1",
        "--json",
    ]
    assert runner.invoke(main, args).exit_code == 0
    r = runner.invoke(main, args)
    assert r.exit_code != 0 and "--resume" in r.output


def test_train_set_overrides_reach_the_config_and_the_command_file(small_archive, tmp_path):
    runner = CliRunner()
    out = tmp_path / "m"
    base = ["train", str(small_archive), "--preset", "tiny", "--out", str(out)]
    r = runner.invoke(main, [*base, "--set", "code_dim=2.5", "--max-steps", "1"])
    assert r.exit_code == 2 and "code_dim" in r.output
    assert not out.exists()  # refused before anything was written
    args = ["--set", "null_code_weight=0.5", "--set", "spade_masked_layout=false"]
    r = runner.invoke(main, [*base, *args, "--batch-size", "8", "--max-steps", "1", "--json"])
    assert r.exit_code == 0, r.output
    config = json.loads((out / "config.json").read_text())
    assert config["null_code_weight"] == 0.5 and config["spade_masked_layout"] is False
    command = (out / "TRAIN_COMMAND.txt").read_text().splitlines()[0]
    assert "--set null_code_weight=0.5 --set spade_masked_layout=false" in command
