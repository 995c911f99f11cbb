"""`import-dicom` under hostile or careless input (issue 25, findings 7, 8, 9, 11 and 12):
non-finite geometry and rescale values, a deflate bomb, duplicate files, and re-runs."""

import json
import shutil
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, MRImageStorage, generate_uid

from fdn.data import Archive
from fdn.dicom.importer import import_dicom, scan
from tests.dicom.conftest import case_dirs, export_study
from tests.dicom.test_import import missing_slice, rewrite, run


@pytest.fixture
def good_and_bad(one_study, small_archive):
    """`one_study` (to damage) beside a good study of another case: (bad, good)."""
    case = Archive(small_archive).case_ids[1]
    return one_study, export_study(small_archive, case, one_study.folder.parent / case)


def _set(path: Path, attribute: str, value) -> None:
    ds = pydicom.dcmread(path)
    setattr(ds, attribute, value)
    ds.save_as(path, enforce_file_format=True)


def _report(result) -> dict:
    return json.loads(result.output.split("\nError:")[0])


# ---------------------------------------------------- 7, 8: non-finite geometry and rescale

NON_FINITE = [
    ("ImagePositionPatient", ["inf", "0", "0"], "ImagePositionPatient is infinite"),
    ("ImagePositionPatient", ["0", "nan", "0"], "ImagePositionPatient is NaN"),
    ("ImageOrientationPatient", ["1", "0", "0", "0", "inf", "0"], "ImageOrientationPatient is"),
    ("PixelSpacing", ["nan", "nan"], "PixelSpacing is NaN"),
    ("PixelSpacing", ["inf", "1"], "PixelSpacing is infinite"),
    ("RescaleSlope", "1e300", r"RescaleSlope 1e\+300 .*beyond float32"),
    ("RescaleSlope", "nan", "RescaleSlope is NaN"),
    ("RescaleIntercept", "-inf", "RescaleIntercept is infinite"),
]


@pytest.mark.parametrize(
    "attribute,value,message", NON_FINITE, ids=[f"{a}={v}" for a, v, _ in NON_FINITE]
)
def test_a_non_finite_value_skips_only_its_study(good_and_bad, tmp_path, attribute, value, message):
    import re

    bad, good = good_and_bad
    files = sorted(bad.series_dirs["t2"].iterdir())
    path = files[len(files) // 2]  # a slice with brain: its stored values are not all zero
    with warnings.catch_warnings():  # pydicom warns of an invalid DS value, and writes it
        warnings.simplefilter("ignore")
        _set(path, attribute, value)
    result = run(bad.folder.parent, tmp_path / "archive", "--json")
    assert result.exit_code == 0, result.output
    report = _report(result)
    assert [e["study_uid"] for e in report["imported"]] == [good.study_uid]
    (skipped,) = report["skipped"]
    assert skipped["study_uid"] == bad.study_uid
    assert skipped["series_uid"] == bad.series_uids["t2"]
    assert skipped["file"] == str(path)
    assert re.search(message, skipped["reason"]), skipped["reason"]
    assert "mixed PixelSpacing" not in skipped["reason"]
    assert len(case_dirs(tmp_path / "archive")) == 1


def test_an_unexpected_fault_in_one_study_does_not_stop_the_others(
    good_and_bad, tmp_path, monkeypatch
):
    """Whatever a study's files make a library raise, that study is skipped with the fault
    named, and the studies after it are imported."""
    import fdn.dicom.loading as loading

    bad, good = good_and_bad
    real = loading.resample

    def fail_for_bad(volume, affine, shape, ref_affine):
        if volume.shape[2] == len(list(bad.series_dirs["t2"].iterdir())) and fail_for_bad.once:
            fail_for_bad.once = False
            raise np.linalg.LinAlgError("Singular matrix")
        return real(volume, affine, shape, ref_affine)

    fail_for_bad.once = True
    monkeypatch.setattr(loading, "resample", fail_for_bad)
    report = import_dicom(bad.folder.parent, tmp_path / "archive")
    assert len(report.imported) == 1 and len(report.skipped) == 1
    assert "LinAlgError: Singular matrix" in report.skipped[0]["reason"]


# ------------------------------------------------------------------ 9: a deflate bomb


def _deflated_file(path: Path, rows: int, cols: int, pixel_bytes: int, study_uid: str) -> Path:
    """A Deflated Explicit VR Little Endian MR image whose pixel data (zeros) inflates to
    `pixel_bytes`, written as a stream: the file stays small, nothing large is in memory."""
    ds = Dataset()
    ds.PatientID, ds.Modality = "BOMB", "MR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
    ds.SeriesDescription = "T1 SE AX"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = rows, cols, 16, 16, 15
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = (
        MRImageStorage,
        ds.SOPInstanceUID,
    )
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)
    pixel_tag = b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_bytes.to_bytes(4, "little")
    with open(path, "wb") as out:
        out.write(b"\x00" * 128 + b"DICM")
        meta_buffer = DicomBytesIO()
        meta_buffer.is_little_endian, meta_buffer.is_implicit_VR = True, False
        write_file_meta_info(meta_buffer, meta)
        out.write(meta_buffer.getvalue())
        packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        out.write(packer.compress(head.getvalue() + pixel_tag))
        zeros = bytes(1 << 22)
        for _ in range(pixel_bytes >> 22):
            out.write(packer.compress(zeros))
        out.write(packer.flush())
    return path


BOMB_BYTES = 512 << 20  # inflates to 512 MB


def test_the_header_scan_does_not_inflate_a_deflated_file(tmp_path):
    path = _deflated_file(tmp_path / "bomb.dcm", 16384, 16384, BOMB_BYTES, generate_uid())
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        studies, bad = scan([path])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert bad == []
    (study,) = studies.values()
    (series,) = study.series.values()
    assert series.header.Rows == 16384 and "PixelData" not in series.header
    assert peak < 32 << 20, f"the header scan took {peak / 1e6:.0f} MB"


@pytest.mark.parametrize(
    "rows,message",
    [(16384, "16384 × 16384 pixels"), (64, "inflates beyond the 8192 bytes")],
    ids=["announced", "hidden"],
)
def test_loading_a_deflate_bomb_is_refused_without_inflating_it(tmp_path, rows, message):
    """Announced (Rows × Columns far beyond an MR slice) or hidden (a 64 × 64 header over
    512 MB of pixel data): refused by name, memory stays small."""
    from fdn.dicom.loading import load_series
    from fdn.errors import DicomImportError

    path = _deflated_file(tmp_path / "bomb.dcm", rows, rows, BOMB_BYTES, generate_uid())
    tracemalloc.start()
    try:
        with pytest.raises(DicomImportError, match=message):
            load_series([path])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20, f"loading took {peak / 1e6:.0f} MB"


def test_a_small_deflated_study_still_imports(one_study, tmp_path):
    def deflate(ds, _):
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian

    for folder in one_study.series_dirs.values():
        rewrite(folder, deflate)
    report = import_dicom(one_study.folder.parent, tmp_path / "archive")
    assert [e["study_uid"] for e in report.imported] == [one_study.study_uid], report.skipped


# ----------------------------------------------------------------- 11: duplicate files


def test_an_exact_duplicate_file_is_dropped_with_a_note(one_study, tmp_path):
    original = sorted(one_study.series_dirs["t1"].iterdir())[4]
    copy = one_study.folder / "copies" / "again.dcm"
    copy.parent.mkdir()
    shutil.copy(original, copy)
    result = run(one_study.folder.parent, tmp_path / "archive", "--json")
    assert result.exit_code == 0, result.output
    report = _report(result)
    assert [e["study_uid"] for e in report["imported"]] == [one_study.study_uid]
    (note,) = report["duplicates"]
    assert note["series_uid"] == one_study.series_uids["t1"]
    assert {note["file"], note["same_as"]} == {str(original), str(copy)}
    case = report["imported"][0]["case"]
    sidecar = json.loads((tmp_path / "archive" / case / f"{case}_dicom.json").read_text())
    assert sidecar["series"]["t1"]["instances"] == len(list(one_study.series_dirs["t1"].iterdir()))
    text = run(one_study.folder.parent, tmp_path / "archive2")
    assert "duplicate" in text.output and str(copy) in text.output


def test_a_conflicting_duplicate_refuses_its_study(good_and_bad, tmp_path):
    bad, good = good_and_bad
    original = sorted(bad.series_dirs["flair"].iterdir())[6]
    copy = bad.folder / "other.dcm"
    ds = pydicom.dcmread(original)
    pixels = ds.pixel_array.copy()
    pixels[0, 0] += 7
    ds.PixelData = pixels.tobytes()
    ds.save_as(copy, enforce_file_format=True)
    result = run(bad.folder.parent, tmp_path / "archive", "--json")
    assert result.exit_code == 0, result.output
    report = _report(result)
    assert [e["study_uid"] for e in report["imported"]] == [good.study_uid]
    (skipped,) = report["skipped"]
    assert skipped["study_uid"] == bad.study_uid
    assert skipped["series_uid"] == bad.series_uids["flair"]
    assert "share SOPInstanceUID" in skipped["reason"] and "differ" in skipped["reason"]
    assert str(original) in skipped["reason"] and str(copy) in skipped["reason"]


# -------------------------------------------------------------------- 12: nightly re-runs


def test_a_rerun_with_only_old_failures_exits_zero(good_and_bad, small_archive, tmp_path):
    bad, good = good_and_bad
    source, archive = bad.folder.parent, tmp_path / "archive"
    missing_slice(bad)
    (source / "notes.txt").write_text("not an image\n")
    first = run(source, archive, "--json")
    assert first.exit_code == 0, first.output
    assert _report(first)["skipped"][0]["known"] is False
    again = run(source, archive, "--json")
    assert again.exit_code == 0, again.output  # nothing new: nobody is paged
    report = _report(again)
    assert report["imported"] == [] and len(report["already"]) == 1
    assert [s["known"] for s in report["skipped"]] == [True]
    assert [b["known"] for b in report["bad_files"]] == [True]
    text = run(source, archive)
    assert text.exit_code == 0, text.output
    assert "as in an earlier run" in text.output
    # a new failure still fails the run
    case = Archive(small_archive).case_ids[2]
    other = export_study(small_archive, case, source / case)
    shutil.rmtree(other.series_dirs["t2"])
    new = run(source, archive, "--json")
    assert new.exit_code != 0, new.output
    known = {s["study_uid"]: s["known"] for s in _report(new)["skipped"]}
    assert known == {bad.study_uid: True, other.study_uid: False}
    # and a known failure whose reason changed is new again
    shutil.rmtree(source / case)
    for path in bad.series_dirs["flair"].iterdir():
        path.unlink()
    changed = run(source, archive, "--json")
    assert changed.exit_code != 0, changed.output
    assert [s["known"] for s in _report(changed)["skipped"]] == [False]
