"""Our DICOM → NIfTI geometry and voxels against dcm2niix, an independent converter.

Both outputs are brought to the closest canonical (RAS) axis order with nibabel before the
comparison, since dcm2niix flips the row axis and we do not: what must agree is where every
voxel lies in patient space and what value it holds.
"""

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from fdn.data.labels import SEQUENCES
from fdn.dicom.importer import load_series
from fdn.errors import DicomImportError

DCM2NIIX = shutil.which("dcm2niix") or "/usr/bin/dcm2niix"
AFFINE_ATOL_MM = 1e-3  # DS strings carry 6 decimals; dcm2niix computes in float32
VALUE_ATOL = 1e-3  # values are multiples of the slope 0.5 below 2**15: exact in float32


def dcm2niix(series_dir: Path, out: Path) -> nib.Nifti1Image:
    if not Path(DCM2NIIX).exists():
        pytest.skip("dcm2niix is not installed (Debian package dcm2niix; `make system-deps`)")
    out.mkdir(parents=True)
    result = subprocess.run(
        [DCM2NIIX, "-z", "n", "-b", "n", "-f", "out", "-o", str(out), str(series_dir)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = out.glob("out*.nii")
    return nib.load(path)


def assert_same_image(ours: nib.Nifti1Image, reference: nib.Nifti1Image) -> None:
    ours, reference = nib.as_closest_canonical(ours), nib.as_closest_canonical(reference)
    np.testing.assert_allclose(ours.affine, reference.affine, atol=AFFINE_ATOL_MM)
    data, expected = ours.get_fdata(), np.squeeze(reference.get_fdata())
    if data.ndim == 3 and expected.ndim == 2:
        expected = expected[..., None]
    assert data.shape == expected.shape
    np.testing.assert_allclose(data, expected, atol=VALUE_ATOL)


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_oblique_series_matches_dcm2niix(dicom_source, sequence, tmp_path):
    study = next(iter(dicom_source[1].values()))
    series_dir = study.series_dirs[sequence]
    volume = load_series(sorted(series_dir.iterdir()))
    assert_same_image(
        nib.Nifti1Image(volume.data, volume.affine), dcm2niix(series_dir, tmp_path / "dcm2niix")
    )
    # the orientation is oblique: no axis of the affine is along a patient axis
    directions = volume.affine[:3, :3] / np.linalg.norm(volume.affine[:3, :3], axis=0)
    assert np.abs(directions).max() < 0.99


def test_imported_case_matches_dcm2niix(dicom_source, imported_archive, tmp_path):
    """The written NIfTI files (after resampling onto the t1 grid) against dcm2niix."""
    archive, report = imported_archive
    entry = report.imported[0]
    study = next(s for s in dicom_source[1].values() if s.study_uid == entry["study_uid"])
    for sequence in SEQUENCES:
        written = nib.load(archive / entry["case"] / f"{entry['case']}_{sequence}.nii.gz")
        assert_same_image(
            written, dcm2niix(study.series_dirs[sequence], tmp_path / f"dcm2niix-{sequence}")
        )


BUNDLED = [
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "MR_small_expb.dcm",
    "MR_small_RLE.dcm",
    "MR_small_padded.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
]


def bundled(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is not shipped with this pydicom")
    return Path(path)


@pytest.mark.filterwarnings("ignore:The pixel data is .* excess padding")  # MR_small_padded
@pytest.mark.parametrize("name", BUNDLED)
def test_pydicom_test_files_match_dcm2niix_or_are_named_undecodable(name, tmp_path):
    """Real scanner headers (pydicom's bundled MR files, several transfer syntaxes): decoded
    and placed as dcm2niix does, or, where no decoder is installed, refused with the reason."""
    import pydicom
    from pydicom.pixels import get_decoder

    path = bundled(name)
    syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(path, folder / name)
    if not get_decoder(syntax).is_available:
        with pytest.raises(DicomImportError, match="cannot be decoded here") as caught:
            load_series([folder / name], study="1.2.3", series="1.2.3.4")
        assert syntax.name in caught.value.fault
        assert caught.value.file == str(folder / name) and caught.value.series == "1.2.3.4"
        return
    volume = load_series([folder / name])
    assert_same_image(
        nib.Nifti1Image(volume.data, volume.affine), dcm2niix(folder, tmp_path / "out")
    )


def test_truncated_pydicom_test_file_is_named_corrupt():
    path = bundled("MR_truncated.dcm")
    with pytest.raises(DicomImportError, match="corrupt") as caught:
        load_series([path], study="1.2.3", series="1.2.3.4")
    assert caught.value.file == str(path)


def test_anisotropic_non_square_series_matches_dcm2niix(small_archive, tmp_path):
    """Rows ≠ columns and Δrow ≠ Δcol, so a swapped PixelSpacing or a transposed image cannot
    pass: checked against dcm2niix and against the affine the series was written with."""
    from fdn.data import Archive
    from fdn.dicom.export import export_series, rotated_affine

    image = nib.load(Archive(small_archive).case_files(Archive(small_archive).case_ids[0])["t2"])
    data = np.asarray(image.dataobj, dtype=np.float32)[:, 3:37, :]  # 40 columns × 34 rows
    affine = image.affine.copy()
    affine[:3, 0] *= 0.5  # Δcol 3 mm, Δrow 6 mm
    affine = rotated_affine(affine, data.shape, (-20.0, 10.0, 35.0))
    folder = tmp_path / "series"
    export_series(
        data,
        affine,
        folder,
        sequence="t2",
        study={"PatientID": "A", "StudyInstanceUID": "1.2.3", "FrameOfReferenceUID": "1.2.3.1"},
        series_number=1,
        series_uid="1.2.3.4",
        slope=0.5,
        intercept=-16.0,
    )
    volume = load_series(sorted(folder.iterdir()))
    assert volume.data.shape == data.shape
    np.testing.assert_allclose(volume.data, data, atol=0.25 + 1e-3)
    np.testing.assert_allclose(volume.affine, affine, atol=AFFINE_ATOL_MM)
    assert_same_image(
        nib.Nifti1Image(volume.data, volume.affine), dcm2niix(folder, tmp_path / "dcm2niix")
    )
