"""fdn.archive_index.queries: the one-slice preprocessing of an external case equals the whole-volume path
(`load_case_files`) bit for bit, and bad cases fail with the archive reader's own message."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from fdn.archive_index.queries import QueryError, load_query_slice, query_options
from fdn.data import case_files_from_paths, load_case_files
from fdn.data.case import CaseError
from fdn.data.render import default_slice


@pytest.mark.parametrize("size", [32, 24])
def test_one_slice_equals_the_whole_volume_path(tiny_archive, size):
    for folder in sorted(p for p in tiny_archive.iterdir() if p.is_dir()):
        case, files = case_files_from_paths([folder])
        files.pop("pseudohealthy", None)
        volume = load_case_files(files, size, case)
        depth = volume.image.shape[0]
        seg = None if volume.seg is None else np.moveaxis(volume.seg, 0, -1)
        expected_default = default_slice(seg, depth)
        image, s, a, z = load_query_slice(files, size, case, None)
        assert z == expected_default
        for z in (0, expected_default, depth - 1):
            image, s, a, got = load_query_slice(files, size, case, z)
            assert got == z and image.dtype == np.float32
            np.testing.assert_array_equal(image, volume.image[z])
            np.testing.assert_array_equal(s, volume.seg[z])
            np.testing.assert_array_equal(a, volume.anat[z])


def test_bad_cases_fail_with_the_archive_readers_message(tiny_archive, tmp_path):
    folder = sorted(p for p in tiny_archive.iterdir() if p.is_dir())[0]
    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    t2 = copy / f"{folder.name}_t2.nii.gz"
    img = nib.load(t2)
    nib.save(nib.Nifti1Image(np.full(img.shape, 7, np.int16), img.affine), t2)
    case, files = case_files_from_paths([copy])
    with pytest.raises(CaseError) as whole:
        load_case_files(files, 32, case)
    with pytest.raises(CaseError) as one:
        load_query_slice(files, 32, case, None)
    assert str(one.value) == str(whole.value)
    assert "constant over the brain" in str(one.value)
    with pytest.raises(QueryError, match="out of range"):
        load_query_slice(case_files_from_paths([folder])[1], 32, case, 10_000)


def test_query_options_are_checked_once_for_everyone():
    assert query_options("all").modes == ("normal", "abnormal", "sum")
    assert query_options(["sum", "normal", "sum"]).modes == ("sum", "normal")
    with pytest.raises(QueryError, match="topq must be at least 1; got 0"):
        query_options(topq=0)
    with pytest.raises(QueryError, match="topq must be an integer; got 2.5"):
        query_options(topq=2.5)
    with pytest.raises(QueryError, match="topq must be an integer; got True"):
        query_options(topq=True)
