"""Radiology-style template reports for phantoms.

Positive sentences name each finding with side and severity, mostly by its class name (so
zero-shot prompts such as "There is pleural effusion." match), sometimes by a synonym.
Negations come from absent classes in the phrasing of the zero-shot negatives ("No {class}.").
Sentences are joined by ". " so that report sentence sampling splits them cleanly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from maco_cxr.data.synthetic.findings import FINDINGS, Finding

_ADVERB = {"mild": "mildly", "moderate": "moderately", "severe": "severely"}

_NEGATIONS: dict[str, tuple[str, ...]] = {
    "pleural effusion": (
        "No pleural effusion",
        "There is no pleural effusion",
        "No evidence of pleural effusion",
        "No effusion",
    ),
    "pneumothorax": ("No pneumothorax", "There is no pneumothorax", "No evidence of pneumothorax"),
    "consolidation": ("No focal consolidation", "There is no consolidation", "No consolidation"),
    "cardiomegaly": ("Heart size is normal", "The cardiac silhouette is normal in size", "No cardiomegaly"),
    "nodule": ("No pulmonary nodule", "No nodule is seen", "No nodule"),
    "edema": ("No pulmonary edema", "There is no edema", "No evidence of edema"),
}
_CLEAR = ("The lungs are clear", "The lungs are clear without focal opacity")
_NORMAL = (*_CLEAR, "No acute cardiopulmonary abnormality")
_NEUTRAL = (
    "The trachea is midline",
    "No acute osseous abnormality",
    "The visualized upper abdomen is unremarkable",
    "Frontal view of the chest",
)
_LUNG_KINDS = frozenset({"pleural effusion", "pneumothorax", "consolidation", "nodule", "edema"})


def write_report(findings: Sequence[Finding], rng: np.random.Generator, *, negations: bool = True) -> str:
    """A report describing ``findings`` (empty = normal) with negations of absent classes.

    ``negations=False`` leaves the negations out and nothing else: the same ``rng`` gives the
    same remaining sentences. A small text encoder trained for minutes reads "no pleural
    effusion" and "small right pleural effusion" alike (one topic), so negation-free reports
    are what lets the demo's zero-shot prompts separate present from absent.
    """
    present = {finding.kind for finding in findings}
    sentences = _positives(findings, rng)
    absent = [kind for kind in FINDINGS if kind not in present]
    count = min(len(absent), int(rng.integers(2, 4) if present else rng.integers(3, 6)))
    denied = [
        _pick(rng, _NEGATIONS[absent[int(index)]]) for index in rng.choice(len(absent), size=count, replace=False)
    ]
    shown = denied if negations else []
    sentences.extend(shown)
    if not present:
        sentences.insert(0, _pick(rng, _NORMAL))
    elif not present & _LUNG_KINDS:
        sentences.insert(len(sentences) - len(shown), _pick(rng, _CLEAR))
    if rng.random() < 0.5:
        sentences.append(_pick(rng, _NEUTRAL))
    return ". ".join(sentences) + "."


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _positives(findings: Sequence[Finding], rng: np.random.Generator) -> list[str]:
    sentences = []
    effusions = [finding for finding in findings if finding.kind == "pleural effusion"]
    if len(effusions) == 2:
        sentences.append(_bilateral_effusion(effusions, rng))
    elif effusions:
        sentences.append(_effusion(effusions[0], rng))
    for finding in findings:
        if finding.kind == "pneumothorax":
            sentences.append(_pneumothorax(finding, rng))
        elif finding.kind == "consolidation":
            sentences.append(_consolidation(finding, rng))
        elif finding.kind == "nodule":
            sentences.append(_nodule(finding, rng))
        elif finding.kind == "edema":
            sentences.append(_edema(finding, rng))
        elif finding.kind == "cardiomegaly":
            sentences.append(_cardiomegaly(finding, rng))
    order = rng.permutation(len(sentences))
    return [sentences[int(i)] for i in order]


def _effusion(finding: Finding, rng: np.random.Generator) -> str:
    sev, side = finding.severity, finding.side
    return _pick(
        rng,
        (
            f"There is a {sev} {side} pleural effusion",
            f"{sev.capitalize()} {side} pleural effusion with blunting of the {side} costophrenic angle",
            f"{side.capitalize()} pleural effusion, {sev} in size",
            f"There is pleural effusion on the {side}, {sev} in size",
            f"{sev.capitalize()} {side} effusion",
        ),
    )


def _bilateral_effusion(effusions: Sequence[Finding], rng: np.random.Generator) -> str:
    by_side = {finding.side: finding.severity for finding in effusions}
    if by_side["right"] == by_side["left"]:
        sev = by_side["right"]
        return _pick(
            rng,
            (
                f"There are {sev} bilateral pleural effusions",
                f"{sev.capitalize()} bilateral pleural effusions",
                f"Bilateral effusions, {sev} in size",
            ),
        )
    return _pick(
        rng,
        (
            f"There are bilateral pleural effusions, {by_side['right']} on the right and {by_side['left']} on the left",
            f"{by_side['right'].capitalize()} right and {by_side['left']} left pleural effusions",
        ),
    )


def _pneumothorax(finding: Finding, rng: np.random.Generator) -> str:
    sev, side = finding.severity, finding.side
    where = "apical " if sev == "small" else ""
    return _pick(
        rng,
        (
            f"There is a {sev} {side} {where}pneumothorax",
            f"{sev.capitalize()} {side} pneumothorax with a visible pleural line",
            f"{side.capitalize()} pneumothorax, {sev} in size",
            f"A {sev} {side}-sided pneumothorax is present",
        ),
    )


def _consolidation(finding: Finding, rng: np.random.Generator) -> str:
    where = finding.phrase.removesuffix(" consolidation")
    return _pick(
        rng,
        (
            f"There is consolidation in the {where}",
            f"Dense consolidation in the {where} with air bronchograms",
            f"{where.capitalize()} airspace opacity consistent with consolidation",
            f"Focal consolidation in the {where}",
        ),
    )


def _nodule(finding: Finding, rng: np.random.Generator) -> str:
    where = finding.phrase.removesuffix(" nodule")
    size = f"{finding.size_cm:.1f} cm"
    return _pick(
        rng,
        (
            f"There is a {size} nodule in the {where}",
            f"A well-circumscribed {size} pulmonary nodule projects over the {where}",
            f"{where.capitalize()} nodule measuring {size}",
            f"Rounded nodular opacity in the {where}, consistent with a nodule",
        ),
    )


def _edema(finding: Finding, rng: np.random.Generator) -> str:
    sev = finding.severity
    return _pick(
        rng,
        (
            f"There is {sev} pulmonary edema",
            f"{sev.capitalize()} bilateral perihilar opacities consistent with pulmonary edema",
            f"Findings are consistent with {sev} interstitial edema",
            f"{sev.capitalize()} edema with perihilar haziness",
        ),
    )


def _cardiomegaly(finding: Finding, rng: np.random.Generator) -> str:
    sev = finding.severity
    return _pick(
        rng,
        (
            f"There is {sev} cardiomegaly",
            f"The heart is {_ADVERB[sev]} enlarged",
            f"{sev.capitalize()} enlargement of the cardiac silhouette, consistent with cardiomegaly",
            f"{sev.capitalize()} cardiomegaly",
        ),
    )
