"""`import-dicom SOURCE ARCHIVE`: round trip of exported studies, the report, and bad input.

Each bad input is one fault put into a fresh copy of an exported study; the import must name
the study, the series and the fault, write nothing for it, and exit non-zero when nothing
could be imported.
"""

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless, generate_uid

from fdn.data import Archive
from fdn.data.labels import SEQUENCES
from fdn.dicom.export import rotated_affine
from fdn.dicom.importer import import_dicom
from fdn.errors import ArchiveError
from fdn_index_cli.main import main
from tests.dicom.conftest import INTERCEPT, ROTATE, SLOPE, case_dirs

# The importer's only losses: rescale quantisation (stored = rint((v - b) / m), so |error| is
# at most m / 2) and float32 rounding; resampling is the identity here since the exported
# series share one grid. DS strings carry 6 decimals, hence the affine tolerance.
VALUE_TOLERANCE = SLOPE / 2 + 1e-3
AFFINE_TOLERANCE_MM = 1e-3


def run(*args):
    return CliRunner().invoke(main, ["import-dicom", *map(str, args)], catch_exceptions=False)


def test_round_trip_recovers_every_volume(small_archive, dicom_source, imported_archive):
    archive, report = imported_archive
    _, studies = dicom_source
    assert not report.skipped and not report.bad_files
    assert len(report.imported) == len(studies) == len(Archive(archive))
    original = Archive(small_archive)
    for entry in report.imported:
        sidecar = json.loads((archive / entry["case"] / f"{entry['case']}_dicom.json").read_text())
        source_case = sidecar["patient_id"]
        study = studies[source_case]
        assert sidecar["study_uid"] == entry["study_uid"] == study.study_uid
        assert sidecar["series_uids"] == study.series_uids
        for sequence in SEQUENCES:
            expected = nib.load(original.case_files(source_case)[sequence])
            written = nib.load(archive / entry["case"] / f"{entry['case']}_{sequence}.nii.gz")
            assert written.shape == expected.shape
            np.testing.assert_allclose(
                written.get_fdata(), expected.get_fdata(), atol=VALUE_TOLERANCE, rtol=0
            )
            np.testing.assert_allclose(
                written.affine,
                rotated_affine(expected.affine, expected.shape, ROTATE),
                atol=AFFINE_TOLERANCE_MM,
            )
            assert written.header.get_xyzt_units()[0] == "mm"
    # the archive reader takes the imported archive as it is
    assert Archive(archive).validate() == []


def test_rescale_quantisation_stays_within_half_a_slope(small_archive, tmp_path):
    """Values off the slope grid come back within slope / 2 (and not exactly)."""
    from fdn.dicom.export import export_case

    files = Archive(small_archive).case_files(Archive(small_archive).case_ids[0])
    slope = 0.3
    export_case(files, tmp_path / "src", patient_id="Q", slope=slope, intercept=-7.0)
    report = import_dicom(tmp_path / "src", tmp_path / "archive")
    case = report.imported[0]["case"]
    expected = nib.load(files["t2"]).get_fdata()
    got = nib.load(tmp_path / "archive" / case / f"{case}_t2.nii.gz").get_fdata()
    error = np.abs(got - expected)
    assert error.max() <= slope / 2 + 1e-3
    assert error.max() > 0.05


def test_second_import_skips_what_is_there(dicom_source, tmp_path):
    source = dicom_source[0]
    first = run(source, tmp_path / "archive", "--json")
    assert first.exit_code == 0, first.output
    second = run(source, tmp_path / "archive", "--json")
    assert second.exit_code == 0, second.output
    report = json.loads(second.output)
    assert report["imported"] == [] and len(report["already"]) == len(dicom_source[1])


def test_text_report_names_the_cases(dicom_source, tmp_path):
    result = run(dicom_source[0], tmp_path / "archive")
    assert result.exit_code == 0, result.output
    assert f"{len(dicom_source[1])} studies imported" in result.output
    for study in dicom_source[1].values():
        assert study.study_uid in result.output


def test_a_different_grid_per_series_is_resampled_onto_t1(small_archive, tmp_path):
    """flair exported with its in-plane axes swapped and slices reversed: the same voxel
    centres on another grid, so resampling onto the t1 grid must give the original back."""
    from fdn.dicom.export import export_case, export_series

    files = Archive(small_archive).case_files(Archive(small_archive).case_ids[1])
    study = export_case(files, tmp_path / "src", patient_id="P", slope=SLOPE, intercept=INTERCEPT)
    flair = nib.load(files["flair"])
    data = np.asarray(flair.dataobj, dtype=np.float32)
    swap = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, data.shape[2] - 1], [0, 0, 0, 1]])
    header = pydicom.dcmread(next(study.series_dirs["flair"].iterdir()))
    shutil.rmtree(study.series_dirs["flair"])
    export_series(
        np.transpose(data, (1, 0, 2))[:, :, ::-1],
        study.affine_ras @ swap,
        study.series_dirs["flair"],
        sequence="flair",
        study={k: header.get(k) for k in ("PatientID", "StudyInstanceUID", "FrameOfReferenceUID")},
        series_number=400,
        series_uid=study.series_uids["flair"],
        slope=SLOPE,
        intercept=INTERCEPT,
    )
    report = import_dicom(tmp_path / "src", tmp_path / "archive")
    case = report.imported[0]["case"]
    got = nib.load(tmp_path / "archive" / case / f"{case}_flair.nii.gz")
    assert got.shape == data.shape
    np.testing.assert_allclose(got.get_fdata(), data, atol=1e-2)


# ------------------------------------------------------------------------------- bad input


def rewrite(folder: Path, change) -> None:
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        change(ds, path)
        ds.save_as(path, enforce_file_format=True)


def non_mr(study):
    for folder in study.series_dirs.values():
        rewrite(folder, lambda ds, _: setattr(ds, "Modality", "CT"))
    return "modality CT, not MR", None


def missing_sequence(study):
    shutil.rmtree(study.series_dirs["flair"])
    return r"missing sequence\(s\) flair", None


def missing_slice(study):
    files = sorted(study.series_dirs["t2"].iterdir())
    files[len(files) // 2].unlink()
    return "1 missing slice", "t2"


def duplicate_position(study):
    files = sorted(study.series_dirs["t1ce"].iterdir())
    ds = pydicom.dcmread(files[3])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(files[3].with_name("copy.dcm"), enforce_file_format=True)
    return "duplicate position", "t1ce"


def two_claim_t1(study):
    copy = study.folder / "S0500_t1_repeat"
    shutil.copytree(study.series_dirs["t1"], copy)
    uid = generate_uid()

    def renumber(ds, _):
        ds.SeriesInstanceUID, ds.SeriesNumber = uid, 500
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()

    rewrite(copy, renumber)
    return "two series claim the t1 sequence", None


def mixed_orientation(study):
    path = sorted(study.series_dirs["t1ce"].iterdir())[5]
    ds = pydicom.dcmread(path)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(path, enforce_file_format=True)
    return "mixed orientation", "t1ce"


def corrupt_file(study):
    path = sorted(study.series_dirs["t2"].iterdir())[4]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 700])  # cut into the pixel data
    return "corrupt", "t2"


def no_decoder(study):
    def compress(ds, _):
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(64) + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True

    rewrite(study.series_dirs["t1"], compress)
    return "JPEG-LS Lossless.*cannot be decoded here", "t1"


def other_frame_of_reference(study):
    uid = generate_uid()
    rewrite(study.series_dirs["flair"], lambda ds, _: setattr(ds, "FrameOfReferenceUID", uid))
    return "different frames of reference", None


def multi_frame(study):
    path = sorted(study.series_dirs["t2"].iterdir())[0]
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(path, enforce_file_format=True)
    return "multi-frame", "t2"


FAULTS = [
    non_mr,
    missing_sequence,
    missing_slice,
    duplicate_position,
    two_claim_t1,
    mixed_orientation,
    corrupt_file,
    no_decoder,
    other_frame_of_reference,
    multi_frame,
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.__name__ for f in FAULTS])
def test_bad_study_is_named_and_nothing_is_written(one_study, fault, tmp_path):
    if fault is no_decoder:
        from pydicom.pixels import get_decoder

        if get_decoder(JPEGLSLossless).is_available:
            pytest.skip("a JPEG-LS decoder is installed here")
    message, sequence = fault(one_study)
    archive = tmp_path / "archive"
    result = run(one_study.folder.parent, archive, "--json")
    assert result.exit_code != 0, result.output
    report = json.loads(result.output.split("\nError:")[0])
    assert report["imported"] == [] and report["failed"] is True
    (skipped,) = report["skipped"]
    assert skipped["study_uid"] == one_study.study_uid
    assert re.search(message, skipped["reason"]), skipped["reason"]
    if sequence is not None:
        assert skipped["series_uid"] == one_study.series_uids[sequence]
    if fault in (mixed_orientation, corrupt_file, no_decoder, multi_frame):  # one file: named
        assert skipped["file"] and Path(skipped["file"]).parent == one_study.series_dirs[sequence]
    assert case_dirs(archive) == []  # no case, no temporary folder
    text = run(one_study.folder.parent, tmp_path / "archive-2")
    assert text.exit_code != 0 and one_study.study_uid in text.output
    assert "no study was imported" in text.output
    again = run(one_study.folder.parent, archive)  # the same failure again pages nobody
    assert again.exit_code == 0 and "as in an earlier run" in again.output, again.output


def test_file_that_is_not_dicom_is_listed(one_study, dicom_source, tmp_path):
    source = one_study.folder.parent
    (source / "notes.txt").write_text("not an image\n")
    (source / "fake.dcm").write_bytes(b"\x00" * 300)
    result = run(source, tmp_path / "archive", "--json")
    assert result.exit_code == 0, result.output  # the good study is imported
    report = json.loads(result.output)
    assert len(report["imported"]) == 1
    bad = {Path(b["file"]).name: b["reason"] for b in report["bad_files"]}
    assert set(bad) == {"notes.txt", "fake.dcm"}
    assert all("not a DICOM file" in reason for reason in bad.values())


def test_only_files_that_are_not_dicom_fail(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "readme.txt").write_text("hello")
    result = run(tmp_path / "src", tmp_path / "archive", "--json")
    assert result.exit_code != 0
    assert "not a DICOM file" in result.output
    assert case_dirs(tmp_path / "archive") == []


def test_bad_study_beside_good_ones_does_not_stop_them(one_study, small_archive, tmp_path):
    from tests.dicom.conftest import export_study

    good_case = Archive(small_archive).case_ids[1]
    good = export_study(small_archive, good_case, one_study.folder.parent / good_case)
    missing_slice(one_study)
    result = run(one_study.folder.parent, tmp_path / "archive", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [e["study_uid"] for e in report["imported"]] == [good.study_uid]
    assert [e["study_uid"] for e in report["skipped"]] == [one_study.study_uid]
    assert [p.name for p in case_dirs(tmp_path / "archive")] == [report["imported"][0]["case"]]


def test_mapping_file_names_series_the_rules_cannot(one_study, tmp_path):
    names = {"t1": "SERIES A", "t1ce": "SERIES B", "t2": "SERIES C", "flair": "SERIES D"}
    for sequence, folder in one_study.series_dirs.items():

        def blank(ds, _, name=names[sequence]):
            ds.SeriesDescription, ds.ProtocolName = name, ""
            for key in ("EchoTime", "RepetitionTime", "InversionTime", "ContrastBolusAgent"):
                if key in ds:
                    delattr(ds, key)

        rewrite(folder, blank)
    without = run(one_study.folder.parent, tmp_path / "a1", "--json")
    assert without.exit_code != 0
    assert "missing sequence(s) t1, t1ce, t2, flair" in without.output
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({s: [f"^{n}$"] for s, n in names.items()}))
    result = run(one_study.folder.parent, tmp_path / "a2", "--mapping", mapping, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["imported"][0]["series_uids"] == one_study.series_uids


def test_usage_errors():
    assert run().exit_code != 0
    result = run("only-one-path")
    assert result.exit_code == 2 and "give SOURCE and ARCHIVE" in result.output


def test_leftovers_of_an_interrupted_import_are_removed(dicom_source, tmp_path):
    archive = tmp_path / "archive"
    leftover = archive / ".partial-SYN_000_deadbeef-x1y2"
    leftover.mkdir(parents=True)
    (leftover / "SYN_000_deadbeef_t1.nii.gz").write_bytes(b"half a file")
    with pytest.raises(ArchiveError, match="holds no case"):
        Archive(archive)  # meanwhile the archive reader does not take it for a case
    report = import_dicom(dicom_source[0], archive)
    assert not leftover.exists()
    assert sorted(p.name for p in case_dirs(archive)) == sorted(e["case"] for e in report.imported)


def test_one_import_at_a_time(dicom_source, tmp_path):
    from fdn.dicom.importer import archive_lock
    from fdn.errors import DicomImportError

    archive = tmp_path / "archive"
    with archive_lock(archive):
        with pytest.raises(DicomImportError, match="another import-dicom run"):
            import_dicom(dicom_source[0], archive)
    assert len(import_dicom(dicom_source[0], archive).imported) == len(dicom_source[1])


def test_pydicom_test_files_are_listed_with_reasons(tmp_path):
    """pydicom's bundled MR files (one study of single images): read, then skipped because the
    study is not a four-sequence brain MR; the CLI says so and writes nothing."""
    from pydicom.data import get_testdata_file

    source = tmp_path / "src"
    source.mkdir()
    names = ["MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm", "MR_truncated.dcm"]
    for name in names:
        path = get_testdata_file(name, download=False)
        if path is None:
            pytest.skip(f"pydicom's test file {name} is not shipped with this pydicom")
        shutil.copy(path, source / name)
    result = run(source, tmp_path / "archive", "--json")
    assert result.exit_code != 0
    report = json.loads(result.output.split("\nError:")[0])
    (skipped,) = report["skipped"]  # the four files share one study
    assert re.search(r"missing sequence\(s\) t1, t1ce, flair", skipped["reason"])
    assert "is t2" in skipped["reason"]  # identified by EchoTime 240 ms, RepetitionTime 4 s
    assert case_dirs(tmp_path / "archive") == []


def test_case_ids_are_keyed_pseudonyms_that_hold_no_patient_id(dicom_source, imported_archive):
    import hashlib
    import hmac
    import re
    import stat

    archive, report = imported_archive
    key_file = archive / ".pseudonym-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = bytes.fromhex(key_file.read_text().strip())
    assert len(key) == 32
    for entry in report.imported:
        case = entry["case"]
        sidecar = json.loads((archive / case / f"{case}_dicom.json").read_text())
        patient = sidecar["patient_id"]  # the way back, kept in the archive only
        assert patient and patient not in case
        assert re.fullmatch(r"P[0-9a-f]{10}_[0-9a-f]{8}", case), case
        patient_hash = hmac.new(key, f"patient:{patient}".encode(), hashlib.sha256).hexdigest()
        study_hash = hmac.new(key, f"study:{entry['study_uid']}".encode(), hashlib.sha256)
        assert case == f"P{patient_hash[:10]}_{study_hash.hexdigest()[:8]}"
    # the key file beside the cases is not taken for one
    assert sorted(Archive(archive).case_ids) == sorted(e["case"] for e in report.imported)


def test_another_archive_gives_the_same_studies_other_pseudonyms(
    dicom_source, imported_archive, tmp_path
):
    source, _ = dicom_source
    archive, report = imported_archive
    again = run(source, tmp_path / "other", "--json")
    assert again.exit_code == 0, again.output
    other = {e["study_uid"]: e["case"] for e in json.loads(again.output)["imported"]}
    mine = {e["study_uid"]: e["case"] for e in report.imported}
    assert other.keys() == mine.keys()
    assert not set(other.values()) & set(mine.values())
