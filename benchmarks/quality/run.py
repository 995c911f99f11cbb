"""Retrieval quality against the brute-force Dice oracle (paper 4.4.6, Table 2), one report.

`run_quality` runs the whole benchmark; ``python -m benchmarks.quality --model MODEL_DIR`` runs
it from the command line (`benchmarks.quality.cli`, ``--help`` for options). One run:

1. takes a synthetic TEST archive with its own seed (synthesised into the output's ``work/``
   folder unless ``--test-archive`` is given) that the model never saw, and refuses one that
   shares its synthesis seed with the model's training archive;
2. builds the model's index of it (``work/index-<model checksum>``, reused when complete);
3. queries the largest-lesion slice of every diseased case, volume-wise top-Q (Q = 10), the
   query's own case excluded, with S_normal, S_abnormal, S_sum (and the normalised sum) under
   D_E, D_A and D_H, beside the Dice oracle, random, same-level and raw-pixel retrieval, and
   retrieval by the lesion Dice of the model's own segmentations ŷ (what its segmentation gives);
4. scores each hit list by the mean Dice of the hits' label maps with the query's
   (`benchmarks.quality.dice`): normal Dice on the six anatomy labels, lesion Dice on the three
   lesion classes, and their mean for S_sum; every method gets all three, which gives the
   cross-scores (normal Dice of S_abnormal's hits, lesion Dice of S_normal's hits);
5. adds the binarization figures (`benchmarks.quality.binarization`), the model figures of
   `fdn.training.evaluate` and the classifier leakiness (`benchmarks.quality.leakiness`), with and
   without distribution matching when ``--model-no-dm`` is given;
6. writes ``report.md``, ``results.json`` and PNG figures into the output folder
   (default ``benchmarks/results/quality-cpu``); ``work/`` holds a ``.gitignore`` so that the
   archive and index never get committed.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks import report as rp
from benchmarks.quality.baselines import relative_levels
from benchmarks.quality.binarization import (
    appendix_f_image_timing,
    appendix_f_timing,
    codebook_figures,
    lut_timing,
)
from benchmarks.quality.config import QualityConfig
from benchmarks.quality.dice import LESION_CLASSES, NORMAL_CLASSES, LabelDice
from benchmarks.quality.inputs import (
    check_disjoint,
    choose_queries,
    load_test_slices,
    resolve_train_archive,
    synth_seed,
)
from benchmarks.quality.labels import DISTANCES, MODES
from benchmarks.quality.models import decoded_lesion_maps, model_figures, snapshot_model
from benchmarks.quality.retrieval import hit_level_gaps, retrieve_all
from benchmarks.quality.scores import abnormal_code_usage, score_methods, summarise


def run_quality(cfg: QualityConfig, progress: bool = False) -> dict:
    """Run the whole benchmark and write OUT/report.md, results.json and figures; return results."""
    from tqdm import tqdm

    from benchmarks.quality.figures import write_figures
    from benchmarks.quality.markdown import write_markdown
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
            train_archive = resolve_train_archive(cfg, source)
            snapshot, step = snapshot_model(source, work)
            models[name] = (snapshot, train_archive, source, step)
    model_path = models["dm"][0]
    _, model_config = load_model(model_path, device="cpu")
    size = cfg.size or model_config.image_size
    timings = {}

    t = time.monotonic()
    if cfg.test_archive:
        test_archive = Path(cfg.test_archive)
        test_seed = synth_seed(test_archive)
    else:
        test_archive = work / (
            f"test-archive-n{cfg.test_cases}-s{cfg.test_seed}-{size}-h{cfg.test_healthy_fraction:g}"
        )
        test_seed = cfg.test_seed
    for _, train_archive, _, _ in models.values():
        check_disjoint(test_archive, test_seed, train_archive)
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
            "seed": synth_seed(test_archive),
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
