"""One synthetic chest radiograph with its findings, labels, boxes, masks and report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from maco_cxr.data.synthetic.anatomy import ThoraxParams, draw_thorax
from maco_cxr.data.synthetic.findings import (
    FINDINGS,
    NORMAL,
    Finding,
    cardiothoracic_ratio,
    draw_finding,
    enlarge_heart,
    plan_findings,
    sample_kinds,
)
from maco_cxr.data.synthetic.geometry import Pose
from maco_cxr.data.synthetic.render import Exposure, expose
from maco_cxr.data.synthetic.reports import write_report
from maco_cxr.errors import ConfigError

_DRAW_ORDER = ("cardiomegaly", "pneumothorax", "pleural effusion", "consolidation", "edema", "nodule")


@dataclass
class Phantom:
    """A drawn radiograph and its ground truth.

    ``image`` is uint8 ``[size, size]``; ``labels`` is float32 ``[len(FINDINGS)]`` multi-hot in
    the order of :data:`FINDINGS` (all zero = normal); ``lungs`` and ``heart`` are bool
    anatomy masks; each finding carries its own box, mask and phrase.
    """

    image: np.ndarray
    labels: np.ndarray
    findings: list[Finding]
    report: str
    lungs: np.ndarray
    heart: np.ndarray

    @property
    def label_names(self) -> list[str]:
        """Positive class names in :data:`FINDINGS` order; empty for a normal image."""
        return [name for name, value in zip(FINDINGS, self.labels) if value]

    @property
    def ctr(self) -> float:
        """Cardiothoracic ratio measured on the heart and lung masks."""
        return cardiothoracic_ratio(self.heart, self.lungs)


def generate_phantom(
    rng: np.random.Generator,
    size: int = 512,
    findings: Sequence[str] | None = None,
    *,
    p_normal: float = 0.25,
    p_extra: float = 0.25,
    negations: bool = True,
) -> Phantom:
    """Draw a frontal chest radiograph with ``findings`` (names from :data:`FINDINGS`).

    ``findings=None`` samples them: normal with probability ``p_normal``, otherwise one kind
    plus up to two more, each with probability ``p_extra``; ``[]`` or ``["normal"]`` asks for a
    normal image. The anatomy, pose, exposure and noise depend only on ``rng``, not on the
    findings, so the same generator state with and without a finding differs only by it.
    ``negations``: see :func:`~maco_cxr.data.synthetic.reports.write_report` (only the report
    changes).
    """
    if size < 64:
        raise ConfigError(f"size={size}: phantoms need at least 64 pixels a side")
    seeds = rng.integers(0, np.iinfo(np.int64).max, size=4 + len(FINDINGS))
    anatomy_rng, choice_rng, noise_rng, report_rng = (np.random.default_rng(s) for s in seeds[:4])
    kind_rngs = {kind: np.random.default_rng(s) for kind, s in zip(FINDINGS, seeds[4:])}
    kinds = sample_kinds(choice_rng, p_normal, p_extra) if findings is None else _check_kinds(findings)
    params = ThoraxParams.sample(anatomy_rng)
    pose = Pose.sample(anatomy_rng)
    exposure = Exposure.sample(anatomy_rng)
    specs = plan_findings(kinds, kind_rngs)
    thorax = draw_thorax(enlarge_heart(params, specs, kind_rngs["cardiomegaly"]), pose, size, anatomy_rng)
    specs.sort(key=lambda spec: _DRAW_ORDER.index(spec.kind))
    drawn: list[Finding] = []
    taken = np.zeros((size, size), dtype=bool)
    for spec in specs:
        finding = draw_finding(spec, thorax, kind_rngs[spec.kind], taken)
        if finding is None:
            continue
        drawn.append(finding)
        if finding.kind != "cardiomegaly":
            taken |= finding.mask
    drawn.sort(key=lambda finding: FINDINGS.index(finding.kind))
    labels = np.array([any(f.kind == kind for f in drawn) for kind in FINDINGS], dtype=np.float32)
    image = expose(thorax.layers.attenuation(), exposure, noise_rng)
    return Phantom(
        image, labels, drawn, write_report(drawn, report_rng, negations=negations), thorax.lungs, thorax.heart
    )


def _check_kinds(findings: Sequence[str]) -> list[str]:
    kinds = [name.strip().lower() for name in findings]
    if kinds == [NORMAL]:
        return []
    unknown = [name for name in kinds if name not in FINDINGS]
    if unknown:
        raise ConfigError(f"findings: unknown {unknown}; choose from {list(FINDINGS)} or ['{NORMAL}'] alone")
    if len(set(kinds)) != len(kinds):
        raise ConfigError(f"findings: {list(findings)} names a finding twice; list each once")
    return kinds
