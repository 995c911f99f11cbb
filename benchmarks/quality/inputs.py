"""The quality benchmark's inputs: the training archive of each model, a test archive that shares
no case with it, the test index's ground truth row by row, and the query slices."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.quality.baselines import downsample_slices
from benchmarks.quality.config import QualityConfig


def synth_seed(archive: Path) -> int | None:
    try:
        return int(json.loads((Path(archive) / "synth.json").read_text())["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def training_archive_of(model_dir: str | Path) -> Path | None:
    """The ARCHIVE argument of the `fdn-index train` command in MODEL_DIR/TRAIN_COMMAND.txt."""
    path = Path(model_dir) / "TRAIN_COMMAND.txt"
    try:
        first = path.read_text().splitlines()[0]
        parts = shlex.split(first)
    except (OSError, IndexError, ValueError):
        return None
    if len(parts) >= 3 and parts[1] == "train":
        return Path(parts[2])
    return None


def resolve_train_archive(cfg: QualityConfig, model_dir: str) -> Path:
    archive = Path(cfg.train_archive) if cfg.train_archive else training_archive_of(model_dir)
    if archive is None or not archive.is_dir():
        raise ValueError(
            f"{model_dir}: cannot find the archive the model was trained on "
            f"({'TRAIN_COMMAND.txt names ' + str(archive) if archive else 'no TRAIN_COMMAND.txt'}"
            f"); pass --train-archive DIR (the leakiness classifier trains on its slices)"
        )
    return archive


def check_disjoint(test_archive: Path, test_seed: int | None, train_archive: Path) -> None:
    """Refuse a test archive that is, or shares synthetic cases with, a training archive.

    Case i of a synthetic archive depends only on (seed, i), so equal seeds mean shared cases.
    """
    if test_archive.resolve() == train_archive.resolve():
        raise ValueError(
            f"the test archive {test_archive} is the training archive; the "
            "protocol needs an archive the model never saw"
        )
    s_test, s_train = test_seed, synth_seed(train_archive)
    if s_test is not None and s_test == s_train:
        raise ValueError(
            f"{test_archive} and the training archive {train_archive} were synthesised with the "
            f"same seed {s_test}, so they share cases; use another --test-seed"
        )


@dataclass
class TestSlices:
    """Ground truth of the test index, row-aligned with it.

    anat: (N, S, S) uint8 0..6; lesion: (N, S, S) int64 classes 0..3; features: (N, F) float32
    downsampled images; images / pseudo: (M, C, S, S) float32 of the M rows with brain
    (``brain_rows``), for the leakiness classifier; diseased: (M,) bool.
    """

    anat: np.ndarray
    lesion: np.ndarray
    features: np.ndarray
    brain_rows: np.ndarray
    images: np.ndarray
    pseudo: np.ndarray | None
    diseased: np.ndarray


def load_test_slices(index, archive_root: Path, size: int, raw_side: int) -> TestSlices:
    """Read every case of the index from its archive at ``size`` and align it with the rows."""
    from fdn.data import Archive, seg_to_classes

    archive = Archive(archive_root)
    n = index.ntotal
    anat = np.zeros((n, size, size), np.uint8)
    lesion = np.zeros((n, size, size), np.int64)
    features = None
    covered = np.zeros(n, bool)
    images, pseudo, diseased = [], [], []
    has_pseudo = True
    for case in index.cases:
        vol = archive.load(case, size)
        rows = np.array([index.row_of(case, z) for z in range(vol.image.shape[0])])
        if vol.anat is None or vol.seg is None:
            raise ValueError(
                f"case {case} of {archive_root} lacks _anat or _seg: the quality "
                "benchmark needs both label maps for every case"
            )
        anat[rows] = vol.anat
        lesion[rows] = seg_to_classes(vol.seg)
        f = downsample_slices(vol.image, raw_side)
        if features is None:
            features = np.zeros((n, f.shape[1]), np.float32)
        features[rows] = f
        covered[rows] = True
        keep = vol.brain.reshape(vol.brain.shape[0], -1).any(1)
        images.append((rows[keep], vol.image[keep]))
        if vol.pseudohealthy is None:
            has_pseudo = False
        else:
            pseudo.append(vol.pseudohealthy[keep])
        diseased.append(lesion[rows[keep]].reshape(int(keep.sum()), -1).any(1))
    if not covered.all():
        raise ValueError(
            f"{index.index_dir}: {int((~covered).sum())} rows belong to no slice of "
            f"{archive_root}; the index was built from another archive, rebuild it"
        )
    order = np.argsort(np.concatenate([r for r, _ in images]))
    brain_rows = np.concatenate([r for r, _ in images])[order]
    return TestSlices(
        anat=anat,
        lesion=lesion,
        features=features,
        brain_rows=brain_rows,
        images=np.concatenate([x for _, x in images])[order],
        pseudo=np.concatenate(pseudo)[order] if has_pseudo else None,
        diseased=np.concatenate(diseased)[order],
    )


def choose_queries(index, lesion: np.ndarray) -> list[dict]:
    """The largest-lesion slice (smallest slice index on ties) of every diseased case."""
    area = np.count_nonzero(lesion.reshape(lesion.shape[0], -1), axis=1)
    queries = []
    for case in index.cases:
        rows = np.flatnonzero(index.table["case"] == case)
        rows = rows[np.argsort(index.table["slice"][rows], kind="stable")]
        best = rows[int(np.argmax(area[rows]))]
        if area[best] > 0:
            queries.append(
                {
                    "case": case,
                    "slice": int(index.table["slice"][best]),
                    "row": int(best),
                    "lesion_area": int(area[best]),
                }
            )
    return queries
