"""Reading one NIfTI file (``.nii`` or ``.nii.gz``) without trusting it.

nibabel parses the file, as it should; this module only decides how many bytes nibabel gets:

* The header is parsed first (nibabel's `Nifti1Header` / `Nifti2Header`), and the data size it
  claims (dims × bytes per voxel) is checked against sane limits and against the bytes the file
  really holds *before* anything that size is allocated. A 62-byte file that claims
  2000 × 2000 × 1000 voxels is refused, not a MemoryError.
* A gzip file is decompressed whole, in bounded steps (never past what the header claims, plus
  a little slack), so zlib checks every member's CRC-32 and length trailer. Reading a volume
  lazily stops before the trailer, and a flipped byte then comes back as wrong voxels.
* Decompression uses python-isal's `isal_zlib` (Intel ISA-L, about 1.8× zlib's speed on a
  BraTS case here) when it is installed, else the standard `zlib`; both decode the same
  deflate stream to the same bytes and check the same trailers. `GZIP_BACKEND` names the one in use.
* Only regular files are opened (a FIFO would block, a folder or a symlink loop fails).

Every fault raises `NiftiError` (an ArchiveError) naming the file, what was expected and what
was found. `fdn.data.case` turns it into a CaseError naming the case.
"""

from __future__ import annotations

import io
import math
import os
import stat
import types
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from fdn.errors import ArchiveError

_inflate: types.ModuleType
try:  # ISA-L inflate: the same bytes as zlib, faster; zlib when python-isal is not installed
    from isal import isal_zlib as _inflate

    GZIP_BACKEND = "isal"
except ImportError:  # pragma: no cover - depends on the installation
    _inflate = zlib
    GZIP_BACKEND = "zlib"

MAX_IN_PLANE = 1024  # voxels along each of the first two axes
MAX_SLICES = 2048  # voxels along the third (axial) axis
MAX_EXTRA = 16  # product of the axes past the third (a pseudo-healthy file has 4)
MAX_VOXELS = 2**28  # per file: 1 GiB once converted to float32 (a BraTS volume is 8.9 M)
MAX_HEADER_BYTES = 1 << 24  # header plus extensions before the voxel data (vox_offset)
TRAILING_SLACK = 1 << 20  # bytes after the voxel data tolerated in a decompressed file
CHUNK = 4 << 20  # compressed bytes read per step
_PROBE = 544  # enough decompressed bytes for a NIfTI-2 header (540) plus its extension flag
_GZIP_MAGIC = b"\x1f\x8b"


class NiftiError(ArchiveError):
    """A NIfTI file is unreadable, damaged or implausible: `path` names it, `fault` says why."""

    def __init__(self, path: Path, fault: str):
        self.path, self.fault = Path(path), fault
        super().__init__(f"{path}: {fault}")


def _header(head: bytes, path: Path, file_bytes: int | None):
    """(image class, data end offset) from the first bytes of a NIfTI file; NiftiError if the
    header is invalid or claims more than the limits allow.

    file_bytes: the file's (decompressed) size when known, else None.
    """
    if len(head) < 348:
        raise NiftiError(
            path,
            f"{len(head)} bytes, shorter than a NIfTI header (348 bytes); "
            "the file is truncated or not NIfTI",
        )
    sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
    if 348 in sizes:
        header_class, image_class, magic = nib.Nifti1Header, nib.Nifti1Image, b"n+1"
    elif 540 in sizes and len(head) >= 540:
        header_class, image_class, magic = nib.Nifti2Header, nib.Nifti2Image, b"n+2"
    else:
        raise NiftiError(
            path,
            "not a NIfTI-1 or NIfTI-2 file (the first 4 bytes should be "
            "348 or 540); re-export it as .nii.gz",
        )
    try:
        header = header_class.from_fileobj(io.BytesIO(head))
        found_magic = bytes(header["magic"]).rstrip(b"\0")
        shape = tuple(int(n) for n in header.get_data_shape())
        dtype = header.get_data_dtype()
        offset = int(header.get_data_offset())
    except Exception as error:  # nibabel's HeaderDataError, ValueError, … on a bad header
        raise NiftiError(
            path, f"invalid NIfTI header ({type(error).__name__}: {error}); re-export the file"
        ) from None
    if found_magic != magic:
        raise NiftiError(
            path,
            f"header magic is {found_magic!r}, expected {magic!r} (a single "
            ".nii file); convert .hdr/.img pairs to .nii.gz",
        )
    if dtype.kind not in "biuf" or dtype.itemsize > 8:
        raise NiftiError(
            path, f"voxel type {dtype} is not a real number type; expected integer or float voxels"
        )
    limits = (MAX_IN_PLANE, MAX_IN_PLANE, MAX_SLICES)[: len(shape)]
    extra = math.prod(shape[3:])
    if (
        not shape
        or any(n < 1 for n in shape)
        or any(n > m for n, m in zip(shape, limits))
        or extra > MAX_EXTRA
        or math.prod(shape) > MAX_VOXELS
    ):
        raise NiftiError(
            path,
            f"header claims a volume of {' × '.join(map(str, shape))} "
            f"voxels; expected at most {MAX_IN_PLANE} × {MAX_IN_PLANE} × "
            f"{MAX_SLICES} (× {MAX_EXTRA}), {MAX_VOXELS:,} voxels in all; the "
            "header is damaged, or resample the volume",
        )
    first = 352 if magic == b"n+1" else 544  # header plus the 4-byte extension flag
    if not first <= offset <= MAX_HEADER_BYTES:
        raise NiftiError(
            path,
            f"header puts the voxel data at byte {offset}; expected {first} "
            f"to {MAX_HEADER_BYTES:,}; the header is damaged",
        )
    end = offset + math.prod(shape) * dtype.itemsize
    if file_bytes is not None and file_bytes < end:
        raise NiftiError(
            path,
            f"truncated: the header describes {end:,} bytes "
            f"({' × '.join(map(str, shape))} voxels of {dtype}), the file holds "
            f"{file_bytes:,}; re-copy or re-export it",
        )
    return image_class, end


def _gunzip(f, path: Path, inflate: Any = None) -> tuple[bytes, Any, int]:
    """Decompress a whole gzip file, checking each member's CRC-32 and length, and stopping as
    soon as the output passes what the NIfTI header claims. Returns (bytes, image class, end).

    inflate: a module with zlib's `decompressobj` and `error` (`zlib`, `isal.isal_zlib`);
    None for the fastest installed one.
    """
    inflate = _inflate if inflate is None else inflate
    pieces, size = [], 0
    limit = None  # set once the header is parsed
    image_class: Any = None
    end: Any = None
    d = inflate.decompressobj(wbits=31)
    buf = b""
    try:
        while True:
            if not buf:
                buf = f.read(CHUNK)
                if not buf:
                    break
            if d.eof:  # the previous member is complete: padding, or another member
                buf = buf.lstrip(b"\0")
                if not buf:
                    continue
                d = inflate.decompressobj(wbits=31)
            piece = d.decompress(buf, (limit if limit is not None else _PROBE) - size + 1)
            pieces.append(piece)
            size += len(piece)
            buf = d.unused_data if d.eof else d.unconsumed_tail
            if limit is None and size >= _PROBE:
                head = b"".join(pieces)
                pieces = [head]
                image_class, end = _header(head[:_PROBE], path, None)
                limit = end + TRAILING_SLACK
            if limit is not None and size > limit:
                raise NiftiError(
                    path,
                    f"decompresses to more than {limit:,} bytes, but its "
                    f"header describes {end:,}; the file is damaged",
                )
    except (zlib.error, inflate.error) as error:
        raise NiftiError(
            path, f"damaged gzip data ({error}); re-copy or re-export the file"
        ) from None
    data = b"".join(pieces)
    if not d.eof:
        raise NiftiError(
            path,
            "the gzip stream ends early (truncated file, "
            f"{size:,} bytes decompressed); re-copy or re-export it",
        )
    if image_class is None:
        image_class, end = _header(data[:_PROBE], path, size)
    elif size < end:
        _header(data[:_PROBE], path, size)  # raises: truncated
    return data, image_class, end


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a whole NIfTI file: (data float32 in the file's shape, affine (4, 4) float64).

    Raises NiftiError for a missing, special, damaged, truncated or implausibly large file.
    """
    path = Path(path)
    try:
        st = os.stat(path)  # follows symlinks; a loop raises ELOOP
    except FileNotFoundError:
        raise NiftiError(path, "the file does not exist") from None
    except OSError as error:
        raise NiftiError(
            path, f"cannot open the file ({error.strerror}); fix or replace it"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise NiftiError(
            path, "not a regular file (a folder, FIFO or device); expected a .nii or .nii.gz file"
        )
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
            f.seek(0)
            if magic == _GZIP_MAGIC:
                data, image_class, end = _gunzip(f, path)
            else:
                head = f.read(_PROBE)
                image_class, end = _header(head, path, st.st_size)
                data = head + f.read(max(0, end - len(head)))  # read(-n) reads all
                if len(data) < end:  # the file shrank since stat
                    _header(head, path, len(data))
    except OSError as error:
        raise NiftiError(
            path, f"cannot read the file ({error.strerror or error}); fix or replace it"
        ) from None
    try:
        image = image_class.from_bytes(data[:end])
        voxels = np.asarray(image.dataobj, dtype=np.float32)
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as error:  # nibabel on a header it accepted but cannot apply
        raise NiftiError(
            path, f"unreadable NIfTI data ({type(error).__name__}: {error}); re-export the file"
        ) from None
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise NiftiError(path, "the header's affine (sform/qform) is not finite; fix the header")
    return voxels, affine
