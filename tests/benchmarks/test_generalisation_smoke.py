"""The generalisation benchmark: a run on two lesion families with a tiny model writes a report
whose scores respect what an oracle is, and marks the families the model was trained on."""

import json

from click.testing import CliRunner

from benchmarks.quality.generalisation import main, trained_families
from fdn.synth import synthesize_archive


def test_a_run_scores_every_family_below_its_oracle(tmp_path, model_dir):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["--model", str(model_dir), "--families", "glioma,large", "--cases", "6",
         "--topq", "3", "--out", str(out), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert [f["family"] for f in results["families"]] == ["glioma", "large"]
    for family in results["families"]:
        # the oracle maximises each mode's Dice over the same volume-wise top-Q: no method and
        # no grid-truth reference can beat it
        for mode, shares in family["share_of_oracle"].items():
            for distance, share in shares.items():
                assert share is None or 0 <= share <= 1 + 1e-12, (mode, distance, share)
        for share in family["grid_truth_share"].values():
            assert share is None or 0 <= share <= 1 + 1e-12
        assert family["queries"] >= 2
        listing = json.loads((tmp_path / "out" / "work" / family["archive"].split("/")[-1]
                              / "synth.json").read_text())  # fmt: skip
        assert {c["family"] for c in listing["case_list"] if not c["healthy"]} == {family["family"]}
    report = (out / "report.md").read_text()
    assert "| glioma | no |" in report and "| large | yes |" in report


def test_the_training_families_come_from_the_training_archive(tmp_path):
    archive = tmp_path / "train"
    synthesize_archive(archive, 2, 0.0, seed=1, size=16, families=("small", "deep"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "TRAIN_COMMAND.txt").write_text(f"fdn-index train {archive} --preset tiny\n")
    assert trained_families(model) == ("small", "deep")
    (model / "TRAIN_COMMAND.txt").write_text("fdn-index train /nonexistent/archive\n")
    assert trained_families(model) == ("glioma",)
