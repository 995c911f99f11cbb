"""The quality benchmark's retrieval: every method's hit rows for every query (code distances,
Dice oracles and baselines), and how far S_normal's hits lie from the query's axial level."""

from __future__ import annotations

import numpy as np

from benchmarks.quality.baselines import (
    grid_truth_hits,
    random_hits,
    raw_pixel_hits,
    same_level_hits,
    segmentation_hits,
)
from benchmarks.quality.config import QualityConfig
from benchmarks.quality.dice import best_volumes
from benchmarks.quality.inputs import TestSlices
from benchmarks.quality.labels import DISTANCES, MODES


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
