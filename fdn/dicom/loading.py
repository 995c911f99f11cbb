"""Loading a planned study: each series' files decoded, rescaled and stacked into a volume
(`load_series`), and the four sequences put on the t1 grid (`load_study`).

Every fault of one file or series is a `DicomImportError` naming the study, the series, the
file and what is wrong: an image that cannot be decoded or is larger than an MR image
(`fdn.dicom.reading`), a geometry attribute that is missing, NaN or infinite
(`fdn.dicom.geometry`), a RescaleSlope or RescaleIntercept that is not a finite number or
makes voxel values beyond float32 (the archive's NIfTI type), and two files of one
SOPInstanceUID that differ. Two files of one SOPInstanceUID with the same pixels and position
(a file copied twice into the source) are one image: the copy is dropped and listed in
`SeriesVolume.duplicates`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from fdn.data.labels import SEQUENCES
from fdn.dicom.geometry import (
    LPS_TO_RAS,
    GeometryError,
    SliceHeader,
    resample,
    slice_header,
    stack_slices,
    volume_from_slices,
)
from fdn.dicom.reading import DicomReadError, check_image_size, read_instance
from fdn.errors import DicomImportError

REFERENCE = "t1"  # the grid every sequence is resampled onto
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class SeriesVolume:
    """A loaded series: (cols, rows, slices) float32 volume, its RAS affine, its header, and
    the duplicate files dropped ({"file", "same_as"})."""

    data: np.ndarray
    affine: np.ndarray
    header: pydicom.Dataset
    duplicates: list[dict] = field(default_factory=list)


def where(instance: Path | pydicom.Dataset) -> str:
    """A file's path, or ``instance SOPInstanceUID`` for a dataset in memory."""
    if isinstance(instance, pydicom.Dataset):
        return f"instance {instance.get('SOPInstanceUID', '?')}"
    return str(instance)


def _decoder_fault(dataset) -> str | None:
    """Why pydicom cannot decode `dataset`'s pixel data, or None if it can."""
    from pydicom.pixels import get_decoder

    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None:
        return None  # no file meta: pydicom assumes a syntax, and decoding says the rest
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return f"transfer syntax {syntax.name} ({syntax}) has no pixel data decoder in pydicom"
    if not decoder.is_available:
        plugins = "; ".join(getattr(decoder, "missing_dependencies", []))
        return (
            f"transfer syntax {syntax.name} ({syntax}) cannot be decoded here: no decoder "
            f"plugin installed{f' ({plugins})' if plugins else ''}; convert the study to "
            "an uncompressed transfer syntax, or install one of those plugins"
        )
    return None


def _number(dataset, name: str, default: float) -> float:
    """A single numeric attribute (`default` when absent or empty); ValueError naming it when
    it is not a finite number."""
    value = dataset.get(name)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} {str(value)[:40]!r} is not a number") from None
    if not np.isfinite(number):
        raise ValueError(f"{name} is {'NaN' if np.isnan(number) else 'infinite'}")
    return number


def _rescaled(dataset, raw: np.ndarray) -> np.ndarray:
    """(rows, cols) float64 values of the stored `raw`; ValueError when they would not fit
    float32 (the archive's type) or the rescale attributes are not finite numbers."""
    slope = _number(dataset, "RescaleSlope", 1.0)
    intercept = _number(dataset, "RescaleIntercept", 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        values = raw.astype(np.float64) * slope + intercept
        peak = float(np.abs(values).max()) if values.size else 0.0
    if not np.isfinite(peak) or peak > FLOAT32_MAX:
        raise ValueError(
            f"RescaleSlope {slope:g} and RescaleIntercept {intercept:g} make voxel values up "
            f"to {peak:.3g}, beyond float32 (at most {FLOAT32_MAX:.3g}), the archive's NIfTI "
            "type; check the series' rescale attributes"
        )
    return values


def _same_image(a: tuple[SliceHeader, np.ndarray], b: tuple[SliceHeader, np.ndarray]) -> bool:
    (ha, va), (hb, vb) = a, b
    return (
        np.array_equal(va, vb)
        and np.array_equal(ha.position, hb.position)
        and np.array_equal(ha.row_dir, hb.row_dir)
        and np.array_equal(ha.col_dir, hb.col_dir)
        and ha.spacing == hb.spacing
    )


def _read(item: Path | pydicom.Dataset, fault) -> pydicom.Dataset:
    try:
        return item if isinstance(item, pydicom.Dataset) else read_instance(item)
    except DicomReadError as error:
        raise fault(str(error)) from None
    except Exception as error:  # pydicom raises many types for a damaged file
        raise fault(f"corrupt file ({type(error).__name__}: {error})") from None


def _image(dataset, fault) -> np.ndarray:
    """The stored (rows, cols) pixel values of one single-frame grey-scale image."""
    if "PixelData" not in dataset:
        raise fault("no pixel data (not an image)")
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        raise fault(
            "multi-frame (enhanced) image: only series of single-frame images are "
            "supported; convert it to classic single-frame MR"
        )
    if int(dataset.get("SamplesPerPixel", 1)) != 1:
        raise fault("colour image: an MR series must be grey-scale")
    try:
        check_image_size(dataset)
    except DicomReadError as error:
        raise fault(str(error)) from None
    decoder = _decoder_fault(dataset)
    if decoder:
        raise fault(decoder)
    try:
        return dataset.pixel_array
    except Exception as error:
        raise fault(f"corrupt pixel data ({type(error).__name__}: {error})") from None


def load_series(
    files: list[Path | pydicom.Dataset], *, study: str | None = None, series: str | None = None
) -> SeriesVolume:
    """Decode, rescale and stack one series' files (or datasets) into a volume with its RAS
    affine. Raises DicomImportError naming study, series, file and fault.
    """
    headers: list[SliceHeader] = []
    pixels: list[np.ndarray] = []
    kept: list[Path | pydicom.Dataset] = []
    by_uid: dict[str, int] = {}  # SOPInstanceUID -> index in kept
    duplicates: list[dict] = []
    first = None
    for item in files:
        path = where(item)

        def fault(message: str, path=path) -> DicomImportError:
            return DicomImportError(message, study=study, series=series, file=path)

        dataset = _read(item, fault)
        raw = _image(dataset, fault)
        try:
            header = slice_header(dataset)
            values = _rescaled(dataset, raw)  # (rows, cols)
        except ValueError as error:  # GeometryError too
            raise fault(str(error)) from None
        uid = str(dataset.get("SOPInstanceUID", "") or "")
        if uid and uid in by_uid:
            k = by_uid[uid]
            if not _same_image((headers[k], pixels[k]), (header, values)):
                raise fault(
                    f"files {where(kept[k])} and {path} share SOPInstanceUID {uid} but "
                    "differ (pixels or position): two versions of one image; remove the "
                    "wrong one"
                )
            duplicates.append({"file": path, "same_as": where(kept[k])})
            continue
        if uid:
            by_uid[uid] = len(kept)
        kept.append(item)
        headers.append(header)
        pixels.append(values)
        if first is None:
            first = dataset
    assert first is not None, "a series has at least one instance"
    try:
        thickness = _number(first, "SliceThickness", 0.0) or None
        stack = stack_slices(headers, thickness)
    except GeometryError as error:
        file = None if error.index is None else where(kept[error.index])
        raise DicomImportError(str(error), study=study, series=series, file=file) from None
    except ValueError as error:
        raise DicomImportError(
            str(error), study=study, series=series, file=where(kept[0])
        ) from None
    first.PixelData = b""  # keep the header, not the pixels
    volume = volume_from_slices(pixels, stack)
    return SeriesVolume(volume, LPS_TO_RAS @ stack.affine_lps, first, duplicates)


def load_study(study, chosen: dict) -> tuple[dict, np.ndarray, dict[str, SeriesVolume]]:
    """The four sequences on the reference (t1) grid: ({sequence: volume}, RAS affine,
    {sequence: the loaded series})."""
    loaded = {
        seq: load_series(chosen[seq].files, study=study.uid, series=chosen[seq].uid)
        for seq in SEQUENCES
    }
    frames = {seq: str(v.header.get("FrameOfReferenceUID", "") or "") for seq, v in loaded.items()}
    if len({f for f in frames.values() if f}) > 1:
        raise DicomImportError(
            "the series lie in different frames of reference "
            f"({', '.join(f'{s}: {f}' for s, f in frames.items())}); they would need "
            "registration, which fdn-index does not do",
            study=study.uid,
        )
    reference = loaded[REFERENCE]
    volumes = {
        seq: resample(v.data, v.affine, reference.data.shape, reference.affine)
        for seq, v in loaded.items()
    }
    return volumes, reference.affine, loaded
