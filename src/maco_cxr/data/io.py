"""Read chest X-ray files (PNG, JPEG, DICOM) into uint8 grey arrays.

This is the package's one image reader, so every dataset adapter, ``prepare`` and inference
see identical pixels for the same file. Conventions:

- Output is always ``uint8 [H, W]``; brighter means more attenuation (bone is white).
- Bit depth: a linear map of the container's full range to 0..255 (8-bit as is, 16-bit PNG
  ``v * 255 / 65535`` rounded). Never the image's own min..max, so one file's grey levels do
  not depend on its content and a dark image stays dark. A 16-bit PNG that holds only 12
  significant bits therefore reads dark; rescale such files before writing them.
- Colour is reduced to luminance with Pillow's ITU-R 601-2 weights; alpha is composited on
  black (a transparent pixel carries no signal, like the letterbox's zero padding).
- EXIF orientation is applied, so the array is what an image viewer shows.
- DICOM: Modality LUT (or Rescale Slope/Intercept), then VOI LUT or Window Center/Width when
  present, then a linear map of that step's output range to 0..255; MONOCHROME1 is inverted.
  Colour DICOMs (RGB, YBR_FULL, YBR_FULL_422, YBR_RCT/ICT, PALETTE COLOR: secondary captures
  of radiographs) are converted to RGB by pydicom's colour-space conversion (``convert_color_space``,
  ``apply_color_lut`` for palettes), mapped to 8 bits by their stored range and reduced to grey
  with the same luma as colour PNG/JPEG. Multi-frame DICOMs are rejected.
- Compressed DICOM: pydicom decodes with the plugins this package depends on. pylibjpeg-libjpeg
  covers JPEG Baseline, Extended (12-bit), Lossless and JPEG-LS, pylibjpeg-openjpeg JPEG 2000
  and HTJ2K: wheels for Linux, macOS and Windows on every supported Python, maintained with
  pydicom. python-gdcm was not chosen: pydicom's GDCM plugin refuses 12-bit JPEG Extended,
  which PACS exports use, and it is a 40 MB install; pyjpegls reads only JPEG-LS. Note that
  pylibjpeg-libjpeg is GPL-3.0 (the rest is MIT).
- Nothing partially decoded is ever returned: a truncated or corrupt file raises
  :class:`~maco_cxr.errors.ImageReadError` naming the file and the reason.

:func:`read_image_with_info` also returns an :class:`ImageInfo` (format, stored colour mode,
whether colour was reduced to grey) so ``prepare`` and ``predict`` can report conversions.
:func:`read_image_bytes` decodes bytes held in memory (an upload to the web viewer) through
the same code, so a file and its bytes give identical pixels; nothing is written to disk.
:func:`read_dicom_header` is the one DICOM header reader (header only, pixels not decoded): size,
modality, photometric, bits stored, the LUT/window steps ``read_image`` applies (decided by the same
helpers, so the report cannot drift from the pixels) and the identifiers a caller asks for: what
is known before decoding (the web viewer's facts, ``predict``'s identifiers and DICOMDIR check).
:func:`check_image_size` is the size rule inference applies before scoring or grounding.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image, ImageOps

from maco_cxr.errors import ImageReadError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "MAX_ASPECT_RATIO",
    "MIN_IMAGE_SIDE",
    "DicomHeader",
    "ImageInfo",
    "check_image_size",
    "is_dicom",
    "read_dicom_header",
    "read_image",
    "read_image_bytes",
    "read_image_bytes_with_info",
    "read_image_with_info",
    "read_mask",
]

#: Inference refuses images with a shorter side below this many pixels (see :func:`check_image_size`).
MIN_IMAGE_SIDE = 32
#: ... or whose longer side is more than this many times the shorter one.
MAX_ASPECT_RATIO = 10.0

_DICOM_SUFFIXES = (".dcm", ".dicom")
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_GREY_MODES = ("1", "L", "LA", "La", "I", "F", *_SIXTEEN_BIT_MODES)  # Pillow modes without colour
_GREY_DICOM = ("MONOCHROME1", "MONOCHROME2")
_COLOUR_DICOM = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420", "PALETTE COLOR")
_LUMA = "ITU-R 601-2 luma"
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage: the index of a DICOM export
_DECODER_HINT = (
    "the decoders maco-cxr depends on are missing: reinstall it, or "
    "`pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg`"
)


@dataclass(frozen=True)
class ImageInfo:
    """How a file's pixels were stored, beyond the pixels themselves.

    ``format``: ``"DICOM"`` or Pillow's format name (``"PNG"``, ``"JPEG"``...); ``mode``: the
    DICOM Photometric Interpretation or the Pillow mode of the file (``"MONOCHROME1"``,
    ``"YBR_FULL_422"``, ``"L"``, ``"RGB"``...); ``converted_from_colour``: the stored image had
    colour channels (or a palette) that were reduced to grey, so a report can say so.
    """

    format: str
    mode: str
    converted_from_colour: bool

    @property
    def note(self) -> str | None:
        """One line for reports when the image was colour, else ``None``."""
        if not self.converted_from_colour:
            return None
        return f"colour {self.format} ({self.mode}) converted to grey ({_LUMA})"


@dataclass(frozen=True)
class DicomHeader:
    """What a DICOM header says about its image, and how :func:`read_image` will map it to grey.

    Read without decoding the pixels, so a caller can refuse a file (too many pixels, a lateral
    view, a DICOMDIR) before paying for the decode. ``rows``/``columns``: ``None`` when absent;
    ``frames``: NumberOfFrames (1 when absent). ``modality_lut``/``voi``: the steps
    :func:`read_image` applies, in words (``window``: the (center, width) it uses, else ``None``);
    ``inverted``: MONOCHROME1, shown bone-white after inversion. ``sop_class_uid``: the file meta's
    MediaStorageSOPClassUID. ``identifiers``: only the elements the caller named (``""`` when
    absent), so nothing that names a patient is read unless asked for.
    """

    rows: int | None
    columns: int | None
    frames: int
    modality: str | None
    photometric: str | None
    bits_stored: int | None
    modality_lut: str
    voi: str
    window: tuple[float, float] | None
    inverted: bool
    sop_class_uid: str
    identifiers: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def pixel_count(self) -> int | None:
        """Pixels over all frames, from the header alone; ``None`` when it gives no size."""
        if self.rows is None or self.columns is None:
            return None
        return self.rows * self.columns * max(1, self.frames)

    @property
    def is_dicomdir(self) -> bool:
        """True for a DICOMDIR: the index of a DICOM export, not an image."""
        return self.sop_class_uid == _DICOMDIR_CLASS


class _MemoryFile(BytesIO):
    """Bytes that read like an open file; ``str()`` is the name error messages show."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:  # Pillow's "cannot identify image file %r"
        return repr(self.name)

    def read_bytes(self) -> bytes:
        return self.getvalue()


_Source = Path | _MemoryFile  # what the decoders read: a file, or bytes in memory


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """True when the file has the ``DICM`` magic at byte 128 or a ``.dcm``/``.dicom`` suffix.

    Raises :class:`ImageReadError` when the file cannot be opened to check its header.
    """
    path = Path(path)
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as handle:
            header = handle.read(132)
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot open the file ({exc})") from exc
    return _has_dicom_magic(header)


def _has_dicom_magic(header: bytes) -> bool:
    return len(header) >= 132 and header[128:132] == b"DICM"


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a PNG, JPEG or DICOM file as uint8 grey ``[H, W]`` (see the module docstring)."""
    return read_image_with_info(path)[0]


def read_image_with_info(path: str | os.PathLike[str]) -> tuple[np.ndarray, ImageInfo]:
    """:func:`read_image`'s pixels and how they were stored (e.g. colour reduced to grey)."""
    path = _existing_file(path)
    if is_dicom(path):
        return _read_dicom(path)
    return _read_pillow(path)


def read_image_bytes(data: bytes, name: str) -> np.ndarray:
    """Decode PNG, JPEG or DICOM bytes held in memory exactly as :func:`read_image` reads a file.

    ``name`` (e.g. the upload's file name, or just ``"upload.dcm"``) names the image in error
    messages, and its ``.dcm``/``.dicom`` suffix marks DICOM as the file reader's suffix does;
    otherwise the ``DICM`` magic at byte 128 decides. Nothing is written to disk.
    """
    return read_image_bytes_with_info(data, name)[0]


def read_image_bytes_with_info(data: bytes, name: str) -> tuple[np.ndarray, ImageInfo]:
    """:func:`read_image_bytes`'s pixels and their :class:`ImageInfo`."""
    data = bytes(data)
    source = _MemoryFile(data, name)
    if Path(name).suffix.lower() in _DICOM_SUFFIXES or _has_dicom_magic(data[:132]):
        return _read_dicom(source)
    return _read_pillow(source)


def read_dicom_header(
    source: str | os.PathLike[str] | bytes, *, name: str | None = None, identifiers: Sequence[str] = ()
) -> DicomHeader | None:
    """The :class:`DicomHeader` of a DICOM file, or of DICOM bytes held in memory; ``None`` when
    ``source`` is not DICOM by the rule :func:`read_image` uses (suffix or ``DICM`` magic).

    For bytes, ``name`` (required) names them in errors and its suffix counts as a file's would.
    ``identifiers``: DICOM keywords to copy as text (e.g. ``("SOPInstanceUID", "ViewPosition")``).
    Raises :class:`ImageReadError` naming the file when the header cannot be parsed or an element
    the facts need is malformed.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        if name is None:
            raise TypeError("read_dicom_header(bytes) needs name= (what errors call the image)")
        data = bytes(source)
        if Path(name).suffix.lower() not in _DICOM_SUFFIXES and not _has_dicom_magic(data[:132]):
            return None
        where: _Source = _MemoryFile(data, name)
    else:
        where = _existing_file(source)
        if not is_dicom(where):
            return None
    pydicom = _import_pydicom()
    try:
        dataset = pydicom.dcmread(where, stop_before_pixels=True, force=True)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError, struct.error) as exc:
        raise ImageReadError(
            f"{where}: cannot read the DICOM header ({type(exc).__name__}: {exc}); "
            "the file is truncated or not DICOM: re-copy or re-export it"
        ) from exc
    return _dicom_header(where, dataset, identifiers)


def _dicom_header(path: _Source, dataset: Dataset, identifiers: Sequence[str]) -> DicomHeader:
    """The facts, the LUT/window steps chosen by the helpers :func:`_dicom_grey` applies."""
    photometric = _photometric(dataset)
    rows, columns, bits = (_optional_whole(path, dataset, key) for key in ("Rows", "Columns", "BitsStored"))
    window: tuple[float, float] | None = None
    if photometric and photometric not in _GREY_DICOM:
        modality_lut = "none (colour: no LUT steps)"
        voi = f"none: colour, the stored range maps to 0..255, then grey by {_LUMA}"
    else:
        step = _modality_step(dataset)
        if step == "lut":
            modality_lut = "Modality LUT"
        elif step == "rescale":
            slope, intercept = (_decimal(path, dataset, key) for key in ("RescaleSlope", "RescaleIntercept"))
            modality_lut = f"rescale slope {slope:g}, intercept {intercept:g}"
        else:
            modality_lut = "none (stored values)"
        voi_step = _voi_step(dataset)
        if voi_step == "lut":
            voi = "VOI LUT (first)"
        elif voi_step == "window":
            window = (_decimal(path, dataset, "WindowCenter"), _decimal(path, dataset, "WindowWidth"))
            voi = f"window center {window[0]:g}, width {window[1]:g}"
        else:
            voi = "none: the full output range maps to 0..255"
    meta = getattr(dataset, "file_meta", None)
    return DicomHeader(
        rows=rows,
        columns=columns,
        frames=_whole_number(path, dataset, "NumberOfFrames", 1),
        modality=str(dataset.get("Modality", "") or "").strip() or None,
        photometric=photometric or None,
        bits_stored=bits,
        modality_lut=modality_lut,
        voi=voi,
        window=window,
        inverted=photometric == "MONOCHROME1",
        sop_class_uid=str(getattr(meta, "MediaStorageSOPClassUID", "") or ""),
        identifiers={key: "" if dataset.get(key) is None else str(dataset.get(key)).strip() for key in identifiers},
    )


def _optional_whole(path: _Source, dataset: Dataset, keyword: str) -> int | None:
    """A DICOM integer element, ``None`` when absent or empty."""
    if dataset.get(keyword) in (None, ""):
        return None
    return _whole_number(path, dataset, keyword, 0)


def _decimal(path: _Source, dataset: Dataset, keyword: str) -> float:
    """A DICOM number (the first of several, as ``apply_voi_lut(index=0)`` uses); errors name the tag."""
    from pydicom.multival import MultiValue

    element = dataset[keyword]
    value = element.value
    first = value[0] if isinstance(value, (MultiValue, list, tuple)) and len(value) else value
    try:
        return float(first)
    except (TypeError, ValueError) as exc:
        raise ImageReadError(
            f"{path}: the DICOM header element {element.tag} {keyword} holds {value!r}, not a number; "
            "the header is malformed: fix that element or export the image again"
        ) from exc


def check_image_size(shape: tuple[int, ...], where: str = "image") -> None:
    """Refuse an image too small or too elongated to be a radiograph the model can score.

    A shorter side below :data:`MIN_IMAGE_SIDE` px or an aspect ratio above
    :data:`MAX_ASPECT_RATIO` (a thumbnail, an icon, a 1-pixel strip) would be blown up to the
    model's input and scored or grounded as if it were a chest X-ray. The reader itself does not
    apply this rule (tools and tests read small images); inference does, before encoding.
    Raises :class:`ImageReadError` naming ``where``, the size found and the limit.
    """
    height, width = int(shape[0]), int(shape[1])
    short, long = min(height, width), max(height, width)
    if short < MIN_IMAGE_SIDE:
        raise ImageReadError(
            f"{where}: the image is {width}x{height} px (width x height); a radiograph needs at least "
            f"{MIN_IMAGE_SIDE} px on each side to be scored or grounded. Check that this is the "
            "full image and not a thumbnail or icon, or leave it out"
        )
    if long > MAX_ASPECT_RATIO * short:
        raise ImageReadError(
            f"{where}: the image is {width}x{height} px (width x height), {long / short:.1f} times longer "
            f"than wide; at most {MAX_ASPECT_RATIO:g}:1 can be scored or grounded as a radiograph. Check "
            "that this is the full image and not a strip or a cropped border, or leave it out"
        )


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a binary mask as uint8 ``[H, W]`` with 1 wherever any colour channel is non-zero.

    The test runs on the stored values (palette entries resolved, fully transparent pixels
    count as 0), not on luminance, so a dark but non-zero label colour is still foreground.
    """
    path = _existing_file(path)
    if is_dicom(path):
        dataset, stored, colour = _decode_dicom(path)
        if colour == "PALETTE COLOR":
            stored = _palette_to_rgb(path, stored, dataset)[0]
        if stored.ndim == 3:
            stored = stored.any(axis=-1)
        return (stored != 0).astype(np.uint8)
    image = _open_pillow(path)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode == "PA":
        image = image.convert("RGBA")
    values = np.asarray(image)
    if image.mode in ("LA", "La", "RGBA", "RGBa"):
        values = values[..., :-1] * (values[..., -1:] > 0)
    if values.ndim == 3:
        values = values.any(axis=-1)
    return (values != 0).astype(np.uint8)


def _existing_file(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file; check the path and the dataset root")
    if not path.is_file():
        raise ImageReadError(f"{path}: is not a regular file (a directory?)")
    return path


def _open_pillow(path: _Source) -> Image.Image:
    """Open and fully decode with Pillow, EXIF orientation applied; errors name the file."""
    try:
        with Image.open(path) as image:
            image.load()
            oriented = ImageOps.exif_transpose(image)
            oriented.format = image.format
    except _PIL_ERRORS as exc:
        raise ImageReadError(
            f"{path}: cannot decode the image ({type(exc).__name__}: {exc}); the file is "
            "truncated, corrupt or not an image format Pillow reads"
        ) from exc
    return oriented


def _luma(image: Image.Image) -> np.ndarray:
    """Grey of a colour image: Pillow's ITU-R 601-2 luma, for PNG/JPEG and colour DICOM alike."""
    return np.array(image.convert("RGB").convert("L"), dtype=np.uint8)


def _read_pillow(path: _Source) -> tuple[np.ndarray, ImageInfo]:
    image = _open_pillow(path)
    mode = image.mode
    info = ImageInfo(str(image.format or "unknown"), mode, mode not in _GREY_MODES)
    if mode == "L":
        return np.array(image, dtype=np.uint8), info
    if mode == "1":
        return np.asarray(image, dtype=np.uint8) * np.uint8(255), info
    if mode in _SIXTEEN_BIT_MODES or (mode == "I" and image.format == "PNG"):
        return _linear_to_uint8(np.asarray(image).astype(np.float64), 0.0, 65535.0), info
    if mode in ("I", "F"):
        raise ImageReadError(
            f"{path}: unsupported pixel mode {mode!r} ({image.format} with 32-bit pixels); save it as 8- or 16-bit PNG"
        )
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif mode == "La":
        image = image.convert("LA")
    elif mode == "RGBa":
        image = image.convert("RGBA")
    if image.mode in ("LA", "RGBA"):
        alpha = np.asarray(image)[..., -1].astype(np.float64) / 255.0
        colour = image.convert("RGB") if image.mode == "RGBA" else image.convert("L")
        return np.rint(_luma(colour).astype(np.float64) * alpha).astype(np.uint8), info
    return _luma(image), info


def _linear_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``low -> 0`` and ``high -> 255`` linearly (``low > high`` inverts), clip, round."""
    scaled = (values - low) * (255.0 / (high - low))
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def _import_pydicom() -> Any:
    try:
        import pydicom
    except ImportError as exc:
        raise ImportError(
            "reading DICOM files needs pydicom: `pip install pydicom` (it is a dependency of "
            "maco-cxr; reinstall the package if it is missing)"
        ) from exc
    return pydicom


def _whole_number(path: _Source, dataset: Dataset, keyword: str, default: int) -> int:
    """A DICOM integer element, ``default`` when absent or empty; a malformed value names the tag."""
    if keyword not in dataset:
        return default
    element = dataset[keyword]
    value = element.value
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise ImageReadError(
            f"{path}: the DICOM header element {element.tag} {keyword} holds {value!r}, not a whole "
            "number; the header is malformed: fix that element or export the image again"
        ) from exc


def _decode_dicom(path: _Source) -> tuple[Dataset, np.ndarray, str]:
    """Read and validate a single-frame DICOM; return it, its decoded pixels and their colour
    space as pydicom's decoder returns it (grey, ``"RGB"`` or ``"PALETTE COLOR"`` indices)."""
    pydicom = _import_pydicom()
    try:
        dataset = pydicom.dcmread(path, force=True)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError, struct.error) as exc:
        raise ImageReadError(f"{path}: cannot parse the DICOM file ({exc})") from exc
    if "PixelData" not in dataset:
        raise ImageReadError(f"{path}: {_why_no_pixel_data(path, dataset)}")
    frames = _whole_number(path, dataset, "NumberOfFrames", 1)
    if frames != 1:
        raise ImageReadError(
            f"{path}: multi-frame DICOM ({frames} frames); export the frame you need as a single-frame file"
        )
    photometric = _photometric(dataset)
    samples = _whole_number(path, dataset, "SamplesPerPixel", 1)
    if not photometric:
        raise ImageReadError(
            f"{path}: the DICOM header has no (0028,0004) PhotometricInterpretation, so its pixels "
            "cannot be interpreted; the file is incomplete: export the image again"
        )
    if photometric not in _GREY_DICOM + _COLOUR_DICOM:
        raise ImageReadError(
            f"{path}: unsupported PhotometricInterpretation {photometric!r}; readable are "
            f"{', '.join(_GREY_DICOM + _COLOUR_DICOM)}"
        )
    expected = 3 if photometric not in _GREY_DICOM + ("PALETTE COLOR",) else 1
    if samples != expected:
        kind = "grey" if photometric in _GREY_DICOM else "colour"
        raise ImageReadError(
            f"{path}: {kind} DICOM (PhotometricInterpretation {photometric!r}) with SamplesPerPixel "
            f"{samples}, but {photometric} needs {expected}; the header contradicts itself: "
            "export the image again"
        )
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation"):
        _whole_number(path, dataset, keyword, 0)
    meta = getattr(dataset, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not syntax:
        raise ImageReadError(
            f"{path}: the DICOM file meta has no (0002,0010) TransferSyntaxUID, so the pixel data "
            "cannot be decoded; export the image again"
        )
    try:
        stored, decoded = _decode_pixels(dataset, syntax)
    except (
        RuntimeError,
        NotImplementedError,
        ValueError,
        OSError,
        EOFError,
        AttributeError,
        KeyError,
        TypeError,
        struct.error,
    ) as exc:
        raise ImageReadError(
            f"{path}: cannot decode the DICOM pixel data (transfer syntax {syntax.name}): {exc}; {_decode_advice(exc)}"
        ) from exc
    expected_ndim = 3 if decoded == "RGB" else 2
    if stored.ndim != expected_ndim:
        raise ImageReadError(f"{path}: DICOM pixel array has shape {stored.shape}; expected one {decoded} frame")
    return dataset, stored, decoded


def _photometric(dataset: Dataset) -> str:
    return str(dataset.get("PhotometricInterpretation", "") or "").strip().upper()


def _decode_pixels(dataset: Dataset, syntax: Any) -> tuple[np.ndarray, str]:
    """pydicom's decode (as ``Dataset.pixel_array``) and the colour space it returned.

    pydicom converts YBR_FULL(_422) to RGB with ``convert_color_space`` and its JPEG/JPEG 2000
    plugins return YBR_RCT/ICT/PARTIAL_420 as RGB; anything still YBR is converted here.
    """
    from pydicom.pixels import as_pixel_options, convert_color_space, get_decoder

    stored, meta = get_decoder(syntax).as_array(dataset, **as_pixel_options(dataset))
    decoded = str(meta.get("photometric_interpretation", _photometric(dataset))).strip().upper()
    if decoded in ("YBR_FULL", "YBR_FULL_422"):
        stored, decoded = convert_color_space(stored, decoded, "RGB"), "RGB"
    if decoded not in _GREY_DICOM + ("RGB", "PALETTE COLOR"):
        raise NotImplementedError(f"pydicom returned the pixels as {decoded}, which has no RGB conversion")
    return stored, decoded


def _decode_advice(exc: BaseException) -> str:
    """What to do about a decode failure: install the decoders, or the data is broken."""
    text = str(exc)
    if any(words in text for words in ("missing dependencies", "No module named", "does not support")):
        return _DECODER_HINT  # without pylibjpeg only Pillow is tried, which refuses 12-bit JPEG
    if isinstance(exc, NotImplementedError):
        return "pydicom has no decoder for this transfer syntax: export the image uncompressed"
    return "the pixel data is truncated or corrupt (re-copy or re-export the file)"


def _why_no_pixel_data(path: _Source, dataset: Dataset) -> str:
    """Tell a truncated file, a non-DICOM file and a DICOM without an image apart."""
    if _PIXEL_DATA_TAG in path.read_bytes():
        return "the PixelData element could not be read; the file is truncated or corrupt (re-copy or re-download it)"
    if len(dataset) == 0:
        if len(getattr(dataset, "file_meta", ())):
            return (
                "no data elements could be read after the file meta header; the file is "
                "truncated or corrupt (re-copy or re-download it)"
            )
        return "empty or not a DICOM file (no data elements could be read)"
    other = [key for key in ("FloatPixelData", "DoubleFloatPixelData") if key in dataset]
    if other:
        return f"the DICOM file has no pixel data (PixelData), only {other[0]}, not supported"
    return (
        "the DICOM file has no pixel data (PixelData); it is not an image object "
        "(report, structured report or header-only file?) or not a DICOM file at all"
    )


def _stored_range(dataset: Dataset) -> tuple[float, float]:
    bits = int(dataset.BitsStored)
    if int(dataset.get("PixelRepresentation", 0)) == 0:
        return 0.0, float(2**bits - 1)
    return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)


def _lut_range(item: Dataset) -> tuple[float, float]:
    """Range of a LUT's entries (not its nominal depth: many 12-bit LUTs declare 16)."""
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        entries = np.frombuffer(data, dtype="<u2")
    elif isinstance(data, (int, float)):
        entries = np.asarray([data])
    else:
        entries = np.asarray(list(data))
    return float(entries.min()), float(entries.max())


def _modality_step(dataset: Dataset) -> Literal["lut", "rescale", "none"]:
    """Which Modality step applies, as pydicom's ``apply_modality_lut`` chooses it."""
    if dataset.get("ModalityLUTSequence"):
        return "lut"
    if "RescaleSlope" in dataset and "RescaleIntercept" in dataset:
        return "rescale"
    return "none"


def _voi_step(dataset: Dataset) -> Literal["lut", "window", "none"]:
    """Which VOI step :func:`_dicom_grey` applies: a VOI LUT wins over a window."""
    if dataset.get("VOILUTSequence"):
        return "lut"
    if all(dataset.get(key) not in (None, "") for key in ("WindowCenter", "WindowWidth")):
        return "window"
    return "none"


def _modality_range(dataset: Dataset) -> tuple[float, float]:
    """Output range of the Modality LUT / rescale step, ordered as the stored range maps."""
    step = _modality_step(dataset)
    if step == "lut":
        return _lut_range(dataset.ModalityLUTSequence[0])
    low, high = _stored_range(dataset)
    if step == "rescale":
        slope, intercept = float(dataset.RescaleSlope), float(dataset.RescaleIntercept)
        low, high = low * slope + intercept, high * slope + intercept
    return low, high


def _windowing_range(dataset: Dataset) -> tuple[float, float]:
    """The (y_min, y_max) that ``pydicom``'s ``apply_windowing`` maps the window onto."""
    if dataset.get("ModalityLUTSequence"):
        depth = int(dataset.ModalityLUTSequence[0].LUTDescriptor[2])
        low, high = 0.0, float(2**depth - 1)
    else:
        low, high = _stored_range(dataset)
    if "RescaleSlope" in dataset and "RescaleIntercept" in dataset:  # pydicom's rule, even after a LUT
        slope, intercept = float(dataset.RescaleSlope), float(dataset.RescaleIntercept)
        low, high = low * slope + intercept, high * slope + intercept
    return low, high


def _read_dicom(path: _Source) -> tuple[np.ndarray, ImageInfo]:
    dataset, stored, decoded = _decode_dicom(path)
    photometric = _photometric(dataset)
    info = ImageInfo("DICOM", photometric, photometric not in _GREY_DICOM)
    if decoded in _GREY_DICOM:
        return _dicom_grey(path, dataset, stored), info
    if decoded == "PALETTE COLOR":
        rgb, depth = _palette_to_rgb(path, stored, dataset)
        low, high = 0.0, float(2**depth - 1)
    else:
        rgb = stored
        low, high = _stored_range(dataset)
    rgb8 = _linear_to_uint8(np.asarray(rgb, dtype=np.float64), low, high)
    if rgb8.shape[-1] == 4:  # a palette with an alpha LUT: composite on black, as for PNG
        alpha = rgb8[..., 3].astype(np.float64) / 255.0
        return np.rint(_luma(Image.fromarray(rgb8[..., :3])) * alpha).astype(np.uint8), info
    return _luma(Image.fromarray(rgb8)), info


def _palette_to_rgb(path: _Source, indices: np.ndarray, dataset: Dataset) -> tuple[np.ndarray, int]:
    """pydicom's ``apply_color_lut`` and the palette's nominal bits per entry (8 or 16)."""
    from pydicom.pixels import apply_color_lut

    try:
        rgb = apply_color_lut(indices, dataset)
        depth = int(dataset.RedPaletteColorLookupTableDescriptor[2])
    except (ValueError, AttributeError, TypeError, IndexError, KeyError, struct.error) as exc:
        raise ImageReadError(f"{path}: invalid palette colour lookup table in the DICOM header ({exc})") from exc
    return rgb, depth if depth in (8, 16) else 8 * rgb.dtype.itemsize


def _dicom_grey(path: _Source, dataset: Dataset, stored: np.ndarray) -> np.ndarray:
    """Modality LUT, VOI LUT or window, then 0..255; MONOCHROME1 inverted (see module doc)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        values = apply_modality_lut(stored, dataset)
        low, high = _modality_range(dataset)
        voi = _voi_step(dataset)
        if voi == "lut":
            # a LUT is indexed by whole numbers: round a rescaled (float) modality output
            indices = np.rint(values).astype(np.int64) if values.dtype.kind == "f" else values
            values = apply_voi_lut(indices, dataset, index=0, prefer_lut=True)
            low, high = _lut_range(dataset.VOILUTSequence[0])
        elif voi == "window":
            values = apply_voi_lut(values, dataset, index=0, prefer_lut=False)
            low, high = _windowing_range(dataset)
        elif low > high:
            low, high = high, low
    except (ValueError, NotImplementedError, AttributeError, TypeError, IndexError) as exc:
        raise ImageReadError(f"{path}: invalid Modality/VOI LUT or window in the DICOM header ({exc})") from exc
    if high == low:
        raise ImageReadError(f"{path}: the DICOM LUT/window output range is empty ({low})")
    grey = _linear_to_uint8(np.asarray(values, dtype=np.float64), low, high)
    if _photometric(dataset) == "MONOCHROME1":
        grey = np.uint8(255) - grey
    return grey
