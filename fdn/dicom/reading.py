"""Reading one DICOM file within bounds: its header without its pixel data, or the whole file,
never inflating more than its header announces.

pydicom reads a file of the Deflated Explicit VR Little Endian transfer syntax by inflating the
whole dataset into memory before parsing it, even with ``stop_before_pixels``, so a 1 MB file of
deflated zeros becomes gigabytes during a header scan. Here a deflated file is inflated as a
stream: `read_header` inflates only as far as the pixel data (at most `MAX_HEADER_BYTES`), and
`read_instance` at most the header plus the pixel data its Rows, Columns, BitsAllocated,
SamplesPerPixel and NumberOfFrames announce (plus `TRAILER_BYTES` for elements after it). Other
syntaxes go to pydicom as before: their pixel data is not inflated by reading.

`check_image_size` refuses images larger than an MR slice ever is (`MAX_IMAGE_SIDE`) before any
decoder allocates them: a compressed file can announce any size.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import BinaryIO, cast

import pydicom
from pydicom.dataset import FileDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import (  # _read_file_meta_info: the meta of an open file, as dcmread
    _read_file_meta_info,
    read_dataset,
    read_file_meta_info,
    read_preamble,
)
from pydicom.uid import DeflatedExplicitVRLittleEndian

MAX_HEADER_BYTES = 16 << 20  # inflated bytes before the pixel data of a deflated file
FIRST_HEADER_BYTES = 64 << 10  # the first try; real headers are a few kilobytes
TRAILER_BYTES = 1 << 20  # inflated bytes allowed after the pixel data a header announces
MAX_IMAGE_SIDE = 4096  # rows or columns of one image (MR slices have at most 1024)
MAX_FRAMES = 4096
_CHUNK = 1 << 16
_PIXEL_DATA = 0x7FE00010


class DicomReadError(ValueError):
    """A file that cannot be read within bounds; the message says why."""


def check_image_size(header) -> int:
    """The bytes of pixel data `header` announces; DicomReadError if it is beyond an MR image."""
    rows, cols = int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0)
    frames = int(header.get("NumberOfFrames", 1) or 1)
    if max(rows, cols) > MAX_IMAGE_SIDE or frames > MAX_FRAMES:
        raise DicomReadError(
            f"{rows} × {cols} pixels in {frames} frame(s), more than an MR image has (at most "
            f"{MAX_IMAGE_SIDE} × {MAX_IMAGE_SIDE}, {MAX_FRAMES} frames): not decoded"
        )
    bits = int(header.get("BitsAllocated", 16) or 16)
    samples = int(header.get("SamplesPerPixel", 1) or 1)
    return rows * cols * frames * samples * max(bits, 1) // 8


def _is_deflated(path: Path) -> bool:
    meta = read_file_meta_info(path)
    return meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian


class _Inflater:
    """The deflated dataset of an open file, inflated on demand into `data`."""

    def __init__(self, handle):
        self.handle = handle
        self.engine = zlib.decompressobj(-zlib.MAX_WBITS)
        self.data = bytearray()

    @property
    def done(self) -> bool:
        return self.engine.eof

    def fill(self, size: int) -> None:
        """Inflate until `data` holds `size` bytes or the stream ends."""
        while len(self.data) < size and not self.engine.eof:
            chunk = self.engine.unconsumed_tail or self.handle.read(_CHUNK)
            if not chunk:
                raise DicomReadError("the deflated data ends early (a truncated file)")
            self.data += self.engine.decompress(chunk, size - len(self.data))


def _parse(data, *, stop_at_pixels: bool):
    """(dataset, whether it stopped at the pixel data, bytes before it)."""
    stopped = []

    def at_pixels(tag, vr, length) -> bool:
        if tag == _PIXEL_DATA:
            stopped.append(True)
            return True
        return False

    buffer = DicomBytesIO(bytes(data))
    dataset = read_dataset(
        cast(BinaryIO, buffer), False, True, stop_when=at_pixels if stop_at_pixels else None
    )
    return dataset, bool(stopped), buffer.tell()


def _deflated(path: Path, *, header_only: bool) -> FileDataset:
    with open(path, "rb") as handle:
        preamble = read_preamble(handle, False)
        meta = _read_file_meta_info(handle)
        inflater = _Inflater(handle)
        size = FIRST_HEADER_BYTES
        while True:  # the header: inflate 64 KB, then 1 MB, then 16 MB until the pixel data
            inflater.fill(size)
            dataset, stopped, header_bytes = _parse(inflater.data, stop_at_pixels=True)
            if stopped or inflater.done:
                break
            if size >= MAX_HEADER_BYTES:
                raise DicomReadError(
                    f"no pixel data within the first {MAX_HEADER_BYTES >> 20} MB of its "
                    "inflated (Deflated transfer syntax) header: not read further"
                )
            size *= 16
        if not header_only:
            expected = check_image_size(dataset)
            limit = header_bytes + 12 + expected + TRAILER_BYTES
            inflater.fill(limit + 1)
            if len(inflater.data) > limit:
                raise DicomReadError(
                    f"its deflated data inflates beyond the {expected} bytes of pixel data its "
                    f"header announces ({dataset.get('Rows')} × {dataset.get('Columns')} × "
                    f"{dataset.get('BitsAllocated')} bits): not read further"
                )
            dataset, _, _ = _parse(inflater.data, stop_at_pixels=False)
    del inflater
    result = FileDataset(str(path), dataset, preamble, meta, False, True)
    result.set_original_encoding(False, True, dataset._character_set)
    return result


def read_header(path: str | Path) -> FileDataset:
    """The header of a DICOM file, without its pixel data; pydicom's errors for a file that
    is not DICOM or is damaged, DicomReadError for one that cannot be read within bounds."""
    path = Path(path)
    if _is_deflated(path):
        return _deflated(path, header_only=True)
    return pydicom.dcmread(path, stop_before_pixels=True)


def read_instance(path: str | Path) -> FileDataset:
    """The whole DICOM file, its pixel data inflated no further than its header announces."""
    path = Path(path)
    if _is_deflated(path):
        return _deflated(path, header_only=False)
    return pydicom.dcmread(path)
