"""Lesion families: each family's lesions have the property that names it, measured on the
rendered labels and images; archives record the family of every case."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage

from fdn.synth import FAMILIES, SynthConfig, parse_families, synthesize_archive, synthesize_case
from fdn_index_cli.main import main

CONFIG = SynthConfig(size=48)
CASES = range(3)


@pytest.fixture(scope="module")
def cases():
    """{family: [SynthCase, ...]} for the same three (seed, case) draws."""
    return {
        name: [synthesize_case(11, i, False, CONFIG, family) for i in CASES]
        for name, family in FAMILIES.items()
    }


def _tumour(case):
    return (case.seg == 1) | (case.seg == 4)


def _spacing():
    return np.diag(CONFIG.affine)[:3]


def _centre_depth(case):
    """mm from the tumour's centre of mass to the outside of the brain (numpy/scipy, from the
    rendered images: the brain is where any sequence is non-zero)."""
    brain = np.any(case.images != 0, axis=-1)
    depth = ndimage.distance_transform_edt(brain, sampling=_spacing())
    centre = np.round(ndimage.center_of_mass(_tumour(case))).astype(int)
    return float(depth[tuple(centre)])


def test_the_default_family_is_the_generator_before_families(cases):
    for i, case in zip(CASES, cases["glioma"], strict=True):
        plain = synthesize_case(11, i, False, CONFIG)
        np.testing.assert_array_equal(plain.images, case.images)
        np.testing.assert_array_equal(plain.seg, case.seg)
        assert case.family == "glioma"


def test_a_non_enhancing_tumour_has_no_enhancing_label_and_does_not_enhance(cases):
    for case in cases["non-enhancing"]:
        assert not (case.seg == 4).any() and (case.seg == 1).any()
        t1, t1ce, _, flair = (case.images[..., c].astype(float) for c in range(4))
        tumour = case.seg == 1
        # T1ce over T1 in the tumour is what it is in the healthy tissue: no contrast uptake
        healthy = (case.seg == 0) & (case.anat > 0)
        ratio_tumour = np.median(t1ce[tumour] / t1[tumour])
        ratio_healthy = np.median(t1ce[healthy] / t1[healthy])
        assert ratio_tumour < 1.25 * ratio_healthy
        assert np.median(flair[tumour]) > np.median(flair[healthy])
    for case in cases["glioma"]:  # the contrast the test relies on: a glioma's rim enhances
        rim = case.seg == 4
        healthy = (case.seg == 0) & (case.anat > 0)
        t1, t1ce = (case.images[..., c].astype(float) for c in range(2))
        assert np.median(t1ce[rim] / t1[rim]) > 1.25 * np.median(t1ce[healthy] / t1[healthy])


def test_multifocal_cases_hold_several_tumours(cases):
    counts = [ndimage.label(_tumour(case))[1] for case in cases["multifocal"]]
    assert all(1 <= n <= 4 for n in counts) and max(counts) >= 2, counts
    assert all(ndimage.label(_tumour(c))[1] == 1 for c in cases["glioma"])


def test_small_and_large_tumours_bracket_the_glioma(cases):
    voxel_mm3 = float(np.prod(_spacing()))

    def radius_mm(case):  # the radius of the ball of the tumour's volume
        return (3 * _tumour(case).sum() * voxel_mm3 / (4 * np.pi)) ** (1 / 3)

    small = [radius_mm(c) for c in cases["small"]]
    large = [radius_mm(c) for c in cases["large"]]
    glioma = [radius_mm(c) for c in cases["glioma"]]
    # family radii: small 3-7 mm, large 22-32 mm (irregularity ±30 %, voxels 5 mm wide)
    assert max(small) < 7 * 1.3 + 5
    assert min(large) > 22 * 0.7 - 5
    assert max(small) < min(glioma) and max(glioma) < min(large)


def test_cortical_lesions_lie_near_the_surface_and_deep_ones_deep(cases):
    cortical = [_centre_depth(c) for c in cases["cortical"]]
    deep = [_centre_depth(c) for c in cases["deep"]]
    assert max(cortical) < min(deep), (cortical, deep)
    assert max(cortical) <= 8 + 2 * _spacing().max()  # centred within 8 mm of the surface


def test_without_mass_effect_the_anatomy_is_the_healthy_cases(cases):
    # a healthy and a diseased render of one (seed, case) share the warp; only the lesion's
    # push can move the anatomy labels
    for i, case in zip(CASES, cases["no-mass-effect"], strict=True):
        healthy = synthesize_case(11, i, True, CONFIG)
        np.testing.assert_array_equal(case.anat, healthy.anat)
    moved = [
        (c.anat != synthesize_case(11, i, True, CONFIG).anat).sum()
        for i, c in zip(CASES, cases["glioma"], strict=True)
    ]
    assert min(moved) > 0


def test_an_archive_draws_each_case_family_and_records_it(tmp_path):
    out = tmp_path / "mixed"
    names = ("small", "cortical", "multifocal")
    ids = synthesize_archive(out, 9, 0.0, seed=2, size=16, families=names)
    listing = json.loads((out / "synth.json").read_text())
    assert listing["lesion_families"] == list(names)
    drawn = [entry["family"] for entry in listing["case_list"]]
    assert set(drawn) <= set(names) and len(set(drawn)) >= 2
    assert [e["case"] for e in listing["case_list"]] == ids
    # the same call is this very archive; other families are another archive
    assert synthesize_archive(out, 9, 0.0, seed=2, size=16, families=names) == ids
    with pytest.raises(FileExistsError):
        synthesize_archive(out, 9, 0.0, seed=2, size=16, families=("small",))


def test_an_archive_from_before_families_is_the_default_family(tmp_path):
    out = tmp_path / "old"
    synthesize_archive(out, 2, 0.5, seed=0, size=16)
    listing = json.loads((out / "synth.json").read_text())
    del listing["lesion_families"]  # as written before families existed
    (out / "synth.json").write_text(json.dumps(listing))
    stamp = (out / "synth.json").stat().st_mtime_ns
    synthesize_archive(out, 2, 0.5, seed=0, size=16, families=("glioma",))
    assert (out / "synth.json").stat().st_mtime_ns == stamp  # recognised, not rewritten


def test_unknown_families_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="'tumour'.*glioma"):
        parse_families("glioma,tumour")
    assert parse_families(" small ,small,large") == ("small", "large")
    result = CliRunner().invoke(
        main, ["synth", str(tmp_path / "a"), "--size", "16", "--lesion-family", "blob"]
    )
    assert result.exit_code == 2 and "blob" in result.output and "--lesion-family" in result.output
    assert not (tmp_path / "a").exists()
    result = CliRunner().invoke(
        main,
        ["synth", str(tmp_path / "b"), "--size", "16", "--cases", "2", "--lesion-family", "all",
         "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["lesion_families"] == list(FAMILIES)
