"""Model directories: save and load FDN checkpoints.

MODEL_DIR layout:
  config.json      asdict(FDNConfig) plus "preset" and "fdn_version"
  checkpoint.pt    one dict: model, critic, optimizer_model, optimizer_critic, config, preset,
                   step, epoch, step_in_epoch, elapsed_s, rng states (everything --resume needs)
  weights.pt       the model's state_dict alone; `model_checksum` hashes this file, so the
                   index can refuse codes of another model
  metrics.jsonl, samples/*.png, TRAIN_COMMAND.txt  (written by training)
Every file is written to a temporary name and moved into place with os.replace, so an
interrupted write never leaves a half-written checkpoint.
"""

import hashlib
import io
import json
import os
import tempfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from fdn import __version__
from fdn.errors import ModelError
from fdn.model import FDN, FDNConfig

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
WEIGHTS_FILE = "weights.pt"


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _torch_bytes(obj: Any) -> bytes:
    """torch.save into memory: the bytes do not depend on the (temporary) file name."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def config_to_dict(config: FDNConfig, preset: str | None) -> dict[str, Any]:
    return {**asdict(config), "preset": preset, "fdn_version": __version__}


def config_from_dict(d: dict[str, Any], source: str) -> FDNConfig:
    names = {f.name for f in fields(FDNConfig)}
    missing = names - d.keys()
    if missing:
        raise ModelError(f"{source}: config lacks {sorted(missing)}; the model directory was "
                         "written by another version; retrain or use a matching fdn-index")
    try:
        return FDNConfig(**{k: d[k] for k in names})
    except (TypeError, ValueError) as e:
        raise ModelError(f"{source}: invalid config ({e})") from e


def save_checkpoint(model_dir: str | Path, state: dict[str, Any]) -> None:
    """Write config.json, weights.pt and checkpoint.pt into model_dir (created if needed).

    state: the checkpoint dict; it must hold "model" (a state_dict), "config" (asdict of the
    config) and "preset".
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    for key in ("model", "config", "preset"):
        if key not in state:
            raise ValueError(f"save_checkpoint: state lacks {key!r}")
    cfg = {**state["config"], "preset": state["preset"], "fdn_version": __version__}
    _atomic_write(model_dir / CONFIG_FILE,
                  lambda p: Path(p).write_text(json.dumps(cfg, indent=2) + "\n"))
    weights = _torch_bytes(state["model"])
    _atomic_write(model_dir / WEIGHTS_FILE, lambda p: Path(p).write_bytes(weights))
    everything = _torch_bytes(state)
    _atomic_write(model_dir / CHECKPOINT_FILE, lambda p: Path(p).write_bytes(everything))


def load_checkpoint(model_dir: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The full checkpoint dict of model_dir (for --resume). Raises ModelError."""
    path = Path(model_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise ModelError(f"{path}: no checkpoint; train a model with `fdn-index train` first")
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # torch raises many kinds on a truncated or foreign file
        raise ModelError(f"{path}: cannot read the checkpoint ({e}); it is corrupt or not "
                         "an fdn-index checkpoint; retrain or restore it") from e


def load_model(model_dir: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[FDN, FDNConfig]:
    """Model of a model directory, in eval mode on `device`. Raises ModelError."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: not a directory; pass a model directory written by "
                         "`fdn-index train --out`")
    cfg_path, w_path = model_dir / CONFIG_FILE, model_dir / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise ModelError(f"{p}: missing; {model_dir} is not a complete model directory "
                             "(train it with `fdn-index train`, or resume with --resume)")
    try:
        cfg_dict = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{cfg_path}: not valid JSON ({e}); restore or retrain") from e
    config = config_from_dict(cfg_dict, str(cfg_path))
    model = FDN(config)
    try:
        weights = torch.load(w_path, map_location="cpu", weights_only=True)
        model.load_state_dict(weights)
    except Exception as e:
        raise ModelError(f"{w_path}: cannot load the weights ({e}); the file is corrupt or "
                         "belongs to another config; retrain or restore it") from e
    # channels_last, as in training: the same memory format gives bit-identical outputs
    model.to(device).to(memory_format=torch.channels_last).eval()
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
