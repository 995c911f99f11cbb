"""Leakiness as the paper measures it (4.4.3, Appendix D), scaled down for a CPU.

A small convolutional classifier learns, on the normal-appearing reconstructions x̂^- of the
TRAINING archive's slices, whether each slice came from a diseased image (its label has a lesion
voxel) or a healthy one; its positive predictive value on the TEST archive's x̂^- is the
leakiness: a perfect decomposition leaves nothing to tell the two apart, so the PPV falls to
the share of diseased slices (the prevalence), which is reported beside it.

Appendix D's network (13 convolutions, 32…512 filters, 256² input, 100 epochs) becomes four
3×3 convolution stages of 16-32-64-64 filters with max-pooling, then 2 linear layers; Adam with
the paper's weight decay. The classes are balanced with BCE's ``pos_weight`` (= healthy /
diseased slices in training), so a classifier that has learnt nothing predicts "diseased" at
the rate it would for any slice and its PPV equals the prevalence. Only slices with brain
are used.

The same classifier trained on other inputs calibrates the number: on the input images x (the
lesion fully visible) and on the synthetic pseudo-healthy truth (what a perfect x̂^- would be;
mass effect still moves the anatomy, so even it is not at chance).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)


class LeakinessClassifier(nn.Module):
    """x: (B, C, S, S) -> logit (B,) of "diseased origin". S must be a multiple of 16."""

    def __init__(
        self, in_channels: int = 4, size: int = 64, widths=(16, 32, 64, 64), hidden: int = 64
    ):
        super().__init__()
        if size % 2 ** len(widths):
            raise ValueError(f"size {size} must be a multiple of {2 ** len(widths)}")
        layers, c = [], in_channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        side = size // 2 ** len(widths)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)


@dataclass
class ClassifierResult:
    """Test-set figures of one classifier (all slices with brain of the test archive)."""

    ppv: float | None  # TP / (TP + FP); None when nothing is predicted diseased
    ppv_se: float | None  # binomial standard error of the PPV: sqrt(PPV (1 − PPV) / (TP + FP))
    predicted_diseased: int  # TP + FP
    prevalence: float  # diseased share of the test slices: the PPV of a blind classifier
    sensitivity: float | None
    specificity: float | None
    auc: float | None
    accuracy: float
    n_train: int
    n_test: int
    steps: int
    train_seconds: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve by the rank-sum formula (ties share ranks); None if one class."""
    from scipy.stats import rankdata

    labels = np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_figures(pred: np.ndarray, labels: np.ndarray) -> dict:
    """PPV, sensitivity, specificity and accuracy of boolean predictions (None when 0/0)."""
    pred, labels = np.asarray(pred, bool), np.asarray(labels, bool)
    tp = int((pred & labels).sum())
    fp = int((pred & ~labels).sum())
    fn = int((~pred & labels).sum())
    tn = int((~pred & ~labels).sum())

    def ratio(a, b):
        return a / b if b else None

    return {
        "ppv": ratio(tp, tp + fp),
        "predicted_diseased": tp + fp,
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "accuracy": (tp + tn) / max(1, pred.size),
    }


def train_and_test(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    epochs: int = 8,
    max_seconds: float = 90.0,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    seed: int = 0,
) -> ClassifierResult:
    """Train a `LeakinessClassifier` on (train_x (N, C, S, S), train_y (N,) bool) and test it.

    Training stops after ``epochs`` or once ``max_seconds`` have passed, whichever is first.
    Raises ValueError when a training class is empty.
    """
    train_y = np.asarray(train_y, bool)
    test_y = np.asarray(test_y, bool)
    n_pos, n_neg = int(train_y.sum()), int((~train_y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"the classifier needs healthy and diseased training slices; got "
            f"{n_neg} healthy and {n_pos} diseased"
        )
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = LeakinessClassifier(train_x.shape[1], train_x.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    x = torch.from_numpy(np.ascontiguousarray(train_x, np.float32))
    y = torch.from_numpy(train_y.astype(np.float32))
    pos_weight = torch.tensor(n_neg / n_pos)
    start = time.monotonic()
    steps = 0
    model.train()
    for _epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), batch_size):
            idx = perm[s : s + batch_size]
            loss = F.binary_cross_entropy_with_logits(model(x[idx]), y[idx], pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        if time.monotonic() - start > max_seconds:
            break
    seconds = time.monotonic() - start
    model.eval()
    with torch.no_grad():
        logits = torch.cat(
            [
                model(torch.from_numpy(np.ascontiguousarray(test_x[s : s + 256], np.float32)))
                for s in range(0, len(test_x), 256)
            ]
        ).numpy()
    figures = binary_figures(logits > 0, test_y)
    log.info(
        "classifier: %d steps in %.1f s, PPV %s, prevalence %.3f",
        steps,
        seconds,
        figures["ppv"],
        test_y.mean(),
    )
    ppv, n_pred = figures["ppv"], figures["predicted_diseased"]
    return ClassifierResult(
        ppv=ppv,
        ppv_se=None if ppv is None else math.sqrt(ppv * (1 - ppv) / n_pred),
        predicted_diseased=n_pred,
        prevalence=float(test_y.mean()),
        sensitivity=figures["sensitivity"],
        specificity=figures["specificity"],
        auc=roc_auc(logits, test_y),
        accuracy=figures["accuracy"],
        n_train=len(train_x),
        n_test=len(test_x),
        steps=steps,
        train_seconds=round(seconds, 2),
    )


def normal_reconstructions(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """x̂^- of every slice: images (N, C, S, S) float32 -> (N, C, S, S) float32 (model on CPU)."""
    out = np.empty(images.shape, np.float32)
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[s : s + batch_size], np.float32))
            codes_normal, _ = model.encode(x.contiguous(memory_format=torch.channels_last))
            out[s : s + len(x)] = model.decode_normal(codes_normal).float().numpy()
    return out
