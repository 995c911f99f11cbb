"""The semi-synthetic generator: geometry, determinism, label sanity, contrasts, mass effect."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from fdn.data import ANAT_LABELS, SEQUENCES
from fdn.synth import SynthConfig, healthy_cases, synthesize_archive, synthesize_case
from fdn.synth import generator as generator_module

SIZE = 40
CONFIG = SynthConfig(size=SIZE)
T1, T1CE, T2, FLAIR = (SEQUENCES.index(s) for s in ("t1", "t1ce", "t2", "flair"))


@pytest.fixture(scope="module")
def diseased():
    return synthesize_case(seed=3, case_index=1, healthy=False, config=CONFIG)


@pytest.fixture(scope="module")
def healthy():
    return synthesize_case(seed=3, case_index=1, healthy=True, config=CONFIG)


def test_geometry_follows_the_brats_field_of_view():
    assert SynthConfig(size=240).shape == (240, 240, 155)
    assert SynthConfig(size=64).shape == (64, 64, 41)  # round(155 * 64 / 240) = round(41.33)
    assert SynthConfig(size=48).shape == (48, 48, 31)  # round(31.0)
    affine = SynthConfig(size=64).affine
    # each spacing is one float64 division (240 / 64 is exact): within one rounding, u64
    np.testing.assert_allclose(
        np.diag(affine)[:3], [3.75, 3.75, 155 / 41], rtol=np.finfo(np.float64).eps / 2, atol=0
    )


def test_arrays_have_the_documented_types(diseased):
    assert diseased.images.shape == (*CONFIG.shape, 4) and diseased.images.dtype == np.int16
    assert diseased.pseudohealthy.shape == (*CONFIG.shape, 4)
    assert diseased.seg.dtype == np.uint8 and diseased.anat.dtype == np.uint8
    assert set(np.unique(diseased.seg)) == {0, 1, 2, 4}
    assert set(np.unique(diseased.anat)) <= set(range(7))


def test_same_seed_same_arrays_other_seed_other_arrays(diseased):
    again = synthesize_case(seed=3, case_index=1, healthy=False, config=CONFIG)
    for a, b in zip(diseased[:4], again[:4], strict=True):
        np.testing.assert_array_equal(a, b)
    other_seed = synthesize_case(seed=4, case_index=1, healthy=False, config=CONFIG)
    other_case = synthesize_case(seed=3, case_index=2, healthy=False, config=CONFIG)
    for other in (other_seed, other_case):
        assert not np.array_equal(other.images, diseased.images)
        assert not np.array_equal(other.anat, diseased.anat)


def test_lesion_lies_in_the_brain_and_mostly_in_the_cerebrum(diseased):
    brain = (diseased.images != 0).any(-1)
    lesion = diseased.seg > 0
    assert lesion.sum() > 20
    assert not (lesion & ~brain).any()
    # _anat keeps the counterfactual normal label under the lesion: cerebrum, not "other".
    under = diseased.anat[lesion]
    assert np.isin(under, [1, 2, 5, 6]).mean() > 0.9
    # Enhancing rim wraps the necrotic core: every core voxel is nearer the centre.
    core = np.argwhere(diseased.seg == 1)
    rim = np.argwhere(diseased.seg == 4)
    centre = np.argwhere(lesion & (diseased.seg != 2)).mean(0)
    core_distance = np.linalg.norm(core - centre, axis=1).mean()
    assert core_distance < np.linalg.norm(rim - centre, axis=1).mean()


def test_healthy_case_has_an_empty_seg_and_equals_its_pseudohealthy(healthy):
    assert not healthy.seg.any()
    np.testing.assert_array_equal(healthy.images, healthy.pseudohealthy)
    assert healthy.lesion_centre_mm is None


def test_all_six_anatomy_labels_appear_in_a_middle_axial_slice():
    for index in range(3):
        case = synthesize_case(seed=0, case_index=index, healthy=True, config=SynthConfig(size=48))
        depth = case.anat.shape[2]
        middle = range(depth // 4, 3 * depth // 4)
        assert any(set(np.unique(case.anat[:, :, z])) == {0, *ANAT_LABELS} for z in middle)


def test_left_labels_lie_left():
    case = synthesize_case(seed=5, case_index=0, healthy=True, config=CONFIG)
    x = np.argwhere(case.anat > 0)[:, 0]
    labels = case.anat[case.anat > 0]
    for left, right in ((1, 2), (3, 4), (5, 6)):  # NIfTI x grows to the right (RAS)
        assert x[labels == left].mean() < x[labels == right].mean()


def test_contrasts_have_plausible_relative_intensities(diseased):
    def median(channel, mask):
        return np.median(diseased.images[..., channel][mask])

    ventricles = np.isin(diseased.anat, [5, 6]) & (diseased.seg == 0)  # CSF
    cerebrum = np.isin(diseased.anat, [1, 2]) & (diseased.seg == 0)
    edema = diseased.seg == 2
    enhancing = diseased.seg == 4
    assert median(T1, ventricles) < median(T1, cerebrum)  # T1: CSF dark
    assert median(T2, ventricles) > median(T2, cerebrum)  # T2: CSF bright
    assert median(FLAIR, ventricles) < median(FLAIR, cerebrum)  # FLAIR: CSF dark
    assert median(FLAIR, edema) > median(FLAIR, cerebrum)  # FLAIR: edema bright
    assert median(T2, edema) > median(T2, cerebrum)  # T2: edema bright
    assert median(T1CE, enhancing) > 1.3 * median(T1CE, cerebrum)  # T1Gd: bright rim
    assert median(T1, enhancing) < median(T1CE, enhancing) * median(T1, cerebrum) / median(
        T1CE, cerebrum
    )  # enhancement is T1Gd only


def test_pseudohealthy_differs_only_around_the_lesion(diseased):
    near = ndimage.binary_dilation(diseased.seg > 0, np.ones((3, 3, 3), bool), iterations=3)
    np.testing.assert_array_equal(diseased.images[~near], diseased.pseudohealthy[~near])
    assert (
        np.abs(
            diseased.images[diseased.seg == 4].astype(int)
            - diseased.pseudohealthy[diseased.seg == 4]
        ).mean()
        > 20
    )


def test_mass_effect_moves_anatomy_near_the_lesion_only(diseased, healthy):
    """The healthy render of the same case shares its warp but has no lesion: the anatomy
    labels differ only within the lesion's reach."""
    changed = diseased.anat != healthy.anat
    assert changed.sum() > 10
    spacing = np.diag(CONFIG.affine)[:3]
    positions = np.argwhere(changed) * spacing + CONFIG.affine[:3, 3]
    distance = np.linalg.norm(positions - np.array(diseased.lesion_centre_mm), axis=1)
    reach = CONFIG.lesion_radius_mm[1] * CONFIG.edema_factor[1] * 2.5
    assert distance.max() < reach


def test_subjects_vary_in_shape_position_and_lesion_side():
    sides, brain_sizes, lowest = set(), [], []
    for index in range(8):
        case = synthesize_case(seed=1, case_index=index, healthy=False, config=SynthConfig(size=24))
        sides.add(case.lesion_centre_mm[0] > 0)
        brain = (case.images != 0).any(-1)
        brain_sizes.append(brain.sum())
        lowest.append(np.flatnonzero(np.isin(case.anat, [3, 4]).any((0, 1)))[0])
    assert sides == {True, False}
    assert np.std(brain_sizes) / np.mean(brain_sizes) > 0.02
    assert len(set(lowest)) > 1  # the axial position of the anatomy is not fixed


def test_healthy_fraction_is_rounded_and_seeded():
    mask = healthy_cases(10, 0.3, seed=0)
    assert mask.sum() == 3
    np.testing.assert_array_equal(mask, healthy_cases(10, 0.3, seed=0))
    assert any(not np.array_equal(mask, healthy_cases(10, 0.3, seed=s)) for s in range(1, 5))
    assert healthy_cases(4, 0.0, 0).sum() == 0 and healthy_cases(4, 1.0, 0).sum() == 4


def test_archive_files_are_byte_identical_for_the_same_seed(small_archive, tmp_path):
    recorded = json.loads((small_archive / "synth.json").read_text())
    again = tmp_path / "again"
    ids = synthesize_archive(
        again,
        recorded["cases"],
        recorded["healthy_fraction"],
        recorded["seed"],
        size=recorded["size"],
    )
    assert ids == ["SYN_000", "SYN_001", "SYN_002"]
    for case in ids:
        names = sorted(p.name for p in (small_archive / case).iterdir())
        assert len(names) == 7
        for name in names:
            assert (small_archive / case / name).read_bytes() == (again / case / name).read_bytes()
    manifest = json.loads((again / "synth.json").read_text())
    assert [c["healthy"] for c in manifest["case_list"]].count(True) == 1
    # A healthy case on disk has an empty seg.
    for entry in manifest["case_list"]:
        seg = np.asarray(nib.load(again / entry["case"] / f"{entry['case']}_seg.nii.gz").dataobj)
        assert seg.any() != entry["healthy"]


def test_existing_output_is_refused_reused_or_overwritten(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        synthesize_archive(out, 1, 0.0, seed=0, size=16)
    assert (out / "notes.txt").read_text() == "mine"

    fresh = tmp_path / "fresh"
    synthesize_archive(fresh, 2, 0.5, seed=0, size=16)
    stamp = os.stat(fresh / "SYN_000" / "SYN_000_t1.nii.gz").st_mtime_ns
    synthesize_archive(fresh, 2, 0.5, seed=0, size=16)  # same archive: left as it is
    assert os.stat(fresh / "SYN_000" / "SYN_000_t1.nii.gz").st_mtime_ns == stamp
    with pytest.raises(FileExistsError):
        synthesize_archive(fresh, 2, 0.5, seed=1, size=16)
    synthesize_archive(fresh, 1, 0.0, seed=1, size=16, overwrite=True)
    assert sorted(p.name for p in fresh.iterdir()) == ["SYN_000", "synth.json"]


def test_an_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    real = generator_module.synthesize_case
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(generator_module, "synthesize_case", failing)
    with pytest.raises(KeyboardInterrupt):
        synthesize_archive(tmp_path / "out", 3, 0.0, seed=0, size=16)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"n_cases": 0}, "n_cases"),
        ({"healthy_fraction": 1.5}, "healthy_fraction"),
        ({"size": 4}, "size"),
    ],
)
def test_bad_parameters_raise_value_error(tmp_path, kwargs, words):
    arguments = {"n_cases": 1, "healthy_fraction": 0.0, "seed": 0, "size": 16} | kwargs
    with pytest.raises(ValueError, match=words):
        synthesize_archive(tmp_path / "out", **arguments)
    assert not (tmp_path / "out").exists()
