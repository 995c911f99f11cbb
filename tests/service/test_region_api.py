"""Region queries and why-this-hit through the API: /api/query?region=&explain= answers what the
library answers, /api/explain gives the numbers of the hit's explanation, and /api/explain.png
draws them over the plain slice image (cells that contribute nothing left untouched)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from fdn.archive_index.queries import query_options, run_slice_query


def _png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_api_region_query_is_the_library_region_query(client, service):
    case = service.index.cases[1]
    params = {
        "case": case,
        "slice": 12,
        "mode": "all",
        "topq": 3,
        "region": "0,0,15,15",
        "explain": "true",
    }
    body = client.get("/api/query", params=params).json()
    options = query_options("all", topq=3, region="0,0,15,15", explain=True)
    lib = run_slice_query(service.index, case, 12, options).to_dict()
    assert body["region"] == lib["region"]
    assert body["region"]["positions"]["normal"] == [[0, 0], [0, 1], [1, 0], [1, 1]]

    def strip(hits):  # the API names a hit's source relative to the archive, the library not
        return [{k: v for k, v in h.items() if k != "source"} for h in hits]

    for mode in ("normal", "abnormal", "sum"):
        assert strip(body["results"][mode]["hits"]) == strip(lib["results"][mode]["hits"])
        assert body["results"][mode]["engine"] == "lut"
        for hit in body["results"][mode]["hits"]:
            books = hit["explanation"]["books"].values()
            total = sum(np.sum(b["contributions"]) for b in books)
            assert total == pytest.approx(hit["distance"], rel=1e-12, abs=1e-12)


def test_api_explain_gives_the_numbers_of_the_hits_explanation(client, service):
    case = service.index.cases[1]
    common = {"case": case, "slice": 12, "mode": "abnormal", "region": "8,8,23,23"}
    hits = client.get("/api/query", params={**common, "explain": "true", "topq": 2}).json()
    for hit in hits["results"]["abnormal"]["hits"]:
        r = client.get(
            "/api/explain", params={**common, "hit_case": hit["case"], "hit_slice": hit["slice"]}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["explanation"] == hit["explanation"]
        assert body["region"] == hits["region"]


def test_api_explain_png_draws_the_contributions_over_the_slice(client, service):
    case = service.index.cases[1]
    common = {"case": case, "slice": 12, "mode": "normal", "distance": "hamming"}
    hit = client.get("/api/query", params={**common, "topq": 1, "explain": "true"}).json()
    hit = hit["results"]["normal"]["hits"][0]
    pair = {**common, "hit_case": hit["case"], "hit_slice": hit["slice"]}
    values = np.sum([b["contributions"] for b in hit["explanation"]["books"].values()], axis=0)
    for side, (c, z) in (("hit", (hit["case"], hit["slice"])), ("query", (case, 12))):
        heat = client.get("/api/explain.png", params={**pair, "side": side})
        assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"
        plain = _png(client.get(f"/api/cases/{c}/slices/{z}.png").content)
        drawn = _png(heat.content)
        assert drawn.shape == plain.shape
        # image rows are y from the top, columns x; the 4 x 4 grid tiles the 32 x 32 slice
        W, H = plain.shape[:2]
        for i, j in np.ndindex(values.shape):
            xs = slice(i * H // 4, (i + 1) * H // 4)
            ys = slice(W - (j + 1) * W // 4, W - j * W // 4)
            same = np.array_equal(drawn[ys, xs], plain[ys, xs])
            assert same == (values[i, j] == 0), (side, i, j, values[i, j])


@pytest.mark.parametrize(
    "params, text",
    [
        ({"region": "1,2,3"}, "four integers"),
        ({"region": "0,0,99,5"}, "reaches past the query slice"),
        ({"region": "0,0,5,5", "engine": "fastscan"}, "engine fastscan cannot restrict"),
        ({"explain": "perhaps"}, "explain must be true or false"),
    ],
)
def test_api_refuses_a_bad_region_with_the_library_message(client, service, params, text):
    case = service.index.cases[0]
    r = client.get("/api/query", params={"case": case, "slice": 3, **params})
    assert r.status_code == 400 and text in r.json()["error"], r.text


def test_api_explain_needs_the_pair(client, service):
    r = client.get("/api/explain", params={"case": service.index.cases[0], "slice": 3})
    assert r.status_code == 400 and "hit_case is required" in r.json()["error"]
    r = client.get(
        "/api/explain.png",
        params={
            "case": service.index.cases[0],
            "slice": 3,
            "hit_case": service.index.cases[1],
            "hit_slice": 3,
            "side": "left",
        },
    )
    assert r.status_code == 400 and "side must be query or hit" in r.json()["error"]
