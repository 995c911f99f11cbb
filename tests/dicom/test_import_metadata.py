"""`import-dicom` records each study's metadata (sex, age, study date) in the case's sidecar,
without direct identifiers, and the archive's metadata.csv overrides them column by column."""

import json

from fdn.archive_index.metadata import case_metadata


def test_the_sidecar_holds_metadata_without_identifiers(imported_archive, dicom_source):
    archive, report = imported_archive
    for entry in report.imported:
        case = entry["case"]
        sidecar = json.loads((archive / case / f"{case}_dicom.json").read_text())
        meta = sidecar["metadata"]
        # the exporter writes PatientSex O, birth date 1970-01-01 and a study date in 2026
        assert meta["sex"] == "O"
        assert meta["study_date"].startswith("2026-")
        assert meta["age"] in (55.0, 56.0)
        text = json.dumps(meta)
        assert "SYNTHETIC" not in text and "19700101" not in text and "ACC" not in text
        assert case_metadata(archive / case, case) == meta


def test_metadata_csv_overrides_the_dicom_values(imported_archive, tmp_path):
    import shutil

    archive = tmp_path / "archive"
    shutil.copytree(imported_archive[0], archive)
    case = sorted(p.name for p in archive.iterdir() if p.is_dir())[0]
    (archive / "metadata.csv").write_text(f"case,sex,site\n{case},F,north\n")
    meta = case_metadata(archive / case, case)
    assert meta["sex"] == "F" and meta["site"] == "north" and "study_date" in meta
