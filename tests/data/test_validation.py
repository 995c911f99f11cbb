"""Every validation fault, triggered on purpose on a copy of a synthetic case."""

import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest

from fdn.data import Archive, BadCase
from fdn.errors import ArchiveError

CASE = "SYN_001"


def rewrite(path, transform=None, affine=None):
    """Save a modified copy of a NIfTI file in place (data and/or affine)."""
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    data = transform(data) if transform else data
    nib.save(nib.Nifti1Image(data, img.affine if affine is None else affine), path)


def truncate(path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def overwrite_with_garbage(path):
    path.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))


def with_nan(data):
    data = data.astype(np.float32)
    data[tuple(s // 2 for s in data.shape)] = np.nan
    return data


def with_inf(data):
    data = data.astype(np.float32)
    data[0, 0, 0] = np.inf
    return data


def with_label(value):
    def transform(data):
        data = data.copy()
        data[tuple(s // 2 for s in data.shape)] = value
        return data

    return transform


def shifted_affine(path):
    affine = nib.load(path).affine.copy()
    affine[0, 3] += 2.0
    rewrite(path, affine=affine)


# (file suffix, how to break it, words the message must contain)
FAULTS = {
    "missing sequence": ("flair", lambda p: p.unlink(), "missing the flair sequence"),
    "truncated gz": ("t1ce", truncate, "unreadable or truncated"),
    "not a nifti": ("t2", overwrite_with_garbage, "unreadable or truncated"),
    "shape mismatch": ("t2", lambda p: rewrite(p, lambda d: d[:-2]), "disagrees with the t1 shape"),
    "affine mismatch": ("flair", shifted_affine, "affine disagrees"),
    "nan": ("t1", lambda p: rewrite(p, with_nan), "NaN or inf"),
    "inf": ("flair", lambda p: rewrite(p, with_inf), "NaN or inf"),
    "seg label 3": ("seg", lambda p: rewrite(p, with_label(3)), "seg labels must be in"),
    "seg label 0.5": (
        "seg",
        lambda p: rewrite(p, lambda d: with_label(0.5)(d.astype(np.float32))),
        "seg labels must be in",
    ),
    "anat label 7": ("anat", lambda p: rewrite(p, with_label(7)), "anat labels must be in"),
    "anat shape mismatch": ("anat", lambda p: rewrite(p, lambda d: d[:, :-1]), "disagrees"),
    "pseudohealthy 3-D": ("pseudohealthy", lambda p: rewrite(p, lambda d: d[..., 0]), "H×W×Z×4"),
}


@pytest.fixture
def archive_copy(small_archive, tmp_path):
    root = tmp_path / "archive"
    shutil.copytree(small_archive, root)
    return root


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_names_case_file_and_fault(archive_copy, fault):
    suffix, breaker, words = FAULTS[fault]
    path = archive_copy / CASE / f"{CASE}_{suffix}.nii.gz"
    breaker(path)
    archive = Archive(archive_copy)
    with pytest.raises(ArchiveError) as raised:
        archive.load(CASE, size=16)
    message = str(raised.value)
    assert CASE in message and path.name in message and words in message, message
    with pytest.raises(ArchiveError, match=CASE):
        archive.validate()
    with pytest.raises(ArchiveError, match=CASE):
        list(archive.iter_volumes(size=16))


def test_skip_bad_lists_bad_cases_and_goes_on(archive_copy, caplog):
    truncate(archive_copy / "SYN_000" / "SYN_000_t1.nii.gz")
    rewrite(archive_copy / "SYN_002" / "SYN_002_seg.nii.gz", with_label(5))
    archive = Archive(archive_copy)
    bad = archive.validate(skip_bad=True)
    assert [b.case for b in bad] == ["SYN_000", "SYN_002"]
    assert all(isinstance(b, BadCase) for b in bad)
    assert bad[0].file.name == "SYN_000_t1.nii.gz" and "truncated" in bad[0].fault
    assert bad[1].file.name == "SYN_002_seg.nii.gz" and "seg labels" in bad[1].fault

    fresh = Archive(archive_copy)
    cases = [v.case for v in fresh.iter_volumes(size=16, skip_bad=True)]
    assert cases == ["SYN_001"]
    assert [b.case for b in fresh.bad] == ["SYN_000", "SYN_002"]
    assert "SYN_000" in caplog.text and "SYN_002" in caplog.text
    slices = list(fresh.iter_slices(size=16, skip_bad=True))
    assert {s.case for s in slices} == {"SYN_001"}
    assert [b.case for b in fresh.bad] == ["SYN_000", "SYN_002"]  # not listed twice


def test_a_good_archive_validates_clean(small_archive):
    assert Archive(small_archive).validate() == []
