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
  Colour and multi-frame DICOMs are rejected.
- Nothing partially decoded is ever returned: a truncated or corrupt file raises
  :class:`~maco_cxr.errors.ImageReadError` naming the file and the reason.

:func:`read_image_bytes` decodes bytes held in memory (an upload to the web viewer) through
the same code, so a file and its bytes give identical pixels; nothing is written to disk.
"""

from __future__ import annotations

import os
import struct
import zlib
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
from PIL import Image, ImageOps

from maco_cxr.errors import ImageReadError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["is_dicom", "read_image", "read_image_bytes", "read_mask"]

_DICOM_SUFFIXES = (".dcm", ".dicom")
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
               Image.DecompressionBombError)
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_DECODER_HINT = ("for compressed transfer syntaxes other than JPEG baseline install "
                 "`pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` or `python-gdcm`")


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


_Source = Union[Path, _MemoryFile]  # what the decoders read: a file, or bytes in memory


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
    data = bytes(data)
    source = _MemoryFile(data, name)
    if Path(name).suffix.lower() in _DICOM_SUFFIXES or _has_dicom_magic(data[:132]):
        return _read_dicom(source)
    return _read_pillow(source)


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a binary mask as uint8 ``[H, W]`` with 1 wherever any colour channel is non-zero.

    The test runs on the stored values (palette entries resolved, fully transparent pixels
    count as 0), not on luminance, so a dark but non-zero label colour is still foreground.
    """
    path = _existing_file(path)
    if is_dicom(path):
        _, stored = _decode_dicom(path)
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
    except _PIL_ERRORS as exc:
        raise ImageReadError(
            f"{path}: cannot decode the image ({type(exc).__name__}: {exc}); the file is "
            "truncated, corrupt or not an image format Pillow reads"
        ) from exc
    return oriented


def _read_pillow(path: _Source) -> np.ndarray:
    image = _open_pillow(path)
    mode = image.mode
    if mode == "L":
        return np.array(image, dtype=np.uint8)
    if mode == "1":
        return np.asarray(image, dtype=np.uint8) * np.uint8(255)
    if mode in _SIXTEEN_BIT_MODES or (mode == "I" and image.format == "PNG"):
        return _linear_to_uint8(np.asarray(image).astype(np.float64), 0.0, 65535.0)
    if mode in ("I", "F"):
        raise ImageReadError(
            f"{path}: unsupported pixel mode {mode!r} ({image.format} with 32-bit pixels); "
            "save it as 8- or 16-bit PNG"
        )
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif mode == "La":
        image = image.convert("LA")
    elif mode == "RGBa":
        image = image.convert("RGBA")
    if image.mode in ("LA", "RGBA"):
        values = np.asarray(image)
        alpha = values[..., -1].astype(np.float64) / 255.0
        colour = image.convert("RGB" if image.mode == "RGBA" else "L").convert("L")
        return np.rint(np.asarray(colour, dtype=np.float64) * alpha).astype(np.uint8)
    return np.array(image.convert("RGB").convert("L"), dtype=np.uint8)


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


def _decode_dicom(path: _Source) -> tuple[Dataset, np.ndarray]:
    """Read and validate a single-frame grey DICOM; return it and its stored pixel values."""
    pydicom = _import_pydicom()
    try:
        dataset = pydicom.dcmread(path, force=True)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError,
            struct.error) as exc:
        raise ImageReadError(f"{path}: cannot parse the DICOM file ({exc})") from exc
    if "PixelData" not in dataset:
        raise ImageReadError(f"{path}: {_why_no_pixel_data(path, dataset)}")
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip().upper()
    samples = int(dataset.get("SamplesPerPixel", 1))
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or samples != 1:
        raise ImageReadError(
            f"{path}: colour DICOM (PhotometricInterpretation {photometric or 'missing'!r}, "
            f"SamplesPerPixel {samples}); only grey MONOCHROME1/MONOCHROME2 radiographs "
            "are supported"
        )
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ImageReadError(
            f"{path}: multi-frame DICOM ({frames} frames); export the frame you need as a "
            "single-frame file"
        )
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", "unknown")
    try:
        stored = dataset.pixel_array
    except (RuntimeError, NotImplementedError, ValueError, OSError, EOFError, AttributeError,
            struct.error) as exc:
        raise ImageReadError(
            f"{path}: cannot decode the DICOM pixel data (transfer syntax {syntax}): {exc}; "
            f"{_DECODER_HINT}"
        ) from exc
    if stored.ndim != 2:
        raise ImageReadError(
            f"{path}: DICOM pixel array has shape {stored.shape}; expected one grey frame"
        )
    return dataset, stored


def _why_no_pixel_data(path: _Source, dataset: Dataset) -> str:
    """Tell a truncated file, a non-DICOM file and a DICOM without an image apart."""
    if _PIXEL_DATA_TAG in path.read_bytes():
        return ("the PixelData element could not be read; the file is truncated or corrupt "
                "(re-copy or re-download it)")
    if len(dataset) == 0:
        if len(getattr(dataset, "file_meta", ())):
            return ("no data elements could be read after the file meta header; the file is "
                    "truncated or corrupt (re-copy or re-download it)")
        return "empty or not a DICOM file (no data elements could be read)"
    other = [key for key in ("FloatPixelData", "DoubleFloatPixelData") if key in dataset]
    if other:
        return f"the DICOM file has no pixel data (PixelData), only {other[0]}, not supported"
    return ("the DICOM file has no pixel data (PixelData); it is not an image object "
            "(report, structured report or header-only file?) or not a DICOM file at all")


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


def _modality_range(dataset: Dataset) -> tuple[float, float]:
    """Output range of the Modality LUT / rescale step, ordered as the stored range maps."""
    if dataset.get("ModalityLUTSequence"):
        return _lut_range(dataset.ModalityLUTSequence[0])
    low, high = _stored_range(dataset)
    if "RescaleSlope" in dataset and "RescaleIntercept" in dataset:
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
    if "RescaleSlope" in dataset and "RescaleIntercept" in dataset:
        slope, intercept = float(dataset.RescaleSlope), float(dataset.RescaleIntercept)
        low, high = low * slope + intercept, high * slope + intercept
    return low, high


def _has_window(dataset: Dataset) -> bool:
    return all(dataset.get(key) not in (None, "") for key in ("WindowCenter", "WindowWidth"))


def _read_dicom(path: _Source) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    dataset, stored = _decode_dicom(path)
    try:
        values = apply_modality_lut(stored, dataset)
        low, high = _modality_range(dataset)
        if dataset.get("VOILUTSequence"):
            # a LUT is indexed by whole numbers: round a rescaled (float) modality output
            indices = np.rint(values).astype(np.int64) if values.dtype.kind == "f" else values
            values = apply_voi_lut(indices, dataset, index=0, prefer_lut=True)
            low, high = _lut_range(dataset.VOILUTSequence[0])
        elif _has_window(dataset):
            values = apply_voi_lut(values, dataset, index=0, prefer_lut=False)
            low, high = _windowing_range(dataset)
        elif low > high:
            low, high = high, low
    except (ValueError, NotImplementedError, AttributeError, TypeError, IndexError) as exc:
        raise ImageReadError(
            f"{path}: invalid Modality/VOI LUT or window in the DICOM header ({exc})"
        ) from exc
    if high == low:
        raise ImageReadError(f"{path}: the DICOM LUT/window output range is empty ({low})")
    grey = _linear_to_uint8(np.asarray(values, dtype=np.float64), low, high)
    if str(dataset.PhotometricInterpretation).strip().upper() == "MONOCHROME1":
        grey = np.uint8(255) - grey
    return grey
