"""The archive reader: discovery, round trip, preprocessing statistics, laziness, skip_bad."""

import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from fdn.data import (
    SEQUENCES,
    Archive,
    Slice,
    Volume,
    case_files_from_paths,
    load_case_files,
    seg_to_classes,
)
from fdn.errors import ArchiveError


def read_nifti(path):
    return np.asarray(nib.load(path).dataobj)


U32 = np.finfo(np.float32).eps / 2  # unit roundoff of float32


def reference_preprocessing(case_dir, case, size):
    """Independent z-score + resize, all in float64: numpy statistics, torch resizing.

    Returns (image (Z, 4, size, size) float64, error bound): the bound on how far the float32
    pipeline may lie from this float64 result. Per voxel, fdn rounds mean and std to float32
    (errors u·|mean|/std and u·|z|), then rounds x - mean and the division (u·|z| each):
    u·(3|z| + |mean|/std). Resizing sums k_r then k_c nonnegative weights that sum to 1, each
    weight rounded once: (k_r + k_c + 4)·u·max|z| more, and it carries the z-score error
    through unchanged (weights sum to 1). A factor 1.01 covers second-order terms.
    """
    from fdn.data.resize import bilinear_weights

    x = np.stack(
        [read_nifti(case_dir / f"{case}_{s}.nii.gz").astype(np.float64) for s in SEQUENCES]
    )  # (4, H, W, Z)
    brain = (x != 0).any(0)
    z = np.zeros_like(x)
    offsets = []
    for c in range(4):
        mean, std = x[c][brain].mean(), x[c][brain].std()
        z[c][brain] = (x[c][brain] - mean) / std
        offsets.append(abs(mean) / std)
    h, w = x.shape[1:3]
    max_z = float(np.abs(z).max())
    bound = U32 * (3 * max_z + max(offsets))
    if (h, w) != (size, size):
        k_r = int((bilinear_weights(h, size) > 0).sum(1).max())
        k_c = int((bilinear_weights(w, size) > 0).sum(1).max())
        bound += (k_r + k_c + 4) * U32 * max_z
    z = torch.from_numpy(z.transpose(3, 0, 1, 2))  # (Z, 4, H, W) float64
    if (h, w) != (size, size):
        z = F.interpolate(
            z, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return z.numpy(), 1.01 * bound


def test_discovers_sorted_cases_and_files(small_archive):
    archive = Archive(small_archive)
    assert archive.case_ids == ["SYN_000", "SYN_001", "SYN_002"]
    files = archive.case_files("SYN_001")
    assert set(files) == {*SEQUENCES, "seg", "anat", "pseudohealthy"}
    assert files["t1ce"] == small_archive / "SYN_001" / "SYN_001_t1ce.nii.gz"


def test_round_trip_at_the_original_size(small_archive):
    archive = Archive(small_archive)
    case = "SYN_000"
    volume = archive.load(case, size=40)
    assert isinstance(volume, Volume)
    seg = read_nifti(small_archive / case / f"{case}_seg.nii.gz")
    anat = read_nifti(small_archive / case / f"{case}_anat.nii.gz")
    h, w, depth = seg.shape
    assert volume.shape == (h, w, depth)
    assert volume.image.shape == (depth, 4, 40, 40) and volume.image.dtype == np.float32
    reference, tol = reference_preprocessing(small_archive / case, case, 40)
    np.testing.assert_allclose(volume.image, reference, rtol=0, atol=tol)
    # Labels: slice z of the volume is NIfTI slice z, rows/cols the first/second NIfTI axes.
    np.testing.assert_array_equal(volume.seg, seg.transpose(2, 0, 1))
    np.testing.assert_array_equal(volume.anat, anat.transpose(2, 0, 1))
    assert volume.seg.dtype == np.uint8 and volume.anat.dtype == np.uint8


def test_resized_volume_matches_torch_reference(small_archive):
    volume = Archive(small_archive).load("SYN_001", size=24)
    assert volume.image.shape[1:] == (4, 24, 24)
    assert volume.seg.shape[1:] == (24, 24) and volume.brain.shape[1:] == (24, 24)
    reference, tol = reference_preprocessing(small_archive / "SYN_001", "SYN_001", 24)
    np.testing.assert_allclose(volume.image, reference, rtol=0, atol=tol)


def test_zscore_is_zero_mean_unit_std_inside_the_brain(small_archive):
    for volume in Archive(small_archive).iter_volumes(size=40):  # 40: the original size
        case_dir = small_archive / volume.case
        _, tol = reference_preprocessing(case_dir, volume.case, 40)
        # Statistics in float64, so only the per-voxel float32 error (at most tol) remains:
        # it moves the mean by at most tol, and the std by at most the rms error <= tol.
        brain_voxels = volume.image.transpose(1, 0, 2, 3)[:, volume.brain].astype(np.float64)
        np.testing.assert_allclose(brain_voxels.mean(1), 0, rtol=0, atol=tol)
        np.testing.assert_allclose(brain_voxels.std(1), 1, rtol=0, atol=tol)
        assert np.all(volume.image.transpose(1, 0, 2, 3)[:, ~volume.brain] == 0)


def test_pseudohealthy_uses_the_image_normalisation(small_archive):
    """Outside the lesion the synthetic pseudo-healthy volume equals the image, so after
    normalisation with the same mean/std the two must agree there too."""
    volume = Archive(small_archive).load("SYN_000", size=40)
    assert volume.seg.any()
    # The lesion's soft edge (Gaussian, truncated at 3 voxels) stays within a 3-voxel cube.
    far = ~ndimage.binary_dilation(volume.seg > 0, np.ones((3, 3, 3), bool), iterations=3)
    image = volume.image.transpose(1, 0, 2, 3)[:, far]
    pseudo = volume.pseudohealthy.transpose(1, 0, 2, 3)[:, far]
    # Equal source voxels go through the same float32 operations with the same mean and std:
    # the results are equal bit for bit, so no tolerance is needed.
    np.testing.assert_array_equal(pseudo, image)


def test_slices_follow_the_volume(small_archive):
    archive = Archive(small_archive)
    slices = list(archive.iter_slices(size=32))
    volumes = list(archive.iter_volumes(size=32))
    assert len(slices) == sum(v.image.shape[0] for v in volumes)
    first = volumes[0]
    for s in slices[: first.image.shape[0]]:
        assert isinstance(s, Slice) and s.case == first.case
        np.testing.assert_array_equal(s.image, first.image[s.index])
        np.testing.assert_array_equal(s.seg, first.seg[s.index])
        np.testing.assert_array_equal(s.anat, first.anat[s.index])
    assert [s.index for s in slices[: first.image.shape[0]]] == list(range(first.image.shape[0]))


def test_iteration_is_lazy(small_archive, tmp_path):
    """A broken second case must not stop the first volume from being yielded: cases are read
    one at a time, on demand."""
    root = tmp_path / "archive"
    shutil.copytree(small_archive, root)
    (root / "SYN_001" / "SYN_001_t2.nii.gz").unlink()
    volumes = Archive(root).iter_volumes(size=16)
    assert next(volumes).case == "SYN_000"
    with pytest.raises(ArchiveError, match="SYN_001"):
        next(volumes)


def test_cases_without_optional_files_have_none(small_archive, tmp_path):
    root = tmp_path / "archive"
    shutil.copytree(small_archive / "SYN_002", root / "SYN_002")
    for key in ("seg", "anat", "pseudohealthy"):
        (root / "SYN_002" / f"SYN_002_{key}.nii.gz").unlink()
    volume = Archive(root).load("SYN_002", size=16)
    assert volume.seg is None and volume.anat is None and volume.pseudohealthy is None
    assert all(s.seg is None and s.anat is None for s in Archive(root).iter_slices(16))


def test_external_case_from_loose_files(small_archive, tmp_path):
    for key in SEQUENCES:
        shutil.copy(
            small_archive / "SYN_001" / f"SYN_001_{key}.nii.gz", tmp_path / f"p7_{key}.nii.gz"
        )
    case, files = case_files_from_paths(sorted(tmp_path.iterdir()))
    assert case == "p7" and set(files) == set(SEQUENCES)
    external = load_case_files(files, 24, case)
    internal = Archive(small_archive).load("SYN_001", 24)
    np.testing.assert_array_equal(external.image, internal.image)
    # A folder whose name is not the prefix still works.
    assert case_files_from_paths([tmp_path])[0] == "p7"


def test_external_files_of_two_cases_are_refused(small_archive):
    paths = [
        small_archive / "SYN_000" / "SYN_000_t1.nii.gz",
        small_archive / "SYN_001" / "SYN_001_t2.nii.gz",
    ]
    with pytest.raises(ArchiveError, match="different cases"):
        case_files_from_paths(paths)


def test_missing_or_empty_root_is_an_archive_error(tmp_path):
    with pytest.raises(ArchiveError, match="does not exist"):
        Archive(tmp_path / "nowhere")
    (tmp_path / "empty_case").mkdir()
    with pytest.raises(ArchiveError, match="holds no case"):
        Archive(tmp_path)


def test_seg_to_classes_by_hand():
    seg = np.array([[0, 1], [2, 4]], np.uint8)
    np.testing.assert_array_equal(seg_to_classes(seg), [[0, 1], [2, 3]])
    assert seg_to_classes(seg).dtype == np.int64
    np.testing.assert_array_equal(seg_to_classes(seg.astype(np.float32)), [[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="3"):
        seg_to_classes(np.array([0, 3]))


def test_a_load_for_the_index_reads_the_sequences_and_seg_only(small_archive, tmp_path):
    """extras=("seg",) gives the same image and labels, without anat and the pseudo-healthy
    volume, and never opens them: a damaged pseudo-healthy file does not stop it."""
    archive = Archive(small_archive)
    case = archive.case_ids[0]
    full = archive.load(case, 32)
    assert full.pseudohealthy is not None and full.anat is not None
    root = tmp_path / "archive"
    shutil.copytree(small_archive, root)
    for extra in ("pseudohealthy", "anat"):
        (path,) = (root / case).glob(f"{case}_{extra}.nii*")
        path.write_bytes(b"not a NIfTI file")
    lean = Archive(root).load(case, 32, extras=("seg",))
    np.testing.assert_array_equal(lean.image, full.image)
    np.testing.assert_array_equal(lean.seg, full.seg)
    assert lean.pseudohealthy is None and lean.anat is None
