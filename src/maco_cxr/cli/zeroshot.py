"""`maco-cxr zeroshot`: official zero-shot classification of a dataset, with AUC / F1 / ACC.

The command parses its arguments, builds the dataset and model and calls
:func:`maco_cxr.tasks.zeroshot.run_zeroshot`, which writes (to --out):

- ``scores.csv``: path, score:<class>..., label:<class>... (empty label = unknown);
  ``val_scores.csv`` the same for the validation split when one is given.
- ``roc_curves.png``: one ROC curve per class.
- ``reliability.png``: the reliability diagram (10 bins) of all known (image, class)
  probabilities pooled, with its ECE; with several classes also ``reliability/<class>.png``.
- ``summary.json``: model, dataset, root and split (provenance), per-class and macro AUC, F1,
  ACC at 0.5 (the official figures), plus
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
from maco_cxr.cli._sources import run_source, validation_source


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "zeroshot",
        help="zero-shot classification of a dataset (official prompts and scoring)",
        description="Score every image of a dataset against text prompts: p_c = softmax([z.P_c, z.N_c])[0] "
        "with P_c / N_c the mean embeddings of the positive / negative prompts (official MaCo). Writes "
        "scores.csv, roc_curves.png, reliability.png and summary.json (per-class and macro AUC, F1, ACC at "
        "0.5 with bootstrap 95 % intervals, ECE; with a validation split also Youden / max-F1 thresholds "
        "chosen on it and applied here) to --out.",
    )
    common.add_model_arguments(parser)
    common.add_dataset_arguments(parser, required=True)
    parser.add_argument(
        "--classes",
        nargs="+",
        metavar="NAME",
        help="class names to score (default: the dataset's classes); labels are matched "
        "to the dataset's classes by name, case-insensitively",
    )
    parser.add_argument(
        "--prompts",
        default=None,
        metavar="SET|FILE",
        help="prompt set 'default' or 'siim' (official), or a YAML/JSON prompt file "
        "(default: 'siim' for --dataset siim, else 'default')",
    )
    common.add_validation_arguments(parser)
    common.add_bootstrap_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("zeroshot-results"), help="output folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maco_cxr.tasks.zeroshot import run_zeroshot

    dataset = common.build_dataset_from_args(args)
    val_dataset = common.build_validation_dataset_from_args(args) if common.wants_validation(args) else None
    model = common.load_model_from_args(args)
    result = run_zeroshot(
        model,
        dataset,
        args.out,
        classes=args.classes,
        validation=val_dataset,
        prompts=args.prompts or ("siim" if args.dataset == "siim" else "default"),
        **common.run_options(args),
        source=run_source(args),
        validation_source=None if val_dataset is None else validation_source(args),
    )
    _print_report(result.summary)
    common.print_unreadable(result)
    print(f"wrote {', '.join(str(path.relative_to(result.out)) for path in result.files)} to {result.out}")
    return 0


def _fmt(value: float | None, width: int = 7) -> str:
    return f"{'nan':>{width}}" if value is None or math.isnan(value) else f"{value:>{width}.4f}"


def _interval(ci: dict[str, Any] | None) -> str:
    if ci is None:
        return f"{'':>16}"
    return f"[{ci['low']:.3f}, {ci['high']:.3f}]".rjust(16)


def _print_report(summary: dict[str, Any]) -> None:
    ci = summary["ci"]
    calibration = summary["calibration"]["per_class"]
    print(
        f"{'class':<24} {'n':>6} {'pos':>6} {'AUC':>7} {'AUC 95% CI':>16} {'F1w':>7} {'F1w 95% CI':>16} "
        f"{'F1m':>7} {'ACC':>7} {'ECE':>7}"
    )
    for name, row in summary["per_class"].items():
        intervals = (ci or {}).get("per_class", {}).get(name, {})
        ece = calibration[name]["ece"] if calibration.get(name) else None
        print(
            f"{name:<24} {row['n']:>6} {row['n_pos']:>6} {_fmt(row['auc'])} {_interval(intervals.get('auc'))} "
            f"{_fmt(row['f1_weighted'])} {_interval(intervals.get('f1_weighted'))} {_fmt(row['f1_macro'])} "
            f"{_fmt(row['acc'])} {_fmt(ece)}"
        )
    pooled = summary["calibration"]["pooled"]
    means = ci or {}
    print(
        f"{'macro':<24} {'':>6} {'':>6} {_fmt(summary['macro_auc'])} {_interval(means.get('macro_auc'))} "
        f"{_fmt(summary['mean_f1_weighted'])} {_interval(means.get('mean_f1_weighted'))} "
        f"{_fmt(summary['mean_f1_macro'])} {_fmt(summary['macro_acc'])} "
        f"{_fmt(pooled['ece'] if pooled else None)}"
    )
    if ci is not None:
        print(
            f"95% CIs: {ci['n_resamples']} bootstrap resamples by {ci['unit']} ({ci['n_groups']}), "
            f"seed {ci['seed']}; ECE of the macro row: all classes pooled"
        )
    points = summary["operating_points"]
    if points is None:
        return
    print(
        f"\nthresholds chosen on validation ({points['n_val_images']} images), applied here; "
        f"F1+ = F1 of the positive label, sens / spec = sensitivity / specificity"
    )
    print(f"{'class':<24} {'point':<8} {'thr':>7} {'F1+':>7} {'sens':>7} {'spec':>7} {'ACC':>7}")
    for name in summary["per_class"]:
        for label, method, point in (
            ("youden", "youden", "chosen"),
            ("max-F1", "max_f1", "chosen"),
            ("fixed", "youden", "fixed"),
        ):
            v = points[method]["per_class"][name][point]
            print(
                f"{name if label == 'youden' else '':<24} {label:<8} {_fmt(v['threshold'])} "
                f"{_fmt(v['f1_positive'])} {_fmt(v['sensitivity'])} {_fmt(v['specificity'])} {_fmt(v['acc'])}"
            )
