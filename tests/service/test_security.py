"""What the service refuses: reads outside the index's archive folders (.., %2e%2e, absolute
paths, symlinks, a tampered slice table), oversized or bad uploads (4xx, nothing left on disk),
writes into the index, unpickling, and binding anything but 127.0.0.1 by default."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from fdn.archive_index.build import build_index
from fdn.archive_index.retrieval import open_index
from fdn.service import QueryService, create_app
from fdn.synth import synthesize_archive
from tests.conftest import TINY_SIZE
from tests.service.conftest import checksums

SECRET = b"TOP-SECRET-OUTSIDE-THE-ARCHIVE"


def make_client(service, **kw):
    from starlette.testclient import TestClient

    return TestClient(create_app(service, **kw), base_url="http://127.0.0.1")


@pytest.mark.parametrize(
    "path",
    [
        "/static/../../fdn/archive_index/retrieval.py",
        "/static/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2F..%2Fetc%2Fpasswd",
        "/static//etc/passwd",
        "/static/%2Fetc%2Fpasswd",
        "/api/cases/..%2F..%2Fetc/slices/0.png",
        "/api/cases/%2e%2e/slices/0.png",
        "/api/cases/%2Fetc%2Fpasswd",
        "/api/cases/../../etc/passwd",
        "/..%2F..%2F..%2Fetc%2Fpasswd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/etc/passwd",
        "/api/query?case=../../etc/passwd",
        "/api/query?case=/etc/passwd",
        "/api/query?case=%2e%2e%2f%2e%2e%2fetc",
    ],
)
def test_traversal_reads_nothing(client, path):
    r = client.get(path)
    assert r.status_code in (400, 404), (path, r.status_code)
    assert b"root:" not in r.content and b"def open_index" not in r.content
    assert r.headers["content-type"].startswith("application/json")


def test_raw_traversal_over_a_socket(live_server):
    """Unnormalised paths, sent as is (no client-side normalisation), to the real server."""
    import http.client

    host, port = live_server.url.removeprefix("http://").split(":")
    for path in (
        "/static/../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/etc/passwd",
        "/api/cases/%2e%2e%2f%2e%2e%2fetc/slices/0.png",
        "//etc/passwd",
    ):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        conn.close()
        assert response.status in (400, 404), path
        assert b"root:" not in body


def test_wrong_host_header_is_refused(live_server):
    """DNS rebinding: a loopback server answers only requests addressed to loopback names."""
    import httpx

    r = httpx.get(f"{live_server.url}/api/info", headers={"host": "evil.example"})
    assert r.status_code == 400
    assert httpx.get(f"{live_server.url}/api/info").status_code == 200


@pytest.fixture(scope="module")
def symlinked_index(tmp_path_factory, model_dir):
    """An archive of 3 cases: one plain, one whose folder is a symlink to a folder outside the
    archive, one whose t1 file is a symlink to a file outside. The index built from it is
    valid (the build follows links); its viewer must still refuse the two linked cases."""
    base = tmp_path_factory.mktemp("symlinks")
    made = base / "made"
    synthesize_archive(made, n_cases=3, healthy_fraction=0.0, seed=5, size=TINY_SIZE)
    archive, outside = base / "archive", base / "outside"
    archive.mkdir()
    outside.mkdir()
    plain, folder_link, file_link = sorted(p.name for p in made.iterdir() if p.is_dir())
    shutil.move(made / plain, archive / plain)
    shutil.move(made / folder_link, outside / folder_link)
    os.symlink(outside / folder_link, archive / folder_link)
    shutil.move(made / file_link, archive / file_link)
    t1 = archive / file_link / f"{file_link}_t1.nii.gz"
    shutil.move(t1, outside / t1.name)
    os.symlink(outside / t1.name, t1)
    index_dir = base / "index"
    build_index(archive, model_dir, index_dir)
    return index_dir, plain, folder_link, file_link


def test_symlinks_out_of_the_archive_are_refused(symlinked_index, tmp_path):
    index_dir, plain, folder_link, file_link = symlinked_index
    client = make_client(QueryService.open(index_dir, scratch_dir=tmp_path))
    assert client.get(f"/api/cases/{plain}/slices/5.png").status_code == 200
    for case in (folder_link, file_link):
        r = client.get(f"/api/cases/{case}/slices/5.png")
        assert r.status_code == 403, r.text
        assert "outside the index's archive folders" in r.json()["error"]
        # the case is still searchable: only its pixels are refused
        assert client.get("/api/query", params={"case": case}).status_code == 200


class Tampered:
    """An open index whose slice table says something else (the files stay as they are)."""

    def __init__(self, index, table):
        self._index, self.table = index, table

    def __getattr__(self, name):
        return getattr(self._index, name)


@pytest.mark.parametrize(
    "source", ["/etc", "/", "relative/folder", "{root}/..", "{root}/../outside", "{root}"]
)
def test_a_tampered_slice_table_reads_nothing_outside(built_index, tmp_path, source):
    """Whatever the slice table names as a case's source, nothing outside the archive folders
    recorded in the manifest is read."""
    index = open_index(built_index)
    case = index.cases[0]
    root = index.manifest.archive_roots[0]
    bad = source.format(root=root)
    table = {
        name: np.asarray(index.table[name])
        for name in ("case", "slice", "volume", "lesion_area", "source")
    }
    table["source"] = np.where(table["case"] == case, bad, table["source"])
    client = make_client(QueryService(Tampered(index, table), scratch_dir=tmp_path))
    r = client.get(f"/api/cases/{case}/slices/3.png")
    assert r.status_code == 403, (bad, r.status_code, r.text)
    other = index.cases[1]
    assert client.get(f"/api/cases/{other}/slices/3.png").status_code == 200


def test_an_index_without_archive_roots_serves_no_image(built_index, tmp_path):
    index = open_index(built_index)
    index.manifest.archive_roots = []
    client = make_client(QueryService(index, scratch_dir=tmp_path))
    r = client.get(f"/api/cases/{index.cases[0]}/slices/3.png")
    assert r.status_code == 403 and "no archive folder" in r.json()["error"]


# --- uploads -------------------------------------------------------------------------------------


def case_upload(archive: Path, case: str) -> dict:
    return {
        k: (
            f"{case}_{k}.nii.gz",
            (archive / case / f"{case}_{k}.nii.gz").read_bytes(),
            "application/gzip",
        )
        for k in ("t1", "t1ce", "t2", "flair")
    }


@pytest.fixture()
def upload_service(built_index, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    service = QueryService(
        open_index(built_index),
        scratch_dir=scratch,
        max_upload_bytes=2 * 1024 * 1024,
        max_voxels=100_000,
    )
    return service, scratch


def test_uploads_are_capped(upload_service, tiny_archive):
    service, scratch = upload_service
    client = make_client(service)
    files = case_upload(
        tiny_archive, sorted(p.name for p in tiny_archive.iterdir() if p.is_dir())[0]
    )
    files["seg"] = ("x_seg.nii.gz", os.urandom(3 * 1024 * 1024), "application/gzip")
    r = client.post("/api/query/upload", files=files)
    assert r.status_code == 413
    assert "exceeds the limit of 2,097,152 bytes" in r.json()["error"]
    assert list(scratch.iterdir()) == []

    # No Content-Length (chunked): the cap holds while the body streams in.
    def chunks():
        for _ in range(40):
            yield b"x" * 100_000

    r = client.post(
        "/api/query/upload",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=zzz"},
    )
    assert r.status_code == 413
    assert list(scratch.iterdir()) == []


def nifti_bytes(shape, dtype=np.int16, value=1):
    import nibabel as nib

    data = np.full(shape, value, dtype)
    return gzip.compress(nib.Nifti1Image(data, np.eye(4)).to_bytes())


@pytest.mark.parametrize(
    "mutate, status, message",
    [
        (lambda f: f.pop("t2"), 400, "missing the t2 sequence"),
        (
            lambda f: f.update(t1=("t1.nii.gz", b"not a nifti at all", "x")),
            400,
            "not a readable NIfTI file",
        ),
        (
            lambda f: f.update(flair=("f.nii.gz", gzip.compress(b"\0" * 400), "x")),
            400,
            "not a readable NIfTI file",
        ),
        (
            lambda f: f.update(t1=("t1.nii.gz", nifti_bytes((600, 600, 1)), "x")),
            413,
            "at most 100,000 voxels per volume",
        ),
        (
            lambda f: f.update(t1ce=("c.nii.gz", nifti_bytes((2, 2, 2)), "x")),
            400,
            "disagrees with the t1 shape",
        ),
        (lambda f: f.update(t2=("t2.nii.gz", b"", "x")), 400, "empty"),
        (
            lambda f: f.update(pickle=("p.pkl", pickle.dumps({"a": 1}), "x")),
            400,
            "unknown upload field",
        ),
    ],
)
def test_bad_uploads_get_a_clear_4xx_and_leave_nothing(
    upload_service, tiny_archive, mutate, status, message
):
    service, scratch = upload_service
    client = make_client(service)
    case = sorted(p.name for p in tiny_archive.iterdir() if p.is_dir())[0]
    files = case_upload(tiny_archive, case)
    mutate(files)
    r = client.post("/api/query/upload", files=files)
    assert r.status_code == status, r.text
    assert message in r.json()["error"], r.json()["error"]
    assert str(scratch) not in r.json()["error"]  # the private folder's name is not shown
    assert list(scratch.iterdir()) == []


def test_bad_upload_options_and_case_id(upload_service, tiny_archive):
    service, scratch = upload_service
    client = make_client(service)
    case = sorted(p.name for p in tiny_archive.iterdir() if p.is_dir())[0]
    files = case_upload(tiny_archive, case)
    r = client.post("/api/query/upload", files=files, data={"mode": "lesion"})
    assert r.status_code == 400 and r.json()["error"].startswith("mode must be one of")
    r = client.post("/api/query/upload", files=files, data={"case_id": "../../etc"})
    assert r.status_code == 400 and "case_id must be" in r.json()["error"]
    r = client.post("/api/query/upload", files=files, data={"slice": "9999"})
    assert r.status_code == 400 and "out of range" in r.json()["error"]
    r = client.post("/api/query/upload", data={"t1": "text, not a file"})
    assert r.status_code == 400
    r = client.post(
        "/api/query/upload", content=b"{}", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "multipart/form-data" in r.json()["error"]
    assert list(scratch.iterdir()) == []


def test_upload_query_unpickles_nothing_and_never_writes_the_index(
    upload_service, built_index, tiny_archive, monkeypatch
):
    service, scratch = upload_service
    client = make_client(service)
    before = checksums(built_index)
    service.index.model()  # the index's own model, loaded (weights only) at start-up

    def refuse(*args, **kwargs):
        raise AssertionError("something unpickled data during a request")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    import torch

    monkeypatch.setattr(torch, "load", refuse)
    case = sorted(p.name for p in tiny_archive.iterdir() if p.is_dir())[1]
    r = client.post(
        "/api/query/upload",
        files=case_upload(tiny_archive, case),
        data={"mode": "all", "topq": "2"},
    )
    assert r.status_code == 200, r.text
    for path in (
        "/api/info",
        f"/api/query?case={case}&mode=all",
        f"/api/cases/{case}/slices/4.png?overlay=seg,anat",
        "/api/cases",
    ):
        assert client.get(path).status_code == 200
    assert list(scratch.iterdir()) == []
    assert checksums(built_index) == before


def test_serve_binds_loopback_by_default():
    import click
    from click.testing import CliRunner

    from fdn_index_cli.main import main

    serve = main.get_command(click.Context(main), "serve")  # commands are loaded on use
    assert serve is not None
    host = next(p for p in serve.params if p.name == "host")
    assert host.default == "127.0.0.1"
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    assert "127.0.0.1" in result.output


def test_no_security_header_is_missing(client):
    r = client.get("/")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in r.headers["content-security-policy"]


def test_png_is_a_png(client, service):
    from PIL import Image

    r = client.get(f"/api/cases/{service.index.cases[0]}/slices/2.png")
    assert Image.open(io.BytesIO(r.content)).format == "PNG"


def test_uploads_in_progress_are_bounded(upload_service, tiny_archive):
    """While max_concurrent_uploads uploads are running, another one gets a 503 at once."""
    service, scratch = upload_service
    client = make_client(service)
    case = sorted(p.name for p in tiny_archive.iterdir() if p.is_dir())[0]
    files = case_upload(tiny_archive, case)
    held = [
        service.upload_slots.acquire(blocking=False) for _ in range(service.max_concurrent_uploads)
    ]
    assert all(held)
    try:
        r = client.post("/api/query/upload", files=files)
        assert r.status_code == 503 and "retry" in r.json()["error"]
    finally:
        for _ in held:
            service.upload_slots.release()
    assert client.post("/api/query/upload", files=files).status_code == 200
    assert list(scratch.iterdir()) == []
