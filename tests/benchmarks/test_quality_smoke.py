"""The quality benchmark: its Dice, oracle and baselines against hand-computed references, and a
reduced-size run of the whole suite (tiny archives at 32², the "tiny" preset with seeded random
weights, 3 queries) that checks the report and the invariants every run must satisfy."""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from benchmarks.quality.baselines import (
    cell_class_counts,
    downsample_slices,
    grid_truth_hits,
    random_hits,
    raw_pixel_hits,
    relative_levels,
    same_level_hits,
    segmentation_hits,
)
from benchmarks.quality.cli import main
from benchmarks.quality.config import QualityConfig
from benchmarks.quality.dice import (
    LESION_CLASSES,
    NORMAL_CLASSES,
    LabelDice,
    best_volumes,
    multiclass_dice,
)
from benchmarks.quality.leakiness import binary_figures, roc_auc
from benchmarks.quality.retrieval import hit_level_gaps
from benchmarks.quality.run import run_quality
from benchmarks.quality.scores import abnormal_code_usage
from fdn.model import PRESETS
from fdn.synth import synthesize_archive
from tests.conftest import make_model_dir

torch.set_num_threads(1)  # the machine is shared; the tiny model gains nothing from threads
SIZE = PRESETS["tiny"].image_size


# ---------------------------------------------------------------------------- Dice


def test_dice_of_identical_maps_is_one():
    rng = np.random.default_rng(0)
    anat = rng.integers(0, 7, (32, 32))
    seg = rng.choice([0, 1, 2, 3], (32, 32))
    assert multiclass_dice(anat, anat, NORMAL_CLASSES) == 1.0
    assert multiclass_dice(seg, seg, LESION_CLASSES) == 1.0
    stack = np.stack([anat, rng.integers(0, 7, (32, 32)), anat])
    got = LabelDice(stack, NORMAL_CLASSES).against(anat)
    assert got[0] == 1.0 and got[2] == 1.0 and got[1] < 1.0


def test_dice_hand_computed():
    a = np.array([[1, 1, 0, 0], [2, 2, 0, 0]])
    b = np.array([[1, 0, 0, 0], [2, 2, 3, 0]])
    # class 1: 2·1/(2+1) = 2/3; class 2: 2·2/(2+2) = 1; class 3 only in b: 0 -> mean 5/9
    assert multiclass_dice(a, b, (1, 2, 3)) == pytest.approx((2 / 3 + 1 + 0) / 3)
    # classes absent from both are skipped
    assert multiclass_dice(a, b, (1, 2, 3, 4, 5)) == pytest.approx(5 / 9)
    # a lesion query against a healthy slice: 0; two empty maps: defined as 1
    empty = np.zeros_like(a)
    assert multiclass_dice(a, empty, (1, 2, 3)) == 0.0
    assert multiclass_dice(empty, empty, (1, 2, 3)) == 1.0
    got = LabelDice(np.stack([b, empty, a]), (1, 2, 3)).against(a)
    np.testing.assert_allclose(got, [5 / 9, 0.0, 1.0])


def test_vectorised_dice_matches_pairwise_loop():
    rng = np.random.default_rng(1)
    maps = rng.choice(4, (40, 12, 12), p=[0.7, 0.1, 0.1, 0.1])
    maps[5] = 0  # an empty row
    dice = LabelDice(maps, LESION_CLASSES)
    for q in (maps[0], maps[5], maps[17]):
        expected = []
        for row in maps:  # the definition, written out per pair
            per_class = []
            for c in LESION_CLASSES:
                na, nb = np.sum(q == c), np.sum(row == c)
                if na + nb:
                    per_class.append(2 * np.sum((q == c) & (row == c)) / (na + nb))
            expected.append(np.mean(per_class) if per_class else 1.0)
        np.testing.assert_allclose(dice.against(q), expected, rtol=0, atol=1e-12)


def test_best_volumes_is_volume_wise_top_q_by_score():
    scores = np.array([0.1, 0.9, 0.5, 0.5, 0.7, 0.2, 0.9, 0.0])
    volumes = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    # per volume best: v0 row1 0.9, v1 row2 0.5 (tie: smaller row), v2 row4 0.7, v3 row6 0.9
    np.testing.assert_array_equal(best_volumes(scores, volumes, 10), [1, 6, 4, 2])
    np.testing.assert_array_equal(best_volumes(scores, volumes, 2, exclude_volume=0), [6, 4])
    with pytest.raises(ValueError):
        best_volumes(scores, volumes[:-1], 2)


# ---------------------------------------------------------------------------- baselines


def test_downsample_is_block_mean():
    x = np.arange(2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    got = downsample_slices(x, 2)
    expected = [
        [np.mean(x[n, 0, i : i + 2, j : j + 2]) for i in (0, 2) for j in (0, 2)] for n in range(2)
    ]
    np.testing.assert_allclose(got, expected)
    with pytest.raises(ValueError):
        downsample_slices(x, 3)


def test_raw_pixel_hits_match_brute_force():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(30, 5))
    volumes = np.repeat(np.arange(6), 5)
    for row in (0, 13):
        d = np.linalg.norm(features - features[row], axis=1)
        best = {}
        for r in range(30):
            v = volumes[r]
            if v != volumes[row] and (v not in best or d[r] < d[best[v]]):
                best[v] = r
        expected = sorted(best.values(), key=lambda r: d[r])[:3]
        np.testing.assert_array_equal(raw_pixel_hits(features, [row], volumes, 3)[0], expected)


def test_segmentation_hits_match_brute_force():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, size=(24, 6, 6)) * (rng.random((24, 6, 6)) < 0.3)
    labels[3] = 0  # a row without lesion scores 0 against a query with one
    volumes = np.repeat(np.arange(6), 4)
    for row in (1, 14):
        d = [multiclass_dice(labels[row], labels[r], LESION_CLASSES) for r in range(24)]
        best = {}
        for r in range(24):
            v = volumes[r]
            if v != volumes[row] and (v not in best or d[r] > d[best[v]]):
                best[v] = r
        expected = sorted(best.values(), key=lambda r: (-d[r], r))[:3]
        got = segmentation_hits(labels, [row], volumes, 3)[0]
        np.testing.assert_array_equal(got, expected)


def test_cell_class_counts_hand_computed():
    labels = np.zeros((1, 4, 4), np.int64)
    labels[0, 0, 0] = 2  # cell (0, 0): one ED pixel
    labels[0, 1, 1] = 2  # cell (0, 0): a second ED pixel
    labels[0, 3, 2] = 3  # cell (1, 1): one ET pixel
    labels[0, 2, 1] = 1  # cell (1, 0): one NET pixel
    expected = np.zeros((2, 2, 3))
    expected[0, 0, 1] = 2
    expected[1, 1, 2] = 1
    expected[1, 0, 0] = 1
    np.testing.assert_array_equal(cell_class_counts(labels, 2)[0], expected.ravel())
    with pytest.raises(ValueError, match="grid 3"):
        cell_class_counts(labels, 3)


def test_grid_truth_hits_match_brute_force_cosine():
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 4, size=(24, 8, 8)) * (rng.random((24, 8, 8)) < 0.3)
    labels[5] = 0  # no lesion: cosine 0 with everything
    volumes = np.repeat(np.arange(6), 4)
    for row in (2, 17):

        def counts(m):
            return np.array(
                [
                    np.sum(m[i : i + 2, j : j + 2] == c)
                    for i in range(0, 8, 2)
                    for j in range(0, 8, 2)
                    for c in LESION_CLASSES
                ],
                float,
            )

        q = counts(labels[row])
        score = []
        for r in range(24):
            v = counts(labels[r])
            norm = np.linalg.norm(q) * np.linalg.norm(v)
            score.append(q @ v / norm if norm else 0.0)
        best = {}
        for r in range(24):
            if volumes[r] != volumes[row] and (
                volumes[r] not in best or score[r] > score[best[volumes[r]]]
            ):
                best[volumes[r]] = r
        expected = sorted(best.values(), key=lambda r: (-score[r], r))[:3]
        got = grid_truth_hits(labels, 4, [row], volumes, 3)[0]
        np.testing.assert_array_equal(got, expected)


def test_decoded_lesion_maps_are_the_models_segmentation(tmp_path):
    """ŷ decoded from the stored codes equals ŷ of the forward pass on the images."""
    from benchmarks.quality.models import decoded_lesion_maps
    from fdn.training.checkpoint import load_model

    model_dir = make_model_dir(tmp_path / "model", seed=0)
    model, _ = load_model(model_dir, device="cpu")
    model.eval()
    x = torch.from_numpy(np.random.default_rng(6).normal(size=(5, 4, SIZE, SIZE)).astype("f4"))
    with torch.no_grad():
        _, codes_a = model.encode(x)
        logits = model(x).seg_logits
    got = decoded_lesion_maps(model_dir, codes_a.numpy(), batch=2)
    # the forward pass feeds z_e + (e_k - z_e), equal to e_k up to fp32 rounding, so only
    # pixels whose two best classes are that close may differ
    top2 = logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]).numpy() > 1e-3
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(got[clear], logits.argmax(1).numpy()[clear])


def test_hit_level_gaps_hand_computed():
    levels = np.array([0.0, 0.25, 0.5, 1.0, 0.75])
    queries = [{"row": 0}, {"row": 2}]
    hits = {
        "normal/euclidean": [np.array([1, 3]), np.array([2])],  # (.25 + 1) / 2, 0
        "normal/angular": [np.array([4]), np.array([], np.int64)],  # .75; the empty one skipped
        "normal/hamming": [np.array([0]), np.array([0, 3])],  # 0, (.5 + .5) / 2
        "oracle/normal": [np.array([], np.int64), np.array([], np.int64)],  # nothing: None
    }
    gaps = hit_level_gaps(hits, queries, levels)
    assert gaps["normal/euclidean"] == pytest.approx((0.625 + 0.0) / 2)
    assert gaps["normal/angular"] == pytest.approx(0.75)
    assert gaps["normal/hamming"] == pytest.approx(0.25)
    assert gaps["oracle/normal"] is None


def test_random_hits_are_distinct_other_volumes():
    volumes = np.repeat(np.arange(8), 4)
    rng = np.random.default_rng(3)
    for _ in range(20):
        rows = random_hits(5, volumes, 4, rng)
        assert len(set(volumes[rows])) == 4 and volumes[5] not in volumes[rows]
    assert len(random_hits(0, volumes, 50, rng)) == 7  # fewer volumes than Q


def test_same_level_hits_take_the_query_level_in_other_volumes():
    # volume 0: 5 slices (levels 0, .25, .5, .75, 1); volume 1: 3 slices (0, .5, 1);
    # volume 2: 2 slices (0, 1); volume 3: one slice (level 0)
    volumes = np.array([0] * 5 + [1] * 3 + [2] * 2 + [3])
    slices = np.array([0, 1, 2, 3, 4, 10, 11, 12, 7, 8, 5])
    levels = relative_levels(volumes, slices)
    np.testing.assert_allclose(levels, [0, 0.25, 0.5, 0.75, 1, 0, 0.5, 1, 0, 1, 0])
    rng = np.random.default_rng(0)
    rows = same_level_hits(4, volumes, levels, 3, rng)  # level 1
    assert sorted(rows.tolist()) == [7, 9, 10]  # levels 1, 1 and the only slice
    rows = same_level_hits(2, volumes, levels, 3, rng)  # level .5: a tie in volume 2
    assert sorted(rows.tolist()) == [6, 8, 10]  # the lower row wins the tie
    rows = same_level_hits(3, volumes, levels, 3, rng)  # level .75: a tie in volume 1
    assert sorted(rows.tolist()) == [6, 9, 10]
    assert 0 not in volumes[same_level_hits(2, volumes, levels, 9, rng)]


class _Codes:
    def __init__(self, codes):
        self.codes_abnormal = codes


def test_abnormal_code_usage_by_hand():
    # 3 rows of 2×2 cells over 4×4 label maps (2×2 pixels per cell)
    codes = np.array([[[0, 0], [0, 5]], [[0, 7], [0, 0]], [[3, 0], [0, 0]]])
    lesion = np.zeros((3, 4, 4), np.int64)
    lesion[1, 0, 3] = 2  # row 1: one lesion pixel in cell (0, 1)
    lesion[2, 3, 0] = 1  # row 2: one lesion pixel in cell (1, 0)
    usage = abnormal_code_usage(_Codes(codes), lesion, np.array([0, 1, 2]))
    assert usage["healthy_slices"] == 1  # row 0 only
    assert usage["healthy_distinct_codes"] == 2 and usage["null_code"] == 0
    assert usage["healthy_null_share"] == 0.75
    assert usage["lesion_cells"] == 2
    assert usage["lesion_cells_flagged"] == 0.5  # row 1's cell has 7, row 2's cell has 0
    # cells off the lesion: row 0's four and the three others of rows 1 and 2 each
    assert usage["non_lesion_cells_flagged"] == pytest.approx(2 / 10)
    assert usage["met"]  # 2 <= 3


def test_classifier_figures_by_hand():
    labels = np.array([1, 1, 0, 0, 0], bool)
    pred = np.array([1, 0, 1, 0, 0], bool)
    f = binary_figures(pred, labels)
    assert f["ppv"] == 0.5 and f["sensitivity"] == 0.5 and f["specificity"] == 2 / 3
    assert binary_figures(np.zeros(5, bool), labels)["ppv"] is None
    assert roc_auc(np.array([0.9, 0.8, 0.1, 0.2, 0.3]), labels) == 1.0
    # one of the 2 × 3 positive/negative pairs is ordered wrongly -> 5/6
    assert roc_auc(np.array([0.9, 0.25, 0.1, 0.2, 0.3]), labels) == pytest.approx(5 / 6)


# ---------------------------------------------------------------------------- the whole run


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    train = root / "train"
    test = root / "test"
    synthesize_archive(train, n_cases=4, healthy_fraction=0.5, seed=21, size=SIZE)
    synthesize_archive(test, n_cases=5, healthy_fraction=0.4, seed=22, size=SIZE)
    model = make_model_dir(root / "model", seed=0)
    cfg = QualityConfig(
        model=str(model),
        model_no_dm=None,
        train_archive=str(train),
        test_archive=str(test),
        out=str(root / "out"),
        topq=3,
        quick=True,
        random_draws=3,
        classifier_seconds=2.0,
    )
    results = run_quality(cfg)
    return {
        "root": root,
        "train": train,
        "test": test,
        "model": model,
        "out": root / "out",
        "results": results,
    }


def test_report_files_exist(smoke):
    out = smoke["out"]
    for name in (
        "report.md",
        "results.json",
        "dice_by_mode.png",
        "cross_scores.png",
        "codebook_norms_dm.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "work" / ".gitignore").read_text().strip().endswith("*")
    text = (out / "report.md").read_text()
    for heading in (
        "Retrieval quality",
        "Decomposition",
        "Binarization",
        "Appendix F",
        "classifier PPV",
        "Axial level of S_normal's hits",
        "true lesion classes per code-grid cell",
    ):
        assert heading in text
    gaps = smoke["results"]["summary"]["hit_level_gap"]
    assert all(0 <= g <= 1 for g in gaps.values() if g is not None)
    on_disk = json.loads((out / "results.json").read_text())
    assert len(on_disk["queries"]) == 3  # 3 diseased of the 5 test cases


def test_figures_finite_and_in_range(smoke):
    r = smoke["results"]
    n_queries = len(r["queries"])
    for name, s in r["scores"].items():
        for metric in ("normal", "lesion", "sum"):
            per_query = np.array(s[metric]["per_query"])
            assert per_query.shape == (n_queries,)
            assert np.all(np.isfinite(per_query)), (name, metric)
            assert np.all((per_query >= 0) & (per_query <= 1)), (name, metric)
    for book, c in r["binarization"]["codebooks"].items():
        assert 0 < c["E_star"] <= c["E"] == c["K"] * (c["K"] - 1) // 2, book
        for conc in c["concordance"].values():
            assert all(0 <= v <= 1 for v in conc.values() if not math.isnan(v))
        t = r["binarization"]["appendix_f"][book]
        assert t["t_E"] > 0 and t["t_H"] > 0 and t["reduction"] < 1
    for book in ("normal", "abnormal"):
        t = r["binarization"]["appendix_f_images"][book]
        assert t["t_E"] > 0 and t["t_H"] > 0 and t["bits"] > 0
    for key, timing in r["binarization"]["lut"].items():
        if isinstance(timing, dict):
            assert timing["p50_ms"] > 0, key
    for c in r["model"]["classifier"].values():
        assert 0 <= c["prevalence"] <= 1
        assert c["ppv"] is None or 0 <= c["ppv"] <= 1
        assert c["steps"] >= 1
    lift = r["summary"]["targets"]["normal_lift"]
    for d, v in lift["lift"].items():
        normal = r["scores"][f"normal/{d}"]["normal"]["mean"]
        expected = (normal - lift["same_level"]) / (lift["oracle"] - lift["same_level"])
        assert v == pytest.approx(expected), d
    usage = r["summary"]["abnormal_codes"]
    assert 1 <= usage["healthy_distinct_codes"] and 0 < usage["healthy_null_share"] <= 1
    ev = r["model"]["models"]["dm"]
    assert ev["reconstruction"]["l1_plus_per_pixel"] > 0
    assert 0 <= ev["compactness"]["normal"] <= 1


def test_oracle_bounds_every_method_on_its_own_metric(smoke):
    scores = smoke["results"]["scores"]
    own = {
        "normal": ("oracle/normal", "normal"),
        "abnormal": ("oracle/abnormal", "lesion"),
        "sum": ("oracle/sum", "sum"),
        "sum-normalized": ("oracle/sum", "sum"),
    }
    for mode, (oracle, metric) in own.items():
        bound = np.array(scores[oracle][metric]["per_query"])
        for name in [f"{mode}/{d}" for d in ("euclidean", "angular", "hamming")] + [
            "random",
            "same-level",
            "raw-pixel",
            "model-seg",
        ]:
            got = np.array(scores[name][metric]["per_query"])
            assert np.all(got <= bound + 1e-12), (mode, name)


def test_queries_are_largest_lesion_slices(smoke):
    from fdn.data import Archive

    archive = Archive(smoke["test"])
    for q in smoke["results"]["queries"]:
        vol = archive.load(q["case"], SIZE)
        area = (vol.seg > 0).reshape(vol.seg.shape[0], -1).sum(1)
        assert q["slice"] == int(np.argmax(area)) and q["lesion_area"] == area.max() > 0


def test_refuses_a_test_archive_from_the_training_seed(smoke, tmp_path):
    cfg = QualityConfig(
        model=str(smoke["model"]),
        train_archive=str(smoke["train"]),
        test_seed=21,
        test_cases=2,
        out=str(tmp_path / "out"),
        quick=True,
    )
    with pytest.raises(ValueError, match="same seed 21"):
        run_quality(cfg)
    assert not any((tmp_path / "out" / "work").glob("test-archive*"))


def test_cli_needs_the_training_archive(smoke, tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "--model",
            str(smoke["model"]),
            "--test-archive",
            str(smoke["test"]),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 1, result.output
    assert "--train-archive" in result.output


def test_appendix_f_bits_are_the_index_hamming_distances(smoke):
    """The unpacked b* that Appendix F times give the index's own Hamming table."""
    from benchmarks.quality.binarization import unpacked_bits
    from fdn.archive_index.retrieval import open_index

    index = open_index(smoke["results"]["index"]["dir"])
    for book in ("normal", "abnormal"):
        t = index.hash_index.tables[book]
        bits = unpacked_bits(t.packed, int(t.pairs.shape[0]))
        assert bits.shape == (t.K, t.pairs.shape[0])
        by_listing = np.array([[np.count_nonzero(a != b) for b in bits] for a in bits])
        np.testing.assert_array_equal(by_listing, t.hamming[np.ix_(t.rep_of, t.rep_of)])


def test_one_run_reads_one_frozen_copy_of_the_weights(smoke):
    """The index, the evaluation and the classifiers all use the snapshot of the model."""
    from pathlib import Path

    from fdn.training.checkpoint import model_checksum

    r = smoke["results"]
    lift = r["summary"]["targets"]["normal_lift"]
    for d, v in lift["lift"].items():
        normal = r["scores"][f"normal/{d}"]["normal"]["mean"]
        expected = (normal - lift["same_level"]) / (lift["oracle"] - lift["same_level"])
        assert v == pytest.approx(expected), d
    usage = r["summary"]["abnormal_codes"]
    assert 1 <= usage["healthy_distinct_codes"] and 0 < usage["healthy_null_share"] <= 1
    ev = r["model"]["models"]["dm"]
    snapshot = Path(ev["model_snapshot"])
    assert snapshot.parent.parent == smoke["out"] / "work"
    assert model_checksum(snapshot) == model_checksum(smoke["model"]) == r["index"]["checksum"]
    assert model_checksum(Path(r["index"]["dir"]) / "model") == r["index"]["checksum"]
    assert ev["model_dir"] == str(smoke["model"]) and ev["train_steps"] == 0


def test_ablation_tabulates_runs_and_refuses_different_test_archives(smoke, tmp_path):
    import shutil

    from benchmarks.quality.ablation import main as ablation

    a, b = tmp_path / "run-a", tmp_path / "run-b"
    shutil.copytree(smoke["out"], a)
    shutil.copytree(smoke["out"], b)
    runner = CliRunner()
    r = runner.invoke(ablation, [str(a), str(b), "--out", str(tmp_path / "table")])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "table" / "results.json").read_text())["rows"]
    assert [row["name"] for row in rows] == ["run-a", "run-b"]
    ratios = smoke["results"]["summary"]["targets"]["abnormal"]["ratios"]
    assert rows[0]["abnormal_ratio"] == pytest.approx(ratios)
    text = (tmp_path / "table" / "report.md").read_text()
    assert text.count("| run-") == 2
    other = json.loads((b / "results.json").read_text())
    other["test_archive"]["path"] = "/elsewhere/another-archive"
    (b / "results.json").write_text(json.dumps(other))
    r = runner.invoke(ablation, [str(a), str(b), "--out", str(tmp_path / "table2")])
    assert r.exit_code != 0 and "different test archives" in r.output


def test_trained_steps_reads_the_last_metrics_row(tmp_path):
    from benchmarks.quality.ablation import trained_steps

    assert trained_steps(tmp_path) is None
    rows = [{"step": 99, "lat": 5.0}, {"step": 6978, "lat": 9.6, "partial": True}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert trained_steps(tmp_path) == 6978
