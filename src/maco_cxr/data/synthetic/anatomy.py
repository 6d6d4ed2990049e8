"""The normal thorax of a phantom: body, lungs, heart, mediastinum, spine, ribs, clavicles.

The anatomy is drawn as separate attenuation layers (:class:`Layers`) so that findings can act
on the right one: an effusion replaces lung air with fluid, a pneumothorax removes the lung
markings, a nodule adds density. Brightness is computed from the summed attenuation only at
the end, which keeps every finding physically ordered (more attenuation = brighter).

Laterality follows radiology convention: the patient's left is the image right (``u > 0``).
Both sides share one bilateral computation on ``|u|`` to halve the cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from maco_cxr.data.synthetic.geometry import (
    Pose,
    canonical_grid,
    ramp,
    rows_between,
    smooth_noise,
)

Side = Literal["right", "left"]
SIDES: tuple[Side, Side] = ("right", "left")

LUNG_AIR = 1.9
"""Attenuation a full-depth lung removes; effusion, consolidation and edema give it back."""


@dataclass(frozen=True)
class ThoraxParams:
    """Shape parameters of one patient's chest in the canonical frame (see ``geometry``)."""

    lung_cx: float
    lung_rx_lateral: float
    lung_rx_medial: float
    lung_top: float
    dome_right: float
    dome_left: float
    dome_curvature: float
    ctr: float
    heart_angle_deg: float
    heart_aspect: float
    heart_shift: float
    heart_drop: float
    rib_spacing: float
    rib_phase: float
    clavicle_v: float
    body_halfwidth: float
    tissue: float
    gastric_bubble: bool

    @classmethod
    def sample(cls, rng: np.random.Generator) -> ThoraxParams:
        dome_right = float(rng.uniform(0.36, 0.46))
        return cls(
            lung_cx=float(rng.uniform(0.43, 0.46)),
            lung_rx_lateral=float(rng.uniform(0.32, 0.36)),
            lung_rx_medial=float(rng.uniform(0.27, 0.30)),
            lung_top=float(rng.uniform(-0.74, -0.66)),
            dome_right=dome_right,
            dome_left=dome_right + float(rng.uniform(0.01, 0.06)),
            dome_curvature=float(rng.uniform(1.3, 1.8)),
            ctr=float(rng.uniform(0.41, 0.48)),
            heart_angle_deg=float(rng.uniform(22.0, 34.0)),
            heart_aspect=float(rng.uniform(1.35, 1.6)),
            heart_shift=float(rng.uniform(0.2, 0.3)),
            heart_drop=float(rng.uniform(0.0, 0.06)),
            rib_spacing=float(rng.uniform(0.13, 0.145)),
            rib_phase=float(rng.uniform(-0.02, 0.02)),
            clavicle_v=float(rng.uniform(-0.68, -0.6)),
            body_halfwidth=float(rng.uniform(0.88, 0.97)),
            tissue=float(rng.uniform(0.92, 1.08)),
            gastric_bubble=bool(rng.random() < 0.6),
        )

    @property
    def thoracic_halfwidth(self) -> float:
        """Half the inner thoracic width (lung edge to lung edge) used for the CTR."""
        return self.lung_cx + self.lung_rx_lateral

    def dome(self, side: Side) -> float:
        return self.dome_right if side == "right" else self.dome_left


@dataclass
class Layers:
    """Attenuation layers, float32 ``[H, W]`` each; brightness grows with their sum."""

    soft: np.ndarray
    air: np.ndarray
    markings: np.ndarray
    bone: np.ndarray
    extra: np.ndarray

    def attenuation(self) -> np.ndarray:
        return self.soft - self.air + self.markings + self.bone + self.extra


@dataclass
class Thorax:
    """A drawn thorax: its layers plus the geometry findings need (masks, frames, fields)."""

    params: ThoraxParams
    u: np.ndarray
    v: np.ndarray
    pixel: float
    layers: Layers
    dome: np.ndarray
    lungs: np.ndarray
    heart: np.ndarray
    mediastinum: np.ndarray

    def on_side(self, side: Side) -> np.ndarray:
        """Pixels on the patient's ``side`` of the midline, bool ``[H, W]``."""
        return self.u > 0.0 if side == "left" else self.u <= 0.0

    def lung(self, side: Side) -> np.ndarray:
        """Anatomical lung of ``side`` (including behind the heart), bool ``[H, W]``."""
        return self.lungs & self.on_side(side)

    def visible_lung(self, side: Side) -> np.ndarray:
        """Lung of ``side`` not hidden by the heart or mediastinum, bool ``[H, W]``."""
        return self.lung(side) & ~self.mediastinum

    def lung_bounds(self, side: Side) -> tuple[float, float]:
        """Canonical ``v`` of the apex and of the lateral costophrenic angle of ``side``."""
        p = self.params
        lateral = p.lung_cx + p.lung_rx_lateral
        return p.lung_top, p.dome(side) + p.dome_curvature * (lateral - p.lung_cx) ** 2


def lung_shape(params: ThoraxParams, a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Superellipse value of a hemithorax (< 1 inside) before the diaphragm cut.

    ``a = |u|`` is the distance from the midline. The lateral wall is round, the mediastinal
    border flatter, and below the lung centre the walls run straight down to the diaphragm.
    """
    lateral = a > params.lung_cx
    dx = (a - params.lung_cx) / np.where(lateral, np.float32(params.lung_rx_lateral), np.float32(params.lung_rx_medial))
    dx2 = dx * dx
    dy = np.maximum(params.lung_top + 0.75 - v, 0.0) * np.float32(1.0 / 0.75)
    return np.where(lateral, dx2, dx2 * dx2) + dy * dy


def draw_thorax(params: ThoraxParams, pose: Pose, size: int, rng: np.random.Generator) -> Thorax:
    """Render the normal anatomy of ``params`` at ``pose`` into ``size x size`` layers.

    Lung fields are computed only on the rows that can hold lung, the costliest shortcut.
    """
    u, v = canonical_grid(size, pose)
    a = np.abs(u)
    px = 2.0 / (size * pose.scale)
    dome = np.where(
        u > 0.0, np.float32(params.dome_left), np.float32(params.dome_right)
    ) + params.dome_curvature * np.square(a - params.lung_cx)
    heart, silhouette = _heart(params, u, v, px)
    base = max(params.dome(side) for side in SIDES) + params.dome_curvature * (params.lung_rx_lateral + 0.05) ** 2
    rows = rows_between(v, params.lung_top - 0.05, base)
    a_r, v_r, dome_r = a[rows], v[rows], dome[rows]
    shape = lung_shape(params, a_r, v_r)
    lungs_soft = ramp(1.0 - shape, 0.06) * ramp(dome_r - v_r, 3.0 * px) * ramp(a_r - 0.02, 0.02)
    lung_air = lungs_soft * (1.0 - 0.9 * silhouette[rows])
    air = np.zeros_like(u)
    air[rows] = LUNG_AIR * lung_air * (np.sqrt(np.clip(1.0 - shape, 0.0, 1.0)) * 0.4 + 0.6)
    _add_airways(air, params, u, v, px)
    wiggle = smooth_noise(rng, size, 24)
    markings = np.zeros_like(u)
    markings[rows] = lung_air * _vessels(params, a_r, v_r, wiggle[rows])
    bone = _spine(u, v, px)
    bone[rows] += _ribs(params, a_r, v_r, lungs_soft)
    clavicle_rows = rows_between(v, params.clavicle_v - 0.2, params.clavicle_v + 0.12)
    bone[clavicle_rows] += _clavicles(params, a[clavicle_rows], v[clavicle_rows], px)
    layers = Layers(_body(params, u, v, px), air, markings, bone, np.zeros_like(u))
    lungs = np.zeros(u.shape, dtype=bool)
    lungs[rows] = (shape < 1.0) & (v_r < dome_r) & (a_r > 0.02)
    floor = dome - params.dome_curvature * np.maximum(np.square(a - params.lung_cx) - params.lung_rx_medial**2, 0.0)
    return Thorax(params, u, v, px, layers, dome, lungs, (heart > 0.5) & (v < floor), (silhouette > 0.5) & (v < floor))


def _vessels(params: ThoraxParams, a: np.ndarray, v: np.ndarray, wiggle: np.ndarray) -> np.ndarray:
    """Lung markings: wiggly vessels fanning out from each hilum, tapering and fading outwards.

    Lines of constant angle around the hilum (``sin(k * angle + wiggle) = 0``), with the angular
    distance multiplied by the radius so that a vessel's width is physical, not angular.
    """
    da, dv = a - 0.2, v - params.lung_top - 0.8
    radius = np.hypot(da, dv)
    angle = np.arctan2(dv, da)
    fade = np.exp(-radius * np.float32(1 / 0.3))
    width = np.float32(0.011) * (1.0 - 0.7 * np.clip(radius, 0.0, 1.0))
    vessels = np.zeros_like(a)
    for k, amp, phase_scale in ((9.0, 1.0, 1.0), (17.0, 0.5, 1.4)):
        offset = np.sin(angle * np.float32(k) + wiggle * np.float32(phase_scale)) * radius
        vessels = np.maximum(vessels, amp * np.exp(-np.square(offset / (np.float32(k) * width))))
    hilar = np.exp(-np.square(radius * np.float32(1 / 0.08)))
    return 0.3 * fade * vessels + 0.15 * hilar + 0.06 + 0.04 * wiggle * fade


def _heart_radii(params: ThoraxParams) -> tuple[float, float, float]:
    """Semi-axes and horizontal half-extent of the heart ellipse that yield ``params.ctr``."""
    half_extent = params.ctr * params.thoracic_halfwidth
    phi = np.deg2rad(params.heart_angle_deg)
    minor = half_extent / np.sqrt((params.heart_aspect * np.cos(phi)) ** 2 + np.sin(phi) ** 2)
    return float(params.heart_aspect * minor), float(minor), float(half_extent)


def _heart(params: ThoraxParams, u: np.ndarray, v: np.ndarray, px: float) -> tuple[np.ndarray, np.ndarray]:
    """Soft heart, and soft silhouette of heart plus mediastinum, in [0, 1] each."""
    major, minor, half_extent = _heart_radii(params)
    centre_u = params.heart_shift * half_extent
    centre_v = params.dome_left - params.heart_drop
    cos, sin = (
        np.float32(np.cos(np.deg2rad(params.heart_angle_deg))),
        np.float32(np.sin(np.deg2rad(params.heart_angle_deg))),
    )
    heart = np.zeros_like(u)
    rows = rows_between(v, centre_v - major - 0.02, centre_v + major + 0.02)
    du, dv = u[rows] - centre_u, v[rows] - centre_v
    along = (du * cos + dv * sin) * np.float32(1 / major)
    across = (dv * cos - du * sin) * np.float32(1 / minor)
    heart[rows] = ramp(1.0 - np.sqrt(along * along + across * across), 2.5 * px / minor)
    silhouette = heart.copy()
    rows = rows_between(v, -2.0, centre_v + 0.06)
    upper = ramp(0.135 - np.abs(u[rows] - 0.01), 3.0 * px) * ramp(centre_v - v[rows], 0.1)
    np.maximum(silhouette[rows], upper, out=silhouette[rows])
    knob_v = params.lung_top + 0.42
    rows = rows_between(v, knob_v - 0.09, knob_v + 0.09)
    knob = np.hypot(u[rows] - 0.13, v[rows] - knob_v) * np.float32(1 / 0.07)
    np.maximum(silhouette[rows], ramp(1.0 - knob, 0.1), out=silhouette[rows])
    return heart, silhouette


def _body(params: ThoraxParams, u: np.ndarray, v: np.ndarray, px: float) -> np.ndarray:
    """Soft-tissue attenuation: torso with sloping shoulders and neck, thicker at the centre."""
    bw = params.body_halfwidth
    x = u / (bw * (1.0 - 0.08 * np.square(v - 0.15)))
    x2 = x * x
    reach = np.abs(x)
    shoulder = -0.9 + 0.3 * np.square(np.maximum(reach - 0.3, 0.0)) - 0.4 * ramp(0.3 - reach, 0.04)
    torso = ramp(1.0 - x2 * x2, 12.0 * px / bw) * ramp(v - shoulder, 0.08)
    thickness = 0.45 + 0.55 * np.sqrt(np.clip(1.0 - x2, 0.0, 1.0))
    return (2.3 * params.tissue) * torso * thickness


def _add_airways(air: np.ndarray, params: ThoraxParams, u: np.ndarray, v: np.ndarray, px: float) -> None:
    """Add the air of the trachea and, in most patients, of the gastric bubble to ``air``."""
    rows = rows_between(v, -2.0, params.lung_top + 0.65)
    air[rows] += 0.5 * ramp(0.032 - np.abs(u[rows] - 0.01), 2.0 * px) * ramp(params.lung_top + 0.6 - v[rows], 0.08)
    if params.gastric_bubble:
        centre_v = params.dome_left + 0.13
        rows = rows_between(v, centre_v - 0.08, centre_v + 0.08)
        bubble = np.hypot((u[rows] - 0.44) * np.float32(1 / 0.09), (v[rows] - centre_v) * np.float32(1 / 0.05))
        air[rows] += 0.9 * ramp(1.0 - bubble, 0.15)


def _spine(u: np.ndarray, v: np.ndarray, px: float) -> np.ndarray:
    column = ramp(0.07 - np.abs(u), 3.0 * px)
    vertebrae = 0.75 + 0.25 * np.cos(v * np.float32(2 * np.pi / 0.1))
    return 0.3 * column * vertebrae


def _ribs(params: ThoraxParams, a: np.ndarray, v: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """Posterior ribs (curving down laterally, wider apart lower down) and faint anterior ribs."""
    start = params.lung_top + params.rib_phase
    depth = (v - start + 0.3 * a - 0.9 * a * a) * np.float32(1.0 / (10 * params.rib_spacing))
    phase = 10.0 * depth * (1.35 - 0.35 * np.clip(depth, 0.0, 1.0))
    frac = phase - np.floor(phase)
    posterior = ramp(0.15 - np.abs(frac - 0.25), 0.05) * (0.8 + 2.0 * np.square(frac - 0.25))
    posterior *= ramp(a - 0.06, 0.04) * ramp(0.9 - a, 0.08) * ramp(phase + 0.2, 0.2) * (phase < 10)
    anterior = (v - start - 0.12 + 0.5 * a - 0.2 * a * a) * np.float32(1.0 / (1.2 * params.rib_spacing))
    frac_a = anterior - np.floor(anterior)
    front = ramp(0.2 - np.abs(frac_a - 0.3), 0.1) * ramp(a - 0.35, 0.15) * (anterior > 0.0)
    return 0.2 * posterior + 0.08 * front * lungs * (anterior < 6.0)


def _clavicles(params: ThoraxParams, a: np.ndarray, v: np.ndarray, px: float) -> np.ndarray:
    """Both clavicles: S-curved bands rising from the sternum towards the shoulders."""
    start_a, start_v = 0.1, params.clavicle_v + 0.04
    dir_a, dir_v = 0.52, -0.17
    t = ((a - start_a) * dir_a + (v - start_v) * dir_v) * np.float32(1 / (dir_a**2 + dir_v**2))
    t = np.clip(t, 0.0, 1.0)
    sag = 0.025 * np.sin(np.float32(2 * np.pi) * t)
    dist = np.hypot(a - start_a - t * dir_a, v - start_v - t * dir_v + sag)
    return 0.5 * ramp(0.03 + 0.015 * (1.0 - t) - dist, 3.0 * px) * ramp(a - 0.08, 0.03)
