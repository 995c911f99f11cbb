"""Training of the feature decomposing network, Algorithm 1 of the paper.

One step:
  1. x, y <- a batch, half healthy and half diseased (`HalfHalfSampler`), augmented;
  2. forward: codes, ỹ, x̂^+, x̂^-; L_lat, L_seg, L_rec (the EMA codebooks update here);
  3. m times: one Adam step of the critic g on λ5 · L_critic with sg(z_h^-), sg(z_d^-);
  4. one Adam step of encoder and decoders on λ1 L_lat + λ2 L_seg + λ3 L_rec + λ4 L_reg
     (+ null_code_weight · L_null under the null-code prior, `fdn.model.fdn`).
Without distribution matching, steps 3 and L_reg are skipped.

A run writes into MODEL_DIR (see `fdn.training.checkpoint`): checkpoints at intervals and at the end,
metrics.jsonl (one JSON object per epoch), samples/epoch_XXXX.png (x, x̂^+, x̂^-, y, ŷ as in
the paper's Fig. 5). `resume=True` reloads everything, RNG states included, and continues
with the very batch where the previous run stopped.
"""

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from crashsafe import atomic_write, check_write_target
from fdn.device import resolve_device
from fdn.errors import ModelError
from fdn.figures import save_figure
from fdn.model import FDN, Critic, FDNConfig
from fdn.training.checkpoint import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    config_from_dict,
    load_checkpoint,
    load_model,
    make_dir,
    read_config,
    save_checkpoint,
)
from fdn.training.data import HalfHalfSampler, SliceSet, augment, load_slices
from fdn.training.losses import (
    critic_loss,
    lesion_mask_from_target,
    reconstruction_loss,
    regularization_loss,
    segmentation_loss,
)

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
COMMAND_FILE = "TRAIN_COMMAND.txt"
SAMPLES_DIR = "samples"
N_SAMPLES = 4


@dataclass
class TrainResult:
    model_dir: Path
    steps: int  # optimizer steps done in total (over all resumed runs)
    epochs_done: int
    stopped: str  # "epochs", "time budget" or "max steps"
    last_metrics: dict[str, Any]
    elapsed_s: float  # wall time of training over all resumed runs


def _whole_lesion_dice(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Hard Dice of the whole lesion (any class > 0) over a batch; NaN without lesion."""
    pred = logits.argmax(1) > 0
    ref = target > 0
    denom = pred.sum() + ref.sum()
    return float(2 * (pred & ref).sum() / denom) if denom > 0 else float("nan")


class Trainer:
    """State of one training run: model, critic, optimizers, sampler, RNGs, counters."""

    def __init__(
        self,
        config: FDNConfig,
        slices: SliceSet,
        preset: str | None,
        seed: int,
        device: torch.device,
    ):
        self.config, self.slices, self.preset, self.seed = config, slices, preset, seed
        self.device = device
        torch.manual_seed(seed)
        self.model = FDN(config).to(device)
        self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs lack it
        self.critic = Critic(config.code_dim, config.latent_size).to(device)
        self.opt_model = torch.optim.Adam(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.opt_critic = torch.optim.Adam(
            self.critic.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.sampler = HalfHalfSampler(slices.diseased, config.batch_size, seed)
        self.rng = torch.Generator().manual_seed(seed + 1)  # augmentation and ε of the GP
        self.step = 0  # optimizer steps done
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0
        self.elapsed_s = 0.0
        self.autocast = device.type == "cuda"

    # --- one step of Algorithm 1 -------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        cfg = self.config
        self.model.train()
        idx = self.sampler.batch_indices(self.epoch, self.step_in_epoch)
        x, y = self.slices.batch(idx)
        x, y = augment(x, y, cfg.rotation_degrees, self.rng)
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        y = y.to(self.device)
        n_h = cfg.batch_size // 2  # rows [0, n_h) healthy, [n_h, B) diseased
        lesion_mask = lesion_mask_from_target(y)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.model(x, lesion_mask)
            l_seg = segmentation_loss(out.seg_logits, y, cfg.focal_gamma)
            rec_minus, rec_plus = reconstruction_loss(
                x, out.x_hat_plus, out.x_hat_minus, lesion_mask, cfg.ssim_data_range
            )
        l_rec = rec_minus + rec_plus
        metrics = {
            "lat": out.lat_loss.item(),
            "seg": l_seg.item(),
            "rec": l_rec.item(),
            "rec_minus": rec_minus.item(),
            "rec_plus": rec_plus.item(),
            "dice_lesion": _whole_lesion_dice(out.seg_logits.detach(), y),
        }
        total = cfg.lambda_lat * out.lat_loss + cfg.lambda_seg * l_seg + cfg.lambda_rec * l_rec
        if cfg.null_code_weight > 0:
            total = total + cfg.null_code_weight * out.null_loss
            metrics["null"] = out.null_loss.item()
        if cfg.distribution_matching:
            z = out.z_q_normal.float()
            n = min(n_h, z.shape[0] - n_h)
            z_h, z_d = z[:n], z[n_h : n_h + n]
            self.critic.requires_grad_(True)
            for _ in range(cfg.critic_steps):
                self.opt_critic.zero_grad(set_to_none=True)
                l_critic, d_w, gp = critic_loss(
                    self.critic, z_h.detach(), z_d.detach(), cfg.lambda_gp, self.rng
                )
                (cfg.lambda_critic * l_critic).backward()
                self.opt_critic.step()
            self.critic.requires_grad_(False)  # L_reg trains the encoder, not g
            l_reg = regularization_loss(self.critic, z_d)
            total = total + cfg.lambda_reg * l_reg
            metrics.update(critic=l_critic.item(), d_w=d_w.item(), gp=gp.item(), reg=l_reg.item())
        self.opt_model.zero_grad(set_to_none=True)
        total.backward()
        self.opt_model.step()
        metrics["loss"] = total.item()
        metrics["codes_used_normal"] = int(out.codes_normal.unique().numel())
        metrics["codes_used_abnormal"] = int(out.codes_abnormal.unique().numel())
        self.step += 1
        self.step_in_epoch += 1
        return metrics

    # --- checkpoints -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "critic": self.critic.state_dict(),
            "optimizer_model": self.opt_model.state_dict(),
            "optimizer_critic": self.opt_critic.state_dict(),
            "config": asdict(self.config),
            "preset": self.preset,
            "seed": self.seed,
            "step": self.step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "elapsed_s": self.elapsed_s,
            "rng": {
                "torch": torch.get_rng_state(),
                "augment": self.rng.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.critic.load_state_dict(state["critic"])
        self.opt_model.load_state_dict(state["optimizer_model"])
        self.opt_critic.load_state_dict(state["optimizer_critic"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.step_in_epoch, self.elapsed_s = state["step_in_epoch"], state["elapsed_s"]
        torch.set_rng_state(state["rng"]["torch"].cpu())
        self.rng.set_state(state["rng"]["augment"].cpu())
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])


def sample_indices(slices: SliceSet, n: int = N_SAMPLES) -> torch.Tensor:
    """Fixed slices for the sample figures: the largest-lesion slice of up to n cases."""
    area = (slices.targets > 0).flatten(1).sum(1)
    order = torch.argsort(area, descending=True, stable=True).tolist()
    picked, seen = [], set()
    for i in order:
        if slices.cases[i] not in seen:
            seen.add(slices.cases[i])
            picked.append(i)
        if len(picked) == n:
            break
    return torch.tensor(picked)


def save_samples(model: FDN, slices: SliceSet, path: Path, device: torch.device) -> None:
    """PNG like the paper's Fig. 5: rows x, x̂^+, x̂^-, y, ŷ (FLAIR shown), one column each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = sample_indices(slices)
    x, y = slices.batch(idx)
    model.eval()
    with torch.no_grad():
        out = model(x.to(device).contiguous(memory_format=torch.channels_last))
    flair = slices.images.shape[1] - 1
    rows = [
        ("x", x[:, flair]),
        ("x̂+", out.x_hat_plus[:, flair].float().cpu()),
        ("x̂-", out.x_hat_minus[:, flair].float().cpu()),
        ("y", y),
        ("ŷ", out.seg_logits.argmax(1).cpu()),
    ]
    n = len(idx)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.6 * len(rows)), squeeze=False)
    lo, hi = float(x[:, flair].min()), float(x[:, flair].max())
    for r, (name, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            if name in ("y", "ŷ"):
                ax.imshow(imgs[c].numpy(), cmap="viridis", vmin=0, vmax=3, interpolation="nearest")
            else:
                ax.imshow(imgs[c].numpy(), cmap="gray", vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name)
    fig.tight_layout()
    try:
        make_dir(path.parent)
        save_figure(fig, path, dpi=80)
    finally:
        plt.close(fig)


def train(
    archive_root: str | Path,
    model_dir: str | Path,
    config: FDNConfig,
    preset: str | None = None,
    **kwargs,
) -> TrainResult:
    """Train on an archive (see `train_on_slices` for the options).

    With resume=True the input size comes from the saved config, whatever `config` says.
    """
    size = config.image_size
    if kwargs.get("resume"):
        size = read_config(model_dir).image_size
    slices = load_slices(archive_root, size, skip_bad=kwargs.pop("skip_bad", False))
    log.info("%d training slices (%d diseased)", len(slices), int(slices.diseased.sum()))
    return train_on_slices(slices, model_dir, config, preset, **kwargs)


def train_on_slices(
    slices: SliceSet,
    model_dir: str | Path,
    config: FDNConfig,
    preset: str | None = None,
    *,
    resume: bool = False,
    seed: int = 0,
    max_minutes: float | None = None,
    max_steps: int | None = None,
    device: str | None = "auto",
    progress: bool = False,
    checkpoint_minutes: float = 10.0,
    samples: bool = True,
    command: str | None = None,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Run Algorithm 1 for config.epochs epochs (or until max_minutes / max_steps).

    resume: continue the checkpoint in model_dir (its config wins, except `epochs`).
    init_from: a model directory whose weights the model starts from (fine-tuning: the
    optimizers, the critic and the step count start fresh); its architecture must be
    `config`'s. Not with ``resume``.
    max_minutes: a wall-time budget for this call; training stops cleanly after the step that
    exceeds it, with a final checkpoint. checkpoint_minutes: interval between checkpoints.
    command: the command line, written with versions to TRAIN_COMMAND.txt.
    """
    model_dir = Path(model_dir)
    dev = torch.device(resolve_device(device))
    if resume:
        state = load_checkpoint(model_dir)
        saved = config_from_dict(state["config"], str(model_dir / CHECKPOINT_FILE))
        config = FDNConfig(**{**asdict(saved), "epochs": config.epochs})
        preset, seed = state["preset"], state["seed"]
    elif (model_dir / CHECKPOINT_FILE).exists():
        raise ModelError(
            f"{model_dir / CHECKPOINT_FILE} exists; pass --resume to continue it "
            "or choose another --out directory"
        )
    if slices.images.shape[-1] != config.image_size:
        raise ValueError(
            f"slices are {slices.images.shape[-1]}² but the model expects {config.image_size}²"
        )
    if resume and init_from is not None:
        raise ValueError("init_from starts a new run; it cannot be combined with resume")
    trainer = Trainer(config, slices, preset, seed, dev)
    if init_from is not None:
        start_from_weights(trainer.model, init_from)
    if resume:
        try:
            trainer.load_state(state)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise ModelError(
                f"{model_dir / CHECKPOINT_FILE}: the checkpoint does not fit this "
                f"model and trainer ({type(e).__name__}: {e}); it is corrupt or "
                "from another version; retrain or restore it"
            ) from None
        del state
    make_dir(model_dir)
    for name in (CONFIG_FILE, WEIGHTS_FILE, CHECKPOINT_FILE, METRICS_FILE, COMMAND_FILE):
        check_write_target(model_dir / name)  # fail now, not after hours of training
    if command is not None:
        _write_command(model_dir, command, resume)

    start = time.monotonic()
    elapsed_before = trainer.elapsed_s
    last_ckpt = start
    metrics_path = model_dir / METRICS_FILE
    total_steps = config.epochs * trainer.sampler.steps_per_epoch
    stopped = "epochs"
    last: dict[str, Any] = {}
    bar = tqdm(
        total=total_steps,
        initial=trainer.step,
        disable=not progress,
        unit="step",
        desc="train",
        dynamic_ncols=True,
    )
    epoch_acc: dict[str, list[float]] = {}

    def checkpoint() -> None:
        trainer.elapsed_s = elapsed_before + (time.monotonic() - start)
        save_checkpoint(model_dir, trainer.state())

    def end_epoch(partial: bool) -> None:
        nonlocal last
        record = {
            k: float(np.nanmean(v)) if not all(np.isnan(v)) else None for k, v in epoch_acc.items()
        }
        record.update(
            epoch=trainer.epoch + (0 if partial else 1),
            step=trainer.step,
            partial=partial,
            time_s=round(elapsed_before + time.monotonic() - start, 2),
        )
        _append_line(metrics_path, json.dumps(record))
        last = record
        epoch_acc.clear()

    try:
        while trainer.epoch < config.epochs:
            m = trainer.train_step()
            for k, v in m.items():
                epoch_acc.setdefault(k, []).append(v)
            bar.update(1)
            bar.set_postfix(
                rec=f"{m['rec']:.3f}",
                seg=f"{m['seg']:.3f}",
                lat=f"{m['lat']:.3f}",
                dice=f"{m['dice_lesion']:.2f}",
                refresh=False,
            )
            if trainer.step_in_epoch >= trainer.sampler.steps_per_epoch:
                end_epoch(partial=False)
                trainer.epoch += 1
                trainer.step_in_epoch = 0
                if samples:
                    save_samples(
                        trainer.model,
                        slices,
                        model_dir / SAMPLES_DIR / f"epoch_{trainer.epoch:04d}.png",
                        dev,
                    )
            now = time.monotonic()
            if max_minutes is not None and now - start >= max_minutes * 60:
                stopped = "time budget"
                break
            if max_steps is not None and trainer.step >= max_steps:
                stopped = "max steps"
                break
            if now - last_ckpt >= checkpoint_minutes * 60:
                checkpoint()
                last_ckpt = time.monotonic()
    finally:
        bar.close()
    if epoch_acc:
        end_epoch(partial=True)
    if samples:
        save_samples(trainer.model, slices, model_dir / SAMPLES_DIR / "latest.png", dev)
    checkpoint()
    return TrainResult(model_dir, trainer.step, trainer.epoch, stopped, last, trainer.elapsed_s)


def start_from_weights(model: FDN, source_dir: str | Path) -> None:
    """Load the weights of the model in ``source_dir`` into ``model``; ModelError when the two
    architectures differ (the fields that shape the network)."""
    source, source_config = load_model(source_dir, device="cpu")
    try:
        model.load_state_dict(source.state_dict())
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:2] or [str(exc)]
        raise ModelError(
            f"{source_dir}: its weights do not fit the model being trained (the architecture "
            f"differs: {first[0].strip()}); start from a model of the same preset and --set "
            "fields that shape the network"
        ) from None


def _write_command(model_dir: Path, command: str, resume: bool) -> None:
    import platform

    from fdn import __version__

    text = (
        f"{command}\n# fdn-index {__version__}, torch {torch.__version__}, "
        f"numpy {np.__version__}, python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n"
    )
    path = model_dir / COMMAND_FILE
    if resume:
        _append_line(path, text.rstrip("\n"))
    else:
        atomic_write(path, text.encode())


def _append_line(path: Path, line: str) -> None:
    """Append one line to a small text file, crash-safe: the old content plus the line is
    written whole (`atomic_write`), so a kill never leaves half a line."""
    old = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    atomic_write(path, old + line.encode() + b"\n")
