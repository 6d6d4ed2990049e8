"""Coordinate frames and small field helpers shared by the phantom's anatomy and findings.

Every shape is defined in a canonical chest frame ``(u, v)``: ``u`` runs from image left (-1)
to image right (+1), ``v`` from top (-1) to bottom (+1). The patient's pose (scale, rotation,
shift) maps pixels into that frame, so shapes and their masks are evaluated per pixel with
vectorised numpy and stay exact at any image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pose:
    """Where the chest sits in the image: isotropic scale, width stretch, rotation, shift."""

    scale: float
    stretch: float
    angle_deg: float
    shift_u: float
    shift_v: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Pose:
        return cls(
            scale=float(rng.uniform(0.86, 1.0)),
            stretch=float(rng.uniform(0.93, 1.07)),
            angle_deg=float(rng.uniform(-4.0, 4.0)),
            shift_u=float(rng.uniform(-0.04, 0.04)),
            shift_v=float(rng.uniform(-0.03, 0.05)),
        )


def canonical_grid(size: int, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Canonical ``(u, v)`` of every pixel centre, float32 ``[size, size]`` each."""
    centres = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    x = centres[None, :] - np.float32(pose.shift_u)
    y = centres[:, None] - np.float32(pose.shift_v)
    theta = np.deg2rad(pose.angle_deg)
    cos, sin = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    u = (cos * x + sin * y) / np.float32(pose.scale * pose.stretch)
    v = (-sin * x + cos * y) / np.float32(pose.scale)
    return u.astype(np.float32), v.astype(np.float32)


def ramp(signed: np.ndarray, width: float) -> np.ndarray:
    """Soft indicator of ``signed > 0``: 0 below ``-width/2``, 1 above ``width/2``, linear between.

    Shapes are drawn with it so that their edges are anti-aliased over ``width``.
    """
    out = signed * np.float32(1.0 / width)
    out += np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


def rows_between(v: np.ndarray, low: float, high: float) -> slice:
    """Rows of a canonical ``v`` grid that hold any pixel with ``low <= v <= high``.

    ``v`` is linear along each row, so its two end columns bound it.
    """
    ends_low = np.minimum(v[:, 0], v[:, -1])
    ends_high = np.maximum(v[:, 0], v[:, -1])
    rows = np.flatnonzero((ends_high >= low) & (ends_low <= high))
    return slice(int(rows[0]), int(rows[-1]) + 1) if rows.size else slice(0, 0)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-variance noise smooth over ``size / cells`` pixels, float32 ``[size, size]``.

    A coarse ``cells x cells`` lattice is interpolated with cubic B-splines, separably and by
    gathering four taps, which costs a few full-size operations and no BLAS threads.
    """
    coarse = rng.standard_normal((cells + 3, cells + 3), dtype=np.float32)
    position = (np.arange(size) + 0.5) * (cells / size) + 1.0
    base = np.floor(position).astype(np.intp)
    t = (position - base).astype(np.float32)[:, None]
    weights = (
        np.concatenate([(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3], axis=1) / 6
    )
    taps = base[:, None] + np.arange(-1, 3)
    rows = np.einsum("stc,st->sc", coarse[taps], weights)
    noise = rows[:, taps[:, 0]] * weights[:, 0]
    for k in range(1, 4):
        noise += rows[:, taps[:, k]] * weights[:, k]
    return (noise - noise.mean()) / (noise.std() + np.float32(1e-8))


def ridges(noise: np.ndarray, width: float) -> np.ndarray:
    """Thin winding lines along the zero level set of ``noise`` (vessels, bronchi), in [0, 1]."""
    return np.exp(-np.square(noise * np.float32(1.0 / width)))


def box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight ``x_min, y_min, x_max, y_max`` of a non-empty mask; pixel ``i`` spans ``[i, i+1)``."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("box_of needs a non-empty mask")
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)
