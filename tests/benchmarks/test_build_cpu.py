"""The build benchmark's CPU cost per case and the PACS projection made from it."""

import pytest

from benchmarks.build_cpu import PACS_VOLUMES, SLICES_PER_VOLUME, cpu_per_case, projection


def test_projection_by_hand():
    cost = {"slices_per_cpu_s": 50.0, "read_bytes_per_slice": 70_000.0}
    assembly = {"runs": [{"slices": 1_000_000, "assemble_s": 60.0, "peak_rss_bytes": 2**30}]}
    plan = projection(cost, assembly)
    sixteen = next(r for r in plan["rows"] if r["machines"] == 16)
    # 16 machines x 2 cores x 50 slices per CPU second = 1,600 slices/s
    assert sixteen["hours"] == pytest.approx(65_000 * 155 / 1_600 / 3600)
    assert sixteen["read_mb_per_s"] == pytest.approx(1_600 * 70_000 / 1e6)
    # the assembly scales linearly from its largest run: 10.075x the 1M run
    assert plan["assembly"]["minutes"] == pytest.approx(10.075)
    assert plan["assembly"]["peak_rss_gib"] == pytest.approx(10.075)
    assert PACS_VOLUMES * SLICES_PER_VOLUME == plan["slices"]


def test_cpu_per_case_covers_every_case_of_the_archive(tiny_archive, model_dir):
    from fdn.data import Archive

    cost = cpu_per_case(tiny_archive, model_dir)
    archive = Archive(tiny_archive)
    assert [c["case"] for c in cost["cases"]] == archive.case_ids
    for c in cost["cases"]:
        assert c["slices"] == archive.load(c["case"], 16).image.shape[0]
        assert c["load_cpu_s"] > 0 and c["encode_cpu_s"] > 0
        files = archive.case_files(c["case"])
        assert c["read_bytes"] == sum(
            files[k].stat().st_size for k in files if k not in ("anat", "pseudohealthy")
        )
    slices = sum(c["slices"] for c in cost["cases"])
    cpu = sum(c["load_cpu_s"] + c["encode_cpu_s"] for c in cost["cases"])
    assert cost["slices_per_cpu_s"] == pytest.approx(slices / cpu)
