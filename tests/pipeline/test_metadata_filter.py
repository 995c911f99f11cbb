"""Case metadata (metadata.csv beside the cases, DICOM headers) land in the slice table as typed
columns, and `--where` on them is exact against a numpy brute force, sharded and unsharded."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from fdn.archive_index.build import build_index
from fdn.archive_index.queries import query_options, run_slice_query
from fdn.archive_index.retrieval import open_index
from fdn.archive_index.shards import open_sharded, split_index
from fdn.archive_index.where import WhereError
from fdn.dicom.case_metadata import study_metadata
from fdn.errors import ArchiveError
from fdn_index_cli.main import main
from tests.hashindex.hashindex_reference import lesion_candidates

METADATA = [  # case order of the archive: sex, age, study date, scanner
    ("F", "64", "2020-01-31", "GE"),
    ("M", "", "2019-11-02", "SIEMENS"),
    ("F", "41.5", "2021-06-30", "GE"),
    ("M", "70", "", "Philips"),
]


@pytest.fixture(scope="module")
def metadata_index(tmp_path_factory, tiny_archive, model_dir):
    folder = tmp_path_factory.mktemp("metadata")
    archive = folder / "archive"
    shutil.copytree(tiny_archive, archive)
    cases = sorted(p.name for p in archive.iterdir() if p.is_dir())
    lines = ["case,sex,age,study_date,scanner"]
    lines += [",".join((c, *m)) for c, m in zip(cases, METADATA, strict=True)]
    (archive / "metadata.csv").write_text("\n".join(lines) + "\n")
    build_index(archive, model_dir, folder / "index")
    split_index(folder / "index", folder / "shards", 2)
    return archive, folder / "index", folder / "shards", cases


def test_metadata_become_typed_columns_of_the_slice_table(metadata_index):
    _, index_dir, _, cases = metadata_index
    index = open_index(index_dir)
    with np.load(index_dir / "slice_arrays.npz") as arrays:  # queries keep their fast path
        assert {"numbers__age", "dates__study_date", "values__sex"} <= set(arrays.files)
    volume = np.asarray(index.table["volume"])
    age = np.asarray(index.table["age"], np.float64)
    want = np.array([np.nan if m[1] == "" else float(m[1]) for m in METADATA])[volume]
    np.testing.assert_array_equal(age, want)
    assert index.table.value("sex", 0) == "F"
    dates = index.table["study_date"]
    assert str(dates[np.flatnonzero(volume == 0)[0]]) == "2020-01-31"


def _brute(index, row, mode, distance, passing, exclude, topq):
    import tests.hashindex.hashindex_reference as ref

    cn, ca = (np.load(index.index_dir / f"codebook_{b}.npy") for b in ("normal", "abnormal"))
    dist = ref.all_distances(
        index.hash_index, cn, ca, index.codes_normal, index.codes_abnormal,
        index.codes_normal[row], index.codes_abnormal[row], mode, distance,
    )  # fmt: skip
    keep = np.flatnonzero(passing)
    volumes = np.asarray(index.table["volume"], np.int64)
    return [
        (d, int(keep[r]))
        for d, r, _ in ref.volume_topq(dist[keep], volumes[keep], topq, exclude=exclude)
    ]


@pytest.mark.parametrize(
    "where, volumes",
    [
        ('age >= 60 and sex == "F"', [0]),
        ("age >= 60 or study_date < 2020-01-01", [0, 1, 3]),
        ("scanner in ['GE'] and not (age > 50)", [2]),
        ("study_date >= '2020-01-01'", [0, 2]),
        ("sex == 'F' and lesion_area > 0", None),  # metadata and slice columns together
    ],
)
def test_a_metadata_filter_is_exact_sharded_and_unsharded(metadata_index, where, volumes):
    _, index_dir, shards, cases = metadata_index
    full, sharded = open_index(index_dir), open_sharded(shards)
    passing = full.where_rows(where)
    volume = np.asarray(full.table["volume"], np.int64)
    if volumes is not None:
        assert sorted(set(volume[passing].tolist())) == volumes
    for case in cases:
        slice_index = full.default_slice(case)
        row = full.row_of(case, slice_index)
        for mode, distance in (
            ("sum", "hamming"),
            ("normal", "euclidean"),
            ("abnormal", "angular"),
        ):
            candidates = passing & lesion_candidates(index_dir, mode, full.ntotal)
            brute = _brute(full, row, mode, distance, candidates, None, 4)
            for index in (full, sharded):
                options = query_options(
                    mode, distance=distance, topq=4, where=where, include_same_volume=True
                )
                result = run_slice_query(index, case, slice_index, options)
                assert result.rows_passing == int(passing.sum())
                hits = result.hits(mode)
                np.testing.assert_allclose(
                    [h.distance for h in hits], [d for d, _ in brute], atol=1e-7
                )
                if distance == "hamming":
                    assert [h.row for h in hits] == [r for _, r in brute]


def test_a_type_mismatch_names_the_column(metadata_index):
    _, index_dir, shards, cases = metadata_index
    for index in (open_index(index_dir), open_sharded(shards)):
        with pytest.raises(WhereError, match="'age'"):
            run_slice_query(index, cases[0], None, query_options("sum", where="age == 'old'"))
        with pytest.raises(WhereError, match="'sex'"):
            run_slice_query(index, cases[0], None, query_options("sum", where="sex > 3"))
    result = CliRunner().invoke(
        main, ["query", "--index", str(shards), "--where", "study_date > 7", "--json"]
    )
    assert result.exit_code != 0 and "'study_date'" in result.output
    result = CliRunner().invoke(
        main, ["query", "--index", str(shards), "--where", "age > 60", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["where"] == "age > 60"


def test_a_metadata_table_without_a_case_column_is_refused(tmp_path, tiny_archive, model_dir):
    archive = tmp_path / "archive"
    shutil.copytree(tiny_archive, archive)
    (archive / "metadata.tsv").write_text("patient\tage\nX\t3\n")
    with pytest.raises(ArchiveError, match="metadata.tsv.*'case'"):
        build_index(archive, model_dir, tmp_path / "index")


def test_dicom_headers_give_metadata_without_direct_identifiers():
    header = {
        "PatientName": "Doe^Jane",
        "PatientID": "12345",
        "PatientBirthDate": "19600315",
        "StudyDate": "20200314",
        "PatientSex": "F",
        "Manufacturer": "GE MEDICAL SYSTEMS",
        "ManufacturerModelName": "SIGNA",
        "MagneticFieldStrength": "1.5",
        "InstitutionName": "General",
    }
    meta = study_metadata(header)
    assert meta == {
        "sex": "F",
        "age": 59.0,  # a day before the 60th birthday
        "study_date": "2020-03-14",
        "manufacturer": "GE MEDICAL SYSTEMS",
        "manufacturer_model": "SIGNA",
        "field_strength": 1.5,
        "institution": "General",
    }
    assert "12345" not in json.dumps(meta) and "Doe" not in json.dumps(meta)
    assert study_metadata({**header, "PatientAge": "065Y"})["age"] == 65.0
    assert study_metadata({**header, "PatientAge": "018M"})["age"] == 1.5
    assert study_metadata({"PatientSex": "", "StudyDate": "bad"}) == {}
