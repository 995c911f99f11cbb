"""`fdn-index train --init-from MODEL`: fine-tuning starts from the model's weights and config,
with fresh optimizers; what cannot be fine-tuned is refused before anything is written."""

import json

import torch
from click.testing import CliRunner

from fdn_index_cli.main import main

BASE = ["--batch-size", "8", "--threads", "1", "--json"]


def _weights(model_dir):
    return torch.load(model_dir / "weights.pt", map_location="cpu", weights_only=True)


def _largest_change(a, b):
    """The largest change of a trainable parameter (batch-norm running statistics are
    buffers that every forward pass moves, whatever the learning rate)."""
    from fdn.model import FDN
    from fdn.model.config import PRESETS

    trainable = [name for name, _ in FDN(PRESETS["tiny"]).named_parameters()]
    return max(float((a[k] - b[k]).abs().max()) for k in trainable)


def test_fine_tuning_starts_from_the_source_weights(small_archive, model_dir, tmp_path):
    source = _weights(model_dir)
    runner = CliRunner()
    tuned, scratch = tmp_path / "tuned", tmp_path / "scratch"
    lr = 1e-7  # Adam moves each weight by about lr per step: one step leaves the source visible
    r = runner.invoke(
        main,
        ["train", str(small_archive), "--init-from", str(model_dir), "--out", str(tuned),
         "--max-steps", "1", "--lr", str(lr), *BASE],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["steps"] == 1  # a new run: the step count starts at 0
    r = runner.invoke(
        main,
        ["train", str(small_archive), "--preset", "tiny", "--out", str(scratch), "--seed", "5",
         "--max-steps", "1", "--lr", str(lr), *BASE],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert _largest_change(source, _weights(tuned)) <= 2 * lr  # Adam's step is at most ~lr
    assert _largest_change(source, _weights(scratch)) > 1e-3  # other random weights
    config = json.loads((tuned / "config.json").read_text())
    source_config = json.loads((model_dir / "config.json").read_text())
    assert config["preset"] == source_config["preset"] == "tiny"
    changed = ("lr", "batch_size", "fdn_version")
    assert {k: v for k, v in config.items() if k not in changed} == {
        k: v for k, v in source_config.items() if k not in changed
    }
    assert config["lr"] == lr and config["batch_size"] == 8  # the options apply over it
    command = (tuned / "TRAIN_COMMAND.txt").read_text().splitlines()[0]
    # the command as recorded runs again: --init-from, and no --preset beside it
    assert "--init-from" in command and "--preset" not in command


def test_what_cannot_be_fine_tuned_is_refused_before_anything_is_written(
    small_archive, model_dir, tmp_path
):
    runner = CliRunner()
    out = tmp_path / "out"
    cases = [
        (["--resume"], "--resume"),
        (["--preset", "cpu-64"], "--preset"),
        (["--set", "code_dim=12"], "do not fit"),
    ]
    for extra, fault in cases:
        r = runner.invoke(
            main,
            ["train", str(small_archive), "--init-from", str(model_dir), "--out", str(out),
             "--max-steps", "1", *extra, *BASE],
        )  # fmt: skip
        assert r.exit_code != 0 and fault in r.output, (extra, r.output)
        assert not out.exists(), extra
    r = runner.invoke(
        main,
        ["train", str(small_archive), "--init-from", str(tmp_path / "nothing"), "--out",
         str(out), *BASE],
    )  # fmt: skip
    assert r.exit_code != 0 and "not a shipped model" in r.output and not out.exists()
