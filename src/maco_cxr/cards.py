"""Model cards: the ``README.md`` a model folder carries, in the Hugging Face Hub's format (a YAML
metadata block of library name, tags, licence, datasets and metrics, then prose).

:func:`finetuned_card` is written by the fine-tuning engine into a run's ``best/`` and ``final/``
from what the run recorded (``config.json``: the recipe; ``metrics.json``: data, validation and
test figures; the base model's provenance and digest); :func:`model_card` reads any model folder
(a MaCo model or a fine-tuned one) for ``maco-cxr push``. Every statement comes from a file the
package wrote: a card never claims what the run did not record.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from maco_cxr._version import __version__
from maco_cxr.errors import CheckpointError

__all__ = ["CARD_NAME", "INTENDED_USE", "finetuned_card", "front_matter", "maco_card", "maco_metadata", "model_card"]

CARD_NAME = "README.md"

_COMMANDS = {"classification": "finetune", "segmentation": "segment", "detection": "detect"}
INTENDED_USE = (
    "## Intended use and limitations\n\n"
    "A research model for chest radiographs, **not a medical device**: it has not been validated for "
    "clinical use and must not guide the care of a patient. Its figures hold for the data named above; "
    "on other hospitals' images, scanners or populations it may do worse. Check it on your own "
    "labelled images before relying on it."
)


def front_matter(meta: Mapping[str, Any]) -> str:
    return "---\n" + yaml.safe_dump(dict(meta), sort_keys=False, allow_unicode=True) + "---\n"


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


_DATA_SHOWN = ("counts", "sources", "replaced", "replaced_in_training", "unreadable_in_test")


def _size(value: Any) -> Any:
    """A recorded note in a line: a list or mapping by its length (their items may name images)."""
    return f"{len(value)} images" if isinstance(value, (list, tuple, dict)) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _figures(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar figures of a split, per-class mappings flattened (``per_class_auc[edema]``); an
    interval (``<name>_ci95``: ``low``/``high``, or ``<name>_low``/``_high``) kept as ``<name>_low``/``_high``."""
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if _is_number(value):
            flat[key] = value
        elif key.endswith("_ci95") and isinstance(value, Mapping) and {"low", "high"} <= set(value):
            figure = key.removesuffix("_ci95")
            flat[f"{figure}_low"], flat[f"{figure}_high"] = value["low"], value["high"]
        elif isinstance(value, Mapping) and value and all(_is_number(v) or v is None for v in value.values()):
            flat.update({f"{key}[{name}]": v for name, v in value.items() if v is not None})
    return flat


def _metrics_table(metrics: Mapping[str, Any], title: str) -> list[str]:
    """One row per figure, with its 95 % interval where the run computed one."""
    flat = _figures(metrics)
    shown = [k for k in flat if not k.endswith(("_low", "_high"))]
    if not shown:
        return []
    intervals = any(f"{k}_low" in flat for k in shown)
    rows = []
    for key in shown:
        low, high = flat.get(f"{key}_low"), flat.get(f"{key}_high")
        interval = f" [{_number(low)}, {_number(high)}] |" if low is not None and high is not None else " |"
        rows.append(f"| {key} | {_number(flat[key])} |" + (interval if intervals else ""))
    header = (
        ["| metric | value | 95 % interval |", "|---|---|---|"] if intervals else ["| metric | value |", "|---|---|"]
    )
    return [f"### {title}", "", *header, *rows, ""]


def _hub_metrics(split: str, metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {"name": f"{split} {key}", "type": key, "value": round(float(value), 6)}
        for key, value in _figures(metrics).items()
        if not key.endswith(("_low", "_high")) and not key.startswith("n_") and math.isfinite(value)
    ]


def finetuned_card(
    model_config: Mapping[str, Any],
    run_config: Mapping[str, Any],
    run_summary: Mapping[str, Any],
    base: Mapping[str, Any] | None = None,
) -> str:
    """The card of a fine-tuned folder: ``model_config`` its ``config.json``, ``run_config`` the
    run's ``config.json`` (the recipe), ``run_summary`` its ``metrics.json``, ``base`` what is
    known of the base model (``path``, ``sha256``, ``name``, ``licence``)."""
    task = str(model_config.get("task"))
    data = run_config.get("data", {})
    base = dict(base or {})
    base_model = base.get("name") or base.get("path") or "none"
    test = run_summary.get("test", {})
    val = run_summary.get("val_best", {}) or {}
    kind = data.get("kind", "unknown")
    meta = {
        "library_name": "maco-cxr",
        "license": "other",
        "tags": ["maco-cxr", "chest-x-ray", "medical-imaging", task],
        "datasets": [kind],
        "model-index": [
            {
                "name": f"maco-cxr {task}",
                "results": [
                    {
                        "task": {"type": task},
                        "dataset": {"name": kind, "type": kind},
                        "metrics": _hub_metrics("test", test),
                    }
                ],
            }
        ],
    }
    recorded = run_summary.get("data", {})
    counts = recorded.get("counts", {})
    if base.get("name"):
        meta["base_model"] = base["name"]
    command = _COMMANDS.get(task, "finetune")
    encoder = "MaCo" if base.get("family", "maco") == "maco" else f"`{base['family']}`-family"
    lines = [
        front_matter(meta),
        f"# maco-cxr {task} model",
        "",
        f"Fine-tuned with maco-cxr {__version__} (`maco-cxr {command}`) from a {encoder} image encoder. Classes: "
        + ", ".join(f"`{c}`" for c in model_config.get("classes", [])),
        "",
        "## Base model",
        "",
        f"- source: `{base_model}`" + (" (random initialisation from the preset)" if base_model == "none" else ""),
        f"- SHA-256 of its weights: `{base.get('sha256', 'not recorded')}`",
        *([f"- named checkpoint: `{base['name']}` ({base.get('licence', '')})"] if base.get("name") else []),
        "",
        "## Data",
        "",
        f"- dataset kind `{kind}`, root `{data.get('root')}`",
        f"- training split: {data.get('train_split') or 'the adapter default'}, label fraction "
        f"{data.get('fraction', 100.0)} % (seed {data.get('fraction_seed', 0)})",
        "- images per split: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
        *(f"- {split}: {text}" for split, text in recorded.get("sources", {}).items()),
        f"- training images replaced because unreadable: {recorded.get('replaced_in_training', 0)}",
        f"- test images that could not be read: {len(recorded.get('unreadable_in_test', []))}",
        *(f"- {key}: {_size(value)}" for key, value in recorded.items() if key not in _DATA_SHOWN),
        "",
        "## Metrics",
        "",
        f"Model selection: {run_summary.get('selection')} (step {run_summary.get('best_step')} of "
        f"{run_summary.get('steps')}).",
        "",
        *_metrics_table(val, "Validation, at the selected step"),
        *_metrics_table(test, "Test"),
        "## Preprocessing",
        "",
        "```json",
        json.dumps(model_config.get("preprocessing", {}), indent=2),
        "```",
        "",
        "## Recipe and how to reproduce it",
        "",
        f"`maco-cxr {command} --model {base_model} --config config.yaml --out RUN` with this recipe as `config.yaml`:",
        "",
        "```yaml",
        yaml.safe_dump(dict(run_config), sort_keys=False).rstrip(),
        "```",
        "",
        "Load it: `maco_cxr.load_finetuned(FOLDER).predict(images)`.",
        "",
        INTENDED_USE,
        "",
    ]
    return "\n".join(lines)


def maco_metadata(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The Hub metadata of a MaCo model (``config.json``), shared by its card and its export's card:
    MIMIC-CXR is named only when the weights are the released ones (recorded provenance)."""
    provenance = model_config.get("checkpoint") or model_config.get("converted_from") or {}
    official = provenance.get("known_checkpoint") == "maco-official" or provenance.get("name") == "maco-base"
    return {
        "library_name": "maco-cxr",
        "license": "other",
        "tags": ["maco-cxr", "maco", "chest-x-ray", "vision-language", "zero-shot-image-classification"],
        "datasets": ["mimic-cxr"] if official else [],
    }


def maco_card(model_config: Mapping[str, Any]) -> str:
    """The card of a MaCo model folder (``config.json``): architecture, provenance as recorded."""
    model = model_config.get("model", {})
    vision, text = model.get("vision", {}), model.get("text", {})
    provenance = model_config.get("checkpoint") or model_config.get("converted_from") or {}
    lines = [
        front_matter(maco_metadata(model_config)),
        "# MaCo chest X-ray vision-language model",
        "",
        "MaCo (Huang et al., *Nature Communications* 2024): masked contrastive pre-training of a ViT image "
        "encoder and a BERT report encoder. Use it with maco-cxr: `maco_cxr.load(FOLDER)`, then "
        "`zero_shot`, `ground`, `retrieve`, or fine-tune it.",
        "",
        f"- image encoder: ViT {vision.get('embed_dim')} wide, {vision.get('depth')} blocks, patch "
        f"{vision.get('patch_size')}, input {vision.get('img_size')} px",
        f"- text encoder: BERT {text.get('hidden_size')} wide, {text.get('num_layers')} layers",
        f"- provenance: {json.dumps(provenance) if provenance else 'not recorded'}",
        "",
        INTENDED_USE,
        "",
    ]
    return "\n".join(lines)


def model_card(folder: str | Path) -> str:
    """The card of a model folder: a fine-tuned one (its run's ``config.json`` and ``metrics.json``
    one level up, as a run lays them out) or a MaCo one."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder}: not a model folder ({folder / 'config.json'}: {err})") from err
    if "task" not in config:
        return maco_card(config)
    if (folder / CARD_NAME).is_file():  # written by the engine at the end of the run
        return (folder / CARD_NAME).read_text()
    run = folder.parent
    try:
        run_config = json.loads((run / "config.json").read_text())
        summary = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"{folder}: a fine-tuned model outside its finished run (its card needs {run / 'metrics.json'} "
            f"and {run / 'config.json'}: {err})"
        ) from err
    return finetuned_card(config, run_config, summary, {"path": run_config.get("model", {}).get("source")})
