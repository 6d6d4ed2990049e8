"""Several foundation models under the same protocol, on the same images: the paper's comparison as one call.

:func:`compare` runs every model (``FAMILY:PATH`` specs; a plain path is MaCo) through the task's one
evaluation path (:func:`~maco_cxr.tasks.zeroshot.evaluate_zero_shot`,
:func:`~maco_cxr.tasks.grounding.evaluate_grounding`, the classification fine-tuning engine for ``linear``
and ``finetune``) and writes, into ``out``:

- ``compare.csv``: one row per (model, metric): ``model, task, dataset, metric, value, ci_low, ci_high, n``
  (a seeded bootstrap 95 % interval, by patient when the data know patients), then the paired test against
  the FIRST model on the same items (``vs, delta, delta_low, delta_high, p_value, test``: DeLong for a
  single class's AUC, a paired bootstrap for means over classes or items), ``source`` (``measured`` or
  ``published``) and ``note``. A model whose family cannot do the task gets one row saying so. Published
  numbers of the paper's Table 1 (and the BioViL model cards for MS-CXR) stand beside ours where the
  dataset is the one they were measured on, with their protocol caveat;
- ``compare.md``: the same as a table; ``compare.png``: each model's headline figure with its interval;
- ``summary.json``: the inputs, the protocol, the per-model runs, and ``files``.

``protocol="own"`` scores each model with its authors' preprocessing, prompts and rule; ``"common"`` gives
every model our letterbox geometry (its own normalisation after it) and MaCo's official prompts, so that
differences come from the models, not the recipes. Fine-tuning uses one recipe for every model.
"""

from __future__ import annotations

import csv
import io
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from maco_cxr.errors import ConfigError, DataError
from maco_cxr.families import split_model_spec
from maco_cxr.families.base import CAPABILITIES
from maco_cxr.tasks.results import ReportResult

__all__ = ["COMPARE_TASKS", "PUBLISHED", "CompareResult", "CompareRow", "compare"]

#: task -> the capability a family needs for it
COMPARE_TASKS: dict[str, str] = {
    "zeroshot": "zeroshot",
    "grounding": "grounding",
    "linear": "finetune",
    "finetune": "finetune",
}
PROTOCOLS = ("own", "common")
_TABLE1 = (
    "paper Table 1: full fine-tuning on the official splits at 1 / 10 / 100 % of the training labels, as each "
    "method's own paper reported it; Table 1 mixes linear-probe and fine-tuning rows for some peers"
)
#: (task, dataset kind) -> (family, metric, value, caveat): the numbers published for the same protocol
PUBLISHED: dict[tuple[str, str], tuple[tuple[str, str, float, str], ...]] = {
    ("finetune", kind): tuple(
        (family, f"auc_macro@{fraction}%", value / 100, _TABLE1)
        for family, values in rows
        for fraction, value in zip((1, 10, 100), values)
    )
    for kind, rows in {
        "chexpert": (("maco", (88.7, 88.7, 88.9)), ("mrm", (88.5, 88.5, 88.7)), ("gloria", (86.6, 87.8, 88.1))),
        "nih": (
            ("maco", (79.3, 83.8, 85.9)),
            ("mrm", (79.4, 84.0, 85.9)),
            ("gloria", (67.1, 76.6, 81.3)),
            ("biovil", (69.5, 75.3, 82.5)),
        ),
        "rsna": (
            ("maco", (91.5, 92.7, 93.6)),
            ("mrm", (91.3, 92.7, 93.3)),
            ("gloria", (86.1, 88.0, 88.6)),
            ("biovil", (88.1, 88.4, 89.1)),
        ),
    }.items()
}
PUBLISHED[("grounding", "ms-cxr")] = tuple(
    (family, metric, value, "Microsoft model cards (MS-CXR); BioViL reports |CNR|, ours is signed")
    for family, metric, value in (
        ("biovil-t", "cnr", 1.33),
        ("biovil-t", "miou", 0.240),
        ("biovil", "cnr", 1.07),
        ("biovil", "miou", 0.229),
    )
)

COLUMNS = (
    "model",
    "task",
    "dataset",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "vs",
    "delta",
    "delta_low",
    "delta_high",
    "p_value",
    "test",
    "source",
    "note",
)


@dataclass(frozen=True)
class CompareRow:
    """One figure of one model (see the module docstring for the columns)."""

    model: str
    task: str
    dataset: str
    metric: str
    value: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    n: int = 0
    vs: str = ""
    delta: float = math.nan
    delta_low: float = math.nan
    delta_high: float = math.nan
    p_value: float = math.nan
    test: str = ""
    source: str = "measured"
    note: str = ""


@dataclass(frozen=True)
class CompareResult(ReportResult):
    """:func:`compare`'s report: ``rows`` are ``compare.csv``'s."""

    rows: tuple[CompareRow, ...] = ()


@dataclass(frozen=True)
class _Scored:
    """One model's figures on the items, and what a paired test against another model needs."""

    metrics: dict[str, tuple[float, float, float]]  # metric -> (value, low, high)
    n: int
    keys: list[str]  # item keys, to pair with another model's items
    labels: np.ndarray | None  # [N, C] (classification) or None
    values: np.ndarray  # [N, C] scores, or [N, M] per-item figures
    columns: list[str]  # the metric of each column of ``values``
    groups: list[Any] | None
    details: dict[str, Any]


def _label(spec: str) -> str:
    family, path = split_model_spec(spec)
    return f"{family}:{Path(path).name}"


def _capable(spec: str, task: str) -> str | None:
    """Why the family of ``spec`` cannot do ``task`` (None when it can), from the registry alone."""
    from maco_cxr.families import family_info

    family, _ = split_model_spec(spec)
    info = family_info(family)
    need = COMPARE_TASKS[task]
    if need in info.capabilities:
        return None
    can = ", ".join(c for c in CAPABILITIES if c in info.capabilities)
    return f"the {family} family cannot do {task} (it can: {can})"


def _groups(patients: Sequence[Any]) -> list[Any] | None:
    return list(patients) if patients and all(p is not None for p in patients) else None


def _macro_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean of the defined per-class AUCs (a class whose known labels take one value has none)."""
    from maco_cxr.metrics import roc_auc_per_class

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an undefined class is left out of the mean, by design
        aucs = roc_auc_per_class(labels, scores)
    finite = aucs[np.isfinite(aucs)]
    return float(finite.mean()) if finite.size else math.nan


def _classification_scored(
    classes: Sequence[str],
    keys: list[str],
    labels: np.ndarray,
    scores: np.ndarray,
    patients: Sequence[Any],
    n_bootstrap: int,
    seed: int,
    details: dict[str, Any],
) -> _Scored:
    """Per-class AUCs and their macro mean, each with its bootstrap interval."""
    from maco_cxr.metrics import bootstrap_metric_ci

    groups = _groups(patients)
    metrics: dict[str, tuple[float, float, float]] = {}
    statistics = [(f"auc:{c}", slice(k, k + 1)) for k, c in enumerate(classes)] + [("auc_macro", slice(None))]
    for name, columns in statistics:
        point = _macro_auc(labels[:, columns], scores[:, columns])
        if n_bootstrap:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # replicates without both labels are counted out
                ci = bootstrap_metric_ci(
                    _macro_auc,
                    labels[:, columns],
                    scores[:, columns],
                    groups=groups,
                    n_resamples=n_bootstrap,
                    seed=seed,
                )
            metrics[name] = (point, ci.low, ci.high)
        else:
            metrics[name] = (point, math.nan, math.nan)
    return _Scored(metrics, len(keys), keys, labels, scores, [f"auc:{c}" for c in classes], groups, details)


def _paired(first: _Scored, other: _Scored, metric: str, n_bootstrap: int, seed: int) -> dict[str, Any]:
    """The paired test of ``other`` against ``first`` on their common items (None fields when undefined)."""
    from maco_cxr.metrics import delong_test, paired_bootstrap_test

    index = {key: i for i, key in enumerate(other.keys)}
    common = [(i, index[key]) for i, key in enumerate(first.keys) if key in index]
    if not common:
        return {"note": "no item in common with the first model"}
    a_rows, b_rows = np.array([i for i, _ in common]), np.array([j for _, j in common])
    groups = None if first.groups is None else [first.groups[i] for i in a_rows]
    try:
        if first.labels is not None and metric.startswith("auc:"):
            k = first.columns.index(metric)
            truth = first.labels[a_rows, k]
            test = delong_test(truth, first.values[a_rows, k], other.values[b_rows, k])
        elif first.labels is not None:
            labels = first.labels[a_rows]
            pair = (first.values[a_rows], other.values[b_rows])
            test = paired_bootstrap_test(
                lambda idx, m: _macro_auc(labels[idx], pair[m][idx]),
                len(common),
                groups=groups,
                n_resamples=max(n_bootstrap, 1),
                seed=seed,
            )
        else:
            k = first.columns.index(metric)
            pair = (first.values[a_rows, k], other.values[b_rows, k])
            test = paired_bootstrap_test(
                lambda idx, m: float(np.nanmean(pair[m][idx])),
                len(common),
                groups=groups,
                n_resamples=max(n_bootstrap, 1),
                seed=seed,
            )
    except DataError as err:
        return {"note": f"no paired test: {err}"}
    return {
        "delta": test.delta,
        "delta_low": test.low,
        "delta_high": test.high,
        "p_value": test.p_value,
        "test": f"{test.method} (n={test.n})",
    }


# ------------------------------------------------------------------------------------------ the tasks


def _load(spec: str, tokenizers: Mapping[str, str | Path], protocol: str, device: str | None) -> Any:
    from maco_cxr.families import load

    family, path = split_model_spec(spec)
    model = load(path, family=family, tokenizer=tokenizers.get(family))
    if family != "maco":
        model.protocol = protocol
    return model.to(device) if device else model


def _zeroshot(
    model: Any, dataset: Any, classes: Sequence[str] | None, protocol: str, options: dict[str, Any]
) -> _Scored:
    from maco_cxr.tasks.zeroshot import evaluate_zero_shot

    prompts = "default" if protocol == "common" else None
    scored = evaluate_zero_shot(
        model, dataset, classes, prompts, batch_size=options["batch_size"], device=options["device"]
    )
    keys = list(scored.paths)
    details = {"n_unreadable": len(scored.failures), "classes": list(scored.classes)}
    return _classification_scored(
        scored.classes,
        keys,
        scored.labels,
        scored.scores,
        scored.patient_ids,
        options["n_bootstrap"],
        options["seed"],
        details,
    )


def _grounding(model: Any, dataset: Any, options: dict[str, Any]) -> _Scored:
    from maco_cxr.metrics import bootstrap_mean_ci
    from maco_cxr.tasks.grounding import evaluate_grounding

    result = evaluate_grounding(model, dataset, batch_size=options["batch_size"], device=options["device"])
    columns = ["cnr", "miou", "pointing"]
    values = np.array([[float(r[c]) for c in columns] for r in result.rows], dtype=np.float64).reshape(-1, 3)
    keys = [f"{r['record']}:{r['phrase']}" for r in result.rows]
    patients = [dataset.records[r["record"]].patient_id for r in result.rows]
    groups = _groups(patients)
    metrics = {}
    for k, name in enumerate(columns):
        if options["n_bootstrap"] and len(keys):
            ci = bootstrap_mean_ci(
                values[:, k], groups=groups, n_resamples=options["n_bootstrap"], seed=options["seed"]
            )
            metrics[name] = (ci.estimate, ci.low, ci.high)
        else:
            metrics[name] = (float(np.nanmean(values[:, k])) if len(keys) else math.nan, math.nan, math.nan)
    details = {"n_items": len(keys), "n_unreadable": len(result.failures)}
    return _Scored(metrics, len(keys), keys, None, values, columns, groups, details)


def _finetune(spec: str, task: str, kind: str, root: Path, out: Path, options: dict[str, Any]) -> _Scored:
    """One recipe for every model (``finetune_config`` + ``finetune_overrides``), the run in ``out``."""
    from maco_cxr.config import load_config
    from maco_cxr.tasks.finetune import ClassifyConfig, finetune_classifier

    overrides = [
        f"data.kind={kind}",
        f"data.root={root}",
        f"runtime.out={out}",
        f"model.mode={'linear_probe' if task == 'linear' else 'finetune'}",
        f"evaluation.bootstrap={options['n_bootstrap']}",
        f"runtime.seed={options['seed']}",
        *options["finetune_overrides"],
    ]
    if options["device"]:
        overrides.append(f"runtime.device={options['device']}")
    config = load_config(ClassifyConfig, options["finetune_config"], overrides)
    family, _ = split_model_spec(spec)
    tokenizer = options["tokenizers"].get(family)
    config = replace(
        config, model=replace(config.model, source=spec, tokenizer=None if tokenizer is None else str(tokenizer))
    )
    summary = dict(finetune_classifier(config).summary)
    with open(out / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    classes = [k[len("score:") :] for k in (rows[0] if rows else {}) if k.startswith("score:")]
    labels = np.array(
        [[float(r[f"label:{c}"]) if r[f"label:{c}"] != "" else math.nan for c in classes] for r in rows]
    ).reshape(len(rows), len(classes))
    scores = np.array([[float(r[f"score:{c}"]) for c in classes] for r in rows]).reshape(len(rows), len(classes))
    details = {"run": str(out), "best_step": summary.get("best_step"), "mode": config.model.mode}
    return _classification_scored(
        classes, [r["path"] for r in rows], labels, scores, [], options["n_bootstrap"], options["seed"], details
    )


# ------------------------------------------------------------------------------------------ the report


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def _rows(
    task: str, kind: str, labels: list[str], scored: dict[str, _Scored | str], n_bootstrap: int, seed: int
) -> list[CompareRow]:
    rows: list[CompareRow] = []
    first_label = labels[0]
    first = scored[first_label]
    for label in labels:
        result = scored[label]
        if isinstance(result, str):
            rows.append(CompareRow(label, task, kind, "-", math.nan, note=result))
            continue
        for metric, (value, low, high) in result.metrics.items():
            paired: dict[str, Any] = {}
            if label != first_label and isinstance(first, _Scored) and metric in first.metrics:
                paired = {"vs": first_label, **_paired(first, result, metric, n_bootstrap, seed)}
            rows.append(CompareRow(label, task, kind, metric, value, low, high, result.n, **paired))
    families = {label.split(":")[0] for label in labels}
    for family, metric, value, caveat in PUBLISHED.get((task, kind), ()):
        if family in families:
            rows.append(CompareRow(f"{family} (published)", task, kind, metric, value, source="published", note=caveat))
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _markdown(rows: Sequence[CompareRow], task: str, kind: str, protocol: str) -> str:
    lines = [
        f"# compare: {task} on {kind} (protocol: {protocol})",
        "",
        "| model | metric | value | 95 % CI | n | vs first: delta [CI] | p | test | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = "" if math.isnan(r.ci_low) else f"[{r.ci_low:.4f}, {r.ci_high:.4f}]"
        delta = "" if math.isnan(r.delta) else f"{r.delta:+.4f} [{r.delta_low:+.4f}, {r.delta_high:+.4f}]"
        value = "" if math.isnan(r.value) else f"{r.value:.4f}"
        p = "" if math.isnan(r.p_value) else f"{r.p_value:.3g}"
        lines.append(f"| {r.model} | {r.metric} | {value} | {ci} | {r.n or ''} | {delta} | {p} | {r.test} | {r.note} |")
    return "\n".join(lines) + "\n"


def _csv_text(rows: Sequence[CompareRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(v) for v in asdict(row).values()])
    return buffer.getvalue()


HEADLINES = {"zeroshot": "auc_macro", "linear": "auc_macro", "finetune": "auc_macro", "grounding": "cnr"}


def compare(
    models: Sequence[str],
    task: str,
    dataset: str,
    root: str | Path,
    out: str | Path,
    *,
    tokenizers: Mapping[str, str | Path] | None = None,
    protocol: str = "own",
    classes: Sequence[str] | None = None,
    dataset_options: Mapping[str, Any] | None = None,
    finetune_config: str | Path | None = None,
    finetune_overrides: Sequence[str] = (),
    n_bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
    device: str | None = None,
) -> CompareResult:
    """Compare ``models`` (specs, the first is the reference of the paired tests) on ``task`` over the
    dataset ``dataset`` (a :func:`~maco_cxr.data.datasets.build_dataset` kind) at ``root``; write the
    report into ``out`` (see the module docstring).

    ``tokenizers``: family -> tokenizer folder for the families that need one. ``dataset_options``: the
    adapter's arguments (e.g. ``{"split": "test"}``) for zero-shot and grounding; ``linear`` and
    ``finetune`` build their splits as ``maco-cxr finetune`` does, from ``finetune_config`` (a recipe
    file or name; default the engine's defaults) and ``finetune_overrides`` (``key=value``).
    """
    from maco_cxr._atomic import claim_output_folder, write_json, write_text
    from maco_cxr.data.datasets import build_dataset
    from maco_cxr.plots import plot_compare

    if task not in COMPARE_TASKS:
        raise ConfigError(f"task {task!r}: compare runs {', '.join(COMPARE_TASKS)}")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
    if not models:
        raise ConfigError("compare needs at least one model spec")
    if n_bootstrap < 0:
        raise DataError(f"n_bootstrap must be >= 0 (0 = no intervals); got {n_bootstrap}")
    labels = [_label(spec) for spec in models]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two models have the same family and file name ({labels}); rename one file")
    out = claim_output_folder(out, "compare")
    tokenizers = dict(tokenizers or {})
    options = {
        "batch_size": batch_size,
        "device": device,
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "finetune_config": finetune_config,
        "finetune_overrides": list(finetune_overrides),
        "tokenizers": tokenizers,
    }
    data = None
    if task in ("zeroshot", "grounding"):
        data = build_dataset(dataset, root, **dict(dataset_options or {}))
    scored: dict[str, _Scored | str] = {}
    for spec, label in zip(models, labels):
        refused = _capable(spec, task)
        if refused is not None:
            scored[label] = refused
        elif task in ("linear", "finetune"):
            scored[label] = _finetune(spec, task, dataset, Path(root), out / "runs" / _slug(label), options)
        else:
            model = _load(spec, tokenizers, protocol, device)
            scored[label] = (
                _zeroshot(model, data, classes, protocol, options)
                if task == "zeroshot"
                else _grounding(model, data, options)
            )
    rows = _rows(task, dataset, labels, scored, n_bootstrap, seed)
    files = [
        write_text(out / "compare.csv", _csv_text(rows)),
        write_text(out / "compare.md", _markdown(rows, task, dataset, protocol)),
        plot_compare(rows, HEADLINES[task], out / "compare.png", title=f"{task} on {dataset} ({protocol} protocol)"),
    ]
    summary = {
        "task": task,
        "dataset": dataset,
        "root": str(root),
        "protocol": protocol,
        "models": list(models),
        "labels": labels,
        "reference": labels[0],
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "runs": {label: (s if isinstance(s, str) else s.details) for label, s in scored.items()},
        "n_skipped_rows": len(data.skips) if data is not None else 0,
    }
    summary["files"] = [p.name for p in files] + ["summary.json"]
    files.append(write_json(out / "summary.json", summary))
    unreadable = sum(int(s.details.get("n_unreadable", 0)) for s in scored.values() if isinstance(s, _Scored))
    return CompareResult(
        out,
        tuple(files),
        n_skipped=summary["n_skipped_rows"],
        n_unreadable=unreadable,
        summary=summary,
        rows=tuple(rows),
    )
