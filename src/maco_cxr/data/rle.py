"""Run-length encoding of binary masks as used by the SIIM-ACR pneumothorax challenge.

The SIIM encoding lists ``offset length`` pairs over the image flattened in column-major
order (down the first column, then the next: Fortran order, i.e. the transpose of NumPy's
default). Offsets are relative: each run starts ``offset`` pixels after the END of the
previous run (the first one after pixel 0). ``"-1"`` (written `` -1`` in ``train-rle.csv``)
means an empty mask.
"""

from __future__ import annotations

import numpy as np

from maco_cxr.errors import DataError

__all__ = ["rle_decode", "rle_encode", "rle_runs"]

EMPTY_RLE = "-1"


def rle_runs(rle: str) -> np.ndarray:
    """Parse an RLE string into int64 ``[R, 2]`` (relative offset, length) pairs.

    ``"-1"`` and the empty string give zero runs. Raises :class:`DataError` on a token that
    is not an integer, an odd number of tokens or a negative value.
    """
    text = rle.strip()
    if text in ("", EMPTY_RLE):
        return np.zeros((0, 2), dtype=np.int64)
    tokens = text.split()
    if len(tokens) % 2:
        raise DataError(f"RLE has {len(tokens)} numbers; it must hold (offset, length) pairs")
    try:
        values = np.array([int(token) for token in tokens], dtype=np.int64)
    except ValueError:
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        raise DataError(f"RLE token {bad!r} is not an integer") from None
    if (values < 0).any():
        raise DataError(f"RLE holds a negative number ({values.min()}); offsets and lengths must be >= 0")
    return values.reshape(-1, 2)


def rle_decode(rle: str, height: int, width: int) -> np.ndarray:
    """Decode a SIIM RLE string into a uint8 0/1 mask ``[height, width]``.

    Raises :class:`DataError` when the runs do not fit the ``height x width`` image.
    """
    runs = rle_runs(rle)
    flat = np.zeros(height * width, dtype=np.uint8)
    if len(runs):
        offsets, lengths = runs[:, 0], runs[:, 1]
        ends_before = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        starts = np.cumsum(offsets) + ends_before
        ends = starts + lengths
        if ends[-1] > flat.size:
            raise DataError(
                f"RLE runs end at pixel {int(ends[-1])} but a {width}x{height} (WxH) image "
                f"has {flat.size} pixels; the mask belongs to an image of another size"
            )
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            flat[start:end] = 1
    return flat.reshape((height, width), order="F")


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (non-zero = foreground) as a SIIM RLE string; ``"-1"`` if empty."""
    if mask.ndim != 2:
        raise DataError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    flat = (np.asarray(mask) != 0).ravel(order="F").astype(np.int8)
    edges = np.diff(np.concatenate(([0], flat, [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    if not len(starts):
        return EMPTY_RLE
    offsets = starts - np.concatenate(([0], ends[:-1]))
    pairs = np.stack([offsets, ends - starts], axis=1).ravel()
    return " ".join(str(v) for v in pairs.tolist())
