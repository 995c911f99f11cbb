"""The JSON API, in process: hits equal a plain-numpy brute force over the index's own code
arrays and codebooks; cases, images, errors and the OpenAPI description."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fdn.archive_index.queries import QueryError, query_options, run_slice_query
from hashindex import DISTANCES, ENGINES, fastscan_kernel
from tests.service.conftest import load_reference

ref = load_reference()


@pytest.fixture(scope="module")
def brute(service, built_index):
    """(distance function, volumes) computed from the index files, not from the search code."""
    index = service.index
    cn = np.load(built_index / "codebook_normal.npy")
    ca = np.load(built_index / "codebook_abnormal.npy")
    gn, ga = index.codes_normal, index.codes_abnormal
    volumes = np.asarray(index.table["volume"], dtype=np.int64)

    def topq(row, mode, distance, q, exclude, scales=None):
        dist = ref.all_distances(
            index.hash_index, cn, ca, gn, ga, gn[row], ga[row], mode, distance, scales
        )
        # S_abnormal and S_sum leave out slices almost without brain (brain_percent.npy)
        keep = ref.lesion_candidates(built_index, mode, dist.size)
        hits = ref.volume_topq(np.where(keep, dist, np.inf), volumes, len(volumes), exclude)
        return [h for h in hits if np.isfinite(h[0])][:q]

    return topq


def lesion_slice(index):
    areas = np.array([-1 if a is None or a != a else a for a in index.table["lesion_area"]], float)
    row = int(np.argmax(areas))
    return str(index.table["case"][row]), int(index.table["slice"][row]), row


EXACT = [b for b in ENGINES if b not in ("faiss-flat", "faiss-ivf")]  # lut, numpy, fastscan, ...
ENGINE_DISTANCES = [(b, d) for b in EXACT for d in DISTANCES]


@pytest.mark.parametrize("engine, distance", [*ENGINE_DISTANCES, ("faiss-flat", "hamming")])
def test_query_hits_equal_numpy_brute_force(client, service, brute, distance, engine):
    index = service.index
    case, z, row = lesion_slice(index)
    r = client.get(
        "/api/query",
        params={
            "case": case,
            "slice": z,
            "mode": "all",
            "distance": distance,
            "topq": 3,
            "engine": engine,
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"] == f"{case} slice {z}" and body["modes"] == ["normal", "abnormal", "sum"]
    for mode in ("normal", "abnormal", "sum"):
        expected = brute(row, mode, distance, 3, exclude=int(index.table["volume"][row]))
        hits = body["results"][mode]["hits"]
        # the API names the fastscan kernel that answered (the CPU's best here), else null
        kernel = fastscan_kernel() if engine == "fastscan" else None
        assert body["results"][mode]["kernel"] == kernel, mode
        assert [h["row"] for h in hits] == [r_ for _, r_, _ in expected], mode
        np.testing.assert_allclose(
            [h["distance"] for h in hits], [d for d, _, _ in expected], rtol=1e-9, atol=1e-7
        )
        assert [h["rank"] for h in hits] == list(range(1, len(expected) + 1))
        assert [h["case"] for h in hits] == [str(index.table["case"][r_]) for _, r_, _ in expected]
        assert case not in {h["case"] for h in hits}


def test_normalized_sum_and_same_volume_equal_brute_force(client, service, brute):
    index = service.index
    case, z, row = lesion_slice(index)
    scales = (
        index.hash_index.scales["normal/euclidean"],
        index.hash_index.scales["abnormal/euclidean"],
    )
    r = client.get(
        "/api/query",
        params={
            "case": case,
            "slice": z,
            "mode": "sum",
            "distance": "euclidean",
            "topq": 4,
            "normalized_sum": "true",
            "include_same_volume": "1",
        },
    )
    assert r.status_code == 200, r.text
    hits = r.json()["results"]["sum"]["hits"]
    expected = brute(row, "sum", "euclidean", 4, exclude=None, scales=scales)
    assert [h["row"] for h in hits] == [r_ for _, r_, _ in expected]
    assert hits[0]["distance"] == pytest.approx(0.0, abs=1e-9)  # the query's own slice


def test_api_result_is_the_library_result(client, service, tiny_archive, built_index):
    """One schema: the API's JSON is `run_slice_query(...).to_dict()`, timings aside, and paths
    relative: the index by its folder's name, each source by its folder inside the archive."""
    case = service.index.cases[1]
    body = client.get("/api/query", params={"case": case, "mode": "abnormal", "topq": 2}).json()
    lib = run_slice_query(service.index, case, None, query_options("abnormal", topq=2)).to_dict()
    timing = {"query_seconds", "load_seconds", "encode_seconds"}
    for key in lib:
        if key not in timing and key not in ("results", "index"):
            assert body[key] == lib[key], key
    assert body["index"] == built_index.name
    hits, lib_hits = body["results"]["abnormal"]["hits"], lib["results"]["abnormal"]["hits"]
    assert [{**h, "source": None} for h in hits] == [{**h, "source": None} for h in lib_hits]
    assert [h["source"] for h in hits] == [
        str(Path(h["source"]).relative_to(tiny_archive.resolve())) for h in lib_hits
    ]
    assert all(h["source"] == h["case"] for h in hits)  # the archive's case folders
    assert body["query_slice"] == service.index.default_slice(case)


@pytest.mark.parametrize(
    "params, field",
    [
        ({"mode": "lesion"}, "mode"),
        ({"distance": "cosine"}, "distance"),
        ({"engine": "gpu"}, "engine"),
        ({"topq": "0"}, "topq"),
        ({"topq": "ten"}, "topq"),
        ({"topq": "1000"}, "topq"),
        ({"nprobe": "-1"}, "nprobe"),
        ({"normalized_sum": "maybe"}, "normalized_sum"),
    ],
)
def test_bad_options_get_the_library_message(client, service, params, field):
    case = service.index.cases[0]
    r = client.get("/api/query", params={"case": case, **params})
    assert r.status_code == 400
    message = r.json()["error"]
    assert message.startswith(f"{field} must be")
    if field in ("mode", "distance", "engine", "topq") and params.get("topq") != "1000":
        keyword = {"mode": "mode", "distance": "distance", "engine": "engine", "topq": "topq"}
        with pytest.raises(QueryError) as caught:
            query_options(**{keyword[field]: list(params.values())[0]})
        assert message == str(caught.value)


def test_unknown_case_and_slice(client, service):
    r = client.get("/api/query", params={"case": "NOPE"})
    assert r.status_code == 404 and "no case 'NOPE'" in r.json()["error"]
    case = service.index.cases[0]
    r = client.get("/api/query", params={"case": case, "slice": 999})
    assert r.status_code == 400 and "out of range" in r.json()["error"]
    assert client.get("/api/query").status_code == 400
    assert client.get("/api/cases/NOPE").status_code == 404


def test_info_and_health(client, service):
    info = client.get("/api/info").json()
    m = service.index.manifest
    assert (info["n_cases"], info["n_slices"], info["input_size"]) == (
        m.n_cases,
        m.n_slices,
        m.input_size,
    )
    assert info["sequences"] == ["t1", "t1ce", "t2", "flair"]
    assert info["engines"] == list(ENGINES)
    spec = client.get("/openapi.json").json()
    engine = next(
        p for p in spec["paths"]["/api/query"]["get"]["parameters"] if p["name"] == "engine"
    )
    assert engine["schema"]["enum"] == list(ENGINES)
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["n_slices"] == m.n_slices


def test_cases_are_paged_and_filtered(client, service):
    table = service.index.table
    all_cases = sorted(set(map(str, table["case"])))
    page = client.get("/api/cases", params={"limit": 3, "offset": 1}).json()
    assert page["total"] == len(all_cases)
    assert [c["case"] for c in page["cases"]] == all_cases[1:4]
    lesion = {}
    for case, area in zip(table["case"], table["lesion_area"]):
        lesion[str(case)] = lesion.get(str(case), False) or bool(area and area > 0)
    with_lesion = client.get("/api/cases", params={"has_lesion": "true"}).json()["cases"]
    without = client.get("/api/cases", params={"has_lesion": "false"}).json()["cases"]
    assert [c["case"] for c in with_lesion] == [c for c in all_cases if lesion[c]]
    assert [c["case"] for c in without] == [c for c in all_cases if not lesion[c]]
    assert with_lesion and without
    one = client.get("/api/cases", params={"q": all_cases[2].lower()}).json()
    assert [c["case"] for c in one["cases"]] == [all_cases[2]]
    meta = client.get(f"/api/cases/{all_cases[2]}").json()
    rows = np.flatnonzero(np.asarray(table["case"]) == all_cases[2])
    assert meta["n_slices"] == len(rows)
    assert meta["default_slice"] == service.index.default_slice(all_cases[2])
    assert client.get("/api/cases", params={"limit": 0}).status_code == 400


def test_slice_png_matches_the_source_volume(client, service, tiny_archive):
    """The PNG shows the case's own voxels: its grey levels rank like the source slice's."""
    import nibabel as nib

    case, z, _ = lesion_slice(service.index)
    r = client.get(f"/api/cases/{case}/slices/{z}.png", params={"sequence": "t2"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    png = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    source = np.asarray(nib.load(tiny_archive / case / f"{case}_t2.nii.gz").dataobj)[:, :, z]
    assert png.shape == (source.shape[1], source.shape[0], 3)
    grey = png[..., 0].astype(float)[::-1].T  # back to (X, Y)
    assert np.all(png[..., 0] == png[..., 1])  # no overlay asked: grey
    order = np.argsort(source.ravel(), kind="stable")
    assert np.all(np.diff(grey.ravel()[order]) >= 0)  # a monotone grey map of the source voxels
    assert np.corrcoef(grey.ravel(), source.ravel())[0, 1] > 0.9
    with_seg = np.asarray(
        Image.open(
            io.BytesIO(
                client.get(
                    f"/api/cases/{case}/slices/{z}.png", params={"sequence": "t2", "overlay": "seg"}
                ).content
            )
        ).convert("RGB")
    )
    seg = np.asarray(nib.load(tiny_archive / case / f"{case}_seg.nii.gz").dataobj)[:, :, z]
    coloured = (with_seg[..., 0] != with_seg[..., 1])[::-1].T
    assert coloured.any() and not coloured[seg == 0].any()  # colour exactly where the lesion is


@pytest.mark.parametrize("params", [{"sequence": "dwi"}, {"overlay": "mask"}])
def test_bad_image_parameters(client, service, params):
    case = service.index.cases[0]
    r = client.get(f"/api/cases/{case}/slices/3.png", params=params)
    assert r.status_code == 400 and "must be" in r.json()["error"]


def test_openapi_lists_every_api_route(client):
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    paths = set(spec["paths"])
    for route in client.app.routes:
        if route.path.startswith("/api"):
            assert route.path.replace("{slice:int}", "{slice}") in paths
    assert "post" in spec["paths"]["/api/query/upload"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text


def test_page_and_assets_ship_in_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="case-select"' in page.text
    for name in ("app.js", "app.css", "docs.js"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and len(r.content) > 100
    assert "http" not in client.get("/").text.replace("http-equiv", "")  # no CDN
    assert "https://" not in client.get("/static/app.js").text


def test_image_cache_is_bounded(service):
    from fdn.service.images import SliceImages

    small = SliceImages(service.index, max_bytes=1)
    large = SliceImages(service.index, max_bytes=2**30)
    for case in service.index.cases[:3]:
        small.png(case, 2)
        large.png(case, 2)
    assert list(small._cache) == [service.index.cases[2]]  # only the last case read
    assert list(large._cache) == service.index.cases[:3]
    assert small.png(service.index.cases[0], 2) == large.png(service.index.cases[0], 2)
