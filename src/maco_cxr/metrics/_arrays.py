"""Array conversion shared by the metric modules (numpy in, numpy out; torch accepted)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from maco_cxr.errors import DataError


def to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a numpy array; torch tensors are detached and moved to the CPU first.

    Floating tensors become float64 so that low-precision dtypes (bfloat16) convert too.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        t = x.detach().cpu()
        if t.is_floating_point():
            t = t.double()
        return t.numpy()
    return np.asarray(x)


def check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Raise :class:`DataError` naming both arguments when their shapes differ."""
    if a.shape != b.shape:
        raise DataError(
            f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}; they must match element for element"
        )


def nan_mean(values: np.ndarray | list[float]) -> float:
    """Mean over the finite entries; NaN (without numpy's empty-slice warning) when there are none."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[~np.isnan(arr)]
    return float(finite.mean()) if finite.size else float("nan")


def warn_undefined(message: str) -> None:
    """Warn about a metric that is undefined for the given data (reported as NaN)."""
    warnings.warn(message, RuntimeWarning, stacklevel=3)
