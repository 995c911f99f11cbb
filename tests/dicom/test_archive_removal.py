"""`import-dicom --remove CASE ARCHIVE [--index DIR]`: an imported study leaves the archive
(and the indexes named) crash-safely, and can be imported again later."""

import json

import pytest
from click.testing import CliRunner

from fdn.archive_index.retrieval import open_index
from fdn.data import Archive
from fdn.dicom import archive_removal
from fdn.dicom.archive_removal import remove_studies
from fdn.dicom.importer import import_dicom
from fdn.dicom.provenance import imported_studies
from fdn.errors import DicomImportError
from fdn_index_cli.main import main
from tests.conftest import make_model_dir
from tests.dicom.conftest import case_dirs, export_study


@pytest.fixture
def two_studies(small_archive, tmp_path):
    """Two exported studies (PatientIDs: their case names) imported into a fresh archive:
    (source, archive, {patient_id: (ExportedStudy, case id)})."""
    source, archive = tmp_path / "source", tmp_path / "archive"
    names = Archive(small_archive).case_ids[:2]
    studies = {name: export_study(small_archive, name, source / name) for name in names}
    report = import_dicom(source, archive)
    case_of = {e["study_uid"]: e["case"] for e in report.imported}
    return source, archive, {n: (s, case_of[s.study_uid]) for n, s in studies.items()}


def invoke(*args):
    return CliRunner().invoke(main, ["import-dicom", *map(str, args)])


def files_naming(folder, text: str) -> list[str]:
    """Every file under `folder` whose bytes or path hold `text`."""
    needle = text.encode()
    return [
        str(p)
        for p in folder.rglob("*")
        if text in str(p.relative_to(folder)) or (p.is_file() and needle in p.read_bytes())
    ]


def test_removed_study_leaves_archive_and_index_and_imports_again(two_studies, tmp_path):
    source, archive, studies = two_studies
    (patient, (study, case)), (_, (_, kept)) = studies.items()
    assert files_naming(archive, patient)  # the sidecar names the PatientID: the check sees it
    index = tmp_path / "index"
    model = make_model_dir(tmp_path / "model", seed=0)
    args = ["build", str(archive), "--model", str(model), "--index", str(index), "--device", "cpu"]
    built = CliRunner().invoke(main, args)
    assert built.exit_code == 0, built.output

    result = invoke("--remove", case, archive, "--index", index, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["removed"] == [{"case": case, "study_uid": study.study_uid}]
    assert report["indexes"][0]["indexes"][0]["removed"] == [case]
    assert [p.name for p in case_dirs(archive)] == [kept]  # no leftover folder either
    assert files_naming(archive, patient) == [] and files_naming(archive, case) == []
    assert set(imported_studies(archive).values()) == {kept}
    assert open_index(index).removed_cases() == frozenset({case})

    again = import_dicom(source, archive)  # a later import brings the study back, same id
    assert [(e["study_uid"], e["case"]) for e in again.imported] == [(study.study_uid, case)]
    assert sorted(p.name for p in case_dirs(archive)) == sorted([case, kept])


def test_remove_by_study_uid_and_the_text_report_names_the_next_step(two_studies):
    _, archive, studies = two_studies
    study, case = next(iter(studies.values()))
    result = invoke("--remove", study.study_uid, archive)
    assert result.exit_code == 0, result.output
    assert f"removed {case} (study {study.study_uid})" in result.output
    assert f"fdn-index remove --index DIR {case}" in result.output
    assert case not in {p.name for p in case_dirs(archive)}


def test_an_unknown_case_is_refused_and_nothing_is_removed(two_studies):
    _, archive, studies = two_studies
    (_, first), _ = studies.values()
    before = [p.name for p in case_dirs(archive)]
    result = invoke("--remove", first, "--remove", "P0000000000_00000000", archive)
    assert result.exit_code != 0
    assert "no imported case or StudyInstanceUID 'P0000000000_00000000'" in result.output
    assert "nothing was removed" in result.output
    assert [p.name for p in case_dirs(archive)] == before


def test_remove_takes_only_the_archive(two_studies, tmp_path):
    source, archive, studies = two_studies
    (_, case), _ = studies.values()
    both = invoke("--remove", case, source, archive)
    assert both.exit_code == 2 and "give only ARCHIVE" in both.output
    pacs = invoke("--remove", case, "--pacs", "http://127.0.0.1:9/dicom-web", archive)
    assert pacs.exit_code == 2 and "not --pacs" in pacs.output
    index_alone = invoke("--index", tmp_path, source, archive)
    assert index_alone.exit_code == 2 and "--index is for --remove" in index_alone.output
    assert len(case_dirs(archive)) == 2


def test_a_removal_killed_after_its_rename_is_finished_by_the_next_run(two_studies, monkeypatch):
    source, archive, studies = two_studies
    (study, case), (_, kept) = studies.values()

    def killed(path):
        raise KeyboardInterrupt  # the process dies between the rename and the deletion

    monkeypatch.setattr(archive_removal.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        remove_studies(archive, [case])
    monkeypatch.undo()
    # the case is gone for every reader already: only a temporary folder remains
    assert set(imported_studies(archive).values()) == {kept}
    assert Archive(archive).case_ids == [kept]
    (leftover,) = [p for p in case_dirs(archive) if p.name.startswith(".")]
    with pytest.raises(DicomImportError, match="no imported case"):
        remove_studies(archive, [case])  # already removed; the leftover is cleaned meanwhile
    assert not leftover.exists()
    assert [p.name for p in case_dirs(archive)] == [kept]
