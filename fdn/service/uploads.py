"""Receiving an uploaded case: a multipart body streamed into files of a private folder, within
limits that hold while the bytes arrive.

    async with upload_slot(service):                       # 503 when all slots are taken
        received = await receive_upload(request.receive, request.headers, limits, folder)
    received.files  # {"t1": Path, ...}   received.fields  # {"mode": "sum", ...}

Nothing of an upload is held in memory beyond one chunk of the body: each file part goes to
its own file as it streams in. The limits (`UploadLimits`) are checked while reading, so a
hostile client costs at most the cap in disk and one chunk in memory:

* the body's bytes (413 at once when Content-Length says more, else as soon as the count passes);
* each NIfTI file's header, read from its first bytes (decompressed when gzip, at most a few
  hundred bytes of output) before anything else of it is decompressed: a volume that claims more
  voxels than `max_voxels` is refused with 413 naming the sequence, so a gzip bomb never
  inflates;
* time (408): the next chunk must come within `idle_seconds`, and after those first seconds the
  body must keep an average of `min_bytes_per_second`, so a client that trickles its upload one
  byte at a time is dropped and frees its slot instead of holding it for hours.

A header this module cannot parse is let through: the NIfTI reader refuses it later with its
own message, within its own bounds (`fdn.data.nifti`).
"""

from __future__ import annotations

import asyncio
import io
import math
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from fdn.data.labels import SEQUENCES

UPLOAD_KEYS = (*SEQUENCES, "seg", "anat")
HEADER_BYTES = 544  # a NIfTI-2 header (540) and its extension flag; NIfTI-1 needs 352
GZIP_MAGIC = b"\x1f\x8b"


class UploadRefused(Exception):
    """An upload refused while it was received: `status` (400, 408, 413) and a message that says
    what to change."""

    def __init__(self, status: int, message: str):
        self.status, self.message = status, message
        super().__init__(message)


@dataclass(frozen=True)
class UploadLimits:
    """What one upload may cost.

    max_bytes: the whole multipart body. max_voxels: each volume, as its header claims.
    idle_seconds: the longest wait for the next piece of the body, and the grace before the
    average rate is checked. min_bytes_per_second: that average, counted from the start.
    max_fields, max_field_bytes: the form's text fields (options, case id).
    """

    max_bytes: int
    max_voxels: int
    idle_seconds: float = 10.0
    min_bytes_per_second: float = 32 * 1024
    max_fields: int = 32
    max_field_bytes: int = 64 * 1024

    def too_large(self) -> str:
        return (
            f"the upload exceeds the limit of {self.max_bytes:,} bytes; send smaller files (gzip "
            "them) or start the server with a larger --max-upload-mb"
        )


@dataclass
class ReceivedUpload:
    """The files (key -> path inside the private folder) and text fields of one upload."""

    files: dict[str, Path] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)


Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]  # an ASGI receive


async def body_chunks(receive: Receive, limits: UploadLimits) -> AsyncIterator[bytes]:
    """The request body chunk by chunk, within the byte cap and the receive deadline.

    UploadRefused(413) past max_bytes, UploadRefused(408) when a chunk is late: later than
    idle_seconds after the previous one, or later than the minimum average rate allows.
    """
    started = time.monotonic()
    received = 0
    while True:
        now = time.monotonic()
        # The rate deadline: by then the bytes so far would fall below the minimum average.
        rate_deadline = started + limits.idle_seconds + received / limits.min_bytes_per_second
        wait = min(limits.idle_seconds, rate_deadline - now)
        try:
            message = await asyncio.wait_for(receive(), timeout=max(wait, 0.0))
        except TimeoutError:
            seconds = time.monotonic() - started
            raise UploadRefused(408, _too_slow(received, seconds, limits)) from None
        if message["type"] == "http.disconnect":
            raise UploadRefused(400, "the client disconnected before the upload was complete")
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limits.max_bytes:
            raise UploadRefused(413, limits.too_large())
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def _too_slow(received: int, seconds: float, limits: UploadLimits) -> str:
    return (
        f"the upload arrived too slowly ({received:,} bytes in {seconds:.1f} s); the server needs "
        f"the next bytes within {limits.idle_seconds:g} s and, after that, an average of "
        f"{limits.min_bytes_per_second / 1024:g} KiB/s; send it again over a faster connection"
    )


def claimed_shape(head: bytes) -> tuple[int, ...] | None:
    """The data shape a NIfTI-1 or NIfTI-2 header claims, from the file's first bytes; None when
    they are no header this can parse (the reader then refuses the file with its own words)."""
    import nibabel as nib

    sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
    header_class: Any = (
        nib.Nifti1Header if 348 in sizes else nib.Nifti2Header if 540 in sizes else None
    )
    if header_class is None or len(head) < header_class.sizeof_hdr:
        return None
    try:
        header = header_class.from_fileobj(io.BytesIO(head))
        return tuple(int(n) for n in header.get_data_shape())
    except Exception:  # nibabel raises many types for a damaged header
        return None


class HeaderProbe:
    """The first HEADER_BYTES of a NIfTI file, decompressed when it is gzip, as its bytes stream
    in. The output of the decompressor is capped at what is still missing, so a gzip bomb yields
    a few hundred bytes here, never its payload."""

    def __init__(self) -> None:
        self.raw = b""  # the first bytes, until gzip or not is known
        self.head = b""
        self.inflater: Any = None
        self.finished = False  # the head is complete, or can never be

    def feed(self, data: bytes) -> None:
        if self.finished:
            return
        if self.inflater is None:  # gzip or not is known from the first two bytes
            self.raw += data
            if len(self.raw) < 2:
                return
            data, self.raw = self.raw, b""
            self.inflater = zlib.decompressobj(wbits=31) if data[:2] == GZIP_MAGIC else False
        missing = HEADER_BYTES - len(self.head)
        if self.inflater is False:
            self.head += data[:missing]
        else:
            try:
                self.head += self.inflater.decompress(data, missing)
            except zlib.error:
                self.finished = True  # damaged: the reader says so later
                return
            if self.inflater.eof:  # a first member shorter than a header: the reader decides
                self.finished = True
        if len(self.head) >= HEADER_BYTES:
            self.finished = True


class _PartSink:
    """Where the bytes of one multipart part go: a file (with its header probe) or a text field."""

    def __init__(self, name: str, is_file: bool, folder: Path):
        self.name = name
        self.stream: BinaryIO | None = None
        self.probe: HeaderProbe | None = None
        self.text = bytearray()
        self.path: Path | None = None
        if is_file:
            self.path = folder / f"part-{name}"
            self.stream = open(self.path, "xb")  # noqa: SIM115 - closed in on_part_end
            self.probe = HeaderProbe()


class _MultipartReceiver:
    """python-multipart's callbacks, writing each part where it belongs and checking as it goes."""

    def __init__(self, boundary: bytes, limits: UploadLimits, folder: Path):
        self.limits, self.folder = limits, folder
        self.received = ReceivedUpload()
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.disposition = b""
        self.part: _PartSink | None = None
        self.ended = False
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def _part_begin(self) -> None:
        self.disposition = b""
        self.header_field.clear()
        self.header_value.clear()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def _header_end(self) -> None:
        if bytes(self.header_field).lower() == b"content-disposition":
            self.disposition = bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()

    def _headers_finished(self) -> None:
        kind, options = parse_options_header(self.disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if kind != b"form-data" or not name:
            raise UploadRefused(400, "malformed multipart body: a part without a form-data name")
        received = self.received
        if b"filename" in options:
            if name not in UPLOAD_KEYS:
                raise UploadRefused(
                    400, f"unknown upload field(s) {name}; send {', '.join(UPLOAD_KEYS)}"
                )
            if name in received.files:
                raise UploadRefused(400, f"two {name} files sent; send one")
        elif len(received.fields) >= self.limits.max_fields:
            raise UploadRefused(400, f"more than {self.limits.max_fields} form fields; send fewer")
        self.part = _PartSink(name, b"filename" in options, self.folder)
        if self.part.path is not None:
            received.files[name] = self.part.path

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        assert part is not None  # python-multipart calls headers_finished first
        piece = data[start:end]
        if part.stream is None:
            part.text += piece
            if len(part.text) > self.limits.max_field_bytes:
                raise UploadRefused(
                    413,
                    f"the form field {part.name} is longer than {self.limits.max_field_bytes:,} "
                    "bytes",
                )
            return
        part.stream.write(piece)
        assert part.probe is not None
        if not part.probe.finished:
            part.probe.feed(piece)
            if part.probe.finished:
                self._check_claim(part.name, part.probe.head)

    def _check_claim(self, name: str, head: bytes) -> None:
        shape = claimed_shape(head)
        if shape is None:
            return
        voxels = math.prod(shape)
        if voxels > self.limits.max_voxels:
            raise UploadRefused(
                413,
                f"the {name} volume's header claims {' × '.join(map(str, shape))} = {voxels:,} "
                f"voxels; this server accepts at most {self.limits.max_voxels:,} voxels per "
                "volume (--max-voxels); resample or crop the volume",
            )

    def _part_end(self) -> None:
        part, self.part = self.part, None
        if part is None:
            return
        if part.stream is not None:
            part.stream.close()
            assert part.probe is not None
            if not part.probe.finished:  # a file shorter than a NIfTI-2 header
                self._check_claim(part.name, part.probe.head)
        else:
            self.received.fields[part.name] = part.text.decode("utf-8", "replace")

    def _end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self.part is not None and self.part.stream is not None:
            self.part.stream.close()


async def receive_upload(
    receive: Receive, headers: Mapping[str, str], limits: UploadLimits, folder: Path
) -> ReceivedUpload:
    """Stream a multipart/form-data body into `folder` (which must exist and be private):
    UploadRefused when it breaks a limit or is malformed. The caller removes the folder."""
    declared = headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limits.max_bytes):
        raise UploadRefused(413, limits.too_large())
    kind, options = parse_options_header(headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UploadRefused(
            400, "send the files as multipart/form-data (fields t1, t1ce, t2, flair)"
        )
    receiver = _MultipartReceiver(boundary, limits, folder)
    try:
        async for chunk in body_chunks(receive, limits):
            receiver.parser.write(chunk)
        receiver.parser.finalize()
    except MultipartParseError as exc:
        raise UploadRefused(400, f"malformed multipart body: {exc}") from None
    finally:
        receiver.close()
    if not receiver.ended:
        raise UploadRefused(400, "malformed multipart body: it ends before its closing boundary")
    return receiver.received
