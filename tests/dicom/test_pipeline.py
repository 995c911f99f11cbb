"""An archive imported from DICOM indexes and answers queries as its NIfTI original does, and
the study and series UIDs reach the slice table and the query answers."""

import json

import pyarrow.parquet as pq
from click.testing import CliRunner

from fdn.archive_index.retrieval import open_index
from fdn.data import Archive
from fdn_index_cli.main import main


def build(archive, model, index):
    result = CliRunner().invoke(
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
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    return index


def test_build_and_query_match_the_nifti_archive(
    small_archive, imported_archive, model_dir, tmp_path
):
    archive, report = imported_archive
    source_of = {
        e["case"]: json.loads((archive / e["case"] / f"{e['case']}_dicom.json").read_text())[
            "patient_id"
        ]
        for e in report.imported
    }
    imported_of = {v: k for k, v in source_of.items()}
    original = open_index(build(small_archive, model_dir, tmp_path / "index-nifti"))
    imported = open_index(build(archive, model_dir, tmp_path / "index-dicom"))
    assert imported.ntotal == original.ntotal
    compared = 0
    for case in Archive(small_archive).case_ids:
        n = int((original.table["case"] == case).sum())
        for slice_index in range(0, n, 5):
            for mode in ("normal", "abnormal", "sum"):
                want = original.query_slice(case, slice_index, mode=mode, topq=2)
                got = imported.query_slice(imported_of[case], slice_index, mode=mode, topq=2)
                assert [(source_of[h.case], h.slice, h.distance) for h in got] == [
                    (h.case, h.slice, h.distance) for h in want
                ]
                compared += 1
    assert compared >= 9
    # an index of NIfTI cases has empty provenance columns, and hits without UIDs
    table = pq.read_table(tmp_path / "index-nifti" / "slices.parquet")
    assert table.column("study_uid").null_count == table.num_rows
    hit = original.query_slice(Archive(small_archive).case_ids[0], 5, topq=1)[0]
    assert hit.study_uid is None and hit.series_uids is None


def test_provenance_reaches_the_table_and_the_answers(imported_archive, model_dir, tmp_path):
    archive, report = imported_archive
    index = build(archive, model_dir, tmp_path / "index")
    table = pq.read_table(index / "slices.parquet").to_pylist()
    expected = {e["case"]: e for e in report.imported}
    assert {row["case"] for row in table} == set(expected)
    for row in table:
        assert row["study_uid"] == expected[row["case"]]["study_uid"]
        assert json.loads(row["series_uids"]) == expected[row["case"]]["series_uids"]

    case = report.imported[0]["case"]
    result = CliRunner().invoke(
        main,
        ["query", "--index", str(index), "--case", case, "--slice", "12", "--topq", "2", "--json"],
    )
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)["results"]["sum"]["hits"]
    assert len(hits) == 2
    for hit in hits:
        assert hit["study_uid"] == expected[hit["case"]]["study_uid"]
        assert hit["series_uids"] == expected[hit["case"]]["series_uids"]
    text = CliRunner().invoke(
        main, ["query", "--index", str(index), "--case", case, "--slice", "12", "--topq", "2"]
    )
    assert text.exit_code == 0, text.output
    assert "study" in text.output and hits[0]["study_uid"] in text.output


def test_no_patient_id_reaches_the_index(imported_archive, model_dir, tmp_path):
    """The PatientIDs (the source cases' names here) are in the archive's sidecars only: not in
    a case id, a slice-table value, a query answer or the bytes of any uncompressed index file."""
    archive, report = imported_archive
    patients = {
        json.loads((archive / e["case"] / f"{e['case']}_dicom.json").read_text())["patient_id"]
        for e in report.imported
    }
    assert patients and all(patients)
    index = build(archive, model_dir, tmp_path / "index")
    table = pq.read_table(index / "slices.parquet").to_pylist()
    values = {str(v) for row in table for v in row.values()}
    assert not [v for v in values for p in patients if p in v]
    answer = CliRunner().invoke(
        main, ["query", "--index", str(index), "--mode", "all", "--topq", "3", "--json"]
    )
    assert answer.exit_code == 0, answer.output
    assert not [p for p in patients if p in answer.output]
    for path in index.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".npy", ".index"):
            data = path.read_bytes()
            assert not [p for p in patients if p.encode() in data], path
