"""benchmarks.gate_cost on a tiny untrained model: the decoder-row counts and kept cells it
reports follow from what each gate setting does (no timing is asserted)."""

import json
from dataclasses import asdict, replace

import pytest
import torch
from click.testing import CliRunner

from benchmarks.gate_cost import main
from fdn.model import FDN, PRESETS
from fdn.synth import synthesize_archive
from fdn.training.checkpoint import save_checkpoint


@pytest.fixture()
def null_prior_model(tmp_path):
    torch.manual_seed(8)
    config = replace(PRESETS["tiny"], null_code_weight=1.0, gate_abnormal_codes=True)
    state = {"model": FDN(config).state_dict(), "config": asdict(config), "preset": "tiny"}
    save_checkpoint(tmp_path / "model", state)
    return tmp_path / "model"


def test_gate_cost_reports_one_decode_per_pass_and_fewer_cells_at_the_fixed_point(
    tmp_path, null_prior_model
):
    archive = tmp_path / "archive"
    synthesize_archive(archive, n_cases=3, healthy_fraction=0.0, seed=3, size=32)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["--model", str(null_prior_model), "--archive", str(archive), "--rounds", "1"]
        + ["--batch", "16", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["no gate"]["seg_decoder_rows_per_slice"] == 0
    assert settings["one pass"]["seg_decoder_rows_per_slice"] == 1
    # the fixed point re-decodes only slices a pass changed, and each pass ends with a check
    assert settings["fixed point"]["seg_decoder_rows_per_slice"] >= 1
    kept = [settings[name]["non_null_cells"] for name in ("no gate", "one pass", "fixed point")]
    assert kept[0] >= kept[1] >= kept[2]
    assert "| fixed point |" in (out / "report.md").read_text()


def test_gate_cost_refuses_a_model_without_the_null_prior(tmp_path):
    config = PRESETS["tiny"]
    state = {"model": FDN(config).state_dict(), "config": asdict(config), "preset": "tiny"}
    save_checkpoint(tmp_path / "plain", state)
    result = CliRunner().invoke(
        main, ["--model", str(tmp_path / "plain"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code != 0 and "null-code prior" in result.output
    assert not (tmp_path / "o").exists()
