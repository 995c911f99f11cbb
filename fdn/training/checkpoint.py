"""Model directories: save and load FDN checkpoints.

MODEL_DIR layout:
  config.json      asdict(FDNConfig) plus "preset" and "fdn_version"
  checkpoint.pt    one dict: model, critic, optimizer_model, optimizer_critic, config, preset,
                   step, epoch, step_in_epoch, elapsed_s, rng states (everything --resume needs)
  weights.pt       the model's state_dict alone; `model_checksum` hashes this file, so the
                   index can refuse codes of another model
  metrics.jsonl, samples/*.png, TRAIN_COMMAND.txt  (written by training)
Every file is written with `crashsafe.atomic_write` (temporary file, fsync, rename,
fsync of the folder), so an interrupted write never leaves a half-written checkpoint.

Loading never runs code from a file: checkpoint.pt and weights.pt are read with
`torch.load(weights_only=True)`, which accepts tensors and plain data (dicts, lists, tuples,
numbers, strings) only. Everything a checkpoint holds is of that kind: state dicts, optimizer
state dicts, RNG states as uint8 tensors, asdict(config). A pickle that names any other class
is refused with ModelError.
"""

import hashlib
import io
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from crashsafe import WriteTargetError, atomic_write, atomic_write_text
from fdn import __version__
from fdn.errors import ModelError
from fdn.model import FDN, FDNConfig
from fdn.model.config import LEGACY_VALUES

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
WEIGHTS_FILE = "weights.pt"


def _torch_bytes(obj: Any) -> bytes:
    """torch.save into memory: the bytes do not depend on the (temporary) file name."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def make_dir(path: str | Path) -> Path:
    """Create a folder (and its parents) for output; WriteTargetError naming it if impossible."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteTargetError(
            f"{path}: cannot create the folder ({e.strerror or e}); choose another output folder"
        ) from None
    return path


# The keys every checkpoint.pt holds, and the type of each (see `fdn.training.trainer.Trainer.state`).
CHECKPOINT_KEYS: dict[str, type | tuple[type, ...]] = {
    "model": dict,
    "critic": dict,
    "optimizer_model": dict,
    "optimizer_critic": dict,
    "config": dict,
    "preset": (str, type(None)),
    "seed": int,
    "step": int,
    "epoch": int,
    "step_in_epoch": int,
    "elapsed_s": (int, float),
    "rng": dict,
}


def config_from_dict(d: Any, source: str) -> FDNConfig:
    """The FDNConfig a config dict describes; ModelError (naming `source`) for anything else."""
    if not isinstance(d, dict):
        raise ModelError(
            f"{source}: the config must be a JSON object of FDNConfig fields, "
            f"found {type(d).__name__}; restore the file or retrain"
        )
    names = {f.name for f in fields(FDNConfig)}
    d = {**{k: v for k, v in LEGACY_VALUES.items() if k not in d}, **d}
    missing = names - d.keys()
    if missing:
        raise ModelError(
            f"{source}: config lacks {sorted(missing)}; the model directory was "
            "written by another version; retrain or use a matching fdn-index"
        )
    try:
        return FDNConfig(**{k: d[k] for k in names})
    except (TypeError, ValueError) as e:
        raise ModelError(f"{source}: invalid config ({e})") from e


def save_checkpoint(model_dir: str | Path, state: dict[str, Any]) -> None:
    """Write config.json, weights.pt and checkpoint.pt into model_dir (created if needed).

    state: the checkpoint dict; it must hold "model" (a state_dict), "config" (asdict of the
    config) and "preset".
    """
    model_dir = make_dir(model_dir)
    for key in ("model", "config", "preset"):
        if key not in state:
            raise ValueError(f"save_checkpoint: state lacks {key!r}")
    cfg = {**state["config"], "preset": state["preset"], "fdn_version": __version__}
    atomic_write_text(model_dir / CONFIG_FILE, json.dumps(cfg, indent=2) + "\n")
    atomic_write(model_dir / WEIGHTS_FILE, _torch_bytes(state["model"]))
    atomic_write(model_dir / CHECKPOINT_FILE, _torch_bytes(state))


def read_config(model_dir: str | Path) -> FDNConfig:
    """The FDNConfig in model_dir/config.json. Raises ModelError."""
    return config_from_dict(read_config_json(model_dir), str(Path(model_dir) / CONFIG_FILE))


def read_config_json(model_dir: str | Path) -> Any:
    """model_dir/config.json as written (the config's fields, "preset", "fdn_version").
    Raises ModelError."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ModelError(
            f"{path}: missing; {model_dir} is not a complete model directory "
            "(train it with `fdn-index train`, or resume with --resume)"
        )
    try:
        cfg_dict = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: not valid JSON ({e}); restore or retrain") from e
    return cfg_dict


def load_checkpoint(model_dir: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The full checkpoint dict of model_dir (for --resume). Raises ModelError."""
    path = Path(model_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise ModelError(f"{path}: no checkpoint; train a model with `fdn-index train` first")
    try:
        # weights_only=True: tensors and plain data only, never code (see the module docstring).
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many kinds on a truncated, foreign or hostile file
        raise ModelError(
            f"{path}: cannot read the checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); it is corrupt, not an "
            "fdn-index checkpoint, or holds objects other than tensors and plain "
            "data; retrain or restore it"
        ) from None
    if not isinstance(state, dict):
        raise ModelError(
            f"{path}: expected a checkpoint dict, found {type(state).__name__}; "
            "retrain or restore it"
        )
    for key, kind in CHECKPOINT_KEYS.items():
        if key not in state:
            raise ModelError(
                f"{path}: the checkpoint lacks {key!r}; it was written by another "
                "program or version; retrain or restore it"
            )
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise ModelError(
                f"{path}: checkpoint[{key!r}] should be of type "
                f"{getattr(kind, '__name__', kind)}, found "
                f"{type(state[key]).__name__}; retrain or restore it"
            )
    config_from_dict(state["config"], f"{path} (its config)")
    return state


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> tuple[FDN, FDNConfig]:
    """Model of a model directory, in eval mode on `device`. Raises ModelError."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(
            f"{model_dir}: not a directory; pass a model directory written by "
            "`fdn-index train --out`"
        )
    w_path = model_dir / WEIGHTS_FILE
    config = read_config(model_dir)
    if not w_path.is_file():
        raise ModelError(
            f"{w_path}: missing; {model_dir} is not a complete model directory "
            "(train it with `fdn-index train`, or resume with --resume)"
        )
    model = FDN(config)
    try:
        weights = torch.load(w_path, map_location="cpu", weights_only=True)
        model.load_state_dict(weights)
    except Exception as e:
        raise ModelError(
            f"{w_path}: cannot load the weights ({e}); the file is corrupt or "
            "belongs to another config; retrain or restore it"
        ) from e
    # channels_last, as in training: the same memory format gives bit-identical outputs
    model.to(device)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs lack it
    model.eval()
    return model, config


def model_checksum(model_dir: str | Path) -> str:
    """sha256 hex digest of the model's weights file (weights.pt)."""
    path = Path(model_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise ModelError(f"{path}: missing; not a trained model directory")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
