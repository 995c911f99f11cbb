"""The fast reading path (ISA-L inflate, slices kept in NIfTI's storage order, resizing as two
GEMMs over all slices) against the reader and preprocessing it replaced, on a synthetic case.

The old path is written out below as the reference: np.stack of the (H, W, Z) arrays read with
the standard zlib, np.where for the z-score, and ``rows @ x @ cols.T`` per slice.
"""

import gzip
import zlib

import nibabel as nib
import numpy as np
import pytest

import fdn.data.nifti as nifti
from fdn.data.case import RawCase, preprocess, read_case, zscore
from fdn.data.labels import SEQUENCES
from fdn.data.resize import bilinear_weights, resize_images, resize_labels
from fdn.synth import synthesize_archive
from tests.data.test_resize import resize_error_bound

CASE_SIZE = 120  # in-plane voxels of the synthetic case (BraTS's 240 / 2; 78 slices)


@pytest.fixture(scope="module")
def case_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("read_speed") / "archive"
    (case,) = synthesize_archive(root, n_cases=1, healthy_fraction=0.0, seed=5, size=CASE_SIZE)
    files = {p.name[len(case) + 1 : -len(".nii.gz")]: p for p in (root / case).glob("*.nii.gz")}
    assert set(SEQUENCES) | {"seg", "anat", "pseudohealthy"} <= set(files)
    return case, files


def _old_read_case(files: dict, case_id: str, monkeypatch) -> RawCase:
    """The reader as it was: every file through the standard zlib, channels np.stack'ed."""
    monkeypatch.setattr(nifti, "_inflate", zlib)
    raw = read_case(files, case_id)
    monkeypatch.undo()
    image = np.stack([np.ascontiguousarray(raw.image[c]) for c in range(4)])  # (4, H, W, Z)
    return raw._replace(image=image)


def _old_resize_images(x: np.ndarray, size: int) -> np.ndarray:
    """(..., H, W) -> (..., size, size): the batched matmul per slice that was replaced."""
    rows = bilinear_weights(x.shape[-2], size)
    cols = bilinear_weights(x.shape[-1], size)
    return (rows @ x.astype(np.float32, copy=False) @ cols.T).astype(np.float32, copy=False)


def _old_zscored(raw: RawCase, x: np.ndarray) -> np.ndarray:
    """(C, H, W, Z) z-scored over the brain of raw.image, 0 outside, as preprocess did it."""
    brain = np.any(raw.image != 0, axis=0)
    mean, std = zscore(raw.image, brain)
    shift = mean.astype(np.float32).reshape(-1, 1, 1, 1)
    scale = std.astype(np.float32).reshape(-1, 1, 1, 1)
    return np.where(brain, (x - shift) / scale, np.float32(0))


@pytest.mark.skipif(nifti.GZIP_BACKEND != "isal", reason="python-isal is not installed")
def test_isal_and_zlib_inflate_every_file_of_a_case_to_the_same_bytes(case_files):
    from isal import isal_zlib

    for path in case_files[1].values():
        with open(path, "rb") as f:
            fast, _, end_fast = nifti._gunzip(f, path, isal_zlib)
        with open(path, "rb") as f:
            slow, _, end_slow = nifti._gunzip(f, path, zlib)
        assert fast == slow == gzip.decompress(path.read_bytes()), path.name
        assert end_fast == end_slow


@pytest.mark.parametrize("backend", ["zlib", "isal"])
def test_each_backend_refuses_a_flipped_crc_and_a_truncated_stream(tmp_path, backend):
    inflate = zlib if backend == "zlib" else pytest.importorskip("isal.isal_zlib")
    image = nib.Nifti1Image(np.arange(8 * 8 * 6, dtype=np.int16).reshape(8, 8, 6), np.eye(4))
    raw = gzip.compress(image.to_bytes(), mtime=0)
    bad_crc = bytearray(raw)
    bad_crc[-6] ^= 0x01  # CRC-32 is the 8 bytes before the end, with the length
    for name, data in (("crc.nii.gz", bytes(bad_crc)), ("cut.nii.gz", raw[: len(raw) - 20])):
        path = tmp_path / name
        path.write_bytes(data)
        with open(path, "rb") as f, pytest.raises(nifti.NiftiError, match=name):
            nifti._gunzip(f, path, inflate)


def test_a_case_reads_exactly_as_the_old_reader_and_nibabel(case_files, monkeypatch):
    case, files = case_files
    new = read_case(files, case)
    old = _old_read_case(files, case, monkeypatch)
    assert new.image.shape == old.image.shape == (4, CASE_SIZE, CASE_SIZE, new.image.shape[3])
    np.testing.assert_array_equal(new.image, old.image)
    for key in ("seg", "anat", "pseudohealthy", "affine"):
        np.testing.assert_array_equal(getattr(new, key), getattr(old, key), err_msg=key)
    # and against nibabel reading the files on its own (an independent reader)
    for c, key in enumerate(SEQUENCES):
        np.testing.assert_array_equal(
            new.image[c], nib.load(files[key]).get_fdata(dtype=np.float32)
        )


@pytest.mark.parametrize("size", [64, 48, CASE_SIZE, 150])
def test_preprocess_matches_the_old_per_slice_path(case_files, size, monkeypatch):
    """z-score: the same float32 operations per voxel, so identical before resizing. Resizing:
    the same sums in another order (one GEMM over all slices, not one per slice); old and new
    are each within `resize_error_bound` of the exact result, so within twice it of each other."""
    case, files = case_files
    raw = read_case(files, case)
    old_raw = _old_read_case(files, case, monkeypatch)
    new = preprocess(raw, size)
    n_z = raw.image.shape[3]
    assert new.image.shape == (n_z, 4, size, size) and new.image.flags["C_CONTIGUOUS"]
    for got, x in ((new.image, old_raw.image), (new.pseudohealthy, old_raw.pseudohealthy)):
        z = _old_zscored(old_raw, x)
        want = _old_resize_images(np.transpose(z, (3, 0, 1, 2)), size)
        tol = 2 * resize_error_bound(CASE_SIZE, CASE_SIZE, size, float(np.abs(z).max()))
        assert got.dtype == np.float32
        if size == CASE_SIZE:  # no resizing: the z-score alone, bit for bit
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=0, atol=tol)
    labels = lambda y: resize_labels(np.transpose(y, (2, 0, 1)), size)  # noqa: E731
    np.testing.assert_array_equal(new.brain, labels(np.any(old_raw.image != 0, axis=0)))
    np.testing.assert_array_equal(new.seg, labels(old_raw.seg))
    np.testing.assert_array_equal(new.anat, labels(old_raw.anat))


def test_resize_images_takes_any_layout():
    x = np.random.default_rng(3).standard_normal((5, 3, 40, 30)).astype(np.float32)
    tol = 2 * resize_error_bound(40, 30, 16, float(np.abs(x).max()))
    want = _old_resize_images(x, 16)
    np.testing.assert_allclose(resize_images(x, 16), want, rtol=0, atol=tol)
    fortran = np.asfortranarray(x)
    np.testing.assert_allclose(resize_images(fortran, 16), want, rtol=0, atol=tol)
    assert resize_images(x[0, 0], 16).shape == (16, 16)
