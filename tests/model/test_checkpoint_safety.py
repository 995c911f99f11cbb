"""Model files from an untrusted source: loading runs no code and allocates nothing absurd.

A checkpoint.pt is a pickle; `torch.load(weights_only=False)` runs whatever a crafted pickle
names. These tests craft such files for real and check that every loader refuses them with
ModelError, and that the side effect the pickle asks for never happens.
"""

import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from fdn.errors import ModelError
from fdn.model import PRESETS, FDNConfig
from fdn.training.checkpoint import CHECKPOINT_FILE, load_checkpoint, load_model, save_checkpoint
from fdn.training.trainer import Trainer, train_on_slices
from fdn_index_cli.main import main

SHIPPED = Path(__file__).resolve().parents[2] / "models"


class CreatesMarker:
    """Unpickling this calls open(marker, "w"): a stand-in for any shell command."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _tiny_state(tiny_config, make_slices) -> dict:
    trainer = Trainer(tiny_config(), make_slices(8, 32), "tiny", seed=0, device=torch.device("cpu"))
    trainer.train_step()
    return trainer.state()


@pytest.mark.parametrize("where", ["top", "nested"])
def test_malicious_checkpoint_is_refused_and_runs_nothing(
    tmp_path, tiny_config, make_slices, where
):
    marker = tmp_path / "pwned"
    state = _tiny_state(tiny_config, make_slices)
    if where == "top":
        payload = CreatesMarker(marker)
    else:  # hidden deep inside an otherwise valid checkpoint
        state["rng"]["augment"] = CreatesMarker(marker)
        payload = state
    model_dir = tmp_path / "m"
    save_checkpoint(model_dir, state)
    torch.save(payload, model_dir / CHECKPOINT_FILE)
    assert not marker.exists()  # saving does not run the payload
    with pytest.raises(ModelError, match="checkpoint.pt: cannot read the checkpoint"):
        load_checkpoint(model_dir)
    assert not marker.exists()


def test_train_resume_refuses_a_malicious_checkpoint(
    small_archive, tmp_path, tiny_config, make_slices
):
    marker = tmp_path / "pwned"
    model_dir = tmp_path / "m"
    save_checkpoint(model_dir, _tiny_state(tiny_config, make_slices))
    torch.save({"model": CreatesMarker(marker)}, model_dir / CHECKPOINT_FILE)
    r = CliRunner().invoke(
        main,
        [
            "train",
            str(small_archive),
            "--out",
            str(model_dir),
            "--resume",
            "--max-steps",
            "2",
            "--json",
        ],
    )
    assert r.exit_code != 0
    assert "Traceback" not in r.output and "checkpoint.pt" in r.output, r.output
    assert not marker.exists()


def test_resumable_state_round_trips_with_weights_only(tmp_path, tiny_config, make_slices):
    """Everything Trainer.state() holds is tensors and plain data: torch's safe loader reads it
    back unchanged (compared against the in-memory state, not through our loader)."""
    state = _tiny_state(tiny_config, make_slices)
    save_checkpoint(tmp_path, state)
    loaded = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert loaded.keys() == state.keys()
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    assert torch.equal(loaded["rng"]["augment"], state["rng"]["augment"])
    assert loaded["optimizer_model"]["param_groups"] == state["optimizer_model"]["param_groups"]
    assert loaded["config"] == state["config"]


def test_checkpoint_without_config_or_with_wrong_types(tmp_path, tiny_config, make_slices):
    state = _tiny_state(tiny_config, make_slices)
    save_checkpoint(tmp_path, state)
    without = {k: v for k, v in state.items() if k != "config"}
    torch.save(without, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ModelError, match="lacks 'config'"):
        load_checkpoint(tmp_path)
    torch.save({**state, "config": ["not", "a", "dict"]}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ModelError, match=r"checkpoint\['config'\] should be of type dict"):
        load_checkpoint(tmp_path)
    torch.save([1, 2, 3], tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ModelError, match="expected a checkpoint dict, found list"):
        load_checkpoint(tmp_path)
    huge = {**state["config"], "codebook_size": 10**12}
    torch.save({**state, "config": huge}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ModelError, match="codebook_size must be in"):
        load_checkpoint(tmp_path)


def test_resume_with_a_checkpoint_of_the_wrong_shapes(tmp_path, tiny_config, make_slices):
    slices = make_slices(16, 32)
    train_on_slices(slices, tmp_path, tiny_config(), "tiny", max_steps=1, samples=False)
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    state["rng"]["torch"] = torch.zeros(3)  # not a torch RNG state
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ModelError, match="does not fit"):
        train_on_slices(
            slices, tmp_path, tiny_config(), "tiny", resume=True, max_steps=2, samples=False
        )


def _model_dir_with_config(tmp_path: Path, config_json) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(config_json))
    (tmp_path / "weights.pt").write_bytes(b"unused: the config is refused first")
    return tmp_path


def test_config_json_that_is_a_list(tmp_path):
    _model_dir_with_config(tmp_path, [1, 2])
    with pytest.raises(ModelError, match="config.json: the config must be a JSON object"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    "field,value",
    [
        ("codebook_size", 1e12),
        ("codebook_size", 10**12),
        ("image_size", 2**20),
        ("code_dim", 10**9),
        ("latent_size", 2**14),
        ("batch_size", 10**9),
        ("width", 1e6),
        ("spade_hidden", 10**8),
        ("image_size", "64"),
        ("width", float("nan")),
        ("distribution_matching", "yes"),
        ("batch_size", True),
    ],
)
def test_absurd_config_is_refused_before_allocation(tmp_path, field, value):
    cfg = {**asdict(PRESETS["tiny"]), field: value}
    if isinstance(value, float) and value != value:
        text = json.dumps(cfg)  # NaN: Python's json writes it, and reads it back
        (tmp_path / "config.json").write_text(text)
        (tmp_path / "weights.pt").write_bytes(b"x")
    else:
        _model_dir_with_config(tmp_path, cfg)
    # torch.nn.Embedding(10**12, ...) would need 8 TB: reaching it would fail differently
    with pytest.raises(ModelError, match=f"config.json: invalid config .*{field}"):
        load_model(tmp_path)


def test_config_limits_accept_every_preset_and_reject_past_the_limit():
    for name, cfg in PRESETS.items():
        assert FDNConfig(**asdict(cfg)) == cfg, name
    with pytest.raises(ValueError, match="codebook_size must be in"):
        replace(PRESETS["tiny"], codebook_size=65537)
    assert replace(PRESETS["tiny"], codebook_size=65536).codebook_size == 65536


@pytest.mark.parametrize("name", ["cpu-64", "cpu-64-nodm", "cpu-64-null"])
def test_shipped_models_still_load(tmp_path, name):
    if not (SHIPPED / name / "weights.pt").is_file():
        pytest.skip(f"models/{name} is not in this checkout")
    shutil.copytree(SHIPPED / name, tmp_path / name)
    model, config = load_model(tmp_path / name)
    assert config.image_size == 64 and config.codebook_size == 128
    with torch.no_grad():
        out = model(torch.zeros(1, 4, 64, 64))
    assert out.codes_normal.shape == (1, 8, 8)


JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=3),
)


@settings(max_examples=100, deadline=None, derandomize=True)  # same examples every run
@given(st.dictionaries(st.sampled_from(sorted(asdict(PRESETS["tiny"]))), JSON_VALUES, max_size=4))
def test_any_config_values_give_a_config_or_a_model_error(changes):
    """Arbitrary JSON values in config fields: FDNConfig within the limits, or ModelError."""
    from fdn.model.config import LIMITS
    from fdn.training.checkpoint import config_from_dict

    try:
        config = config_from_dict({**asdict(PRESETS["tiny"]), **changes}, "config.json")
    except ModelError as error:
        assert str(error).startswith("config.json: invalid config")
        return
    for name, (low, high) in LIMITS.items():
        assert low <= getattr(config, name) <= high, name
