"""Uploads, in memory only: the multipart form, the size and pixel limits, and the decoded image.

Starlette's own form parser spools files over 1 MiB to a temporary file on disk; uploads are
patient data, so :func:`read_form` parses the body itself (python-multipart's streaming
parser) into memory, counting bytes as they arrive. Decoding is
:func:`maco_cxr.data.io.read_image_bytes`, the package's one reader. Before it runs, the image
header (Pillow's, or :func:`maco_cxr.data.io.read_dicom_header`, the package's one DICOM header
reader) gives the pixel count, so a decompression bomb is refused before anything is decoded.

The upload's file name is never used beyond its suffix (``.dcm`` marks DICOM): errors and
logs name the image ``upload.<suffix>``. Of the DICOM header only modality, photometric
interpretation, bits stored and the LUT/window steps applied are reported (no identifiers).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from maco_cxr.data.io import DicomHeader, read_dicom_header, read_image_bytes
from maco_cxr.errors import ImageReadError

__all__ = ["DecodedImage", "UploadError", "UploadForm", "body_limit", "decode_upload", "read_form"]

FORM_FIELDS = ("file", "phrase", "classes")
_FIELD_LIMIT = 64 * 1024  # bytes of a text field (phrase, classes)
_FORM_OVERHEAD = 2 * _FIELD_LIMIT + 16 * 1024  # body bytes allowed beyond the file's limit
_MAX_PARTS = 8


class UploadError(Exception):
    """A request the viewer refuses: ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


@dataclass(frozen=True)
class UploadForm:
    """The fields of ``POST /api/analyze``: the file's bytes, its suffix and the text fields
    (stripped; None when left out, ``""`` when sent blank)."""

    data: bytes
    suffix: str
    phrase: str | None
    classes: str | None


async def read_form(content_type: str | None, chunks: AsyncIterator[bytes], *, max_file_bytes: int) -> UploadForm:
    """Parse a ``multipart/form-data`` body into memory; the file may hold ``max_file_bytes``.

    Raises :class:`UploadError`: 413 when the file (or the body) is over the limit, 422 when the
    body is not a well-formed form with a ``file`` part.
    """
    try:
        from python_multipart.exceptions import MultipartParseError
        from python_multipart.multipart import MultipartParser, parse_options_header
    except ImportError:  # python-multipart before 0.0.13 names its package "multipart"
        from multipart.exceptions import MultipartParseError  # type: ignore[no-redef]
        from multipart.multipart import MultipartParser, parse_options_header  # type: ignore[no-redef]

    kind, options = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise UploadError(
            422,
            "send the image as multipart/form-data with a 'file' field (and optional 'phrase' and 'classes' fields)",
        )
    parts: list[_Part] = []
    headers: list[tuple[bytes, bytes]] = []
    header = [b"", b""]
    state = {"ended": False}

    def on_part_begin() -> None:
        if len(parts) >= _MAX_PARTS:
            raise UploadError(422, f"the form has more than {_MAX_PARTS} parts; send only {', '.join(FORM_FIELDS)}")
        parts.append(_Part())
        headers.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        headers.append((header[0].lower(), header[1]))
        header[0], header[1] = b"", b""

    def on_headers_finished() -> None:
        disposition = next((value for key, value in headers if key == b"content-disposition"), b"")
        _, params = parse_options_header(disposition)
        parts[-1].name = params.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in params:
            parts[-1].filename = params[b"filename"].decode("utf-8", "replace")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = parts[-1]
        part.data += data[start:end]
        if part.name == "file":
            if len(part.data) > max_file_bytes:
                raise UploadError(
                    413,
                    f"the file is larger than the upload limit of "
                    f"{_megabytes(max_file_bytes)} (maco-cxr serve --max-upload-mb)",
                )
        elif len(part.data) > _FIELD_LIMIT:
            raise UploadError(413, f"form field {part.name!r} is longer than {_FIELD_LIMIT // 1024} KiB")

    def on_end() -> None:
        state["ended"] = True

    parser = MultipartParser(
        options[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_end": on_end,
        },
    )
    received, most = 0, body_limit(max_file_bytes)
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > most:
                raise UploadError(
                    413,
                    f"the request is larger than the upload limit of "
                    f"{_megabytes(max_file_bytes)} (maco-cxr serve --max-upload-mb)",
                )
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise UploadError(422, f"the multipart form is malformed ({exc})") from None
    if not state["ended"]:
        raise UploadError(
            422, "the multipart form ends early (no closing boundary): the upload was cut off; send it again"
        )
    names = [part.name for part in parts]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UploadError(422, f"form fields {repeated} are given more than once; send one image per request")
    fields = {part.name: part for part in parts}
    unknown = sorted(set(fields) - set(FORM_FIELDS))
    if unknown:
        raise UploadError(422, f"unknown form fields {unknown}; the fields are {list(FORM_FIELDS)}")
    if "file" not in fields:
        raise UploadError(422, "the form has no 'file' field: attach a PNG, JPEG or DICOM image")
    upload = fields["file"]
    suffix = PurePosixPath((upload.filename or "").replace("\\", "/")).suffix.lower()
    return UploadForm(
        bytes(upload.data),
        suffix if suffix.isascii() and len(suffix) <= 8 else "",
        _text(fields.get("phrase")),
        _text(fields.get("classes")),
    )


def body_limit(max_file_bytes: int) -> int:
    """The most request-body bytes a form whose file holds ``max_file_bytes`` may take."""
    return max_file_bytes + _FORM_OVERHEAD


def _text(part: _Part | None) -> str | None:
    """The field's text, stripped; None when the field was left out ("" when sent blank, which
    the app refuses rather than read as left out)."""
    if part is None:
        return None
    try:
        return part.data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UploadError(400, f"form field {part.name!r} is not UTF-8 text") from None


def _megabytes(n: int) -> str:
    return f"{n / 2**20:g} MiB"


@dataclass(frozen=True)
class DecodedImage:
    """The decoded upload: uint8 ``[H, W]`` pixels, the format and, for DICOM, the header facts."""

    pixels: np.ndarray
    format: str
    dicom: dict[str, Any] | None


def decode_upload(data: bytes, suffix: str, *, max_pixels: int) -> DecodedImage:
    """Check the pixel count from the header, then decode with ``read_image_bytes``.

    Raises :class:`UploadError` 400 for an empty or undecodable file (or an unreadable DICOM
    header), 413 for more than ``max_pixels`` pixels.
    """
    if not data:
        raise UploadError(400, "the uploaded file is empty")
    name = f"upload{suffix}"
    try:
        header = read_dicom_header(data, name=name)
        pixel_count, image_format = (header.pixel_count, "DICOM") if header else _pillow_pixels(data)
        if pixel_count is not None:
            _check_pixels(pixel_count, max_pixels)
        pixels = read_image_bytes(data, name)
    except ImageReadError as exc:
        raise UploadError(400, str(exc)) from None
    _check_pixels(pixels.size, max_pixels)  # the header had no size, or another one
    return DecodedImage(pixels, image_format, _describe_dicom(header) if header is not None else None)


def _check_pixels(count: int, max_pixels: int) -> None:
    if count > max_pixels:
        raise UploadError(
            413, f"the image has {count:,} pixels, more than the limit of {max_pixels:,} (maco-cxr serve --max-pixels)"
        )


def _pillow_pixels(data: bytes) -> tuple[int | None, str]:
    """Pixel count and format from the header alone; (None, "unknown") if Pillow cannot tell."""
    try:
        with Image.open(BytesIO(data)) as image:
            width, height = image.size
            return width * height, str(image.format or "unknown")
    except Image.DecompressionBombError as exc:  # Pillow's own limit, checked on open
        raise UploadError(413, f"the image is too large to decode safely ({exc})") from None
    except Exception:  # noqa: BLE001 - read_image_bytes reports why, in the package's words
        return None, "unknown"


def _describe_dicom(header: DicomHeader) -> dict[str, Any]:
    """The header facts the page shows, all from :func:`maco_cxr.data.io.read_dicom_header`
    (nothing that names a patient: no identifiers are asked for)."""
    window = None if header.window is None else {"center": header.window[0], "width": header.window[1]}
    return {
        "modality": header.modality,
        "photometric": header.photometric,
        "bits_stored": header.bits_stored,
        "modality_lut": header.modality_lut,
        "voi": header.voi,
        "window": window,
        "inverted": header.inverted,
    }
