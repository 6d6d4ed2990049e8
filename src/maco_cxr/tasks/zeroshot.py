"""Zero-shot classification with MaCo's official prompts and scoring.

Official rule (``Zeroshot Classification.py`` / ``ZeroShot/model_MaCo.py``): for class c,
P_c is the mean pooled text embedding of its positive prompts and N_c that of its negative
prompts, neither L2-normalised; an image with embedding z (unnormalised, from all 196 patch
tokens) scores p_c = softmax([z . P_c, z . N_c])[0]. Images are resized (shorter side to 224,
bilinear) and centre-cropped to 224 (:mod:`maco_cxr.inference`), each on its own, so an
image's score never depends on the other images of the call. The prompts are encoded once
per call (or once for several datasets: pass ``build_class_prototypes``'s result as
``prototypes``).

:func:`summarise_zero_shot` turns scores into figures to act on: seeded bootstrap intervals
of AUC and F1, thresholds chosen on a validation result (Youden's J, maximum F1) applied to
the test scores next to the fixed 0.5, and calibration (reliability curve, ECE).

:func:`run_zeroshot` is what ``maco-cxr zeroshot`` and the zero-shot cells of ``reproduce`` do:
a dataset (and optionally its validation split) in, the report folder out (``scores.csv``,
``val_scores.csv``, ``roc_curves.png``, ``reliability.png`` and ``reliability/<class>.png``,
``summary.json``), a frozen :class:`ZeroShotResult` back.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from maco_cxr.data.inputs import ImagesInput
from maco_cxr.errors import DataError
from maco_cxr.families.base import require
from maco_cxr.inference import embed_dataset, encode_images, encode_texts
from maco_cxr.tasks.prompts import PromptSpec, PromptTemplates, resolve_prompts
from maco_cxr.tasks.results import Estimate, ReportResult, RunSource

if TYPE_CHECKING:
    from maco_cxr.data.datasets.base import ChestXrayDataset
    from maco_cxr.models.maco import MacoModel

__all__ = [
    "ZeroShotEvaluation",
    "ZeroShotResult",
    "build_class_prototypes",
    "evaluate_zero_shot",
    "family_prompts",
    "model_scores",
    "run_zeroshot",
    "score_embeddings",
    "summarise_zero_shot",
    "zero_shot",
]

logger = logging.getLogger(__name__)


def build_class_prototypes(
    model: MacoModel,
    classes: Sequence[str],
    prompts: PromptSpec = None,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative prototypes ``(P [C, D], N [C, D])``: for MaCo the mean prompt
    embeddings, unnormalised; another family's own ``class_prototype`` rule. ``prompts`` None: the
    family's own templates (MaCo's official set)."""
    require(model, "zeroshot")
    table = resolve_prompts(classes, family_prompts(model) if prompts is None else prompts)
    texts = sorted({t for entry in table.values() for t in (*entry.positive, *entry.negative)})
    index = {text: i for i, text in enumerate(texts)}
    embeddings = encode_texts(model, texts, batch_size=batch_size, device=device)
    prototype = getattr(model, "class_prototype", lambda rows: rows.mean(0))
    positive = torch.stack([prototype(embeddings[[index[t] for t in table[c].positive]]) for c in classes])
    negative = torch.stack([prototype(embeddings[[index[t] for t in table[c].negative]]) for c in classes])
    return positive, negative


def family_prompts(model: Any) -> PromptSpec:
    """The default prompts of ``model``'s family: its authors' templates, or MaCo's official set."""
    templates = getattr(model, "prompt_templates", None)
    return None if templates is None else PromptTemplates(*templates)


def model_scores(model: Any, embeddings: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Probabilities ``[N, C]`` by the family's zero-shot rule (MaCo's: :func:`score_embeddings`)."""
    rule = getattr(model, "zero_shot_scores", score_embeddings)
    return rule(embeddings, positive, negative).float().cpu()


def score_embeddings(image_embeddings: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """p ``[N, C]`` = softmax over (z . P_c, z . N_c), positive entry, for embeddings ``[N, D]``."""
    z = image_embeddings.float()
    logits = torch.stack([z @ positive.to(z.device).T, z @ negative.to(z.device).T], dim=-1)
    return torch.softmax(logits, dim=-1)[..., 0]


def zero_shot(
    model: MacoModel,
    images: ImagesInput | torch.Tensor,
    classes: Sequence[str],
    prompts: PromptSpec = None,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Class probabilities ``[N, C]`` (CPU float32) of one or many images.

    images: paths, PIL images, uint8 arrays/tensors (see :mod:`maco_cxr.data.inputs`), or
    normalised float tensors ``[N, 3, 224, 224]`` passed to the encoder as they are.
    prompts: see :func:`maco_cxr.tasks.prompts.resolve_prompts` (default: the official set).
    """
    positive, negative = build_class_prototypes(model, classes, prompts, device=device)
    embeddings = encode_images(model, images, batch_size=batch_size, device=device)
    return model_scores(model, embeddings, positive, negative)


@dataclass
class ZeroShotEvaluation:
    """Scores and labels of a zero-shot evaluation over a dataset (:func:`evaluate_zero_shot`, in
    memory; :func:`run_zeroshot` writes the report), row-aligned with ``paths`` and
    ``patient_ids`` (None where the dataset records none); ``failures`` lists the files that
    could not be read (left out, counted)."""

    classes: tuple[str, ...]
    scores: np.ndarray  # float32 [N, C]
    labels: np.ndarray  # float32 [N, C], NaN = unknown
    paths: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    patient_ids: list[str | None] = field(default_factory=list)


def evaluate_zero_shot(
    model: MacoModel,
    dataset: ChestXrayDataset,
    classes: Sequence[str] | None = None,
    prompts: PromptSpec = None,
    *,
    label_columns: Sequence[int | None] | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    prototypes: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> ZeroShotEvaluation:
    """Score every image of ``dataset``, streaming (images are read by a DataLoader).

    classes: names to score (default ``dataset.classes``); label_columns: the dataset label
    column of each class (default: the position of each name in ``dataset.classes``, matched
    case-insensitively). Records without labels get NaN rows. Unreadable files of an
    ``on_error="skip"`` dataset are left out and listed in ``failures``. ``prototypes``:
    ``(P [C, D], N [C, D])`` of :func:`build_class_prototypes` for these classes, to score
    several datasets (a validation and a test split) with one prompt encoding; ``prompts``
    is then unused.
    """
    classes = tuple(classes if classes is not None else dataset.classes)
    if not classes:
        raise DataError("the dataset declares no classes; pass classes=[...] to score")
    if label_columns is None:
        label_columns = _label_columns(classes, tuple(dataset.classes))
    if len(label_columns) != len(classes):
        raise DataError(f"{len(label_columns)} label columns given for {len(classes)} classes")
    if prototypes is None:
        positive, negative = build_class_prototypes(model, classes, prompts, device=device)
    else:
        positive, negative = prototypes
        if positive.shape[0] != len(classes) or negative.shape[0] != len(classes):
            raise DataError(
                f"prototypes have {positive.shape[0]} positive and {negative.shape[0]} negative "
                f"rows for {len(classes)} classes; build them for these classes"
            )
    embedded = embed_dataset(
        model, dataset, batch_size=batch_size, workers=num_workers, device=device, progress=progress, desc="zero-shot"
    )
    scores = model_scores(model, embedded.embeddings, positive, negative).numpy()
    labels = np.full((len(embedded.indices), len(classes)), np.nan, dtype=np.float32)
    for row, index in enumerate(embedded.indices):
        values = dataset.records[index].labels
        if values is not None:
            for k, column in enumerate(label_columns):
                if column is not None:
                    labels[row, k] = values[column]
    if embedded.failures:
        logger.warning(
            "zero-shot: %d unreadable files left out (first: %s: %s)",
            len(embedded.failures),
            embedded.failures[0]["path"],
            embedded.failures[0]["reason"],
        )
    patients = [dataset.records[index].patient_id for index in embedded.indices]
    return ZeroShotEvaluation(classes, scores.astype(np.float32), labels, embedded.paths, embedded.failures, patients)


def _label_columns(classes: tuple[str, ...], available: tuple[str, ...]) -> list[int | None]:
    """Column of each class in the dataset's labels, by case-insensitive name; None if absent."""
    lower = [name.lower() for name in available]
    columns: list[int | None] = []
    for name in classes:
        columns.append(lower.index(name.lower()) if name.lower() in lower else None)
    missing = [name for name, col in zip(classes, columns) if col is None]
    if missing:
        logger.warning(
            "classes %s have no label column in the dataset (its classes: %s); their "
            "labels are unknown (NaN) and their metrics undefined",
            missing,
            list(available),
        )
    return columns


# ------------------------------------------------------------------------------ reports


def _known_auc(truth: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC over the known labels of one class, as scikit-learn's ``roc_auc_score`` (the
    Mann-Whitney statistic with tied scores counted half), in numpy: it runs once per
    bootstrap draw. ValueError when only one label value is left, as scikit-learn."""
    from scipy.stats import rankdata

    keep = ~np.isnan(truth)
    positive, values = truth[keep] == 1.0, score[keep]
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("only one class present in y_true; ROC AUC is not defined")
    ranks = rankdata(values)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _f1_weighted(truth: np.ndarray, score: np.ndarray, threshold: float) -> float:
    """scikit-learn ``f1_score(average="weighted", zero_division=0)`` at ``score > threshold``
    over the known labels of one class (counted in numpy: it runs once per bootstrap draw)."""
    keep = ~np.isnan(truth)
    labels, pred = truth[keep] == 1.0, score[keep] > threshold
    if labels.size == 0:
        return float("nan")
    total = 0.0
    for value in (True, False):
        support = int(np.sum(labels == value))
        if support:
            tp = int(np.sum((labels == value) & (pred == value)))
            fp = int(np.sum((labels != value) & (pred == value)))
            total += support * 2 * tp / (2 * tp + fp + (support - tp))
    return total / labels.size


def _ci_dict(ci: Any) -> dict[str, Any]:
    return {"estimate": ci.estimate, "low": ci.low, "high": ci.high, "n_valid": ci.n_valid}


def _bootstrap_report(
    result: ZeroShotEvaluation, n_resamples: int, seed: int, confidence: float, threshold: float
) -> dict[str, Any]:
    from maco_cxr.metrics import bootstrap_metric_ci

    labels, scores = result.labels.astype(np.float64), result.scores.astype(np.float64)
    by_patient = bool(result.patient_ids) and len(result.patient_ids) == len(labels) and all(result.patient_ids)
    groups = list(result.patient_ids) if by_patient else None
    options: dict[str, Any] = {"groups": groups, "n_resamples": n_resamples, "confidence": confidence, "seed": seed}
    metrics = {"auc": _known_auc, "f1_weighted": lambda y, s: _f1_weighted(y, s, threshold)}
    per_class: dict[str, dict[str, Any]] = {}
    defined: dict[str, list[int]] = {key: [] for key in metrics}
    for k, name in enumerate(result.classes):
        per_class[name] = {}
        for key, metric in metrics.items():
            try:
                point = metric(labels[:, k], scores[:, k])
            except ValueError:
                point = float("nan")
            if np.isnan(point):
                per_class[name][key] = None
                continue
            defined[key].append(k)
            per_class[name][key] = _ci_dict(bootstrap_metric_ci(metric, labels[:, k], scores[:, k], **options))
    means: dict[str, Any] = {}
    for key, name in (("auc", "macro_auc"), ("f1_weighted", "mean_f1_weighted")):
        columns = defined[key]
        if not columns:
            means[name] = None
            continue

        def mean_over_classes(y: np.ndarray, s: np.ndarray, metric=metrics[key], columns=columns) -> float:
            # a draw in which one of the classes is undefined gives NaN (skipped), so that every
            # replicate averages the same classes as the point estimate
            return float(np.mean([metric(y[:, k], s[:, k]) for k in columns]))

        means[name] = _ci_dict(bootstrap_metric_ci(mean_over_classes, labels, scores, **options))
    return {
        "unit": "patient" if by_patient else "image",
        "n_groups": len(set(groups)) if groups is not None else len(labels),
        "n_resamples": n_resamples,
        "seed": seed,
        "confidence": confidence,
        "threshold": threshold,
        **means,
        "per_class": per_class,
    }


def _calibration_report(result: ZeroShotEvaluation, n_bins: int) -> dict[str, Any]:
    from maco_cxr.metrics import reliability_curve

    def curve(truth: np.ndarray, prob: np.ndarray) -> dict[str, Any] | None:
        if not np.any(~np.isnan(truth)):
            return None
        c = reliability_curve(truth, prob, n_bins)
        return {
            "ece": c.ece,
            "n": c.n,
            "mean_predicted": c.mean_predicted.tolist(),
            "observed_frequency": c.observed_frequency.tolist(),
            "counts": c.counts.tolist(),
        }

    labels, scores = result.labels.astype(np.float64), result.scores.astype(np.float64)
    return {
        "n_bins": n_bins,
        "pooled": curve(labels.ravel(), scores.ravel()),
        "per_class": {name: curve(labels[:, k], scores[:, k]) for k, name in enumerate(result.classes)},
    }


def summarise_zero_shot(
    result: ZeroShotEvaluation,
    validation: ZeroShotEvaluation | None = None,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    n_bins: int = 10,
    fixed_threshold: float = 0.5,
) -> dict[str, Any]:
    """Intervals, operating points and calibration of a zero-shot result (a test split).

    Returns ``{"ci", "operating_points", "calibration"}``:

    - ``ci`` (None when ``n_bootstrap`` is 0): seeded percentile bootstrap intervals
      (:func:`~maco_cxr.metrics.bootstrap_metric_ci`) of each class's AUC and weighted F1 at
      ``fixed_threshold`` (the official F1) and of their means over classes (``macro_auc``,
      ``mean_f1_weighted``), each ``{"estimate", "low", "high", "n_valid"}`` (None for a class
      whose figure is undefined). Whole patients are resampled when every image has a
      ``patient_id`` (``unit`` "patient"), else images; every figure uses the same draws.
    - ``operating_points`` (None without ``validation``): for ``"youden"`` (Youden's J) and
      ``"max_f1"`` (F1 of the positive label), each class's threshold chosen on the
      validation scores (:func:`~maco_cxr.metrics.select_thresholds`) and the test F1,
      accuracy, sensitivity and specificity at it and at ``fixed_threshold``
      (:func:`~maco_cxr.metrics.apply_thresholds`).
    - ``calibration``: the reliability curve and ECE (:func:`~maco_cxr.metrics.reliability_curve`,
      ``n_bins`` equal bins) of each class and of all known (image, class) pairs pooled.
    """
    from maco_cxr.metrics import apply_thresholds, select_thresholds

    if n_bootstrap < 0:
        raise DataError(f"n_bootstrap must be >= 0 (0 = no intervals); got {n_bootstrap}")
    report: dict[str, Any] = {
        "ci": _bootstrap_report(result, n_bootstrap, seed, confidence, fixed_threshold) if n_bootstrap else None,
        "operating_points": None,
        "calibration": _calibration_report(result, n_bins),
    }
    if validation is not None:
        if tuple(validation.classes) != tuple(result.classes):
            raise DataError(
                f"the validation result scores classes {list(validation.classes)} but the test "
                f"result {list(result.classes)}; score both with the same classes"
            )
        points: dict[str, Any] = {"n_val_images": len(validation.paths), "fixed_threshold": fixed_threshold}
        for method in ("youden", "max_f1"):
            chosen = select_thresholds(validation.labels, validation.scores, result.classes, method)
            points[method] = apply_thresholds(
                result.labels, result.scores, result.classes, chosen, fixed=fixed_threshold
            )
        report["operating_points"] = points
    return report


# ------------------------------------------------------------------------------ the report folder


@dataclass(frozen=True)
class ZeroShotResult(ReportResult):
    """What :func:`run_zeroshot` computed and wrote.

    ``metrics``: ``macro_auc`` and ``mean_f1_weighted`` (the official figures, with bootstrap
    intervals when resampled), ``mean_f1_macro`` and ``macro_acc``; ``per_class``: each class's
    ``auc``, ``f1_weighted`` (with intervals), ``f1_macro`` and ``acc``; ``n_images`` scored.
    The files and counts left out: :class:`~maco_cxr.tasks.results.ReportResult`.
    """

    classes: tuple[str, ...]
    metrics: Mapping[str, Estimate]
    per_class: Mapping[str, Mapping[str, Estimate]]
    n_images: int


def run_zeroshot(
    model: MacoModel,
    dataset: ChestXrayDataset,
    out: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    prompts: PromptSpec = None,
    validation: ChestXrayDataset | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    source: RunSource | None = None,
    validation_source: RunSource | None = None,
) -> ZeroShotResult:
    """Zero-shot classification of ``dataset`` into the report folder ``out``.

    Writes ``scores.csv`` (path, ``score:<class>``..., ``label:<class>``...; empty label =
    unknown), ``val_scores.csv`` (the same for ``validation``), ``roc_curves.png``,
    ``reliability.png`` (all known (image, class) pairs pooled) and, with several classes,
    ``reliability/<class>.png``, and ``summary.json``: the provenance (``source``), per-class and
    macro AUC / F1 / ACC at 0.5, ``ci``, ``calibration`` and ``operating_points`` of
    :func:`summarise_zero_shot` (thresholds chosen on ``validation``), and the rows and files
    left out. ``classes`` default to ``dataset.classes``; ``prompts`` as in
    :func:`~maco_cxr.tasks.prompts.resolve_prompts`, encoded once for both splits.
    """
    from maco_cxr._atomic import write_json
    from maco_cxr.metrics import classification_report
    from maco_cxr.plots import plot_roc_curves

    if n_bootstrap < 0:
        raise DataError(f"n_bootstrap must be >= 0 (0 = no intervals); got {n_bootstrap}")
    from maco_cxr._atomic import claim_output_folder

    out, source = claim_output_folder(out, "zeroshot"), source or RunSource()
    classes = tuple(classes if classes is not None else dataset.classes)
    table = resolve_prompts(classes, prompts)
    options: dict[str, Any] = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "device": device,
        "progress": progress,
        "prototypes": build_class_prototypes(model, classes, table, device=device),
    }
    scored_val = None
    if validation is not None:
        scored_val = evaluate_zero_shot(model, validation, classes, table, **options)
    scored = evaluate_zero_shot(model, dataset, classes, table, **options)
    report = classification_report(scored.labels, scored.scores, classes)
    extra = summarise_zero_shot(scored, scored_val, n_bootstrap=n_bootstrap, seed=seed)
    name = source.dataset or "dataset"
    files = [_write_scores(out / "scores.csv", scored)]
    if scored_val is not None:
        files.append(_write_scores(out / "val_scores.csv", scored_val))
    files.append(
        plot_roc_curves(
            scored.labels,
            scored.scores,
            classes,
            out / "roc_curves.png",
            title=f"zero-shot ROC ({name}, n={len(scored.paths)})",
        )
    )
    figures = _reliability_figures(out, scored, extra["calibration"], name)
    files += [out / figure for figure in figures]
    summary = {
        **source.as_dict(),
        "n_images": len(scored.paths),
        "classes": list(classes),
        "prompts": _prompt_name(prompts),
        "prompt_texts": {c: {"pos": list(p.positive), "neg": list(p.negative)} for c, p in table.items()},
        "per_class": report["per_class"],
        "macro_auc": report["mean_auc"],
        "mean_f1_weighted": report["mean_f1_weighted"],
        "mean_f1_macro": report["mean_f1_macro"],
        "macro_acc": report["mean_acc"],
        "threshold": report["threshold"],
        "ci": extra["ci"],
        "calibration": {**extra["calibration"], "figures": figures},
        "validation": _validation_summary(validation, scored_val, validation_source),
        "operating_points": extra["operating_points"],
        "n_skipped_rows": len(dataset.skips),
        "skipped_rows": dataset.skips.skipped,
        "n_unreadable": len(scored.failures),
        "unreadable": scored.failures,
    }
    files.append(write_json(out / "summary.json", summary))
    return ZeroShotResult(
        out,
        tuple(files),
        classes,
        _headline(summary),
        _per_class(summary),
        len(scored.paths),
        n_skipped=len(dataset.skips),
        n_unreadable=len(scored.failures),
        summary=summary,
    )


def _prompt_name(prompts: PromptSpec) -> str | None:
    """How the prompts were chosen, for the report: a set name or file, None for prompts given inline."""
    if prompts is None:
        return "default"
    return str(prompts) if isinstance(prompts, (str, os.PathLike)) else None


def _validation_summary(
    validation: ChestXrayDataset | None, scored: ZeroShotEvaluation | None, source: RunSource | None
) -> dict[str, Any] | None:
    if validation is None or scored is None:
        return None
    return {
        **(source or RunSource()).split_fields(),
        "n_images": len(scored.paths),
        "n_skipped_rows": len(validation.skips),
        "n_unreadable": len(scored.failures),
    }


def _write_scores(path: Path, scored: ZeroShotEvaluation) -> Path:
    from maco_cxr._atomic import write_csv

    classes = scored.classes
    return write_csv(
        path,
        ["path", *(f"score:{c}" for c in classes), *(f"label:{c}" for c in classes)],
        (
            [p, *(f"{s:.6f}" for s in scores), *("" if math.isnan(v) else int(v) for v in labels)]
            for p, scores, labels in zip(scored.paths, scored.scores, scored.labels, strict=True)
        ),
    )


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")[:40] or "class"


def _reliability_figures(out: Path, scored: ZeroShotEvaluation, calibration: dict[str, Any], name: str) -> list[str]:
    """reliability.png (pooled) and, with several classes, reliability/<class>.png; their names."""
    from maco_cxr.plots import plot_reliability_diagram

    figures: list[str] = []
    if calibration["pooled"] is None:
        return figures
    labels, scores = scored.labels, scored.scores
    plot_reliability_diagram(
        labels.ravel(),
        scores.ravel(),
        out / "reliability.png",
        n_bins=calibration["n_bins"],
        title=f"zero-shot calibration ({name}, all classes)",
    )
    figures.append("reliability.png")
    if len(scored.classes) > 1:
        for k, label in enumerate(scored.classes):
            if calibration["per_class"][label] is not None and np.any(~np.isnan(labels[:, k])):
                relative = f"reliability/{_slug(label)}.png"
                plot_reliability_diagram(
                    labels[:, k],
                    scores[:, k],
                    out / relative,
                    n_bins=calibration["n_bins"],
                    title=f"zero-shot calibration: {label}",
                )
                figures.append(relative)
    return figures


def _headline(summary: Mapping[str, Any]) -> dict[str, Estimate]:
    ci = summary["ci"] or {}
    return {
        "macro_auc": Estimate.of(summary["macro_auc"], ci.get("macro_auc")),
        "mean_f1_weighted": Estimate.of(summary["mean_f1_weighted"], ci.get("mean_f1_weighted")),
        "mean_f1_macro": Estimate.of(summary["mean_f1_macro"]),
        "macro_acc": Estimate.of(summary["macro_acc"]),
    }


def _per_class(summary: Mapping[str, Any]) -> dict[str, dict[str, Estimate]]:
    intervals = (summary["ci"] or {}).get("per_class", {})
    return {
        name: {
            key: Estimate.of(row[key], (intervals.get(name) or {}).get(key))
            for key in ("auc", "f1_weighted", "f1_macro", "acc")
        }
        for name, row in summary["per_class"].items()
    }
