"""Letterbox geometry: longest side to ``size``, centred zero padding, and the way back.

The MS-CXR grounding protocol (docs/protocols.md section 3) resizes the longest side to N with area
interpolation and pads to N x N; boxes and heatmaps must follow the same transform. A
:class:`Letterbox` records that transform so it can be stored next to a prepared image and
undone later (heatmaps back onto the original image, boxes back to original pixels).

Coordinate convention: continuous pixel coordinates, pixel ``i`` covers ``[i, i + 1)`` and
its centre is ``i + 0.5``; boxes are ``x_min, y_min, x_max, y_max`` in that frame (a box
covering pixels 10..19 is ``10, ..., 20, ...``). A point maps as
``x' = x * scale + pad_left`` and back as ``x = (x' - pad_left) / scale`` with the exact,
unrounded ``scale``; under this convention corners and centres map alike, with no 0.5 shifts.

The pixels follow the same exact map: content pixel ``i`` of the letterbox covers the original
interval ``[i / scale, (i + 1) / scale)`` (clipped to the image). Downsampling averages over
that interval weighted by overlap (exact area resampling, what OpenCV's INTER_AREA does when it
shrinks), upsampling is bilinear with half-pixel centres and edge clamping. Because
``new_* = round(src * scale)``, the last content row/column can cover up to half a letterbox
pixel more or less than the image; using the exact scale keeps boxes, pixels and heatmaps
consistent with each other anyway.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Literal

import numpy as np

from maco_cxr.errors import DataError

if TYPE_CHECKING:
    import torch

__all__ = ["Letterbox", "letterbox_image"]

_Method = Literal["area", "bilinear", "nearest"]


@dataclass(frozen=True)
class Letterbox:
    """The recorded transform from an ``src_height x src_width`` image to ``size x size``."""

    src_height: int
    src_width: int
    size: int
    scale: float
    new_height: int
    new_width: int
    pad_top: int
    pad_left: int

    def __post_init__(self) -> None:
        for name in ("src_height", "src_width", "size"):
            if getattr(self, name) < 1:
                raise DataError(f"Letterbox.{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise DataError(f"Letterbox.scale must be a positive number, got {self.scale}")
        for new, pad, axis in ((self.new_height, self.pad_top, "height"), (self.new_width, self.pad_left, "width")):
            if not 1 <= new <= self.size:
                raise DataError(f"Letterbox.new_{axis} must be in 1..{self.size}, got {new}")
            if pad < 0 or pad + new > self.size:
                raise DataError(
                    f"Letterbox padding along {axis} ({pad}) puts the {new} px content outside "
                    f"the {self.size} px canvas"
                )

    @classmethod
    def fit(cls, height: int, width: int, size: int) -> Letterbox:
        """The letterbox that fits a ``height x width`` image into ``size x size``."""
        if height < 1 or width < 1 or size < 1:
            raise DataError(
                f"cannot letterbox a {width}x{height} (WxH) image to {size} px: every dimension must be >= 1"
            )
        scale = size / max(height, width)
        new_height = min(size, max(1, round(height * scale)))
        new_width = min(size, max(1, round(width * scale)))
        return cls(
            src_height=height,
            src_width=width,
            size=size,
            scale=scale,
            new_height=new_height,
            new_width=new_width,
            pad_top=(size - new_height) // 2,
            pad_left=(size - new_width) // 2,
        )

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """uint8 ``[src_height, src_width]`` -> uint8 ``[size, size]`` (area down, bilinear up)."""
        self._check_source(image, "image")
        if image.dtype != np.uint8:
            raise DataError(f"Letterbox.apply_image expects uint8 pixels, got {image.dtype}")
        if self.scale == 1.0:  # bilinear at step 1 samples the pixel centres: a copy
            return self._pad(image)
        # float32 is exact enough: each output is a convex combination of uint8 values, so its
        # rounding error (~1e-4 grey levels) can only flip an exact .5 tie by one level
        content = self._to_letterbox(image, None, np.float32)
        np.clip(content, 0.0, 255.0, out=content)
        return self._pad(np.rint(content, out=content), np.uint8)

    def apply_mask(self, mask: np.ndarray) -> np.ndarray:
        """0/1 ``[src_height, src_width]`` -> ``[size, size]``, nearest neighbour (values kept)."""
        self._check_source(mask, "mask")
        return self._pad(self._to_letterbox(np.asarray(mask), "nearest", None))

    def content_mask(self) -> np.ndarray:
        """bool ``[size, size]``: True on the pixels that hold the image, False on the padding."""
        valid = np.zeros((self.size, self.size), dtype=bool)
        valid[self.pad_top : self.pad_top + self.new_height, self.pad_left : self.pad_left + self.new_width] = True
        return valid

    def boxes_to_letterbox(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Original-pixel boxes ``[M, 4]`` -> letterbox-pixel boxes ``[M, 4]`` (float64)."""
        boxes = _as_boxes(boxes_xyxy)
        offset = np.array([self.pad_left, self.pad_top, self.pad_left, self.pad_top], float)
        return boxes * self.scale + offset

    def boxes_to_original(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Letterbox-pixel boxes ``[M, 4]`` -> original-pixel boxes ``[M, 4]`` (float64)."""
        boxes = _as_boxes(boxes_xyxy)
        offset = np.array([self.pad_left, self.pad_top, self.pad_left, self.pad_top], float)
        return (boxes - offset) / self.scale

    def map_to_original(self, heatmap: np.ndarray | torch.Tensor) -> np.ndarray:
        """A ``[size, size]`` map -> float32 ``[src_height, src_width]``; padding is ignored.

        Original pixel ``x`` reads the map over letterbox ``[pad + x * scale, pad + (x+1) *
        scale)``: bilinear when the original is larger (the usual case), area average when
        smaller.
        """
        if hasattr(heatmap, "detach"):
            heatmap = heatmap.detach().float().cpu().numpy()
        values = np.asarray(heatmap, dtype=np.float64)
        if values.shape != (self.size, self.size):
            raise DataError(f"map_to_original expects a [{self.size}, {self.size}] map, got {list(values.shape)}")
        method: _Method = "area" if self.scale > 1.0 else "bilinear"
        rows = _axis_taps(self.src_height, self.scale, self.pad_top, self.pad_top + self.new_height, method)
        columns = _axis_taps(self.src_width, self.scale, self.pad_left, self.pad_left + self.new_width, method)
        out = _resample_columns(_resample_rows(values, *rows, np.float64), *columns, np.float64)
        return out.astype(np.float32)

    def to_dict(self) -> dict[str, int | float]:
        """Plain JSON-able fields, to store next to a prepared image."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, int | float]) -> Letterbox:
        """Rebuild a recorded letterbox as stored (its numbers are trusted, then validated)."""
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            raise DataError(f"letterbox record is missing {missing}; it needs all of {names}")
        values = {name: float(data[name]) if name == "scale" else int(data[name]) for name in names}
        return cls(**values)

    def _check_source(self, array: np.ndarray, what: str) -> None:
        if array.shape != (self.src_height, self.src_width):
            raise DataError(
                f"{what} has shape {list(array.shape)} but this letterbox was fitted to "
                f"[{self.src_height}, {self.src_width}]"
            )

    def _to_letterbox(self, source: np.ndarray, method: _Method | None, dtype: type[np.floating] | None) -> np.ndarray:
        """The ``[new_height, new_width]`` content: rows, then columns, each in ``dtype``."""
        step = 1.0 / self.scale
        if method is None:
            method = "area" if step > 1.0 else "bilinear"
        rows = _axis_taps(self.new_height, step, 0.0, self.src_height, method)
        columns = _axis_taps(self.new_width, step, 0.0, self.src_width, method)
        if method == "nearest":  # one tap of weight 1: a gather, which keeps values and dtype
            return np.take(np.take(source, rows[0][0], axis=0), columns[0][0], axis=1)
        assert dtype is not None, "weighted resampling needs a float dtype"
        return _resample_columns(_resample_rows(source, *rows, dtype), *columns, dtype)

    def _pad(self, content: np.ndarray, dtype: np.dtype | type | None = None) -> np.ndarray:
        """``content`` centred on a zero ``[size, size]`` canvas of ``dtype`` (default: its own)."""
        canvas = np.zeros((self.size, self.size), dtype=content.dtype if dtype is None else dtype)
        canvas[self.pad_top : self.pad_top + self.new_height, self.pad_left : self.pad_left + self.new_width] = content
        return canvas


def letterbox_image(image: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Letterbox a uint8 ``[H, W]`` image to ``[size, size]``; return it and the transform."""
    if image.ndim != 2:
        raise DataError(f"letterbox_image expects a grey [H, W] image, got {list(image.shape)}")
    box = Letterbox.fit(image.shape[0], image.shape[1], size)
    return box.apply_image(image), box


def _as_boxes(boxes_xyxy: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes_xyxy, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DataError(f"boxes must be [M, 4] (x_min, y_min, x_max, y_max), got {list(boxes.shape)}")
    return boxes


def _axis_taps(n_out: int, step: float, start: float, stop: int, method: _Method) -> tuple[np.ndarray, np.ndarray]:
    """Resampling along one axis as taps: output ``j = sum_k weight[k, j] * source[index[k, j]]``.

    Output ``j`` covers source ``start + [j, j+1) * step``; only source indices ``[start, stop)``
    are read (``start`` is an integer offset there). ``area`` weighs each source pixel by its
    overlap with that interval (clipped to the source) over the interval's length; ``bilinear``
    samples the interval's centre with half-pixel centres and edge clamping; ``nearest`` takes
    the pixel under the centre. Returns ``index`` (intp) and ``weight`` (float64), both
    ``[K, n_out]``: ``K`` is 1, 2 or ``ceil(step) + 1``, and a tap past the source edge points
    at the last pixel with weight 0.
    """
    low, high = int(start), int(stop)
    edges = start + np.arange(n_out + 1, dtype=np.float64) * step
    if method == "nearest":
        centres = (edges[:-1] + edges[1:]) / 2
        index = np.clip(np.floor(centres).astype(np.intp), low, high - 1)
        return index[None], np.ones((1, n_out))
    if method == "bilinear":
        centres = np.clip((edges[:-1] + edges[1:]) / 2 - 0.5, low, high - 1)
        lower = np.floor(centres).astype(np.intp)
        weight = centres - lower
        return (np.stack([lower, np.minimum(lower + 1, high - 1)]), np.stack([1.0 - weight, weight]))
    clipped = np.clip(edges, low, high)
    first, last = clipped[:-1], clipped[1:]
    widths = last - first
    assert (widths > 0).all(), "every output pixel overlaps the source"
    index = np.floor(first).astype(np.intp) + np.arange(math.ceil(step) + 1)[:, None]
    overlap = np.minimum(last, index + 1) - np.maximum(first, index)
    return np.minimum(index, high - 1), np.maximum(overlap, 0.0) / widths


def _resample_rows(values: np.ndarray, index: np.ndarray, weight: np.ndarray, dtype: type[np.floating]) -> np.ndarray:
    """``[n_in, C]`` -> ``[n_out, C]`` in ``dtype``: a sparse ``[n_out, n_in]`` matrix product.

    Each output row is a weighted sum of a few whole source rows, which a CSR product does in
    one pass over contiguous memory.
    """
    from scipy import sparse  # here, not at the top: it adds ~0.1 s to importing maco_cxr.data

    taps, n_out = index.shape
    matrix = sparse.csr_array(
        (weight.T.astype(dtype).ravel(), index.T.ravel(), np.arange(0, taps * n_out + 1, taps)),
        shape=(n_out, values.shape[0]),
    )
    return matrix @ values.astype(dtype, copy=False)  # repeated (clamped) taps add up


_BLOCK = 8  # outputs per matrix product in _resample_columns
# multiply-adds per product at most: below OpenBLAS's threading threshold (4 * 2**16), so BLAS
# stays on the calling thread (prepare's workers are the parallelism; threads would only spin)
_PRODUCT_LIMIT = 2**17


def _resample_columns(
    values: np.ndarray, index: np.ndarray, weight: np.ndarray, dtype: type[np.floating]
) -> np.ndarray:
    """``[R, n_in]`` -> ``[R, n_out]`` in ``dtype`` along the last (contiguous) axis.

    A gather per tap across columns is slow, and so is a sparse product from the right (it
    transposes). Instead, each block of ``_BLOCK`` outputs reads one window of source columns,
    so the pass is a few small dense products ``[rows, window] @ [window, _BLOCK]`` (BLAS).
    """
    n_rows, n_in = values.shape
    n_out = index.shape[1]
    starts = np.arange(0, n_out, _BLOCK)
    block = np.arange(n_out) // _BLOCK
    low = np.minimum.reduceat(index.min(axis=0), starts)
    high = np.maximum.reduceat(index.max(axis=0), starts) + 1
    window = int(min(n_in, (high - low).max()))
    low = np.minimum(low, n_in - window)  # the window stays inside the source, still covers
    # [blocks, window, _BLOCK] weights; bincount adds up taps clamped onto the same pixel
    cell = (block * window + index - low[block]) * _BLOCK + np.arange(n_out) % _BLOCK
    matrices = np.bincount(cell.ravel(), weight.ravel(), minlength=len(starts) * window * _BLOCK)
    matrices = matrices.reshape(len(starts), window, _BLOCK).astype(dtype)
    source = values.astype(dtype, copy=False)
    out = np.empty((n_rows, n_out), dtype=dtype)
    chunk = max(1, _PRODUCT_LIMIT // (window * _BLOCK))
    for top in range(0, n_rows, chunk):
        rows = slice(top, top + chunk)
        for b, begin in enumerate(starts):
            end = min(n_out, begin + _BLOCK)
            np.matmul(source[rows, low[b] : low[b] + window], matrices[b, :, : end - begin], out=out[rows, begin:end])
    return out
