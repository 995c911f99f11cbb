"""Query by an uploaded external case: the same answer as the CLI's --input path and as a brute
force over the index, since an archive case uploaded again encodes to its own indexed codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fdn.archive_index.queries import query_options, run_external_query
from tests.service.conftest import load_reference

reference = load_reference()


def upload_files(archive, case, keys=("t1", "t1ce", "t2", "flair", "seg")):
    return {
        k: (
            f"{case}_{k}.nii.gz",
            (archive / case / f"{case}_{k}.nii.gz").read_bytes(),
            "application/gzip",
        )
        for k in keys
    }


@pytest.mark.parametrize("mode", ["normal", "abnormal", "sum"])
def test_upload_hits_equal_brute_force_and_the_cli_path(
    client, service, tiny_archive, built_index, mode
):
    index = service.index
    case = next(c for c in index.cases if service.catalog[c].has_lesion)
    z = service.catalog[case].default_slice
    r = client.post(
        "/api/query/upload",
        files=upload_files(tiny_archive, case),
        data={"case_id": case, "mode": mode, "topq": "3", "distance": "euclidean"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["external"] is True and body["query_slice"] == z  # largest-lesion slice
    assert body["query"] == f"{case} slice {z} (external)"
    hits = body["results"][mode]["hits"]

    # Independent: numpy brute force from the index's stored codes of the same slice.
    row = index.row_of(case, z)
    cn = np.load(built_index / "codebook_normal.npy")
    ca = np.load(built_index / "codebook_abnormal.npy")
    gn, ga = index.codes_normal, index.codes_abnormal
    dist = reference.all_distances(
        index.hash_index, cn, ca, gn, ga, gn[row], ga[row], mode, "euclidean"
    )
    keep = reference.lesion_candidates(built_index, mode, dist.size)  # enough brain
    volumes = np.asarray(index.table["volume"])
    expected = reference.volume_topq(
        np.where(keep, dist, np.inf), volumes, len(volumes), exclude=index.volume_of(case)
    )
    expected = [h for h in expected if np.isfinite(h[0])][:3]
    assert [h["row"] for h in hits] == [r_ for _, r_, _ in expected]
    np.testing.assert_allclose(
        [h["distance"] for h in hits], [d for d, _, _ in expected], rtol=1e-9, atol=1e-7
    )

    # The CLI's --input path (a folder on disk) gives the same hits.
    lib = run_external_query(
        index, [tiny_archive / case], None, query_options(mode, topq=3, distance="euclidean")
    ).to_dict()
    # the same hits; the API names each source inside the archive, the CLI by its full path
    archive = tiny_archive.resolve()
    assert [
        {**h, "source": str(Path(h["source"]).relative_to(archive))}
        for h in lib["results"][mode]["hits"]
    ] == hits
    assert lib["query"] == body["query"]


def test_upload_of_a_new_case_at_a_chosen_slice(client, service, tiny_archive):
    """Under another name the case is not excluded: its own volume comes first, at distance 0."""
    index = service.index
    case = index.cases[0]
    r = client.post(
        "/api/query/upload",
        files=upload_files(tiny_archive, case, ("t1", "t1ce", "t2", "flair")),
        data={"case_id": "PATIENT_X", "slice": "7", "mode": "all", "topq": "2"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == "PATIENT_X slice 7 (external)"
    for mode in ("normal", "abnormal", "sum"):
        first = body["results"][mode]["hits"][0]
        assert (first["case"], first["distance"]) == (case, 0.0)
