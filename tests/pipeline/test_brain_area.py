"""Slices almost without brain are no lesion look-alikes: the build records each slice's brain
share, and S_abnormal / S_sum leave out the rows below the threshold (S_normal keeps them)."""

import json

import nibabel as nib
import numpy as np
import pytest

from fdn.archive_index.queries import query_options, run_slice_query
from fdn.archive_index.retrieval import open_index
from fdn.data import Archive
from fdn.data.labels import SEQUENCES

THRESHOLD = 5  # percent, as the manifest records it


def _raw_brain_percent(archive_root, case):
    """Each slice's share of voxels non-zero in any sequence, from the NIfTI files themselves."""
    files = Archive(archive_root).case_files(case)
    volumes = [np.asarray(nib.load(files[s]).dataobj) for s in SEQUENCES]
    brain = np.any(np.stack(volumes) != 0, axis=0)  # (H, W, Z)
    return brain.mean(axis=(0, 1)) * 100


def test_the_recorded_brain_share_follows_the_volumes(built_index, tiny_archive):
    manifest = json.loads((built_index / "manifest.json").read_text())
    assert manifest["min_brain_percent"] == THRESHOLD
    assert "brain_percent.npy" in manifest["files"]
    percent = np.load(built_index / "brain_percent.npy")
    index = open_index(built_index)
    assert percent.dtype == np.uint8 and percent.shape == (index.ntotal,)
    for case in index.cases:
        rows = [index.row_of(case, z) for z in index.slice_range(case)]
        raw = _raw_brain_percent(tiny_archive, case)
        # the build measures the mask resized to the model's input: a few points of difference
        np.testing.assert_allclose(percent[rows], raw, atol=4)
    assert (percent < THRESHOLD).any(), "the tiny archive should have near-empty end slices"


@pytest.mark.parametrize("mode", ["abnormal", "sum"])
def test_lesion_queries_never_return_a_slice_almost_without_brain(built_index, mode):
    index = open_index(built_index)
    percent = np.load(built_index / "brain_percent.npy")
    returned_empty_without_the_mask = 0
    for case in index.cases:
        for z in index.slice_range(case):
            result = run_slice_query(index, case, z, query_options(mode, topq=3, engine="lut"))
            rows = [h.row for h in result.hits(mode)]
            assert all(percent[r] >= THRESHOLD for r in rows), (case, z, rows)
            # the same search over every row: what the mask keeps away
            plain = index.hash_index.search_volumes(
                *(g[None] for g in index.codes_of_row(index.row_of(case, z))),
                3,
                mode=mode,
                distance=result.results[mode].distance,
                engine="lut",
                exclude_volumes=np.array([index.volume_of(case)]),
            )
            returned_empty_without_the_mask += int(
                any(percent[r] < THRESHOLD for r in plain.rows[0] if r >= 0)
            )
    assert returned_empty_without_the_mask > 0, "the test archive never shows the problem"


def test_anatomy_queries_keep_the_end_slices(built_index):
    index = open_index(built_index)
    percent = np.load(built_index / "brain_percent.npy")
    case = index.cases[0]
    end = min(index.slice_range(case), key=lambda z: percent[index.row_of(case, z)])
    hits = run_slice_query(index, case, end, query_options("normal", topq=3)).hits("normal")
    assert any(percent[h.row] < THRESHOLD for h in hits)
