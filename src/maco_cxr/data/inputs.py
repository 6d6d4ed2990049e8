"""Turn whatever a user holds (paths, PIL images, arrays, tensors; one or many) into uint8 images.

Inference functions accept images the way people have them at hand and convert them here, so
every task sees the same grey ``uint8 [H, W]`` pixels the dataset adapters produce:

- a path (``str`` / ``os.PathLike``): read with :func:`maco_cxr.data.io.read_image` (PNG,
  JPEG, DICOM with its LUTs and MONOCHROME1 inversion);
- a PIL image: converted as the file reader converts (16-bit scaled by 255 / 65535, colour to
  luminance, alpha composited on black);
- a numpy array or torch tensor of dtype uint8 (uint16 is scaled by 255 / 65535, bool to
  0 / 255). ``[H, W]`` is one image. Tensors follow the model's layout: ``[N, H, W]`` (N != 3,
  see below) and ``[N, C, H, W]`` (C in {1, 3}) are batches. Numpy arrays follow the image
  libraries' layout: ``[H, W, C]`` with C in {1, 3, 4} is one image, any other 3-D array a
  batch ``[N, H, W]``, and 4-D a batch ``[N, H, W, C]``;
- a list or tuple of any of these (a batch); in a list, a tensor ``[C, H, W]`` (C in {1, 3})
  is one image in torchvision's channels-first layout.

A lone ``[3, H, W]`` tensor is refused: it is torchvision's layout of ONE RGB image as much as
a batch of 3 grey ones, and no test of the pixels tells the two apart safely (three grey
radiographs of one size look like any colour image). Pass one colour image as ``image[None]``
(``[1, 3, H, W]``) or ``[image]``, three grey images as ``[3, 1, H, W]`` or a list.

:func:`as_path_list` is the one reading of "one path or many" (a ``str``/``os.PathLike`` is ONE
path, never iterated into its characters) for every function that takes paths.

Float pixels are refused: their scale is unknown (0..1? 0..255? already normalised?). Pass
uint8, or give normalised ``[N, 3, 224, 224]`` tensors to ``model.encode_images`` directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from maco_cxr.data.io import read_image
from maco_cxr.errors import DataError

__all__ = [
    "ImageInput",
    "ImagesInput",
    "PathsInput",
    "as_path_list",
    "image_report_pairs",
    "is_one_path",
    "is_single_image",
    "input_name",
    "load_images",
]

ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor
ImagesInput = ImageInput | Sequence[ImageInput]
PathsInput = str | os.PathLike | Iterable[str | os.PathLike]

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def is_one_path(value: Any) -> bool:
    """True for ONE path: a ``str`` or ``os.PathLike`` (iterating a ``str`` would give characters)."""
    return isinstance(value, (str, os.PathLike))


def as_path_list(paths: PathsInput, what: str) -> list[str | os.PathLike[str]]:
    """One path or many as a list: a single ``str``/``os.PathLike`` is one entry, any other
    iterable (list, tuple, generator) gives its items; ``what`` names the argument in errors."""
    if is_one_path(paths):
        return [paths]
    if isinstance(paths, (bytes, bytearray)) or not isinstance(paths, Iterable):
        raise DataError(f"{what}: expected a path (str or os.PathLike) or a list of paths; got {type(paths).__name__}")
    items = list(paths)
    for i, item in enumerate(items):
        if not is_one_path(item):
            raise DataError(f"{what}[{i}]: expected a path (str or os.PathLike); got {type(item).__name__}")
    return items


def image_report_pairs(data: Any, what: str) -> list[tuple[ImageInput, str]]:
    """``(image, report)`` pairs: one pair or an iterable of them; a single path is refused (it
    has no report). ``what`` names the argument in errors."""
    if is_one_path(data):
        raise DataError(
            f"{what}: got one path ({os.fspath(data)!r}); give (image, report) pairs, e.g. "
            "[('a.png', 'small left effusion.'), ...], or a dataset with reports"
        )
    one_pair = isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], str)
    if one_pair and not isinstance(data[0], tuple):
        return [data]
    if not isinstance(data, Iterable):
        raise DataError(f"{what}: expected (image, report) pairs or a dataset; got {type(data).__name__}")
    pairs = list(data)
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[1], str)):
            length = f" of length {len(pair)}" if isinstance(pair, (tuple, list)) else ""
            raise DataError(f"{what}[{i}]: expected an (image, report text) pair; got {type(pair).__name__}{length}")
    return [(image, report) for image, report in pairs]


def is_single_image(images: Any) -> bool:
    """True when ``images`` is one image (so a task returns one result, not a list)."""
    if is_one_path(images) or isinstance(images, Image.Image):
        return True
    if isinstance(images, torch.Tensor):
        return images.ndim == 2
    if isinstance(images, np.ndarray):
        return images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (1, 3, 4))
    return False


def input_name(images: ImagesInput, index: int) -> str:
    """What an error calls input ``index`` of ``images``: its path when it was given as one, else
    ``image`` (a single input) or ``images[index]``."""
    single = is_single_image(images)
    item = images if single else images[index] if isinstance(images, Sequence) else None
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    return "image" if single else f"images[{index}]"


def load_images(images: ImagesInput) -> list[np.ndarray]:
    """One or many images of any supported kind -> a list of uint8 ``[H, W]`` arrays."""
    if is_single_image(images):
        return [_one(images, "image")]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if isinstance(images, torch.Tensor) and images.ndim == 3 and images.shape[0] == 3:
            raise DataError(
                f"images: a tensor of shape {list(images.shape)} is ambiguous: one RGB image in "
                "torchvision's [C, H, W] layout, or 3 grey images. Pass one colour image as image[None] "
                "([1, 3, H, W]) or [image] (it is converted to grey like a colour PNG), 3 grey images as "
                "images[:, None] ([3, 1, H, W]) or a list"
            )
        array = _to_numpy(images, "images")
        if array.ndim == 3:
            return [_grey(frame, f"images[{i}]") for i, frame in enumerate(array)]
        if array.ndim == 4:
            channels_last = isinstance(images, np.ndarray)
            return [
                _grey(frame if channels_last else np.moveaxis(frame, 0, -1), f"images[{i}]")
                for i, frame in enumerate(array)
            ]
        raise DataError(f"images: expected [H, W], [N, H, W] or [N, C, H, W] pixels; got shape {list(array.shape)}")
    if isinstance(images, Sequence):
        if not images:
            raise DataError("images: the list is empty; give at least one image")
        return [_one(item, f"images[{i}]") for i, item in enumerate(images)]
    raise DataError(
        f"images: unsupported type {type(images).__name__}; give a path, a PIL image, "
        "a numpy array, a torch tensor or a list of them"
    )


def _one(image: Any, where: str) -> np.ndarray:
    if is_one_path(image):
        return read_image(image)
    if isinstance(image, Image.Image):
        return _from_pil(image, where)
    if isinstance(image, (np.ndarray, torch.Tensor)):
        array = _to_numpy(image, where)
        if isinstance(image, torch.Tensor) and array.ndim == 3 and array.shape[0] in (1, 3):
            array = np.moveaxis(array, 0, -1)
        return _grey(array, where)
    raise DataError(
        f"{where}: unsupported type {type(image).__name__}; give a path, a PIL image, a numpy array or a torch tensor"
    )


def _to_numpy(values: np.ndarray | torch.Tensor, where: str) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if array.dtype == np.uint16:
        return np.rint(array.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    raise DataError(
        f"{where}: pixels of dtype {array.dtype} are ambiguous (unknown scale); convert them to "
        "uint8 (0..255), or pass normalised float [N, 3, 224, 224] tensors to model.encode_images"
    )


def _grey(array: np.ndarray, where: str) -> np.ndarray:
    """uint8 ``[H, W]`` or channels-last ``[H, W, 1|3|4]`` -> uint8 ``[H, W]``."""
    if array.ndim == 2:
        grey = array
    elif array.ndim == 3 and array.shape[-1] == 1:
        grey = array[..., 0]
    elif array.ndim == 3 and array.shape[-1] in (3, 4):
        grey = _from_pil(Image.fromarray(np.ascontiguousarray(array)), where)
    else:
        raise DataError(f"{where}: expected [H, W] or [H, W, 1|3|4] pixels; got shape {list(array.shape)}")
    if min(grey.shape) < 1:
        raise DataError(f"{where}: the image is empty (shape {list(grey.shape)})")
    return np.ascontiguousarray(grey)


def _from_pil(image: Image.Image, where: str) -> np.ndarray:
    mode = image.mode
    if mode == "L":
        return np.array(image, dtype=np.uint8)
    if mode == "1":
        return np.asarray(image, dtype=np.uint8) * np.uint8(255)
    if mode in _SIXTEEN_BIT_MODES:
        return np.rint(np.asarray(image, dtype=np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    if mode in ("I", "F"):
        raise DataError(
            f"{where}: PIL mode {mode!r} (32-bit pixels) has no known scale; convert the image to 'L' (8-bit) first"
        )
    if mode in ("P", "PA"):
        image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
    elif mode in ("La", "RGBa"):
        image = image.convert("LA" if mode == "La" else "RGBA")
    if image.mode in ("LA", "RGBA"):
        alpha = np.asarray(image)[..., -1].astype(np.float64) / 255.0
        colour = np.asarray(image.convert("RGB" if image.mode == "RGBA" else "L").convert("L"), dtype=np.float64)
        return np.rint(colour * alpha).astype(np.uint8)
    return np.array(image.convert("RGB").convert("L"), dtype=np.uint8)
