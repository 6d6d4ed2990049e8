"""From attenuation to an 8-bit radiograph: exposure, detector blur, quantum noise, window."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_LEVELS = 4096
"""Intermediate grey levels of the display curve, well above the 256 written out."""


@dataclass(frozen=True)
class Exposure:
    """How the film was taken and displayed: gain, blur, noise, window and gamma."""

    gain: float
    blur_px: float
    noise: float
    low: float
    high: float
    gamma: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Exposure:
        return cls(
            gain=float(rng.uniform(0.9, 1.1)),
            blur_px=float(rng.uniform(0.7, 1.3)),
            noise=float(rng.uniform(0.012, 0.03)),
            low=float(rng.uniform(0.08, 0.16)),
            high=float(rng.uniform(0.96, 1.02)),
            gamma=float(rng.uniform(1.0, 1.4)),
        )


def expose(attenuation: np.ndarray, exposure: Exposure, rng: np.random.Generator) -> np.ndarray:
    """uint8 ``[H, W]`` image of a float32 attenuation map ``[H, W]`` (brighter = denser).

    Blur and noise scale with the image size so that a phantom looks alike at any resolution.
    """
    size = attenuation.shape[0]
    signal = 1.0 - np.exp(-np.float32(exposure.gain) * attenuation)
    signal = ndimage.gaussian_filter(signal, exposure.blur_px * size / 512, truncate=2.0)
    grain = rng.standard_normal(signal.shape, dtype=np.float32)
    signal += np.float32(exposure.noise) * np.sqrt(np.abs(signal) + 0.05) * grain
    signal -= np.float32(exposure.low)
    signal *= np.float32((_LEVELS - 1) / (exposure.high - exposure.low))
    np.clip(signal, 0.0, _LEVELS - 1, out=signal)
    curve = np.rint(255.0 * np.linspace(0.0, 1.0, _LEVELS) ** exposure.gamma).astype(np.uint8)
    return curve[signal.astype(np.uint16)]
