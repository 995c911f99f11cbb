"""Evaluation of a trained FDN on an archive (Section 4.4 of the paper).

- Reconstruction errors (4.4.1): Σ|x - x̂^+| and Σ|M^- ⊙ x - M^- ⊙ x̂^-| summed over the
  pixels and channels of a slice; reported as the mean per slice and per pixel. Slices
  without brain are skipped (the model is not trained on them).
- Segmentation (4.4.2): the slices' predictions are stacked into a volume; Dice per volume
  for NET, ED and ET (our classes 1, 2, 3); a volume counts for a class only if its label
  has that class (Dice is undefined otherwise). Slices without brain are predicted background.
- Compactness (4.4.4): share of code vectors with an L2 norm below 1e-5, per codebook, and
  a histogram of the norms (PNG).
- Direct leakiness (synthetic archives with `_pseudohealthy`): mean absolute error of x̂^-
  against the lesion-free truth, inside the lesion and in the rest of the brain, next to
  the same error of the input x (how far the lesion is from healthy to begin with).
"""

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from crashsafe import check_write_target
from fdn.device import resolve_device
from fdn.figures import save_figure
from fdn.model import FDN, FDNConfig
from hashindex.binarize import ZERO_NORM

log = logging.getLogger(__name__)

CLASS_NAMES = {1: "NET", 2: "ED", 3: "ET"}


def codebook_compactness(
    codebook: torch.Tensor | np.ndarray, threshold: float = ZERO_NORM
) -> tuple[float, np.ndarray]:
    """(share of rows with L2 norm < threshold, the norms (K,)). codebook: (K, D)."""
    norms = np.linalg.norm(np.asarray(codebook, dtype=np.float64), axis=1)
    return float(np.mean(norms < threshold)), norms


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """2|P ∩ R| / (|P| + |R|) of two boolean arrays; NaN when both are empty."""
    denom = int(pred.sum()) + int(ref.sum())
    return float(2 * np.logical_and(pred, ref).sum() / denom) if denom else float("nan")


def _predict_volume(model: FDN, image: np.ndarray, dev: torch.device, batch_size: int):
    """image: (Z, C, S, S) -> x̂^+, x̂^- (Z, C, S, S) float32 and ŷ (Z, S, S) int64."""
    plus, minus, seg = [], [], []
    with torch.no_grad():
        for s in range(0, image.shape[0], batch_size):
            x = torch.from_numpy(np.ascontiguousarray(image[s : s + batch_size], np.float32))
            out = model(x.to(dev).contiguous(memory_format=torch.channels_last))
            plus.append(out.x_hat_plus.float().cpu().numpy())
            minus.append(out.x_hat_minus.float().cpu().numpy())
            seg.append(out.seg_logits.argmax(1).cpu().numpy())
    return np.concatenate(plus), np.concatenate(minus), np.concatenate(seg)


def evaluate_model(
    model: FDN,
    config: FDNConfig,
    archive_root: str | Path,
    *,
    skip_bad: bool = False,
    device: str | None = "auto",
    batch_size: int = 32,
    histogram_path: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate `model` on every case of an archive; returns a JSON-ready dict.

    A `histogram_path` that cannot be written raises WriteTargetError before any case is read.
    """
    from fdn.data import Archive, seg_to_classes

    if histogram_path is not None:
        check_write_target(histogram_path)
    dev = torch.device(resolve_device(device))
    model = model.to(dev).eval()
    archive = Archive(archive_root)
    rec_plus, rec_minus, n_pixels = [], [], None
    dices: dict[str, list[float]] = {name: [] for name in CLASS_NAMES.values()}
    leak: dict[str, Any] = {
        "xhat_minus_in_lesion": [],
        "xhat_minus_outside": [],
        "x_in_lesion": [],
        "n_lesion_px": 0,
        "n_outside_px": 0,
    }
    used_n: set[int] = set()
    used_a: set[int] = set()
    n_cases = n_slices = 0
    volumes = archive.iter_volumes(config.image_size, skip_bad=skip_bad)
    for vol in tqdm(
        volumes, total=len(archive.case_ids), disable=not progress, desc="evaluate", unit="case"
    ):
        n_cases += 1
        keep = np.flatnonzero(vol.brain.reshape(vol.brain.shape[0], -1).any(1))
        if keep.size == 0:
            continue
        x = vol.image[keep]
        x_plus, x_minus, y_hat = _predict_volume(model, x, dev, batch_size)
        codes_n, codes_a = model.encode(torch.from_numpy(np.ascontiguousarray(x)).to(dev))
        used_n.update(codes_n.unique().tolist())
        used_a.update(codes_a.unique().tolist())
        n_slices += keep.size
        n_pixels = x[0].size
        classes = (
            seg_to_classes(vol.seg) if vol.seg is not None else np.zeros(vol.brain.shape, np.int64)
        )
        lesion = (classes[keep] > 0)[:, None]  # M^+: (Z', 1, S, S)
        rec_plus.extend(np.abs(x - x_plus).reshape(keep.size, -1).sum(1, dtype=np.float64))
        rec_minus.extend(
            (np.abs(x - x_minus) * ~lesion).reshape(keep.size, -1).sum(1, dtype=np.float64)
        )
        if vol.seg is not None:
            pred = np.zeros(vol.brain.shape, np.int64)
            pred[keep] = y_hat
            for c, name in CLASS_NAMES.items():
                if (classes == c).any():
                    dices[name].append(dice(pred == c, classes == c))
        if vol.pseudohealthy is not None:
            truth = vol.pseudohealthy[keep]
            brain = vol.brain[keep][:, None]
            inside = np.broadcast_to(lesion, x.shape)
            outside = np.broadcast_to(brain & ~lesion, x.shape)
            err = np.abs(x_minus - truth)
            leak["xhat_minus_in_lesion"].append(float(err[inside].sum()))
            leak["xhat_minus_outside"].append(float(err[outside].sum()))
            leak["x_in_lesion"].append(float(np.abs(x - truth)[inside].sum()))
            leak["n_lesion_px"] += int(inside.sum())
            leak["n_outside_px"] += int(outside.sum())

    if n_slices == 0:
        from fdn.errors import ArchiveError

        raise ArchiveError(f"{archive_root}: no slice with brain to evaluate on")
    compact_n, norms_n = codebook_compactness(model.quantizer_normal.codebook.cpu())
    compact_a, norms_a = codebook_compactness(model.quantizer_abnormal.codebook.cpu())
    result: dict[str, Any] = {
        "archive": str(archive_root),
        "cases": n_cases,
        "slices": n_slices,
        "reconstruction": {
            "l1_plus_per_slice": float(np.mean(rec_plus)),
            "l1_minus_per_slice": float(np.mean(rec_minus)),
            "l1_plus_per_pixel": float(np.mean(rec_plus) / n_pixels),
            "l1_minus_per_pixel": float(np.mean(rec_minus) / n_pixels),
            "l1_plus_total": float(np.sum(rec_plus)),
            "l1_minus_total": float(np.sum(rec_minus)),
        },
        "dice": {
            name: {
                "mean": float(np.mean(v)) if v else None,
                "std": float(np.std(v)) if v else None,
                "volumes": len(v),
            }
            for name, v in dices.items()
        },
        "compactness": {
            "normal": compact_n,
            "abnormal": compact_a,
            "threshold": ZERO_NORM,
            "codebook_size": config.codebook_size,
        },
        "codes_used": {"normal": len(used_n), "abnormal": len(used_a)},
        "leakiness": None,
    }
    if leak["n_lesion_px"] > 0:
        result["leakiness"] = {
            "mae_xhat_minus_vs_pseudohealthy_in_lesion": sum(leak["xhat_minus_in_lesion"])
            / leak["n_lesion_px"],
            "mae_xhat_minus_vs_pseudohealthy_outside": sum(leak["xhat_minus_outside"])
            / max(1, leak["n_outside_px"]),
            "mae_x_vs_pseudohealthy_in_lesion": sum(leak["x_in_lesion"]) / leak["n_lesion_px"],
            "lesion_pixels": leak["n_lesion_px"],
        }
    if histogram_path is not None:
        save_norm_histogram(norms_n, norms_a, Path(histogram_path))
        result["histogram"] = str(histogram_path)
    return result


def save_norm_histogram(norms_normal: np.ndarray, norms_abnormal: np.ndarray, path: Path) -> None:
    """Histogram of code vector norms of both codebooks (cf. the paper's Fig. E.1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, norms, name in (
        (axes[0], norms_normal, "normal e⁻"),
        (axes[1], norms_abnormal, "abnormal e⁺"),
    ):
        ax.hist(norms, bins=50, color="tab:blue")
        share = float(np.mean(norms < ZERO_NORM))
        ax.set_title(f"{name}: {share:.0%} with norm < 1e-5")
        ax.set_xlabel("L2 norm of code vector")
        ax.set_ylabel("codes")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
