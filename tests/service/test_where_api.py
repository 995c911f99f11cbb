"""The API's `where` parameter: the CLI's filter, echoed with the rows that pass; a bad filter is
a 400 with the library's message."""


def test_where_filters_the_hits_and_is_echoed(client, service):
    case = service.index.cases[0]
    where = "lesion_area > 0"
    r = client.get("/api/query", params={"case": case, "where": where, "topq": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["where"] == where
    passing = service.index.where_rows(where)
    assert body["rows_passing"] == int(passing.sum())
    for result in body["results"].values():
        assert all(passing[hit["row"]] for hit in result["hits"])
    plain = client.get("/api/query", params={"case": case, "where": ""}).json()
    assert plain["where"] is None and plain["rows_passing"] is None


def test_a_bad_filter_is_a_400_naming_the_fault(client, service):
    case = service.index.cases[0]
    for where, words in (
        ("age > 60", "'age'"),
        ("__import__('os')", "expected a comparison"),
        ("slice == 'x'", "'slice'"),
    ):
        r = client.get("/api/query", params={"case": case, "where": where})
        assert r.status_code == 400, r.text
        assert words in r.json()["error"]


def test_a_case_removed_while_serving_is_neither_listed_nor_returned(tmp_path, built_index):
    """`fdn-index remove` under a running service: its next requests honour the removal, and a
    service started on the index afterwards starts (its catalogue leaves the case out)."""
    import shutil

    from starlette.testclient import TestClient

    from fdn.archive_index.removal import remove_cases
    from fdn.service import QueryService, create_app

    shutil.copytree(built_index, tmp_path / "index")
    service = QueryService.open(tmp_path / "index", scratch_dir=tmp_path / "scratch")
    client = TestClient(create_app(service), base_url="http://127.0.0.1")
    removed = service.index.cases[1]
    remove_cases(tmp_path / "index", [removed])
    listed = [c["case"] for c in client.get("/api/cases").json()["cases"]]
    assert removed not in listed
    assert client.get(f"/api/cases/{removed}").status_code == 404
    r = client.get("/api/query", params={"case": removed})
    assert r.status_code == 404 and "was removed" in r.json()["error"]
    for case in listed:
        body = client.get("/api/query", params={"case": case, "topq": 4, "mode": "all"}).json()
        for result in body["results"].values():
            assert removed not in {hit["case"] for hit in result["hits"]}
    again = QueryService.open(tmp_path / "index", scratch_dir=tmp_path / "scratch")
    assert removed not in again.catalog
