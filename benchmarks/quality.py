"""Retrieval quality against the brute-force Dice oracle (paper 4.4.6, Table 2), one report.

Run ``python -m benchmarks.quality --model MODEL_DIR`` (``--help`` for options). One run:

1. takes a synthetic TEST archive with its own seed (synthesised into the output's ``work/``
   folder unless ``--test-archive`` is given) that the model never saw, and refuses one that
   shares its synthesis seed with the model's training archive;
2. builds the model's index of it (``work/index-<model checksum>``, reused when complete);
3. queries the largest-lesion slice of every diseased case, volume-wise top-Q (Q = 10), the
   query's own case excluded, with S_normal, S_abnormal, S_sum (and the normalised sum) under
   D_E, D_A and D_H, beside the Dice oracle, random, same-level and raw-pixel retrieval, and
   retrieval by the lesion Dice of the model's own segmentations ŷ (what its segmentation gives);
4. scores each hit list by the mean Dice of the hits' label maps with the query's
   (`benchmarks.quality_dice`): normal Dice on the six anatomy labels, lesion Dice on the three
   lesion classes, and their mean for S_sum; every method gets all three, which gives the
   cross-scores (normal Dice of S_abnormal's hits, lesion Dice of S_normal's hits);
5. adds the binarization figures (`benchmarks.quality_binarization`), the model figures of
   `fdn.evaluate` and the classifier leakiness (`benchmarks.quality_leakiness`), with and
   without distribution matching when ``--model-no-dm`` is given;
6. writes ``report.md``, ``results.json`` and PNG figures into the output folder
   (default ``benchmarks/results/quality-cpu``); ``work/`` holds a ``.gitignore`` so that the
   archive and index never get committed.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np

from benchmarks import report as rp
from benchmarks.quality_baselines import (
    downsample_slices,
    grid_truth_hits,
    random_hits,
    raw_pixel_hits,
    relative_levels,
    same_level_hits,
    segmentation_hits,
)
from benchmarks.quality_binarization import (
    appendix_f_image_timing,
    appendix_f_timing,
    codebook_figures,
    lut_timing,
)
from benchmarks.quality_dice import LESION_CLASSES, NORMAL_CLASSES, LabelDice, best_volumes
from benchmarks.quality_labels import (
    BASELINES,
    DISTANCES,
    METRIC_OF_MODE,
    METRICS,
    MODES,
    ORACLE_OF_MODE,
)
from benchmarks.quality_models import decoded_lesion_maps, model_figures, snapshot_model

log = logging.getLogger(__name__)

# Issue #13's targets: share of the oracle per mode, S_normal's lift over the same-level
# baseline as a share of the gap to the oracle, and at most this many abnormal codes on the
# healthy slices of the test archive.
TARGET_RATIO = {"normal": 0.88, "abnormal": 0.80}
LIFT_TARGET = 0.40
HEALTHY_CODES_TARGET = 3
PAPER_RATIO = {"normal": 0.50 / 0.62, "abnormal": 0.28 / 0.37}
DRAWN = ("random", "same-level")  # methods scored as the mean over random draws


@dataclass
class QualityConfig:
    """Everything one run depends on (stored whole in results.json)."""

    model: str
    model_no_dm: str | None = None
    train_archive: str | None = None  # default: read from each model's TRAIN_COMMAND.txt
    test_archive: str | None = None  # default: synthesised into OUT/work
    test_cases: int = 60
    test_seed: int = 1000
    test_healthy_fraction: float = 0.25
    size: int | None = None  # synthesis size; default: the model's input size
    out: str = "quality-cpu"
    topq: int = 10
    random_draws: int = 20
    raw_side: int = 16
    seed: int = 0
    appendix_f_repeats: int = 5
    lut_repeats: int = 3
    classifier_epochs: int = 8
    classifier_seconds: float = 60.0
    classifier_max_slices: int = 4000
    classifier_seeds: int = 3
    quick: bool = False

    def __post_init__(self) -> None:
        if self.topq < 1:
            raise ValueError(f"topq must be >= 1, got {self.topq}")
        if self.test_cases < 2:
            raise ValueError(f"test_cases must be >= 2, got {self.test_cases}")
        if self.quick:
            self.random_draws = min(self.random_draws, 5)
            self.appendix_f_repeats = 1
            self.lut_repeats = 1
            self.classifier_epochs = min(self.classifier_epochs, 3)
            self.classifier_seconds = min(self.classifier_seconds, 20.0)
            self.classifier_seeds = 1


# ---------------------------------------------------------------------------- inputs


def _synth_seed(archive: Path) -> int | None:
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


def _resolve_train_archive(cfg: QualityConfig, model_dir: str) -> Path:
    archive = Path(cfg.train_archive) if cfg.train_archive else training_archive_of(model_dir)
    if archive is None or not archive.is_dir():
        raise ValueError(
            f"{model_dir}: cannot find the archive the model was trained on "
            f"({'TRAIN_COMMAND.txt names ' + str(archive) if archive else 'no TRAIN_COMMAND.txt'}"
            f"); pass --train-archive DIR (the leakiness classifier trains on its slices)"
        )
    return archive


def _check_disjoint(test_archive: Path, test_seed: int | None, train_archive: Path) -> None:
    """Refuse a test archive that is, or shares synthetic cases with, a training archive.

    Case i of a synthetic archive depends only on (seed, i), so equal seeds mean shared cases.
    """
    if test_archive.resolve() == train_archive.resolve():
        raise ValueError(
            f"the test archive {test_archive} is the training archive; the "
            "protocol needs an archive the model never saw"
        )
    s_test, s_train = test_seed, _synth_seed(train_archive)
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


# ---------------------------------------------------------------------------- retrieval


def retrieve_all(
    index,
    queries: list[dict],
    dice_normal: np.ndarray,
    dice_lesion: np.ndarray,
    test: TestSlices,
    cfg: QualityConfig,
    predicted_lesion: np.ndarray,
    levels: np.ndarray,
    progress=None,
) -> dict:
    """Hit rows of every method: {method: [(≤Q,) rows per query]} (DRAWN methods: per draw).

    predicted_lesion: (N, S, S) the model's ŷ of every row, decoded from its abnormal codes;
    levels: (N,) every row's relative axial level (`relative_levels`).
    """
    volume = np.asarray(index.table["volume"], dtype=np.int64)
    methods: dict[str, list] = {}
    for mode in MODES:
        for dist in DISTANCES:
            hits = []
            for q in queries:
                row = q["row"]
                found = index.search_codes(
                    index.codes_normal[row],
                    index.codes_abnormal[row],
                    mode="sum" if mode == "sum-normalized" else mode,
                    distance=dist,
                    topq=cfg.topq,
                    engine="lut",
                    exclude_volume=int(volume[row]),
                    normalized_sum=mode == "sum-normalized",
                )
                hits.append(np.array([h.row for h in found], np.int64))
            methods[f"{mode}/{dist}"] = hits
            if progress is not None:
                progress.update(1)
    oracle_scores = {
        "oracle/normal": dice_normal,
        "oracle/abnormal": dice_lesion,
        "oracle/sum": dice_normal + dice_lesion,
    }
    for name, scores in oracle_scores.items():
        methods[name] = [
            best_volumes(scores[i], volume, cfg.topq, int(volume[q["row"]]))
            for i, q in enumerate(queries)
        ]
    query_rows = [q["row"] for q in queries]
    methods["raw-pixel"] = raw_pixel_hits(test.features, query_rows, volume, cfg.topq)
    methods["model-seg"] = segmentation_hits(predicted_lesion, query_rows, volume, cfg.topq)
    grid = int(np.asarray(index.codes_abnormal).shape[1])
    methods["grid-truth"] = grid_truth_hits(test.lesion, grid, query_rows, volume, cfg.topq)
    rng = np.random.default_rng(cfg.seed)
    methods["random"] = [
        [random_hits(q["row"], volume, cfg.topq, rng) for q in queries]
        for _ in range(cfg.random_draws)
    ]
    methods["same-level"] = [
        [same_level_hits(q["row"], volume, levels, cfg.topq, rng) for q in queries]
        for _ in range(cfg.random_draws)
    ]
    return methods


def hit_level_gaps(methods: dict, queries: list[dict], levels: np.ndarray) -> dict:
    """{method: mean over queries of the mean |level(hit) - level(query)|} for S_normal under
    every distance and its oracle; levels (N,) relative axial levels in [0, 1]."""
    out = {}
    for name in (*(f"normal/{d}" for d in DISTANCES), "oracle/normal"):
        gaps = [
            np.abs(levels[hits] - levels[q["row"]]).mean()
            for hits, q in zip(methods[name], queries)
            if len(hits)
        ]
        out[name] = float(np.mean(gaps)) if gaps else None
    return out


def score_hits(
    hits: list[np.ndarray], dice_normal: np.ndarray, dice_lesion: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-query mean Dice of the hits: {"normal", "lesion", "sum"} -> (B,) float64."""
    normal = np.array([dice_normal[i, r].mean() if r.size else np.nan for i, r in enumerate(hits)])
    lesion = np.array([dice_lesion[i, r].mean() if r.size else np.nan for i, r in enumerate(hits)])
    return {"normal": normal, "lesion": lesion, "sum": (normal + lesion) / 2}


def score_methods(methods: dict, dice_normal: np.ndarray, dice_lesion: np.ndarray) -> dict:
    """{method: {metric: {"mean", "std", "per_query"}}}; DRAWN methods average their draws
    per query."""
    out = {}
    for name, hits in methods.items():
        if name in DRAWN:
            draws = [score_hits(h, dice_normal, dice_lesion) for h in hits]
            per_query = {m: np.mean([d[m] for d in draws], axis=0) for m in METRICS}
        else:
            per_query = score_hits(hits, dice_normal, dice_lesion)
        out[name] = {
            m: {"mean": float(np.mean(v)), "std": float(np.std(v)), "per_query": v.tolist()}
            for m, v in per_query.items()
        }
    return out


def summarise(scores: dict) -> dict:
    """Table rows (mode × distance → own-metric Dice, oracle, ratio), cross-scores, targets."""
    from scipy.stats import wilcoxon

    rows = []
    for mode in MODES:
        metric = METRIC_OF_MODE[mode]
        oracle = scores[ORACLE_OF_MODE[mode]][metric]["mean"]
        for dist in DISTANCES:
            s = scores[f"{mode}/{dist}"]
            rows.append(
                {
                    "mode": mode,
                    "distance": dist,
                    "metric": metric,
                    "normal": s["normal"]["mean"],
                    "lesion": s["lesion"]["mean"],
                    "sum": s["sum"]["mean"],
                    "own": s[metric]["mean"],
                    "own_std": s[metric]["std"],
                    "oracle": oracle,
                    "ratio": s[metric]["mean"] / oracle if oracle else None,
                }
            )
    baselines = {}
    for name in (*BASELINES, "oracle/normal", "oracle/abnormal", "oracle/sum"):
        baselines[name] = {m: scores[name][m]["mean"] for m in METRICS}
        baselines[name].update({f"{m}_std": scores[name][m]["std"] for m in METRICS})
    decomposition = {}
    for dist in DISTANCES:
        n_hits, a_hits = scores[f"normal/{dist}"], scores[f"abnormal/{dist}"]
        dn = np.array(n_hits["normal"]["per_query"]) - np.array(a_hits["normal"]["per_query"])
        dl = np.array(a_hits["lesion"]["per_query"]) - np.array(n_hits["lesion"]["per_query"])

        def p_value(d):
            d = d[np.isfinite(d)]
            if d.size < 2 or not np.any(d):
                return None
            return float(wilcoxon(d).pvalue)

        decomposition[dist] = {
            "normal_dice_of_S_normal": n_hits["normal"]["mean"],
            "normal_dice_of_S_abnormal": a_hits["normal"]["mean"],
            "lesion_dice_of_S_abnormal": a_hits["lesion"]["mean"],
            "lesion_dice_of_S_normal": n_hits["lesion"]["mean"],
            "S_normal_wins_normal": bool(dn.mean() > 0),
            "S_abnormal_wins_lesion": bool(dl.mean() > 0),
            "holds": bool(dn.mean() > 0 and dl.mean() > 0),
            "p_normal": p_value(dn),
            "p_lesion": p_value(dl),
        }
    targets = {}
    for mode in ("normal", "abnormal"):
        ratios = {r["distance"]: r["ratio"] for r in rows if r["mode"] == mode}
        targets[mode] = {
            "target": TARGET_RATIO[mode],
            "paper": PAPER_RATIO[mode],
            "ratios": ratios,
            "met": {d: (r is not None and r >= TARGET_RATIO[mode]) for d, r in ratios.items()},
        }
    # S_normal's lift over the same-level baseline, as a share of that baseline's gap to the
    # oracle: 0 = no better than picking the same level in random volumes, 1 = the oracle.
    level = scores["same-level"]["normal"]["mean"]
    oracle = scores["oracle/normal"]["normal"]["mean"]
    lift = {
        d: (scores[f"normal/{d}"]["normal"]["mean"] - level) / (oracle - level)
        if oracle > level
        else None
        for d in DISTANCES
    }
    targets["normal_lift"] = {
        "target": LIFT_TARGET,
        "same_level": level,
        "oracle": oracle,
        "lift": lift,
        "met": {d: (v is not None and v >= LIFT_TARGET) for d, v in lift.items()},
    }
    return {
        "rows": rows,
        "baselines": baselines,
        "decomposition": decomposition,
        "targets": targets,
    }


def abnormal_code_usage(index, lesion: np.ndarray, brain_rows: np.ndarray) -> dict:
    """How the abnormal codes cover healthy tissue and lesions, from the index's code grids.

    lesion: (N, S, S) class labels per row; brain_rows: rows with brain. Healthy rows are brain
    rows without any lesion label. The null code is the commonest abnormal code of the healthy
    rows; a lesion cell is a grid cell holding a lesion pixel, and it is *flagged* when its
    abnormal code differs from the null code.
    """
    codes = np.asarray(index.codes_abnormal)
    n, h, w = codes.shape
    side = lesion.shape[-1]
    f = side // h
    cells = lesion.reshape(n, h, f, w, f).max(axis=(2, 4)) > 0  # (N, h, w) cells with lesion
    has_lesion = cells.reshape(n, -1).any(1)
    healthy = np.zeros(n, bool)
    healthy[brain_rows] = True
    healthy &= ~has_lesion
    healthy_codes = codes[healthy].ravel()
    values, counts = np.unique(healthy_codes, return_counts=True)
    null = int(values[np.argmax(counts)]) if values.size else None
    in_lesion = codes[cells]
    outside = codes[healthy[:, None, None] | (~cells & has_lesion[:, None, None])]
    return {
        "healthy_slices": int(healthy.sum()),
        "healthy_distinct_codes": int(values.size),
        "healthy_null_share": float(counts.max() / counts.sum()) if counts.size else None,
        "null_code": null,
        "lesion_cells": int(cells.sum()),
        "lesion_cells_flagged": float(np.mean(in_lesion != null)) if in_lesion.size else None,
        "non_lesion_cells_flagged": float(np.mean(outside != null)) if outside.size else None,
        "target_distinct_codes": HEALTHY_CODES_TARGET,
        "met": bool(values.size <= HEALTHY_CODES_TARGET),
    }


# ---------------------------------------------------------------------------- model figures


def run_quality(cfg: QualityConfig, progress: bool = False) -> dict:
    """Run the whole benchmark and write OUT/report.md, results.json and figures; return results."""
    from tqdm import tqdm

    from benchmarks.quality_figures import write_figures
    from benchmarks.quality_markdown import write_markdown
    from fdn.archive_index.build import build_index
    from fdn.archive_index.retrieval import open_index
    from fdn.synth import synthesize_archive
    from fdn.training.checkpoint import load_model, model_checksum

    started = time.monotonic()
    out = rp.results_dir(cfg.out)
    work = out / "work"
    work.mkdir(exist_ok=True)
    rp.write_text(work / ".gitignore", "# benchmark scratch: never committed\n*\n")
    sources = {"dm": cfg.model, "no_dm": cfg.model_no_dm}
    models = {}
    for name, source in sources.items():
        if source:
            train_archive = _resolve_train_archive(cfg, source)
            snapshot, step = snapshot_model(source, work)
            models[name] = (snapshot, train_archive, source, step)
    model_path = models["dm"][0]
    _, model_config = load_model(model_path, device="cpu")
    size = cfg.size or model_config.image_size
    timings = {}

    t = time.monotonic()
    if cfg.test_archive:
        test_archive = Path(cfg.test_archive)
        test_seed = _synth_seed(test_archive)
    else:
        test_archive = work / (
            f"test-archive-n{cfg.test_cases}-s{cfg.test_seed}-{size}-h{cfg.test_healthy_fraction:g}"
        )
        test_seed = cfg.test_seed
    for _, train_archive, _, _ in models.values():
        _check_disjoint(test_archive, test_seed, train_archive)
    if not cfg.test_archive:
        synthesize_archive(
            test_archive,
            cfg.test_cases,
            cfg.test_healthy_fraction,
            cfg.test_seed,
            size=size,
            progress=progress,
        )
    timings["synthesise_s"] = time.monotonic() - t

    t = time.monotonic()
    checksum = model_checksum(model_path)
    index_dir = work / f"index-{checksum[:12]}-{test_archive.name}"
    build_index(test_archive, model_path, index_dir)
    index = open_index(index_dir)
    timings["build_s"] = time.monotonic() - t

    t = time.monotonic()
    test = load_test_slices(index, test_archive, model_config.image_size, cfg.raw_side)
    queries = choose_queries(index, test.lesion)
    if len(queries) < 2:
        raise ValueError(
            f"{test_archive}: {len(queries)} diseased case(s); the benchmark needs "
            "at least 2 queries (raise --test-cases or lower the healthy fraction)"
        )
    normal_dice = LabelDice(test.anat, NORMAL_CLASSES)
    lesion_dice = LabelDice(test.lesion, LESION_CLASSES)
    dice_normal = np.stack([normal_dice.against(test.anat[q["row"]]) for q in queries])
    dice_lesion = np.stack([lesion_dice.against(test.lesion[q["row"]]) for q in queries])
    timings["labels_s"] = time.monotonic() - t

    n_steps = len(MODES) * len(DISTANCES) + 1 + 3 + (1 if cfg.model_no_dm else 0)
    bar = tqdm(total=n_steps, disable=not progress, desc="quality", unit="step")
    t = time.monotonic()
    predicted_lesion = decoded_lesion_maps(model_path, np.asarray(index.codes_abnormal))
    levels = relative_levels(
        np.asarray(index.table["volume"], np.int64), np.asarray(index.table["slice"])
    )
    methods = retrieve_all(
        index, queries, dice_normal, dice_lesion, test, cfg, predicted_lesion, levels, bar
    )
    scores = score_methods(methods, dice_normal, dice_lesion)
    summary = summarise(scores)
    summary["abnormal_codes"] = abnormal_code_usage(index, test.lesion, test.brain_rows)
    summary["hit_level_gap"] = hit_level_gaps(methods, queries, levels)
    timings["retrieval_s"] = time.monotonic() - t

    t = time.monotonic()
    hi = index.hash_index
    binarization = {
        "codebooks": codebook_figures(hi.report),
        "appendix_f": {
            book: appendix_f_timing(
                hi.tables[book].vectors,
                hi.tables[book].packed,
                int(hi.tables[book].pairs.shape[0]),
                repeats=cfg.appendix_f_repeats,
            )
            for book in ("normal", "abnormal")
        },
        "appendix_f_images": appendix_f_image_timing(
            index, [q["row"] for q in queries], repeats=cfg.appendix_f_repeats
        ),
        "lut": lut_timing(index, [q["row"] for q in queries], cfg.topq, repeats=cfg.lut_repeats),
    }
    bar.update(1)
    timings["binarization_s"] = time.monotonic() - t

    t = time.monotonic()
    model = model_figures(cfg, models, test_archive, test, out, bar)
    timings["model_s"] = time.monotonic() - t
    bar.close()

    n_diseased_cases = len(queries)
    results = {
        "config": asdict(cfg),
        "machine": rp.machine_info(),
        "test_archive": {
            "path": str(test_archive),
            "seed": _synth_seed(test_archive),
            "cases": len(index.cases),
            "diseased_cases": n_diseased_cases,
            "slices": index.ntotal,
            "size": size,
        },
        "index": {
            "dir": str(index_dir),
            "model": str(cfg.model),
            "checksum": checksum,
            "preset": index.manifest.preset,
            "grid": list(index.manifest.grid),
            "input_size": index.manifest.input_size,
        },
        "queries": queries,
        "scores": scores,
        "summary": summary,
        "binarization": binarization,
        "model": model,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    results["timings_s"]["total_s"] = round(time.monotonic() - started, 2)
    results["figures"] = write_figures(results, out)
    rp.write_json(out / "results.json", results)
    write_markdown(results, out / "report.md")
    return results


@click.command()
@click.option(
    "--model",
    "model",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Model directory (fdn-index train --out) to index and evaluate; trained with "
    "distribution matching.",
)
@click.option(
    "--model-no-dm",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="The same model trained with --no-dm, for the with/without DM figures.",
)
@click.option(
    "--train-archive",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Archive the models were trained on (the leakiness classifier trains on "
    "its slices) [default: read from MODEL/TRAIN_COMMAND.txt].",
)
@click.option(
    "--test-archive",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Test archive never trained on [default: synthesise one into OUT/work].",
)
@click.option(
    "--test-cases",
    type=click.IntRange(min=2),
    default=60,
    show_default=True,
    help="Cases of the synthesised test archive.",
)
@click.option(
    "--test-seed",
    type=int,
    default=1000,
    show_default=True,
    help="Seed of the synthesised test archive (must differ from the training one).",
)
@click.option(
    "--test-healthy-fraction",
    type=click.FloatRange(0, 1),
    default=0.25,
    show_default=True,
    help="Share of healthy cases in the synthesised test archive.",
)
@click.option(
    "--size",
    type=click.IntRange(min=8),
    default=None,
    help="In-plane size of the synthesised test archive [default: the model's input].",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="quality-cpu",
    show_default=True,
    help="Output folder, or a bare name for benchmarks/results/NAME.",
)
@click.option(
    "--topq",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Volumes retrieved per query.",
)
@click.option(
    "--random-draws",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Draws of the random baseline, averaged.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the random baseline and the classifiers.",
)
@click.option(
    "--classifier-seconds",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Time budget of each leakiness classifier.",
)
@click.option(
    "--classifier-seeds",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Leakiness classifiers trained per input (different seeds), averaged.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="torch CPU threads (the machine is shared: keep it small).",
)
@click.option(
    "--quick",
    is_flag=True,
    help="Fewer random draws, repeats and classifier steps (a check, not a result).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def main(
    model,
    model_no_dm,
    train_archive,
    test_archive,
    test_cases,
    test_seed,
    test_healthy_fraction,
    size,
    out,
    topq,
    random_draws,
    seed,
    classifier_seconds,
    classifier_seeds,
    threads,
    quick,
    as_json,
):
    """Retrieval quality against the Dice oracle, binarization and model figures (4.4)."""
    import torch

    from fdn.errors import FdnError
    from hashindex.errors import HashIndexError

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)
    try:
        cfg = QualityConfig(
            model=model,
            model_no_dm=model_no_dm,
            train_archive=train_archive,
            test_archive=test_archive,
            test_cases=test_cases,
            test_seed=test_seed,
            test_healthy_fraction=test_healthy_fraction,
            size=size,
            out=out,
            topq=topq,
            random_draws=random_draws,
            seed=seed,
            classifier_seconds=classifier_seconds,
            classifier_seeds=classifier_seeds,
            quick=quick,
        )
        results = run_quality(cfg, progress=not as_json)
    except (FdnError, HashIndexError, ValueError, FileExistsError) as error:
        raise click.ClickException(str(error)) from None
    out_dir = rp.results_dir(out)
    if as_json:
        click.echo(json.dumps(rp.jsonable({"out": str(out_dir), **results["summary"]})))
        return
    click.echo((out_dir / "report.md").read_text())
    click.echo(f"written: {out_dir}/report.md, results.json, {', '.join(results['figures'])}")


if __name__ == "__main__":
    main()
