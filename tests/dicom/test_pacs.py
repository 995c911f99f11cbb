"""`import-dicom --pacs URL`: a real Orthanc (with its DICOMweb plugin) on 127.0.0.1.

Orthanc is seeded over its REST API (POST /instances); the import lists studies with QIDO-RS
and fetches them with WADO-RS through dicomweb-client.
"""

import json
import logging

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from fdn.data import Archive
from fdn.data.labels import SEQUENCES
from fdn.dicom.dicomweb import DicomWebServer
from fdn.dicom.pacs import load_credentials, sync_pacs
from fdn.errors import DicomImportError
from fdn_index_cli.main import main
from tests.conftest import make_model_dir
from tests.dicom.conftest import case_dirs


def sync(url, archive, *options, env=None):
    return CliRunner().invoke(
        main, ["import-dicom", "--pacs", url, str(archive), *options], env=env
    )


class CountingServer(DicomWebServer):
    """A DICOMweb server whose fetched studies are recorded; `stop_after` simulates an
    interruption (Ctrl-C) while the next study is being received."""

    def __init__(self, url, stop_after=None):
        super().__init__(url, attempts=1)
        self.fetched, self.stop_after = [], stop_after

    def fetch_study(self, study_uid):
        if self.stop_after is not None and len(self.fetched) == self.stop_after:
            raise KeyboardInterrupt
        instances = super().fetch_study(study_uid)
        self.fetched.append(study_uid)
        return instances


def test_sync_build_query_then_only_new_studies(orthanc, dicom_source, small_archive, tmp_path):
    source, studies = dicom_source
    first, *rest = sorted(studies)
    orthanc.upload(source / first)
    archive = tmp_path / "archive"
    result = sync(orthanc.dicomweb, archive, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [e["study_uid"] for e in report["imported"]] == [studies[first].study_uid]
    assert report["imported"][0]["series_uids"] == studies[first].series_uids
    case = report["imported"][0]["case"]
    for sequence in SEQUENCES:  # the same voxels as the NIfTI the study was made from
        original = nib.load(Archive(small_archive).case_files(first)[sequence]).get_fdata()
        fetched = nib.load(archive / case / f"{case}_{sequence}.nii.gz").get_fdata()
        np.testing.assert_allclose(fetched, original, atol=0.25 + 1e-3)

    model = make_model_dir(tmp_path / "model", seed=0)
    index = tmp_path / "index"
    built = CliRunner().invoke(
        main,
        ["build", str(archive), "--model", str(model), "--index", str(index), "--device", "cpu"],
    )
    assert built.exit_code == 0, built.output

    for name in rest:
        orthanc.upload(source / name)
    client = CountingServer(orthanc.dicomweb)
    second = sync_pacs(orthanc.dicomweb, archive, server=client)
    new = sorted(studies[name].study_uid for name in rest)
    assert sorted(client.fetched) == new  # the first study is not fetched again
    assert sorted(e["study_uid"] for e in second.imported) == new
    assert [e["study_uid"] for e in second.already] == [studies[first].study_uid]

    added = CliRunner().invoke(
        main,
        [
            "build",
            str(archive),
            "--model",
            str(model),
            "--index",
            str(index),
            "--device",
            "cpu",
            "--add",
            "--json",
        ],
    )
    assert added.exit_code == 0, added.output
    assert json.loads(added.output)["n_cases"] == len(studies)
    answer = CliRunner().invoke(
        main,
        ["query", "--index", str(index), "--case", case, "--slice", "10", "--topq", "2", "--json"],
    )
    assert answer.exit_code == 0, answer.output
    hits = json.loads(answer.output)["results"]["sum"]["hits"]
    assert {h["study_uid"] for h in hits} == set(new)

    third = sync(orthanc.dicomweb, archive, "--json")
    assert third.exit_code == 0, third.output
    assert json.loads(third.output)["imported"] == []


def test_interrupted_sync_resumes_and_leaves_whole_cases(orthanc, dicom_source, tmp_path):
    source, studies = dicom_source
    orthanc.upload(source)
    archive = tmp_path / "archive"
    client = CountingServer(orthanc.dicomweb, stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        sync_pacs(orthanc.dicomweb, archive, server=client)
    (done,) = case_dirs(archive)  # one whole case; the half-fetched study left nothing
    assert sorted(p.name for p in done.iterdir()) == sorted(
        [f"{done.name}_{s}.nii.gz" for s in SEQUENCES] + [f"{done.name}_dicom.json"]
    )
    client = CountingServer(orthanc.dicomweb)
    resumed = sync_pacs(orthanc.dicomweb, archive, server=client)
    assert len(client.fetched) == len(studies) - 1
    assert len(resumed.imported) == len(studies) - 1 and len(resumed.already) == 1
    assert len(case_dirs(archive)) == len(studies)
    assert not [p for p in case_dirs(archive) if p.name.startswith(".")]


def test_non_mr_study_is_listed_and_not_fetched(orthanc, one_study, tmp_path):
    import pydicom

    for folder in one_study.series_dirs.values():
        for path in folder.iterdir():
            ds = pydicom.dcmread(path)
            ds.Modality = "CT"
            ds.save_as(path, enforce_file_format=True)
    orthanc.upload(one_study.folder)
    client = CountingServer(orthanc.dicomweb)
    report = sync_pacs(orthanc.dicomweb, tmp_path / "archive", server=client)
    assert client.fetched == [] and report.failed
    assert "modality CT, not MR" in report.skipped[0]["reason"]
    result = sync(orthanc.dicomweb, tmp_path / "archive-2")
    assert result.exit_code != 0 and "no study was imported" in result.output
    again = sync(orthanc.dicomweb, tmp_path / "archive", "--json")  # a nightly re-run
    assert again.exit_code == 0, again.output
    assert [s["known"] for s in json.loads(again.output)["skipped"]] == [True]


def test_credentials_from_env_and_file_never_logged(orthanc_with_auth, one_study, tmp_path, caplog):
    server = orthanc_with_auth
    user, password = server.auth
    server.upload(one_study.folder)
    refused = sync(server.dicomweb, tmp_path / "a0")
    assert refused.exit_code != 0 and "HTTP 401" in refused.output
    caplog.set_level(logging.DEBUG)
    env = {"FDN_PACS_USERNAME": user, "FDN_PACS_PASSWORD": password}
    by_env = sync(server.dicomweb, tmp_path / "a1", "--json", env=env)
    assert by_env.exit_code == 0, by_env.output
    assert len(json.loads(by_env.output)["imported"]) == 1
    auth_file = tmp_path / "pacs-auth.json"
    auth_file.write_text(json.dumps({"username": user, "password": password}))
    by_file = CliRunner().invoke(
        main,
        [
            "-v",
            "import-dicom",
            "--pacs",
            server.dicomweb,
            str(tmp_path / "a2"),
            "--auth-file",
            str(auth_file),
        ],
    )
    assert by_file.exit_code == 0, by_file.output
    for text in (refused.output, by_env.output, by_file.output, caplog.text):
        assert password not in text
    in_url = sync(server.dicomweb.replace("http://", f"http://{user}:{password}@"), tmp_path / "a3")
    assert in_url.exit_code != 0 and "not in the URL" in in_url.output
    assert password not in in_url.output


def test_load_credentials(tmp_path):
    assert load_credentials(environ={}) is None
    token = load_credentials(environ={"FDN_PACS_TOKEN": "tok"})
    assert "tok" not in repr(token)
    bad = tmp_path / "auth.json"
    bad.write_text('{"user": "x"}')
    with pytest.raises(DicomImportError, match="username"):
        load_credentials(bad)
    with pytest.raises(DicomImportError, match="FDN_PACS_PASSWORD"):
        load_credentials(environ={"FDN_PACS_USERNAME": "x"})


def test_unreachable_pacs_is_a_clear_error(tmp_path):
    from benchmarks.orthanc import free_port

    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(DicomImportError, match="cannot list the studies of") as caught:
        sync_pacs(url, tmp_path / "archive", server=DicomWebServer(url, attempts=1))
    assert "ConnectionError" in str(caught.value)
