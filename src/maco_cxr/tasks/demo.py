"""The end-to-end demo: phantoms -> pre-training -> held-out evaluation -> an HTML report.

On a machine with nothing but this package it draws synthetic chest radiographs with known
findings (a training set and a held-out set from different seeds), builds a whole-word report
vocabulary, pre-trains the ``tiny`` MaCo with the real pre-training engine, and evaluates the
result next to the same architecture with random weights, on the held-out phantoms only:

- zero-shot classification of the six phantom findings (official prompts and scoring);
- phrase grounding of every finding box with its own phrase (CNR, mIoU, pointing game), and
  the same boxes with another finding's phrase: a model that reads the phrase scores the
  matching phrase higher (a map that merely lights up the chest scores both alike);
- image <-> report retrieval.

Optionally it also runs the trained model on real radiographs it never saw (the ``cxr-real``
sample: lung boxes, consolidation boxes), where a model trained on phantoms is expected to be
weak; the report says so next to the numbers.
"""

from __future__ import annotations

import copy
import dataclasses
import html
import json
import logging
import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from maco_cxr._atomic import claim_output_folder, write_json, write_text
from maco_cxr.config import apply_overrides
from maco_cxr.data.datasets import build_dataset
from maco_cxr.data.datasets.base import ChestXrayDataset
from maco_cxr.data.synthetic import FINDINGS, write_synthetic_dataset
from maco_cxr.data.tokenizer import ReportTokenizer
from maco_cxr.errors import ConfigError
from maco_cxr.hub import create_model, load
from maco_cxr.inference import embed_dataset
from maco_cxr.metrics import classification_report
from maco_cxr.models.config import MacoConfig, preset
from maco_cxr.models.maco import MacoModel
from maco_cxr.plots import plot_roc_curves, plot_training_curves
from maco_cxr.pretraining.config import (
    PretrainAugment,
    PretrainConfig,
    PretrainData,
    PretrainOptim,
    PretrainRuntime,
    TextMode,
)
from maco_cxr.pretraining.pretrain import pretrain
from maco_cxr.tasks.grounding import GroundingItem, evaluate_grounding, grounding_items
from maco_cxr.tasks.retrieval import retrieve
from maco_cxr.tasks.zeroshot import evaluate_zero_shot

__all__ = ["DemoConfig", "demo_model_config", "run_demo"]

logger = logging.getLogger(__name__)

REAL_PHRASES = ("left lung", "right lung", "consolidation")
PROBE_IMAGES = 600

DEMO_TEMPERATURE = 0.1
"""Initial temperature of the contrastive logits (learnable inverse 1/T; the paper uses 0.03).

Measured on the phantoms: at 1/T = 33 the randomly initialised towers give near-identical
text embeddings (pairwise cosine 0.9999: BERT's pooler from scratch barely depends on the
tokens) and the quickest way down from the initial loss is to make every image embedding
alike too, which parks the contrastive loss at ln(batch) for hundreds of steps. At 1/T = 10
or 3.3 the alignment term wins, both towers diversify within ~50 steps; after 150 steps
1/T = 10 gave the better zero-shot AUC (0.63 vs 0.57). Full runs with 1/T = 14 and mask ratio
0.25 gave the same zero-shot AUC but a grounding CNR of 0.16-0.25 instead of 0.6-1.1 (the
correlation prior of the map learns less when more patches are visible). 1/T stays learnable
(it barely moves in a short run).
"""


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` computed and wrote: the trained model against the same model with
    random weights on the held-out phantoms (``baseline_*``), and ``summary``, the content of
    ``summary.json`` (every figure, the real-radiograph check, timings, the machine)."""

    out: Path
    report: Path  # index.html
    model_dir: Path
    zeroshot_macro_auc: float
    baseline_zeroshot_macro_auc: float
    grounding_mean_cnr: float
    baseline_grounding_mean_cnr: float
    retrieval: Mapping[str, float]
    baseline_retrieval: Mapping[str, float]
    timings: Mapping[str, float]
    quick: bool
    summary: Mapping[str, Any]

    @property
    def summary_path(self) -> Path:
        return self.out / "summary.json"


@dataclass
class DemoConfig:
    """Sizes and schedule of the demo: 2,400 phantoms at 160 px, 2,000 steps of 32.

    Time: 7.7 minutes in all on a 2-core "AMD EPYC" with AVX-512 (pre-training ~155 images/s;
    the project's faster kind of 2-core machine), so about 14 minutes on the slower 2-core Zen 3
    (AVX2) that ran the former 224 px recipe at ~45 images/s: the step costs 0.52x the former
    one (both timed in one process, alternating, on the same machine). Why
    160 px: it halves the step (100 patches instead of 196, and padding beyond the batch's
    longest report is no longer fed to the text tower) and keeps zero-shot AUC above 0.80 at
    2,000 steps (0.810 / 0.816 in two runs; 224 px: 0.833). Measured on the same machine, fewer
    steps cost more AUC than a smaller image: 1,400 steps at 160 px gave 0.756, 2,000 steps at
    128 px 0.766, mask ratio 0.75 at 160 px 0.781.

    ``real_root``: a cxr-real style manifest folder to try the trained model on (None = skip).
    ``pretrain_overrides``: ``key=value`` changes to the pre-training config in the one config
    grammar (``model.mask_ratio=0.75``, ``data.negation_negatives=true``): how ``maco-cxr
    ablate`` varies the recipe.
    ``negations``: phantom reports also deny absent findings ("No pneumothorax."), as real
    reports do; ``text``: ``full`` reports or the official ``sentences`` draw (see
    :class:`~maco_cxr.pretraining.config.PretrainData`). The defaults (no negations, full reports) are
    the ones that learn zero-shot classification in the time; measured on one H200 (same
    arithmetic, fp32), 1,500 steps, zero-shot macro AUC: 0.69-0.70 with negations and sentence
    draws (the official data recipe), 0.64 whole reports with negations, 0.81 neither. With
    negations the text tower, trained from scratch for minutes, embeds "There is pleural
    effusion." and "There is no pleural effusion." alike (cosine 0.9995): it learns topics,
    not negation.
    """

    out_dir: Path
    n_train: int = 2400
    n_test: int = 240
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1.5e-3
    warmup_steps: int = 30
    image_size: int = 160
    seed: int = 0
    overlays: int = 8
    real_root: Path | None = None
    workers: int = 0
    negations: bool = False
    text: TextMode = "full"
    progress: bool = True
    quick: bool = False
    pretrain_overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        for name in ("n_train", "n_test", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"demo {name}={getattr(self, name)}: must be >= 1")
        if self.text not in ("sentences", "full"):
            raise ConfigError(f"demo text={self.text!r}: use 'sentences' or 'full'")
        if self.n_train < self.batch_size:
            raise ConfigError(f"demo n_train={self.n_train} is smaller than batch_size={self.batch_size}")

    @classmethod
    def quick_run(cls, out_dir: Path, **overrides: Any) -> DemoConfig:
        """A run of about a minute for tests: a few phantoms and steps (numbers mean nothing)."""
        values: dict[str, Any] = {
            "n_train": 64,
            "n_test": 24,
            "steps": 6,
            "batch_size": 16,
            "warmup_steps": 2,
            "overlays": 2,
            "quick": True,
        }
        return cls(out_dir=out_dir, **{**values, **overrides})


def demo_model_config(
    tokenizer: Path, vocab_size: int, image_size: int = 160, temperature: float = DEMO_TEMPERATURE
) -> MacoConfig:
    """The ``tiny`` preset with the demo's vocabulary, trained on ``image_size`` phantoms.

    Departures from the paper recipe, each needed to learn in minutes on a CPU: plain MAE
    target (no super-resolution at this size), text dropout 0 and 64 tokens (phantom reports
    are shorter), rec + con ("sum", as the released code), and a higher initial temperature
    (see :data:`DEMO_TEMPERATURE`). The pre-training also drops the horizontal flip of the
    official augmentation: phantom reports name the side of each finding, and a flipped image
    would contradict its report.
    """
    config = preset("tiny")
    text = dataclasses.replace(config.text, vocab_size=vocab_size, tokenizer=str(tokenizer), dropout=0.0, max_length=64)
    vision = dataclasses.replace(config.vision, img_size=image_size)
    return dataclasses.replace(
        config, text=text, vision=vision, super_resolution=False, loss_weighting="sum", temperature=temperature
    )


def run_demo(config: DemoConfig) -> DemoResult:
    """Run every stage and write ``index.html`` and ``summary.json`` in ``config.out_dir``."""
    out = config.out_dir
    claim_output_folder(out, "demo")
    stages = tqdm(total=6, desc="demo", unit="stage", position=0, disable=not config.progress)
    timings: dict[str, float] = {}
    start = time.perf_counter()

    def done(name: str, since: float) -> float:
        timings[name] = round(time.perf_counter() - since, 1)
        stages.update(1)
        return time.perf_counter()

    now = time.perf_counter()
    stages.set_description("demo: drawing phantoms")
    train_dir, test_dir = out / "data" / "train", out / "data" / "test"
    write_synthetic_dataset(
        train_dir,
        config.n_train,
        config.seed,
        config.image_size,
        split_fractions=(1.0, 0.0, 0.0),
        negations=config.negations,
        progress=config.progress,
    )
    write_synthetic_dataset(
        test_dir,
        config.n_test,
        config.seed + 1,
        config.image_size,
        split_fractions=(0.0, 0.0, 1.0),
        negations=config.negations,
        progress=config.progress,
    )
    test = build_dataset("manifest", test_dir)
    now = done("phantoms_s", now)

    stages.set_description("demo: building the vocabulary")
    train = build_dataset("manifest", train_dir)
    tokenizer = ReportTokenizer.from_corpus_words(r.report or "" for r in train.records)
    tokenizer_path = out / "model" / "tokenizer.json"
    tokenizer_path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(tokenizer_path)
    model_config = demo_model_config(tokenizer_path, tokenizer.vocab_size, config.image_size)
    now = done("vocabulary_s", now)

    stages.set_description("demo: pre-training")
    final = pretrain(_pretrain_config(config, model_config, train_dir)).model_dir
    trained = load(final)
    model_dir = out / "model" / "maco-tiny-phantoms"
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.copytree(final, model_dir)
    now = done("pretrain_s", now)

    stages.set_description("demo: evaluating")
    figures = out / "figures"
    classes = tuple(FINDINGS)
    results = {
        "trained": _evaluate(trained, train, test, classes, figures, "trained", config),
        "random": _evaluate(_random_model(model_config, config.seed), train, test, classes, figures, "random", config),
    }
    now = done("evaluation_s", now)

    stages.set_description("demo: real radiographs")
    real = _evaluate_real(trained, config, figures) if config.real_root is not None else None
    now = done("real_s", now)

    stages.set_description("demo: writing the report")
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines() if line]
    plot_training_curves(
        rows, ["total", "rec", "con"], figures / "loss_curves.png", title="pre-training losses (phantoms)"
    )
    timings["total_s"] = round(time.perf_counter() - start, 1)
    summary = _summary(config, results, real, timings, rows, model_dir)
    write_json(out / "summary.json", summary)
    written = copy.deepcopy(summary)  # what summary.json holds (done() adds report_s below)
    write_text(out / "index.html", _html(summary, results, real, config))
    done("report_s", now)
    stages.close()
    return DemoResult(
        out=out,
        report=out / "index.html",
        model_dir=model_dir,
        zeroshot_macro_auc=summary["zeroshot_macro_auc"],
        baseline_zeroshot_macro_auc=summary["baseline_zeroshot_macro_auc"],
        grounding_mean_cnr=summary["grounding_mean_cnr"],
        baseline_grounding_mean_cnr=summary["baseline_grounding_mean_cnr"],
        retrieval=summary["retrieval"],
        baseline_retrieval=summary["baseline_retrieval"],
        timings=written["timings"],
        quick=config.quick,
        summary=written,
    )


# ------------------------------------------------------------------------------ stages


def _pretrain_config(config: DemoConfig, model: MacoConfig, train_dir: Path) -> PretrainConfig:
    recipe = PretrainConfig(
        model=model,
        data=PretrainData(
            source="manifest",
            path=str(train_dir),
            kind="manifest",
            split=None,
            workers=config.workers,
            text=config.text,
        ),
        optim=PretrainOptim(
            lr=config.lr,
            max_steps=config.steps,
            warmup_steps=min(config.warmup_steps, config.steps),
            batch_size=config.batch_size,
            accum_steps=1,
        ),
        augment=PretrainAugment(enabled=True, flip_p=0.0),
        runtime=PretrainRuntime(
            device="cpu",
            precision="fp32",
            seed=config.seed,
            output_dir=str(config.out_dir / "run"),
            log_every=max(1, min(10, config.steps // 10)),
            save_every=config.steps,
            keep_last=1,
            resume="never",
            progress=config.progress,
        ),
    )
    return apply_overrides(recipe, config.pretrain_overrides, source="demo pretrain_overrides")


def _random_model(model_config: MacoConfig, seed: int) -> MacoModel:
    """The same architecture with random initial weights (seeded, without touching the global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model(model_config).eval()


def _mismatched(items: list[GroundingItem]) -> list[GroundingItem]:
    """Each item's boxes paired with the phrase of the next item of another category."""
    out = []
    for i, item in enumerate(items):
        other = next(
            (
                items[(i + k) % len(items)]
                for k in range(1, len(items))
                if items[(i + k) % len(items)].category != item.category
            ),
            None,
        )
        if other is not None:
            out.append(dataclasses.replace(item, phrase=other.phrase))
    return out


def _embed(
    model: MacoModel, dataset: ChestXrayDataset, classes: tuple[str, ...], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Image embeddings ``[n, D]`` of the first ``n`` records and their labels ``[n, C]`` (NaN = unknown)."""
    columns = {name.lower(): k for k, name in enumerate(dataset.classes)}
    labels = np.full((n, len(classes)), np.nan, dtype=np.float32)
    for i in range(n):
        record_labels = dataset.records[i].labels
        for k, name in enumerate(classes):
            if record_labels is not None and name.lower() in columns:
                labels[i, k] = record_labels[columns[name.lower()]]
    embedded = embed_dataset(model, dataset, indices=range(n), batch_size=64)
    return embedded.embeddings.numpy(), labels[embedded.indices]


def _linear_probe(
    model: MacoModel, train: ChestXrayDataset, test: ChestXrayDataset, classes: tuple[str, ...]
) -> dict[str, float]:
    """Held-out AUC of a per-class logistic regression on frozen image embeddings.

    It uses labels, so it is not a zero-shot figure: it shows what the image embedding encodes,
    which tells a weak image side from a weak text side when zero-shot falls short.
    """
    train_x, train_y = _embed(model, train, classes, min(len(train), PROBE_IMAGES))
    test_x, test_y = _embed(model, test, classes, len(test))
    scaler = StandardScaler().fit(train_x)
    train_x, test_x = scaler.transform(train_x), scaler.transform(test_x)
    out: dict[str, float] = {}
    for k, name in enumerate(classes):
        fit_rows, test_rows = ~np.isnan(train_y[:, k]), ~np.isnan(test_y[:, k])
        if np.unique(train_y[fit_rows, k]).size < 2 or np.unique(test_y[test_rows, k]).size < 2:
            out[name] = float("nan")
            continue
        probe = LogisticRegression(max_iter=2000).fit(train_x[fit_rows], train_y[fit_rows, k])
        out[name] = float(roc_auc_score(test_y[test_rows, k], probe.predict_proba(test_x[test_rows])[:, 1]))
    return out


def _evaluate(
    model: MacoModel,
    train: ChestXrayDataset,
    test: ChestXrayDataset,
    classes: tuple[str, ...],
    figures: Path,
    tag: str,
    config: DemoConfig,
) -> dict[str, Any]:
    scores = evaluate_zero_shot(model, test, classes, progress=config.progress)
    report = classification_report(scores.labels, scores.scores, classes)
    roc = plot_roc_curves(
        scores.labels,
        scores.scores,
        classes,
        figures / f"roc_{tag}.png",
        title=f"zero-shot ROC, {tag} model, held-out phantoms",
    )
    items = grounding_items(test)
    overlay_dir = figures / f"grounding_{tag}"
    shutil.rmtree(overlay_dir, ignore_errors=True)
    grounding = evaluate_grounding(
        model, test, items=items, overlays=config.overlays, overlay_dir=overlay_dir, progress=config.progress
    )
    control = evaluate_grounding(model, test, items=_mismatched(items), progress=config.progress)
    return {
        "zeroshot": report,
        "roc": roc,
        "grounding": grounding.summary,
        "grounding_mismatched": control.summary,
        "overlays": grounding.overlays,
        "retrieval": retrieve(model, test, progress=config.progress),
        "probe": _linear_probe(model, train, test, classes),
    }


def _round_robin(items: list[GroundingItem]) -> list[GroundingItem]:
    """Items reordered so that the first overlays show every phrase in turn."""
    by_phrase: dict[str, list[GroundingItem]] = {}
    for item in items:
        by_phrase.setdefault(item.phrase.lower(), []).append(item)
    queues = list(by_phrase.values())
    return [queue[i] for i in range(max(map(len, queues), default=0)) for queue in queues if i < len(queue)]


def _evaluate_real(model: MacoModel, config: DemoConfig, figures: Path) -> dict[str, Any] | None:
    assert config.real_root is not None
    dataset = build_dataset("manifest", config.real_root)
    items = _round_robin(grounding_items(dataset, REAL_PHRASES))
    if not items:
        logger.warning("%s has no boxes labelled %s; skipping the real-image check", config.real_root, REAL_PHRASES)
        return None
    overlay_dir = figures / "real"
    shutil.rmtree(overlay_dir, ignore_errors=True)
    grounding = evaluate_grounding(
        model, dataset, items=items, overlays=max(config.overlays, 6), overlay_dir=overlay_dir, progress=config.progress
    )
    annotated = [
        i for i, r in enumerate(dataset.records) if str(r.meta.get("has_finding_annotations", "")).lower() == "true"
    ]
    zeroshot = None
    if annotated:
        subset = copy.copy(dataset)
        subset.records = [dataset.records[i] for i in annotated]
        labels = np.array(
            [[float("consolidation" in {b.lower() for b in r.box_labels})] for r in subset.records], dtype=np.float32
        )
        scored = evaluate_zero_shot(model, subset, ("consolidation",), label_columns=[None], progress=config.progress)
        zeroshot = classification_report(labels, scored.scores, ("consolidation",))
    return {
        "root": str(config.real_root),
        "grounding": grounding.summary,
        "overlays": grounding.overlays,
        "zeroshot": zeroshot,
    }


# ------------------------------------------------------------------------------ outputs


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    g, m = result["grounding"], result["grounding_mismatched"]
    return {
        "zeroshot_macro_auc": result["zeroshot"]["mean_auc"],
        "zeroshot_per_class_auc": {k: v["auc"] for k, v in result["zeroshot"]["per_class"].items()},
        "zeroshot_f1_weighted": result["zeroshot"]["mean_f1_weighted"],
        "zeroshot_f1_macro": result["zeroshot"]["mean_f1_macro"],
        "zeroshot_macro_acc": result["zeroshot"]["mean_acc"],
        "grounding_mean_cnr": g["cnr"],
        "grounding_mean_miou": g["miou"],
        "grounding_pointing_game": g["pointing"],
        "grounding_category_mean_cnr": g["category_mean"]["cnr"],
        "grounding_per_category_cnr": {k: v["cnr"] for k, v in g["per_category"].items()},
        "grounding_mean_cnr_mismatched_phrase": m["cnr"],
        "retrieval": {k: v for k, v in result["retrieval"].items() if "R@" in k},
        "linear_probe_macro_auc": _mean_known(result["probe"].values()),
        "linear_probe_per_class_auc": result["probe"],
    }


def _mean_known(values: Any) -> float:
    known = [v for v in values if not math.isnan(v)]
    return sum(known) / len(known) if known else float("nan")


def _summary(
    config: DemoConfig,
    results: dict[str, Any],
    real: dict[str, Any] | None,
    timings: dict[str, float],
    rows: list[dict[str, Any]],
    model_dir: Path,
) -> dict[str, Any]:
    trained, random = _headline(results["trained"]), _headline(results["random"])
    summary: dict[str, Any] = {**trained, **{f"baseline_{k}": v for k, v in random.items()}}
    summary["real_images"] = (
        None
        if real is None
        else {
            "root": real["root"],
            "grounding_mean_cnr": real["grounding"]["cnr"],
            "grounding_mean_miou": real["grounding"]["miou"],
            "grounding_pointing_game": real["grounding"]["pointing"],
            "grounding_per_phrase_cnr": {k: v["cnr"] for k, v in real["grounding"]["per_category"].items()},
            "n_items": real["grounding"]["n"],
            "zeroshot_consolidation_auc": None if real["zeroshot"] is None else real["zeroshot"]["mean_auc"],
        }
    )
    summary["pretraining"] = {
        "steps": config.steps,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "first_loss": rows[0] if rows else None,
        "last_loss": rows[-1] if rows else None,
    }
    summary["data"] = {
        "n_train": config.n_train,
        "n_test": config.n_test,
        "image_size": config.image_size,
        "seed": config.seed,
        "classes": list(FINDINGS),
        "report_negations": config.negations,
        "training_text": config.text,
    }
    summary["pretrain_overrides"] = list(config.pretrain_overrides)
    summary["model_dir"] = str(model_dir)
    summary["timings"] = timings
    summary["linear_probe_train_images"] = min(config.n_train, PROBE_IMAGES)
    rates = sorted(r["images_per_s"] for r in rows[len(rows) // 2 :] if r.get("images_per_s"))
    summary["machine"] = {
        "cpu": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "pretraining_images_per_s": rates[len(rates) // 2] if rates else None,
    }
    summary["quick"] = config.quick
    return summary


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` shows it (from /proc/cpuinfo; "unknown" elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


_RECIPE_NOTE = (
    'Real reports deny many findings ("No pneumothorax.") and the official recipe trains on random '
    "sentence draws. A text tower trained from scratch for minutes learns topics, not negation: it embeds "
    '"There is pleural effusion." and "There is no pleural effusion." alike, so zero-shot prompts cannot '
    "tell present from absent. The demo therefore defaults to reports without negations, read whole "
    "(<code>--negations --text sentences</code> runs the official-like recipe); at scale MaCo learns negation "
    "from hundreds of thousands of reports."
)

_MEANINGS = (
    (
        "zero-shot macro AUC",
        "Mean over the six findings of the ROC-AUC of p = softmax(z.P, z.N)[0], where P and N "
        "are the mean embeddings of the official positive ('There is {finding}.') and negative prompts. 0.5 = "
        "chance, 1 = every positive image scored above every negative one. No labels are used for training.",
    ),
    (
        "grounding CNR",
        "Contrast-to-noise ratio of the phrase's heatmap (scaled to [-1, 1]) inside vs outside the "
        "finding's box: (mean_in - mean_out) / sqrt(var_in + var_out). 0 = no contrast, > 0 = hotter in the box.",
    ),
    (
        "CNR, mismatched phrase",
        "The same boxes scored with the phrase of a different finding. A model that reads "
        "the phrase shows a clear gap to the matched CNR; a map that only highlights the chest scores both alike. "
        "MaCo's map weights every patch by a learned prior softmax(a / 0.02) that is the same for every phrase; "
        "on phantoms a good part of the CNR comes from that prior, so read the matched CNR against this row.",
    ),
    ("mIoU", "Mean over thresholds 0.1..0.5 of the IoU between (map > t) and the box mask."),
    ("pointing game", "Fraction of items whose map maximum lies inside the box."),
    (
        "linear probe AUC",
        "Not zero-shot: a logistic regression per finding fitted on frozen image embeddings of "
        "{n_probe} training phantoms, scored on the held-out ones. It shows what the image side encodes; when it "
        "is far above the zero-shot AUC, the text side (the prompts' embeddings) is what falls short.",
    ),
    (
        "retrieval R@k",
        "Fraction of images whose report (or reports whose image) ranks in the top k by cosine "
        "similarity among all held-out pairs; identical report texts count as matches.",
    ),
)


def _html(summary: dict[str, Any], results: dict[str, Any], real: dict[str, Any] | None, config: DemoConfig) -> str:
    out = config.out_dir

    def rel(path: Path) -> str:
        return html.escape(str(Path(path).relative_to(out)))

    def row(label: str, key: str) -> str:
        return (
            f"<tr><td>{html.escape(label)}</td><td>{_fmt(summary[key])}</td>"
            f"<td>{_fmt(summary['baseline_' + key])}</td></tr>"
        )

    headline = "".join(
        [
            row("zero-shot macro AUC", "zeroshot_macro_auc"),
            row(
                "zero-shot F1 at 0.5, support-weighted per class (the official figure), mean over classes",
                "zeroshot_f1_weighted",
            ),
            row("zero-shot F1 at 0.5, macro over the two labels per class, mean over classes", "zeroshot_f1_macro"),
            row("zero-shot macro accuracy (threshold 0.5)", "zeroshot_macro_acc"),
            row("grounding mean CNR (item-averaged)", "grounding_mean_cnr"),
            row("grounding mean CNR, mismatched phrase", "grounding_mean_cnr_mismatched_phrase"),
            row("grounding CNR (category-averaged)", "grounding_category_mean_cnr"),
            row("grounding mIoU", "grounding_mean_miou"),
            row("grounding pointing game", "grounding_pointing_game"),
            row("linear probe macro AUC (uses labels; see below)", "linear_probe_macro_auc"),
        ]
    )
    retrieval = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td><td>{_fmt(summary['baseline_retrieval'][k])}</td></tr>"
        for k, v in summary["retrieval"].items()
    )
    per_class = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td><td>{_fmt(summary['baseline_zeroshot_per_class_auc'][k])}"
        f"</td><td>{_fmt(summary['linear_probe_per_class_auc'].get(k))}</td>"
        f"<td>{_fmt(summary['grounding_per_category_cnr'].get(k))}</td>"
        f"<td>{_fmt(summary['baseline_grounding_per_category_cnr'].get(k))}</td></tr>"
        for k, v in summary["zeroshot_per_class_auc"].items()
    )
    n_probe = summary["linear_probe_train_images"]
    meanings = "".join(
        f"<dt>{html.escape(a)}</dt><dd>{html.escape(b.replace('{n_probe}', str(n_probe)))}</dd>" for a, b in _MEANINGS
    )

    def gallery(paths: list[Path]) -> str:
        return "".join(
            f'<figure><img src="{rel(p)}" width="256"><figcaption>{html.escape(Path(p).stem)}</figcaption></figure>'
            for p in paths
        )

    real_html = "<p>Not run (no real-image folder given).</p>"
    if real is not None:
        r = summary["real_images"]
        per_phrase = ", ".join(f"{html.escape(k)} {_fmt(v)}" for k, v in r["grounding_per_phrase_cnr"].items())
        real_html = (
            "<p><b>This model has only ever seen phantoms; on real radiographs it is expected to be weak, and it "
            "is.</b> The numbers below are from real images it never saw (" + html.escape(r["root"]) + "): "
            f"grounding mean CNR {_fmt(r['grounding_mean_cnr'])} over {r['n_items']} boxes "
            f"(per phrase: {per_phrase}), mIoU {_fmt(r['grounding_mean_miou'])}, pointing game "
            f"{_fmt(r['grounding_pointing_game'])}; zero-shot AUC for consolidation on the images with finding "
            f"annotations {_fmt(r['zeroshot_consolidation_auc'])} (few images: treat as anecdotal).</p>"
            f"<div class='gallery'>{gallery(real['overlays'])}</div>"
        )
    timings = "".join(
        f"<tr><td>{html.escape(k.removesuffix('_s'))}</td><td>{v:.0f} s</td></tr>"
        for k, v in summary["timings"].items()
    )
    machine = summary["machine"]
    rate = machine["pretraining_images_per_s"]
    machine_line = (
        f"{html.escape(machine['cpu'])}, {machine['torch_threads']} torch threads; pre-training ran at "
        f"{rate:.0f} images/s"
        if rate
        else html.escape(machine["cpu"])
    )
    quick_note = (
        (
            "<p style='background:#fee;padding:8px;border:1px solid #c33'><b>This is a <code>--quick</code> run: "
            f"{config.n_train} phantoms and {config.steps} steps, to check that every stage works. Its numbers "
            "mean nothing; run <code>make demo</code> for the real demo.</b></p>"
        )
        if config.quick
        else ""
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>maco-cxr demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}.gallery{{display:flex;flex-wrap:wrap;gap:8px}}
figure{{margin:0}}figcaption{{font-size:small}}</style></head><body>
<h1>maco-cxr demo: MaCo pre-trained on synthetic phantoms</h1>
{quick_note}
<p>{config.n_train} training phantoms and {config.n_test} held-out phantoms (other seed), {config.image_size} px;
the <code>tiny</code> MaCo (masked ViT + MAE decoder + BERT, correlation-weighted contrast) pre-trained for
{config.steps} steps of {config.batch_size} image-report pairs on the CPU. Every number is measured on the
held-out phantoms, next to the same architecture with random weights. Phantoms are drawings, not patients.</p>
<p>Data recipe: reports {"with" if config.negations else "without"} negations of absent findings, read as
{"random sentence draws (official)" if config.text == "sentences" else "whole reports"}. {_RECIPE_NOTE}</p>
<h2>Headline</h2>
<table><tr><th>metric</th><th>pre-trained</th><th>random weights</th></tr>{headline}</table>
<h2>Per finding</h2>
<table><tr><th>finding</th><th>zero-shot AUC pre-trained</th><th>zero-shot AUC random</th>
<th>linear-probe AUC pre-trained</th><th>CNR pre-trained</th><th>CNR random</th></tr>
{per_class}</table>
<h2>Retrieval (held-out pairs)</h2>
<table><tr><th>recall</th><th>pre-trained</th><th>random weights</th></tr>{retrieval}</table>
<h2>Pre-training curves</h2><img src="figures/loss_curves.png" width="640">
<h2>Zero-shot ROC curves</h2>
<img src="{rel(results["trained"]["roc"])}" width="420"><img src="{rel(results["random"]["roc"])}" width="420">
<h2>Grounding overlays (held-out phantoms; box in green, phrase on top)</h2>
<h3>pre-trained</h3><div class="gallery">{gallery(results["trained"]["overlays"])}</div>
<h3>random weights</h3><div class="gallery">{gallery(results["random"]["overlays"])}</div>
<h2>Real radiographs</h2>{real_html}
<h2>What each number means</h2><dl>{meanings}</dl>
<h2>Where the time went</h2>
<p>Machine: {machine_line}.</p>
<table><tr><th>stage</th><th>wall time</th></tr>{timings}</table>
<p>Model: <code>{html.escape(str(summary["model_dir"]))}</code> (load with <code>maco_cxr.load</code>).</p>
</body></html>
"""
