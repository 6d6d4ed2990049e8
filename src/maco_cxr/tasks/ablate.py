"""`maco-cxr ablate`: the demo recipe pre-trained under variants of MaCo's mechanism, on phantoms.

Each variant is the demo (:func:`~maco_cxr.tasks.demo.run_demo`) with a few settings changed,
run once per seed (the seed draws the phantoms and initialises the run, so the spread between
seeds is the noise a difference has to beat). Every run keeps its own demo folder under
``runs/<variant>/seed<k>``; a run whose ``summary.json`` exists with the same settings is
reused, so an interrupted ablation continues where it stopped and a new variant costs only
its own runs. The outputs:

- ``ablation.csv``: one row per run (variant, seed, every metric, wall times);
- ``ablation.md``: per variant the mean, the seed range, and the difference to the reference
  variant (the first) with a verdict: "within seed spread" unless the two seed ranges are
  disjoint;
- ``ablation.png``: per metric every seed's value and the mean;
- ``index.html``: the table, the figure and what each variant changes.

This module imports the demo (torch, scikit-learn) only when a run starts, so the CLI can list
the variants at start-up for free. The variants are defined in :data:`VARIANTS` in the config
grammar of the demo and of the pre-training config (``model.correlation_weighting=false``), so every one is also a plain
``maco-cxr demo`` / ``maco-cxr pretrain`` run a reader can repeat.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maco_cxr._atomic import claim_output_folder, write_csv, write_json, write_text
from maco_cxr.errors import ConfigError

if TYPE_CHECKING:
    from maco_cxr.tasks.demo import DemoConfig

__all__ = ["METRICS", "VARIANTS", "AblationConfig", "Variant", "run_ablation"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """One recipe: ``demo`` sets :class:`~maco_cxr.tasks.demo.DemoConfig` fields (the phantom
    reports), ``pretrain`` overrides the pre-training config (``key=value``)."""

    name: str
    description: str
    demo: Mapping[str, Any] = field(default_factory=dict)
    pretrain: tuple[str, ...] = ()


_OFFICIAL_TEXT = {"negations": True, "text": "sentences"}

VARIANTS: tuple[Variant, ...] = (
    Variant(
        "maco",
        "the demo recipe: correlation-weighted contrast, rec + con, mask ratio 0.5, "
        "reports without negations read whole",
    ),
    Variant(
        "no-weighting",
        "correlation weighting off: plain symmetric InfoNCE on the masked image",
        pretrain=("model.correlation_weighting=false",),
    ),
    Variant(
        "paper-loss",
        "0.9 rec + 0.1 con (the paper's weighting) instead of the released 1 : 1",
        pretrain=("model.loss_weighting=paper",),
    ),
    Variant("mask-0.25", "mask ratio 0.25", pretrain=("model.mask_ratio=0.25",)),
    Variant("mask-0.75", "mask ratio 0.75", pretrain=("model.mask_ratio=0.75",)),
    Variant(
        "official-text",
        "the official data recipe: reports deny absent findings, random sentence draws",
        demo=_OFFICIAL_TEXT,
    ),
    Variant(
        "negations",
        "reports deny absent findings, read whole (the official reports without the sentence draws)",
        demo={"negations": True},
    ),
    Variant(
        "official-text+batch-64",
        "the official data recipe with twice the contrastive batch (64 pairs per step, so twice the images seen)",
        demo={**_OFFICIAL_TEXT, "batch_size": 64},
    ),
    Variant(
        "official-text+negation-negatives",
        "the official data recipe, and every image also contrasted "
        "against its own text with one sentence's negation flipped (data.negation_negatives)",
        demo=_OFFICIAL_TEXT,
        pretrain=("data.negation_negatives=true",),
    ),
    Variant(
        "negations+negation-negatives",
        "reports deny absent findings, read whole, with negation-flipped hard negatives",
        demo={"negations": True},
        pretrain=("data.negation_negatives=true",),
    ),
)
"""The variants, the reference first. ``name`` is what ``--variants`` takes."""

METRICS: dict[str, str] = {
    "zeroshot_macro_auc": "zero-shot macro AUC",
    "grounding_mean_cnr": "grounding CNR",
    "grounding_mean_cnr_mismatched_phrase": "CNR, mismatched phrase",
    "linear_probe_macro_auc": "linear-probe AUC",
    "retrieval_i2t_R@10": "retrieval i2t R@10",
    "pretrain_minutes": "pre-training wall time (min)",
}
"""Summary key -> label of every metric in the table and the figure."""


@dataclass
class AblationConfig:
    """Which variants and seeds, and the demo budget each run gets (``steps=None``: the demo's)."""

    out_dir: Path
    variants: tuple[str, ...] = tuple(v.name for v in VARIANTS)
    seeds: tuple[int, ...] = (0, 1)
    steps: int | None = None
    n_train: int | None = None
    n_test: int | None = None
    image_size: int | None = None
    quick: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        known = {v.name for v in VARIANTS}
        unknown = [name for name in self.variants if name not in known]
        if unknown:
            raise ConfigError(f"ablate: unknown variant(s) {unknown}; choose from {sorted(known)}")
        if not self.variants or not self.seeds:
            raise ConfigError("ablate: give at least one variant and one seed")

    def demo_config(self, variant: Variant, seed: int) -> DemoConfig:
        from maco_cxr.tasks.demo import DemoConfig

        budget = {
            name: getattr(self, name)
            for name in ("steps", "n_train", "n_test", "image_size")
            if getattr(self, name) is not None
        }
        values: dict[str, Any] = {
            **budget,
            **variant.demo,
            "seed": seed,
            "overlays": 4,
            "real_root": None,
            "progress": self.progress,
            "pretrain_overrides": variant.pretrain,
        }
        run_dir = self.out_dir / "runs" / variant.name / f"seed{seed}"
        return DemoConfig.quick_run(run_dir, **values) if self.quick else DemoConfig(out_dir=run_dir, **values)


def _settings(config: DemoConfig) -> dict[str, Any]:
    """What decides a run's numbers (everything but where it is written and how it shows progress)."""
    settings = dataclasses.asdict(config)
    for name in ("out_dir", "progress", "workers"):
        settings.pop(name)
    settings["pretrain_overrides"] = list(config.pretrain_overrides)
    settings["real_root"] = None if config.real_root is None else str(config.real_root)
    return settings


def _run_once(config: DemoConfig) -> dict[str, Any]:
    """The run's summary: reused when an earlier run with the same settings finished."""
    from maco_cxr.tasks.demo import run_demo

    settings_path, summary_path = config.out_dir / "ablation-settings.json", config.out_dir / "summary.json"
    settings = _settings(config)
    if summary_path.is_file() and settings_path.is_file() and json.loads(settings_path.read_text()) == settings:
        logger.info("reusing %s", summary_path)
        return json.loads(summary_path.read_text())
    claim_output_folder(config.out_dir, "demo")
    write_json(settings_path, settings)
    summary_path.unlink(missing_ok=True)
    return dict(run_demo(config).summary)


def _row(variant: str, seed: int, summary: Mapping[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"variant": variant, "seed": seed}
    for key in METRICS:
        if key == "retrieval_i2t_R@10":
            row[key] = summary["retrieval"].get("i2t_R@10", float("nan"))
        elif key == "pretrain_minutes":
            row[key] = summary["timings"]["pretrain_s"] / 60
        else:
            row[key] = summary[key]
    row["pretraining_images_per_s"] = summary["machine"]["pretraining_images_per_s"]
    row["total_minutes"] = summary["timings"]["total_s"] / 60
    return row


def _spread(values: Sequence[float]) -> tuple[float, float, float]:
    known = [v for v in values if not math.isnan(v)]
    if not known:
        return float("nan"), float("nan"), float("nan")
    return sum(known) / len(known), min(known), max(known)


def _verdict(reference: Sequence[float], other: Sequence[float]) -> str:
    """ "higher"/"lower" when the two seed ranges do not overlap, else "within seed spread"."""
    _, ref_low, ref_high = _spread(reference)
    _, low, high = _spread(other)
    if any(math.isnan(v) for v in (ref_low, ref_high, low, high)):
        return "n/a"
    if low > ref_high:
        return "higher"
    if high < ref_low:
        return "lower"
    return "within seed spread"


def _by_metric(rows: Sequence[Mapping[str, Any]], variants: Sequence[str]) -> dict[str, dict[str, list[float]]]:
    return {key: {name: [float(r[key]) for r in rows if r["variant"] == name] for name in variants} for key in METRICS}


QUICK_NOTE = "A --quick run (tiny schedules that check the command): the numbers mean nothing."


def _markdown(
    values: Mapping[str, Mapping[str, list[float]]], variants: Sequence[str], seeds: Sequence[int], machine: str
) -> str:
    reference = variants[0]
    header = "| variant | " + " | ".join(METRICS.values()) + " |"
    lines = [
        f"Seeds {', '.join(map(str, seeds))}; mean [min, max] over seeds; difference to `{reference}` "
        "in parentheses, marked * when the seed ranges do not overlap. Machine: " + machine + ".",
        "",
        header,
        "|" + "---|" * (len(METRICS) + 1),
    ]
    for name in variants:
        cells = []
        for key in METRICS:
            mean, low, high = _spread(values[key][name])
            cell = f"{mean:.3f} [{low:.3f}, {high:.3f}]" if not math.isnan(mean) else "n/a"
            if name != reference and not math.isnan(mean):
                ref_mean = _spread(values[key][reference])[0]
                mark = "*" if _verdict(values[key][reference], values[key][name]) in ("higher", "lower") else ""
                cell += f" ({mean - ref_mean:+.3f}{mark})"
            cells.append(cell)
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _html_page(markdown_table: str, variants: Sequence[Variant], config: AblationConfig) -> str:
    rows = markdown_table.strip().splitlines()
    note, table = rows[0], [r for r in rows[2:] if not r.startswith("|---")]

    def cells(line: str, tag: str) -> str:
        return "".join(f"<{tag}>{html.escape(c.strip().strip('`'))}</{tag}>" for c in line.strip("|").split("|"))

    body = "<tr>" + cells(table[0], "th") + "</tr>" + "".join(f"<tr>{cells(r, 'td')}</tr>" for r in table[1:])
    described = "".join(
        f"<dt><code>{html.escape(v.name)}</code></dt><dd>{html.escape(v.description)}"
        + (f" (<code>{html.escape(' '.join(v.pretrain))}</code>)" if v.pretrain else "")
        + "</dd>"
        for v in variants
    )
    quick = f"<p style='background:#fee;padding:8px'><b>{QUICK_NOTE}</b></p>" if config.quick else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>maco-cxr ablation</title>
<style>body{{font-family:sans-serif;max-width:1300px;margin:2em auto;line-height:1.4}}
table{{border-collapse:collapse;font-size:small}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}</style></head><body>
<h1>Ablation of MaCo's mechanism on phantoms</h1>{quick}
<p>{html.escape(note)}</p>
<table>{body}</table>
<h2>Every seed</h2><img src="ablation.png" width="1200">
<h2>The variants</h2><dl>{described}</dl>
<p>Every run is a <code>maco-cxr demo</code> folder under <code>runs/</code> with its own report.</p>
</body></html>
"""


@dataclass(frozen=True)
class AblationResult:
    """What :func:`run_ablation` measured and wrote. ``rows``: one per variant x seed (the
    columns of ``ablation.csv``); ``verdicts``: per variant other than the reference (the first)
    and per metric, ``"higher"``/``"lower"`` when the seed ranges do not overlap, else
    ``"within seed spread"`` (``"n/a"`` without a value); ``summary``: the content of ``summary.json``."""

    out: Path
    table: Path  # ablation.md
    report: Path  # index.html
    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    rows: tuple[Mapping[str, Any], ...]
    verdicts: Mapping[str, Mapping[str, str]]
    machine: str
    quick: bool
    summary: Mapping[str, Any]


def run_ablation(config: AblationConfig) -> AblationResult:
    """Run (or reuse) every variant x seed and write the table, figure and page."""
    from maco_cxr.plots import plot_variant_comparison
    from maco_cxr.tasks.demo import cpu_model

    variants = [v for v in VARIANTS if v.name in config.variants]
    claim_output_folder(config.out_dir, "ablation")
    rows = []
    for variant in variants:
        for seed in config.seeds:
            logger.info("ablation: %s, seed %d", variant.name, seed)
            rows.append(_row(variant.name, seed, _run_once(config.demo_config(variant, seed))))
    names = [v.name for v in variants]
    values = _by_metric(rows, names)
    rates = sorted(r["pretraining_images_per_s"] for r in rows if r["pretraining_images_per_s"])
    machine = f"{cpu_model()}, pre-training at ~{rates[len(rates) // 2]:.0f} images/s" if rates else cpu_model()
    table = _markdown(values, names, config.seeds, machine)
    write_csv(config.out_dir / "ablation.csv", list(rows[0]), [list(r.values()) for r in rows])
    write_text(config.out_dir / "ablation.md", (f"**{QUICK_NOTE}**\n\n" if config.quick else "") + table)
    plot_variant_comparison(
        {METRICS[k]: v for k, v in values.items()},
        config.out_dir / "ablation.png",
        reference=names[0],
        title=f"ablation on phantoms, seeds {list(config.seeds)}",
    )
    write_text(config.out_dir / "index.html", _html_page(table, variants, config))
    summary = {
        "rows": rows,
        "variants": names,
        "seeds": list(config.seeds),
        "machine": machine,
        "verdicts": {name: {k: _verdict(values[k][names[0]], values[k][name]) for k in METRICS} for name in names[1:]},
        "quick": config.quick,
    }
    write_json(config.out_dir / "summary.json", summary)
    return AblationResult(
        out=config.out_dir,
        table=config.out_dir / "ablation.md",
        report=config.out_dir / "index.html",
        variants=tuple(names),
        seeds=tuple(config.seeds),
        rows=tuple(rows),
        verdicts=summary["verdicts"],
        machine=machine,
        quick=config.quick,
        summary=summary,
    )
