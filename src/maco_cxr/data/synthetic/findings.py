"""Findings of a phantom: which ones to draw, where, and how each changes the thorax layers.

Planning (:func:`plan_findings`) decides side, severity and zone under compatibility rules (no
effusion on the side of a pneumothorax, no lower-zone consolidation under an effusion, ...).
Drawing (:func:`draw_finding`) edits the :class:`~maco_cxr.data.synthetic.anatomy.Layers` and
returns the finding's pixel mask. Sides are the patient's (left = image right).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

from maco_cxr.data.synthetic.anatomy import SIDES, Side, Thorax, ThoraxParams, lung_shape
from maco_cxr.data.synthetic.geometry import box_of, ramp, ridges, smooth_noise

FINDINGS: tuple[str, ...] = (
    "pleural effusion",
    "pneumothorax",
    "consolidation",
    "cardiomegaly",
    "nodule",
    "edema",
)
"""Class names, in the order of every multi-hot label vector. An image with none is normal."""

NORMAL = "normal"
"""Accepted alone in place of a list of findings, meaning none."""
ZONES: tuple[str, ...] = ("upper", "middle", "lower")
SEVERITIES: dict[str, tuple[str, ...]] = {
    "pleural effusion": ("small", "moderate", "large"),
    "pneumothorax": ("small", "large"),
    "cardiomegaly": ("mild", "moderate", "severe"),
    "edema": ("mild", "moderate", "severe"),
}
_EFFUSION_HEIGHT = {"small": (0.2, 0.25), "moderate": (0.32, 0.4), "large": (0.5, 0.6)}
_COLLAPSE = {"small": (0.8, 0.86), "large": (0.55, 0.68)}
_LOAD = {"small": 1, "moderate": 2, "large": 3}
"""How much of its lung an effusion fills, to keep other findings where there is room."""
_CTR = {"mild": (0.6, 0.63), "moderate": (0.64, 0.68), "severe": (0.69, 0.74)}
_EDEMA_DENSITY = {"mild": 0.5, "moderate": 0.62, "severe": 0.74}
_ZONE_FRACTIONS = {"upper": (0.0, 0.4), "middle": (0.3, 0.7), "lower": (0.55, 1.0)}
_FIELD_CM = 35.0
"""Width of the imaged field in cm, for the nodule size a report states."""
_T = TypeVar("_T")
_LOCATIONS = {
    ("right", "upper"): "right upper lobe",
    ("right", "middle"): "right middle lobe",
    ("right", "lower"): "right lower lobe",
    ("left", "upper"): "left upper lobe",
    ("left", "middle"): "left mid lung",
    ("left", "lower"): "left lower lobe",
}


@dataclass(frozen=True)
class FindingSpec:
    """What to draw: kind, patient side, severity and lung zone (None where they do not apply)."""

    kind: str
    side: Side | None = None
    severity: str | None = None
    zone: str | None = None

    @property
    def location(self) -> str:
        """Lobe-style location ("right lower lobe") of a zoned finding."""
        return _LOCATIONS[(self.side, self.zone)] if self.side and self.zone else ""

    @property
    def phrase(self) -> str:
        """MS-CXR style phrase naming the finding and where it is."""
        if self.kind == "pleural effusion":
            return f"{self.severity} {self.side} pleural effusion"
        if self.kind == "pneumothorax":
            return f"{self.severity} {self.side} pneumothorax"
        if self.kind in ("consolidation", "nodule"):
            return f"{self.location} {self.kind}"
        if self.kind == "edema":
            return f"{self.severity} pulmonary edema"
        return f"{self.severity} cardiomegaly"


@dataclass
class Finding:
    """A drawn finding: its spec, tight box ``x_min, y_min, x_max, y_max`` and bool mask."""

    kind: str
    side: Side | None
    severity: str | None
    zone: str | None
    box_xyxy: tuple[float, float, float, float]
    mask: np.ndarray
    phrase: str
    size_cm: float | None = None


def sample_kinds(rng: np.random.Generator, p_normal: float, p_extra: float) -> list[str]:
    """Random finding kinds: none with ``p_normal``, else one plus each further with ``p_extra``."""
    if rng.random() < p_normal:
        return []
    order = [FINDINGS[i] for i in rng.permutation(len(FINDINGS))]
    count = 1
    while count < 3 and rng.random() < p_extra:
        count += 1
    return order[:count]


def plan_findings(kinds: Sequence[str], rngs: Mapping[str, np.random.Generator]) -> list[FindingSpec]:
    """Sides, severities and zones for ``kinds`` that never put two findings in one place.

    Each kind draws only from its own generator in ``rngs``, so a finding looks the same
    whatever else the image holds (unless a rule moves it to another side or zone).
    """
    wanted = set(kinds)
    specs: list[FindingSpec] = []
    free_sides: list[Side] = list(SIDES)
    effusion: dict[Side, str] = {}
    if "pneumothorax" in wanted:
        rng = rngs["pneumothorax"]
        side = SIDES[int(rng.integers(2))]
        specs.append(FindingSpec("pneumothorax", side, _choice(rng, SEVERITIES["pneumothorax"])))
        free_sides.remove(side)
    if "pleural effusion" in wanted:
        rng = rngs["pleural effusion"]
        pick = int(rng.choice(3, p=(0.35, 0.35, 0.3)))
        sides = free_sides if len(free_sides) == 1 else ([SIDES[pick]] if pick < 2 else SIDES)
        for side in sides:
            effusion[side] = _choice(rng, SEVERITIES["pleural effusion"])
            specs.append(FindingSpec("pleural effusion", side, effusion[side]))
    load: dict[Side, int] = {side: _LOAD.get(effusion.get(side, ""), 0) for side in free_sides}
    if "consolidation" in wanted:
        rng = rngs["consolidation"]
        side = _least_loaded(rng, load)
        zones = {"large": ZONES[:1], "moderate": ZONES[:2], "small": ZONES[:2]}.get(effusion.get(side, ""), ZONES)
        specs.append(FindingSpec("consolidation", side, None, _choice(rng, zones)))
        load[side] += 2
    if "nodule" in wanted:
        rng = rngs["nodule"]
        specs.append(FindingSpec("nodule", _least_loaded(rng, load), None, _choice(rng, ZONES)))
    if "edema" in wanted:
        specs.append(FindingSpec("edema", None, _choice(rngs["edema"], SEVERITIES["edema"])))
    if "cardiomegaly" in wanted:
        severity = _choice(rngs["cardiomegaly"], SEVERITIES["cardiomegaly"])
        specs.append(FindingSpec("cardiomegaly", None, severity))
    return specs


def enlarge_heart(params: ThoraxParams, specs: Sequence[FindingSpec], rng: np.random.Generator) -> ThoraxParams:
    """``params`` with the cardiothoracic ratio a planned cardiomegaly asks for."""
    for spec in specs:
        if spec.kind == "cardiomegaly":
            return replace(params, ctr=float(rng.uniform(*_CTR[spec.severity])))
    return params


def draw_finding(spec: FindingSpec, thorax: Thorax, rng: np.random.Generator, taken: np.ndarray) -> Finding | None:
    """Draw ``spec`` into ``thorax.layers``; its mask avoids the ``taken`` pixels of others.

    None when the finding's region is empty (possible on small images, e.g. a lower-zone
    consolidation behind a severely enlarged heart): nothing was drawn, so nothing is labelled.
    """
    size_cm = None
    if spec.kind == "cardiomegaly":
        mask = thorax.heart.copy()
    elif spec.kind in _REGION_DRAWERS:
        drawn = _REGION_DRAWERS[spec.kind](spec, thorax, rng)
        if not drawn.any():
            return None
        mask = drawn & ~taken
        if not mask.any():  # wholly under an earlier finding (small images): label what was drawn
            mask = drawn
    else:
        mask, zone, radius_px = _nodule(spec, thorax, rng, taken)
        spec = replace(spec, zone=zone)
        size_cm = round(2.0 * radius_px * _FIELD_CM / mask.shape[0], 1)
    return Finding(spec.kind, spec.side, spec.severity, spec.zone, box_of(mask), mask, spec.phrase, size_cm)


def cardiothoracic_ratio(heart: np.ndarray, lungs: np.ndarray) -> float:
    """Widest horizontal extent of the heart mask over that of the lungs (both bool ``[H, W]``)."""
    heart_cols = np.flatnonzero(heart.any(axis=0))
    lung_cols = np.flatnonzero(lungs.any(axis=0))
    return float(heart_cols[-1] - heart_cols[0] + 1) / float(lung_cols[-1] - lung_cols[0] + 1)


def _least_loaded(rng: np.random.Generator, load: dict[Side, int]) -> Side:
    """A random side among those whose lung is least filled by other findings."""
    lightest = min(load.values())
    return _choice(rng, [side for side, value in load.items() if value == lightest])


def _choice(rng: np.random.Generator, options: Sequence[_T]) -> _T:
    return options[int(rng.integers(len(options)))]


def _zone_range(thorax: Thorax, side: Side, zone: str) -> tuple[float, float]:
    """Canonical ``v`` range of a lung zone; zones overlap a little, as radiologists' do."""
    top, base = thorax.lung_bounds(side)
    low, high = _ZONE_FRACTIONS[zone]
    return top + low * (base - top), top + high * (base - top)


def _effusion(spec: FindingSpec, thorax: Thorax, rng: np.random.Generator) -> np.ndarray:
    """Homogeneous fluid filling the lung base up to a meniscus that climbs the lateral wall."""
    p, v = thorax.params, thorax.v
    top, base = thorax.lung_bounds(spec.side)
    level = base - float(rng.uniform(*_EFFUSION_HEIGHT[spec.severity])) * (base - top)
    inner = p.lung_cx - p.lung_rx_medial
    across = np.clip((np.abs(thorax.u) - inner) / (p.thoracic_halfwidth - inner), 0.0, 1.0)
    surface = level - float(rng.uniform(0.1, 0.15)) * across * across
    side = thorax.on_side(spec.side)
    fluid = ramp(v - surface, 0.025) * side
    thorax.layers.air *= 1.0 - 0.97 * fluid
    thorax.layers.markings *= 1.0 - fluid
    return thorax.visible_lung(spec.side) & (v > surface)


def _pneumothorax(spec: FindingSpec, thorax: Thorax, rng: np.random.Generator) -> np.ndarray:
    """Air between a collapsed lung and the chest wall: no markings, a thin pleural line."""
    p, layers = thorax.params, thorax.layers
    keep = float(rng.uniform(*_COLLAPSE[spec.severity]))
    anchor_a, anchor_v = p.lung_cx - p.lung_rx_medial, p.dome(spec.side)
    a = np.abs(thorax.u)
    collapsed = lung_shape(p, anchor_a + (a - anchor_a) / keep, anchor_v + (thorax.v - anchor_v) / keep)
    side = thorax.on_side(spec.side)
    line_width = 0.03 / keep
    gap = ramp(collapsed - 1.0, 0.02) * side
    line = ramp(line_width - np.abs(collapsed - 1.0 + 1.5 * line_width), line_width) * side
    layers.markings *= 1.0 - gap
    layers.air *= 1.0 + 0.12 * gap
    layers.extra += 0.28 * line * (thorax.lungs & side)
    if spec.severity == "large":
        layers.air *= 1.0 - 0.25 * (1.0 - gap) * side
    return thorax.visible_lung(spec.side) & (collapsed >= 1.0)


def _consolidation(spec: FindingSpec, thorax: Thorax, rng: np.random.Generator) -> np.ndarray:
    """Dense patchy airspace opacity in one lung zone, with air bronchograms inside."""
    p, size = thorax.params, thorax.u.shape[0]
    low, high = _zone_range(thorax, spec.side, spec.zone)
    centre_v = float(rng.uniform(low + 0.35 * (high - low), high - 0.3 * (high - low)))
    centre_a = p.lung_cx + float(rng.uniform(-0.06, 0.1))
    rx, ry = float(rng.uniform(0.22, 0.29)), float(rng.uniform(0.18, 0.25))
    a = np.abs(thorax.u)
    ellipse = 1.0 - np.square((a - centre_a) / rx) - np.square((thorax.v - centre_v) / ry)
    patchy = ellipse + 0.3 * smooth_noise(rng, size, 14) + 0.12 * smooth_noise(rng, size, 40)
    opacity = np.clip(patchy * np.float32(1 / 0.5), 0.0, 1.0) * thorax.lung(spec.side)
    density = np.clip(0.74 + 0.1 * smooth_noise(rng, size, 60), 0.5, 0.92)
    bronchi = ridges(smooth_noise(rng, size, 18), 0.06) * ramp(patchy - 0.45, 0.2)
    thorax.layers.air *= 1.0 - (density - 0.35 * bronchi) * opacity
    thorax.layers.markings *= 1.0 - 0.7 * opacity
    return (patchy > 0.15) & thorax.visible_lung(spec.side)


def _edema(spec: FindingSpec, thorax: Thorax, rng: np.random.Generator) -> np.ndarray:
    """Bilateral perihilar (bat-wing) haze, with Kerley B lines at the bases when not mild."""
    p, size = thorax.params, thorax.u.shape[0]
    a = np.abs(thorax.u)
    hilum_v = p.lung_top + 0.8 + float(rng.uniform(-0.04, 0.06))
    spread_a, spread_v = float(rng.uniform(0.2, 0.25)), float(rng.uniform(0.28, 0.34))
    haze = np.exp(-np.square((a - 0.24) / spread_a) - np.square((thorax.v - hilum_v) / spread_v))
    haze *= 1.0 + 0.25 * smooth_noise(rng, size, 16)
    density = _EDEMA_DENSITY[spec.severity]
    thorax.layers.air *= 1.0 - density * np.clip(haze, 0.0, 1.0)
    thorax.layers.markings *= 1.0 + 0.8 * haze
    if spec.severity != "mild":
        lateral = p.thoracic_halfwidth
        lines = ramp(0.25 - np.abs(np.sin(thorax.v * np.float32(np.pi / 0.03))), 0.2)
        lines *= ramp(a - lateral + 0.08, 0.02) * ramp(thorax.v - thorax.dome + 0.2, 0.05)
        thorax.layers.extra += 0.12 * lines * thorax.lungs
    return (haze > 0.4) & thorax.lungs & ~thorax.mediastinum


def _nodule(
    spec: FindingSpec, thorax: Thorax, rng: np.random.Generator, taken: np.ndarray
) -> tuple[np.ndarray, str, float]:
    """A round, well-defined opacity wholly inside free lung, in its zone if it fits there.

    Returns the mask, the zone it landed in and its radius in pixels.
    """
    size = thorax.u.shape[0]
    radius = float(rng.uniform(0.068, 0.095)) / thorax.pixel
    reach = int(np.ceil(radius))
    offsets = np.arange(-reach, reach + 1)
    dist2 = (np.square(offsets[:, None]) + np.square(offsets[None, :])) / radius**2
    disc = dist2 <= 1.0
    free = np.zeros((size + 2 * reach, size + 2 * reach), dtype=bool)
    free[reach:-reach, reach:-reach] = thorax.visible_lung(spec.side) & ~taken
    for zone in [spec.zone] + [zone for zone in ZONES if zone != spec.zone]:
        low, high = _zone_range(thorax, spec.side, zone)
        candidates = np.flatnonzero(free[reach:-reach, reach:-reach] & (thorax.v > low) & (thorax.v < high))
        for index in rng.choice(candidates, size=min(60, candidates.size), replace=False):
            row, col = divmod(int(index), size)
            if free[row : row + 2 * reach + 1, col : col + 2 * reach + 1][disc].all():
                sphere = np.sqrt(np.clip(1.0 - dist2, 0.0, 1.0)).astype(np.float32)
                window = (slice(row - reach, row + reach + 1), slice(col - reach, col + reach + 1))
                thorax.layers.air[window] *= 1.0 - 0.8 * sphere
                thorax.layers.extra[window] += 0.3 * sphere
                mask = np.zeros((size, size), dtype=bool)
                mask[window] = disc
                return mask, zone, radius
    raise RuntimeError(f"no room for a {radius:.1f} px nodule in the {spec.side} lung")


_REGION_DRAWERS = {
    "pleural effusion": _effusion,
    "pneumothorax": _pneumothorax,
    "consolidation": _consolidation,
    "edema": _edema,
}
