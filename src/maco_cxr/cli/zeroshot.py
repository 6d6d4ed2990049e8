"""`maco-cxr zeroshot`: official zero-shot classification of a dataset, with AUC / F1 / ACC.

Files written (to --out):

- ``scores.csv``: path, score:<class>..., label:<class>... (empty label = unknown);
  ``val_scores.csv`` the same for the validation split when one is given.
- ``roc_curves.png``: one ROC curve per class.
- ``reliability.png``: the reliability diagram (10 bins) of all known (image, class)
  probabilities pooled, with its ECE; with several classes also ``reliability/<class>.png``.
- ``summary.json``: per-class and macro AUC, F1, ACC at 0.5 (the official figures), plus
  ``ci`` (bootstrap 95 % intervals of AUC and F1 per class and over classes), ``calibration``
  (ECE and reliability curve per class and pooled) and, with a validation split,
  ``operating_points``: per class the Youden's J and max-F1 thresholds chosen on validation
  and the test F1 (positive label), accuracy, sensitivity and specificity at each and at 0.5.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from maco_cxr.cli import _model_args as common


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "zeroshot", help="zero-shot classification of a dataset (official prompts and scoring)",
        description="Score every image of a dataset against text prompts: p_c = softmax([z.P_c, z.N_c])[0] "
        "with P_c / N_c the mean embeddings of the positive / negative prompts (official MaCo). Writes "
        "scores.csv, roc_curves.png, reliability.png and summary.json (per-class and macro AUC, F1, ACC at "
        "0.5 with bootstrap 95 % intervals, ECE; with a validation split also Youden / max-F1 thresholds "
        "chosen on it and applied here) to --out.")
    common.add_model_arguments(parser)
    common.add_dataset_arguments(parser, required=True)
    parser.add_argument("--classes", nargs="+", metavar="NAME",
                        help="class names to score (default: the dataset's classes); labels are matched "
                        "to the dataset's classes by name, case-insensitively")
    parser.add_argument("--prompts", default=None, metavar="SET|FILE",
                        help="prompt set 'default' or 'siim' (official), or a YAML/JSON prompt file "
                        "(default: 'siim' for --dataset siim, else 'default')")
    common.add_validation_arguments(parser)
    common.add_bootstrap_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("zeroshot-results"), help="output folder")
    parser.set_defaults(func=run)


def _write_scores(path: Path, result: Any, classes: tuple[str, ...]) -> None:
    from maco_cxr._atomic import write_csv

    write_csv(path, ["path", *(f"score:{c}" for c in classes), *(f"label:{c}" for c in classes)],
              ([p, *(f"{s:.6f}" for s in scores), *("" if math.isnan(v) else int(v) for v in labels)]
               for p, scores, labels in zip(result.paths, result.scores, result.labels)))


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")[:40] or "class"


def run(args: argparse.Namespace) -> int:
    from maco_cxr._atomic import write_json
    from maco_cxr.errors import ConfigError
    from maco_cxr.metrics import classification_report
    from maco_cxr.plots import plot_reliability_diagram, plot_roc_curves
    from maco_cxr.tasks.prompts import resolve_prompts
    from maco_cxr.tasks.zeroshot import (
        build_class_prototypes,
        evaluate_zero_shot,
        summarise_zero_shot,
    )

    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap {args.bootstrap}: give 0 (no intervals) or more resamples")
    dataset = common.build_dataset_from_args(args)
    val_dataset = common.build_validation_dataset_from_args(args) if common.wants_validation(args) else None
    classes = tuple(args.classes or dataset.classes)
    prompts = args.prompts or ("siim" if args.dataset == "siim" else "default")
    table = resolve_prompts(classes, prompts)
    model = common.load_model_from_args(args)
    prototypes = build_class_prototypes(model, classes, table)
    options: dict[str, Any] = {"batch_size": args.batch_size, "num_workers": args.workers,
                               "progress": not args.no_progress, "prototypes": prototypes}
    validation = None
    if val_dataset is not None:
        validation = evaluate_zero_shot(model, val_dataset, classes, table, **options)
        _write_scores(args.out / "val_scores.csv", validation, classes)
    result = evaluate_zero_shot(model, dataset, classes, table, **options)
    report = classification_report(result.labels, result.scores, classes)
    extra = summarise_zero_shot(result, validation, n_bootstrap=args.bootstrap, seed=args.seed)
    _write_scores(args.out / "scores.csv", result, classes)
    plot_roc_curves(result.labels, result.scores, classes, args.out / "roc_curves.png",
                    title=f"zero-shot ROC ({args.dataset}, n={len(result.paths)})")
    figures = _reliability_figures(args, result, classes, extra["calibration"], plot_reliability_diagram)
    summary = {
        "model": str(args.model), "dataset": args.dataset, "root": str(args.root), "split": args.split,
        "official_split": args.official_split, "n_images": len(result.paths), "classes": list(classes),
        "prompts": prompts if isinstance(prompts, str) else str(prompts),
        "prompt_texts": {c: {"pos": list(p.positive), "neg": list(p.negative)} for c, p in table.items()},
        "per_class": report["per_class"], "macro_auc": report["mean_auc"],
        "mean_f1_weighted": report["mean_f1_weighted"], "mean_f1_macro": report["mean_f1_macro"],
        "macro_acc": report["mean_acc"], "threshold": report["threshold"],
        "ci": extra["ci"], "calibration": {**extra["calibration"], "figures": figures},
        "validation": None if validation is None else {
            "split": args.val_split, "official_split": args.val_official_split,
            "split_file": None if args.val_split_file is None else str(args.val_split_file),
            "n_images": len(validation.paths), "n_unreadable": len(validation.failures)},
        "operating_points": extra["operating_points"],
        "n_skipped_rows": len(dataset.skips), "skipped_rows": dataset.skips.skipped,
        "n_unreadable": len(result.failures), "unreadable": result.failures,
    }
    write_json(args.out / "summary.json", summary)
    _print_report(report, extra)
    if result.failures:
        print(f"{len(result.failures)} unreadable files left out (listed in summary.json); first: "
              f"{result.failures[0]['path']}: {result.failures[0]['reason']}")
    outputs = ["scores.csv", "roc_curves.png", *figures] + (["val_scores.csv"] if validation is not None else [])
    print(f"wrote {args.out / 'summary.json'}, {', '.join(outputs)}")
    return 0


def _reliability_figures(args: argparse.Namespace, result: Any, classes: tuple[str, ...],
                         calibration: dict[str, Any], plot: Any) -> list[str]:
    """reliability.png (pooled) and, with several classes, reliability/<class>.png."""
    import numpy as np

    figures: list[str] = []
    if calibration["pooled"] is None:
        return figures
    plot(result.labels.ravel(), result.scores.ravel(), args.out / "reliability.png",
         n_bins=calibration["n_bins"], title=f"zero-shot calibration ({args.dataset}, all classes)")
    figures.append("reliability.png")
    if len(classes) > 1:
        for k, name in enumerate(classes):
            if calibration["per_class"][name] is not None and np.any(~np.isnan(result.labels[:, k])):
                relative = f"reliability/{_slug(name)}.png"
                plot(result.labels[:, k], result.scores[:, k], args.out / relative,
                     n_bins=calibration["n_bins"], title=f"zero-shot calibration: {name}")
                figures.append(relative)
    return figures


def _fmt(value: float | None, width: int = 7) -> str:
    return f"{'nan':>{width}}" if value is None or math.isnan(value) else f"{value:>{width}.4f}"


def _interval(ci: dict[str, Any] | None) -> str:
    if ci is None:
        return f"{'':>16}"
    return f"[{ci['low']:.3f}, {ci['high']:.3f}]".rjust(16)


def _print_report(report: dict[str, Any], extra: dict[str, Any]) -> None:
    ci = extra["ci"]
    calibration = extra["calibration"]["per_class"]
    print(f"{'class':<24} {'n':>6} {'pos':>6} {'AUC':>7} {'AUC 95% CI':>16} {'F1w':>7} {'F1w 95% CI':>16} "
          f"{'F1m':>7} {'ACC':>7} {'ECE':>7}")
    for name, row in report["per_class"].items():
        intervals = (ci or {}).get("per_class", {}).get(name, {})
        ece = calibration[name]["ece"] if calibration.get(name) else None
        print(f"{name:<24} {row['n']:>6} {row['n_pos']:>6} {_fmt(row['auc'])} {_interval(intervals.get('auc'))} "
              f"{_fmt(row['f1_weighted'])} {_interval(intervals.get('f1_weighted'))} {_fmt(row['f1_macro'])} "
              f"{_fmt(row['acc'])} {_fmt(ece)}")
    pooled = extra["calibration"]["pooled"]
    print(f"{'macro':<24} {'':>6} {'':>6} {_fmt(report['mean_auc'])} {_interval((ci or {}).get('macro_auc'))} "
          f"{_fmt(report['mean_f1_weighted'])} {_interval((ci or {}).get('mean_f1_weighted'))} "
          f"{_fmt(report['mean_f1_macro'])} {_fmt(report['mean_acc'])} {_fmt(pooled['ece'] if pooled else None)}")
    if ci is not None:
        print(f"95% CIs: {ci['n_resamples']} bootstrap resamples by {ci['unit']} ({ci['n_groups']}), "
              f"seed {ci['seed']}; ECE of the macro row: all classes pooled")
    points = extra["operating_points"]
    if points is None:
        return
    print(f"\nthresholds chosen on validation ({points['n_val_images']} images), applied here; "
          f"F1+ = F1 of the positive label, sens / spec = sensitivity / specificity")
    print(f"{'class':<24} {'point':<8} {'thr':>7} {'F1+':>7} {'sens':>7} {'spec':>7} {'ACC':>7}")
    for name in report["per_class"]:
        for label, method, point in (("youden", "youden", "chosen"), ("max-F1", "max_f1", "chosen"),
                                     ("fixed", "youden", "fixed")):
            v = points[method]["per_class"][name][point]
            print(f"{name if label == 'youden' else '':<24} {label:<8} {_fmt(v['threshold'])} "
                  f"{_fmt(v['f1_positive'])} {_fmt(v['sensitivity'])} {_fmt(v['specificity'])} {_fmt(v['acc'])}")
