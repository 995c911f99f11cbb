"""The NIfTI reader against hostile and damaged files.

References are independent: nibabel's own reading of an intact file, numpy arrays written by
hand, and byte offsets of the NIfTI-1 header from the standard (dim at 40, datatype at 70,
bitpix at 72, vox_offset at 108, scl_slope at 112, magic at 344).
"""

import gzip
import os
import struct
import tracemalloc
import zlib

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fdn.data import Archive, CaseError
from fdn.data.case import _read as read_voxels
from fdn.data.nifti import MAX_IN_PLANE, NiftiError, read_nifti
from fdn.errors import ArchiveError

CASE = "CASE_A"
# Allocations allowed while reading a file of a few KB: far below any claimed size in the tests
# (the smallest absurd claim is 2000 × 2000 × 1000 voxels = 8 GB as float32).
SMALL_PEAK_BYTES = 16 << 20


def nifti_bytes(data: np.ndarray, affine=None) -> bytes:
    return nib.Nifti1Image(data, np.eye(4) if affine is None else affine).to_bytes()


def write(path, raw: bytes, compress: bool) -> None:
    path.write_bytes(gzip.compress(raw, mtime=0) if compress else raw)


def peak_bytes_of(fn):
    """(result or exception, peak traced allocation in bytes) of fn()."""
    tracemalloc.start()
    try:
        try:
            result = fn()
        except Exception as error:  # noqa: BLE001 - the caller checks the kind
            result = error
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def header_claiming(shape, dtype=np.int16) -> bytes:
    """A NIfTI-1 header (plus extension flag) claiming `shape`, with no voxel data at all."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4


# --- agreement with nibabel on intact files -----------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_reads_what_nibabel_reads(tmp_path, compress, dtype):
    rng = np.random.default_rng(1)
    data = (rng.normal(size=(5, 7, 3)) * 50).astype(dtype)
    affine = np.diag([1.5, 0.9, 2.0, 1.0])
    affine[:3, 3] = [-10, 4, 7.5]
    path = tmp_path / ("x.nii.gz" if compress else "x.nii")
    img = nib.Nifti1Image(data, affine)
    if dtype == np.int16:  # scaled integers: nibabel applies slope and intercept
        img.header.set_slope_inter(0.5, -3.0)
    nib.save(img, path)
    got, got_affine = read_nifti(path)
    reference = nib.load(path)
    assert got.dtype == np.float32 and got.shape == data.shape
    np.testing.assert_array_equal(got, np.asarray(reference.dataobj, dtype=np.float32))
    np.testing.assert_array_equal(got_affine, reference.affine)


def test_multi_member_gzip_and_zero_padding_are_read_whole(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    raw = nifti_bytes(data)
    path = tmp_path / "x.nii.gz"
    # `cat a.gz b.gz` is a valid gzip file; some tape tools pad with zero bytes
    path.write_bytes(
        gzip.compress(raw[:200], mtime=0) + gzip.compress(raw[200:], mtime=0) + b"\0" * 16
    )
    got, _ = read_nifti(path)
    np.testing.assert_array_equal(got, data.astype(np.float32))


# --- sizes claimed by the header -----------------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [(2000, 2000, 1000), (MAX_IN_PLANE + 1, 4, 4), (4, 4, 4097), (512, 512, 1024, 8)]
)
@pytest.mark.parametrize("compress", [True, False])
def test_header_claiming_a_huge_volume_is_refused_before_allocating(tmp_path, shape, compress):
    path = tmp_path / ("big.nii.gz" if compress else "big.nii")
    write(path, header_claiming(shape), compress)
    if compress and shape == (2000, 2000, 1000):
        assert path.stat().st_size < 100  # the red team's 62-byte file
    result, peak = peak_bytes_of(lambda: read_nifti(path))
    assert isinstance(result, NiftiError), result
    assert "header claims a volume of" in str(result) and path.name in str(result)
    assert peak < SMALL_PEAK_BYTES, peak


@pytest.mark.parametrize("compress", [True, False])
def test_header_claiming_more_data_than_the_file_holds(tmp_path, compress):
    # within the limits (256 MB as int16) but the file holds 8 voxels
    path = tmp_path / ("short.nii.gz" if compress else "short.nii")
    write(path, header_claiming((512, 512, 512)) + b"\1" * 16, compress)
    result, peak = peak_bytes_of(lambda: read_nifti(path))
    assert isinstance(result, NiftiError), result
    assert "truncated" in str(result) and "268,435,808 bytes" in str(result)
    assert peak < SMALL_PEAK_BYTES, peak


def test_gzip_bomb_stops_at_the_header_size(tmp_path):
    """A header claiming 8 voxels followed by 64 MB of zeros (compressed to ~64 KB)."""
    path = tmp_path / "bomb.nii.gz"
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    blob = compressor.compress(header_claiming((2, 2, 2)))
    zeros = bytes(1 << 20)
    for _ in range(64):
        blob += compressor.compress(zeros)
    path.write_bytes(blob + compressor.flush())
    result, peak = peak_bytes_of(lambda: read_nifti(path))
    assert isinstance(result, NiftiError) and "decompresses to more than" in str(result), result
    assert peak < SMALL_PEAK_BYTES, peak


def test_an_uncompressed_file_is_read_only_as_far_as_its_header_says(tmp_path):
    """A 2-voxel .nii followed by 48 MB of junk: the reader reads the 2 voxels, not the junk."""
    path = tmp_path / "tail.nii"
    with open(path, "wb") as f:
        f.write(nifti_bytes(np.array([[[7]], [[9]]], np.int16)))
        f.write(b"\1" * (48 << 20))
    result, peak = peak_bytes_of(lambda: read_nifti(path))
    np.testing.assert_array_equal(result[0], np.array([[[7]], [[9]]], np.float32))
    assert peak < SMALL_PEAK_BYTES, peak


# --- damaged gzip streams --------------------------------------------------------------------------


def test_every_byte_flip_in_a_gz_is_an_error_or_reads_the_same(tmp_path):
    """gzip's CRC-32 is at the end of the stream: only a reader of whole streams checks it.

    Flip one byte at 40 positions spread over the deflate body and the trailer; each read must
    raise NiftiError or return exactly the original voxels (a flip in unused padding bits)."""
    data = np.random.default_rng(7).integers(0, 1000, size=(24, 24, 12)).astype(np.int16)
    raw = gzip.compress(nifti_bytes(data), mtime=0)
    path = tmp_path / "flip.nii.gz"
    positions = np.linspace(10, len(raw) - 1, 40).astype(int)  # 10: after the gzip header
    silent_changes, errors = [], 0
    for position in positions:
        flipped = bytearray(raw)
        flipped[position] ^= 0x5A
        path.write_bytes(bytes(flipped))
        try:
            got, _ = read_voxels(CASE, "t1", path)  # the case reader's path for every file
        except CaseError as error:
            assert path.name in str(error) and CASE in str(error)
            errors += 1
            continue
        if not np.array_equal(got, data.astype(np.float32)):
            silent_changes.append(int(position))
    assert silent_changes == []
    assert errors >= 35  # nearly every flip is caught; the rest read unchanged


def test_truncated_gz_names_the_file(tmp_path):
    raw = gzip.compress(nifti_bytes(np.ones((8, 8, 8), np.float32)), mtime=0)
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(raw[:-4])  # the length field of the trailer is gone
    with pytest.raises(NiftiError, match="cut.nii.gz: the gzip stream ends early"):
        read_nifti(path)


# --- special files -----------------------------------------------------------------------------


def test_special_files_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo.nii.gz"
    os.mkfifo(fifo)
    with pytest.raises(NiftiError, match="not a regular file"):
        read_nifti(fifo)  # opening a FIFO for reading would block forever
    loop = tmp_path / "loop.nii.gz"
    os.symlink(loop, loop)
    with pytest.raises(NiftiError, match="loop.nii.gz: cannot open the file"):
        read_nifti(loop)
    (tmp_path / "dir.nii.gz").mkdir()
    with pytest.raises(NiftiError, match="not a regular file"):
        read_nifti(tmp_path / "dir.nii.gz")
    with pytest.raises(NiftiError, match="does not exist"):
        read_nifti(tmp_path / "missing.nii.gz")


def test_pair_files_and_wrong_magic_are_refused(tmp_path):
    raw = bytearray(nifti_bytes(np.zeros((2, 2, 2), np.uint8)))
    raw[344:348] = b"ni1\0"
    path = tmp_path / "pair.nii"
    path.write_bytes(bytes(raw))
    with pytest.raises(NiftiError, match="magic"):
        read_nifti(path)


def test_voxel_offset_inside_the_header_is_refused(tmp_path):
    raw = bytearray(nifti_bytes(np.arange(8, dtype=np.int16).reshape(2, 2, 2)))
    raw[108:112] = struct.pack("<f", 0.0)  # nibabel would read header bytes as voxels
    path = tmp_path / "offset.nii"
    path.write_bytes(bytes(raw))
    with pytest.raises(NiftiError, match="voxel data at byte 0"):
        read_nifti(path)


# --- the case level: missing and broken sequences --------------------------------------------------


def make_case(root, keys=("t1", "t1ce", "t2", "flair", "seg")):
    folder = root / CASE
    folder.mkdir(parents=True)
    data = np.zeros((6, 6, 4), np.float32)
    data[1:5, 1:5, 1:3] = np.arange(32, dtype=np.float32).reshape(4, 4, 2) + 1
    for key in keys:
        values = (data > 10).astype(np.uint8) if key == "seg" else data
        nib.save(nib.Nifti1Image(values, np.eye(4)), folder / f"{CASE}_{key}.nii.gz")
    return folder


@pytest.mark.parametrize("keys", [("t1ce", "t2", "flair", "seg"), ("seg",), ("anat",)])
def test_a_case_without_t1_is_a_case_error_listed_by_skip_bad(tmp_path, keys):
    make_case(tmp_path, keys)
    archive = Archive(tmp_path)
    assert archive.case_dir(CASE) == (tmp_path / CASE).resolve()
    with pytest.raises(CaseError, match=f"case '{CASE}'.*missing the t1 sequence"):
        archive.load(CASE, 8)
    bad = archive.validate(skip_bad=True)
    assert [(b.case, b.file.name) for b in bad] == [(CASE, f"{CASE}_t1.nii.gz")]
    assert list(Archive(tmp_path).iter_volumes(8, skip_bad=True)) == []


def test_t1_as_a_symlink_loop_names_the_file(tmp_path):
    folder = make_case(tmp_path, ("t1ce", "t2", "flair"))
    loop = folder / f"{CASE}_t1.nii.gz"
    os.symlink(loop, loop)
    archive = Archive(tmp_path)
    with pytest.raises(
        CaseError,
        match=f"{CASE}_t1.nii.gz: missing the t1 sequence: the name "
        "exists but is not a readable regular file",
    ):
        archive.load(CASE, 8)
    assert [b.case for b in archive.validate(skip_bad=True)] == [CASE]


def test_loose_input_files_that_loop_or_dangle_are_named(tmp_path):
    from fdn.data import case_files_from_paths

    folder = make_case(tmp_path, ("t1ce", "t2", "flair"))
    loop = folder / f"{CASE}_t1.nii.gz"
    os.symlink(loop, loop)
    with pytest.raises(ArchiveError, match=f"{CASE}_t1.nii.gz is not a readable regular file"):
        case_files_from_paths([loop, folder / f"{CASE}_t2.nii.gz"])


def test_huge_header_in_a_case_is_skipped_by_skip_bad(tmp_path):
    folder = make_case(tmp_path)
    (folder / f"{CASE}_flair.nii.gz").write_bytes(
        gzip.compress(header_claiming((2000, 2000, 1000)), mtime=0)
    )
    archive = Archive(tmp_path)
    bad, peak = peak_bytes_of(lambda: archive.validate(skip_bad=True))
    assert [(b.case, b.file.name) for b in bad] == [(CASE, f"{CASE}_flair.nii.gz")]
    assert "header claims a volume of 2000 × 2000 × 1000" in bad[0].fault
    assert peak < SMALL_PEAK_BYTES, peak


# --- property tests --------------------------------------------------------------------------------

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
INT16 = st.integers(-(2**15), 2**15 - 1)


@st.composite
def damaged_nifti(draw):
    """The bytes of a small valid NIfTI-1 file, then arbitrary header fields, truncation, a
    flipped byte, and gzip or not."""
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
    dtype = draw(st.sampled_from(DTYPES))
    data = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape).astype(dtype)
    raw = bytearray(nifti_bytes(data))
    edits = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("dim"), st.integers(0, 7), INT16),
                st.tuples(st.just("datatype"), st.just(0), INT16),
                st.tuples(st.just("bitpix"), st.just(0), INT16),
                st.tuples(
                    st.just("vox_offset"),
                    st.just(0),
                    st.one_of(st.floats(-4096, 1e9, width=32), st.floats(width=32)),
                ),
                st.tuples(st.just("scl_slope"), st.just(0), st.floats(width=32)),
                st.tuples(st.just("sizeof_hdr"), st.just(0), st.integers(-(2**31), 2**31 - 1)),
            ),
            max_size=4,
        )
    )
    for field, index, value in edits:
        if field == "dim":
            raw[40 + 2 * index : 42 + 2 * index] = struct.pack("<h", value)
        elif field in ("datatype", "bitpix"):
            offset = 70 if field == "datatype" else 72
            raw[offset : offset + 2] = struct.pack("<h", value)
        elif field in ("vox_offset", "scl_slope"):
            offset = 108 if field == "vox_offset" else 112
            raw[offset : offset + 4] = struct.pack("<f", value)
        else:
            raw[0:4] = struct.pack("<i", value)
    if draw(st.booleans()):
        position = draw(st.integers(0, len(raw) - 1))
        raw[position] ^= draw(st.integers(1, 255))
    compress = draw(st.booleans())
    blob = gzip.compress(bytes(raw), mtime=0) if compress else bytes(raw)
    cut = draw(st.one_of(st.none(), st.integers(0, len(blob))))
    return blob if cut is None else blob[:cut], compress


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # same examples every run
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(damaged_nifti())
def test_any_header_or_truncation_gives_a_volume_or_a_nifti_error(tmp_path, case):
    blob, compress = case
    path = tmp_path / ("h.nii.gz" if compress else "h.nii")
    path.write_bytes(blob)
    result, peak = peak_bytes_of(lambda: read_nifti(path))
    if isinstance(result, Exception):
        assert isinstance(result, NiftiError) and isinstance(result, ArchiveError), repr(result)
        assert str(path) in str(result)
    else:
        data, affine = result
        assert data.dtype == np.float32 and affine.shape == (4, 4)
        assert 1 <= data.ndim <= 7
    # the files are < 1 KB: nothing near a claimed multi-GB size is ever allocated
    assert peak < SMALL_PEAK_BYTES, peak
