"""The quality benchmark's model figures: frozen snapshots of the models under test, and the
per-model measurements (reconstruction, leakiness) that need the models themselves."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from benchmarks.quality.config import QualityConfig
from benchmarks.quality.inputs import TestSlices

log = logging.getLogger(__name__)


def _archive_slices(root: Path, size: int, max_slices: int, seed: int):
    """Slices with brain of an archive: images, pseudo-healthy (or None), diseased (N,) bool."""
    from fdn.data import Archive

    images, pseudo, diseased = [], [], []
    has_pseudo = True
    for vol in Archive(root).iter_volumes(size):
        keep = vol.brain.reshape(vol.brain.shape[0], -1).any(1)
        images.append(vol.image[keep])
        if vol.pseudohealthy is None:
            has_pseudo = False
        else:
            pseudo.append(vol.pseudohealthy[keep])
        lesion = (
            (vol.seg[keep] > 0)
            if vol.seg is not None
            else np.zeros((int(keep.sum()), size, size), bool)
        )
        diseased.append(lesion.reshape(lesion.shape[0], -1).any(1))
    images, diseased = np.concatenate(images), np.concatenate(diseased)
    pseudo = np.concatenate(pseudo) if has_pseudo else None
    if len(images) > max_slices:
        pick = np.sort(np.random.default_rng(seed).choice(len(images), max_slices, replace=False))
        images, diseased = images[pick], diseased[pick]
        pseudo = pseudo[pick] if pseudo is not None else None
    return images, pseudo, diseased


def decoded_lesion_maps(
    model_dir: Path, codes_abnormal: np.ndarray, batch: int = 256
) -> np.ndarray:
    """The model's segmentation ŷ of every row, decoded from its abnormal code grids (N, h, w):
    (N, S, S) int64 classes 0..3, argmax of the segmentation decoder."""
    import torch

    from fdn.training.checkpoint import load_model

    model, _ = load_model(model_dir, device="cpu")
    model.eval()
    maps = []
    with torch.no_grad():
        for start in range(0, codes_abnormal.shape[0], batch):
            codes = np.asarray(codes_abnormal[start : start + batch], dtype=np.int64)
            maps.append(model.segment_codes(torch.from_numpy(codes)).argmax(1).numpy())
    return np.concatenate(maps).astype(np.int64)


def snapshot_model(model_dir: str | Path, work: Path) -> tuple[Path, int | None]:
    """Copy a model's config and weights into ``work/models/<checksum>``; return it and its step.

    A model directory may still be training (checkpoints replace weights.pt), so every part of
    one run reads this frozen copy: the index, the evaluation and the classifiers all see the
    same weights. The step is read from checkpoint.pt when its weights are the copied ones.
    """
    import shutil

    import torch

    from fdn.training.checkpoint import CHECKPOINT_FILE, CONFIG_FILE, WEIGHTS_FILE, model_checksum

    model_dir = Path(model_dir)
    for _ in range(3):  # a checkpoint written between the two reads: read again
        before = model_checksum(model_dir)
        staging = work / "models" / f".copy-{before[:12]}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            shutil.copy2(model_dir / name, staging / name)
        if model_checksum(staging) == before == model_checksum(model_dir):
            break
    else:
        raise ValueError(
            f"{model_dir}: weights.pt keeps changing while being copied; wait "
            "for the training to write its checkpoint and run again"
        )
    target = work / "models" / before[:12]
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    step = None
    try:
        state = torch.load(model_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
        weights = torch.load(target / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        if all(torch.equal(weights[k], state["model"][k]) for k in weights):
            step = int(state["step"])
    except Exception:  # noqa: BLE001 - the step is informative only; any unreadable file -> None
        log.warning("%s: no training step recorded for these weights", model_dir)
    return target, step


def model_figures(
    cfg: QualityConfig,
    models: dict[str, tuple[str, Path]],
    test_archive: Path,
    test: TestSlices,
    out: Path,
    progress=None,
) -> dict:
    """fdn.training.evaluate's figures and the classifier leakiness, per model (DM and, if given, no DM).

    models: {"dm" | "no_dm": (model directory snapshot, its training archive, source
    directory, training step)}.
    """
    from benchmarks.quality.leakiness import normal_reconstructions, train_and_test
    from fdn.training.checkpoint import load_model
    from fdn.training.evaluate import evaluate_model

    result: dict = {"models": {}, "classifier": {}}
    train_cache: dict[str, tuple] = {}
    test_x, test_y = test.images, test.diseased

    def classify(train_x, train_y, test_x, test_y) -> dict:
        """Mean figures over cfg.classifier_seeds classifiers, the PPV's std over seeds."""
        runs = [
            train_and_test(
                train_x,
                train_y,
                test_x,
                test_y,
                epochs=cfg.classifier_epochs,
                max_seconds=cfg.classifier_seconds,
                seed=cfg.seed + k,
            ).as_dict()
            for k in range(cfg.classifier_seeds)
        ]
        out = {}
        for key in runs[0]:
            values = [r[key] for r in runs if r[key] is not None]
            if not values:
                out[key] = None
            elif all(v == values[0] for v in values):
                out[key] = values[0]
            else:
                out[key] = float(np.mean(values))
        ppvs = [r["ppv"] for r in runs if r["ppv"] is not None]
        out["ppv_seed_std"] = float(np.std(ppvs)) if ppvs else None
        out["seeds"] = runs
        return out

    for name, (model_dir, train_archive, source, step) in models.items():
        model, config = load_model(model_dir, device="cpu")
        hist = out / f"codebook_norms_{name}.png"
        ev = evaluate_model(model, config, test_archive, device="cpu", histogram_path=hist)
        ev["histogram"] = hist.name
        ev["model_dir"] = str(source)
        ev["model_snapshot"] = str(model_dir)
        ev["distribution_matching"] = bool(config.distribution_matching)
        ev["train_archive"] = str(train_archive)
        ev["train_steps"] = step
        result["models"][name] = ev
        key = str(train_archive.resolve())
        if key not in train_cache:
            train_cache[key] = _archive_slices(
                train_archive, config.image_size, cfg.classifier_max_slices, cfg.seed
            )
            tx, tp, ty = train_cache[key]
            if "x" not in result["classifier"]:
                result["classifier"]["x"] = classify(tx, ty, test_x, test_y)
                if progress is not None:
                    progress.update(1)
                if tp is not None and test.pseudo is not None:
                    result["classifier"]["pseudohealthy"] = classify(tp, ty, test.pseudo, test_y)
                if progress is not None:
                    progress.update(1)
        tx, _, ty = train_cache[key]
        result["classifier"][f"xhat_minus_{name}"] = classify(
            normal_reconstructions(model, tx), ty, normal_reconstructions(model, test_x), test_y
        )
        if progress is not None:
            progress.update(1)
    return result
