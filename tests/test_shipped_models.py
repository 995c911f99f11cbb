"""The shipped models: found through importlib.resources (here, the checkout's models/), listed
by `fdn-index models`, and the default `--model`."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fdn.errors import ModelError
from fdn.shipped_models import (
    DEFAULT_MODEL,
    MODEL_FILES,
    describe,
    is_shipped,
    models_root,
    resolve_model_dir,
    shipped_model_names,
    shipped_models,
)
from fdn_index_cli.main import main

CHECKOUT_MODELS = Path(__file__).resolve().parents[1] / "models"


def test_the_shipped_models_are_the_checkouts_folder():
    assert models_root() == CHECKOUT_MODELS
    assert shipped_model_names() == ["cpu-64", "cpu-64-nodm", "cpu-64-null"]
    assert DEFAULT_MODEL in shipped_model_names()
    for name in shipped_model_names():
        assert all((models_root() / name / f).is_file() for f in MODEL_FILES)


def test_a_model_value_is_a_folder_or_a_shipped_name(tmp_path):
    assert resolve_model_dir(tmp_path) == tmp_path  # a folder wins, as it is
    assert resolve_model_dir("cpu-64") == CHECKOUT_MODELS / "cpu-64"
    with pytest.raises(ModelError, match="not a shipped model .*cpu-64-null"):
        resolve_model_dir(tmp_path / "no-such-model")
    assert is_shipped(CHECKOUT_MODELS / DEFAULT_MODEL) and not is_shipped(tmp_path)


def test_the_default_says_what_it_was_trained_on():
    model = describe(DEFAULT_MODEL)
    assert model.default and model.preset == "cpu-64-null" and model.null_code
    assert model.steps == 6978 and model.image_size == 64 and model.latent_size == 8
    assert model.train_archive and "--seed 100" in model.train_archive
    assert model.train_commands[0].startswith("fdn-index train ")
    assert model.versions and "torch" in model.versions
    assert [m.name for m in shipped_models() if m.default] == [DEFAULT_MODEL]


def test_the_default_model_loads():
    from fdn.training.checkpoint import load_model

    _, config = load_model(resolve_model_dir(DEFAULT_MODEL), device="cpu")
    assert config.image_size == 64 and config.gate_abnormal_codes


def test_models_command():
    listed = CliRunner().invoke(main, ["models", "--json"])
    assert listed.exit_code == 0, listed.output
    models = json.loads(listed.output)
    assert [m["name"] for m in models if m["default"]] == [DEFAULT_MODEL]
    assert all(Path(m["path"]).is_dir() for m in models)
    text = CliRunner().invoke(main, ["models"])
    assert text.exit_code == 0, text.output
    assert f"{DEFAULT_MODEL}  (default)" in text.output and "--seed 100" in text.output


def test_build_and_evaluate_model_default_to_the_shipped_model(tmp_path):
    help_text = CliRunner().invoke(main, ["build", "--help"]).output
    assert f"default: {DEFAULT_MODEL}" in help_text
    bad = CliRunner().invoke(main, ["build", str(tmp_path), "--model", "no-such-model"])
    assert bad.exit_code == 2 and "not a shipped model" in bad.output
    many = CliRunner().invoke(main, ["evaluate-model", "a", "b", "c"])
    assert many.exit_code == 2 and "at most MODEL and ARCHIVE" in many.output
    missing = CliRunner().invoke(main, ["evaluate-model", str(tmp_path / "no-archive")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
