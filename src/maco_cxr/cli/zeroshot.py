"""`maco-cxr zeroshot`: official zero-shot classification of a dataset, with AUC / F1 / ACC."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from maco_cxr.cli import _model_args as common


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "zeroshot", help="zero-shot classification of a dataset (official prompts and scoring)",
        description="Score every image of a dataset against text prompts: p_c = softmax([z.P_c, z.N_c])[0] "
        "with P_c / N_c the mean embeddings of the positive / negative prompts (official MaCo). Writes "
        "scores.csv, roc_curves.png and summary.json (per-class and macro AUC, F1, ACC at 0.5) to --out.")
    common.add_model_arguments(parser)
    common.add_dataset_arguments(parser, required=True)
    parser.add_argument("--classes", nargs="+", metavar="NAME",
                        help="class names to score (default: the dataset's classes); labels are matched "
                        "to the dataset's classes by name, case-insensitively")
    parser.add_argument("--prompts", default=None, metavar="SET|FILE",
                        help="prompt set 'default' or 'siim' (official), or a YAML/JSON prompt file "
                        "(default: 'siim' for --dataset siim, else 'default')")
    parser.add_argument("--out", type=Path, default=Path("zeroshot-results"), help="output folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maco_cxr._atomic import write_csv, write_json
    from maco_cxr.metrics import classification_report
    from maco_cxr.plots import plot_roc_curves
    from maco_cxr.tasks.prompts import resolve_prompts
    from maco_cxr.tasks.zeroshot import evaluate_zero_shot

    dataset = common.build_dataset_from_args(args)
    classes = tuple(args.classes or dataset.classes)
    prompts = args.prompts or ("siim" if args.dataset == "siim" else "default")
    table = resolve_prompts(classes, prompts)
    model = common.load_model_from_args(args)
    result = evaluate_zero_shot(model, dataset, classes, table, batch_size=args.batch_size,
                                num_workers=args.workers, progress=not args.no_progress)
    report = classification_report(result.labels, result.scores, classes)
    write_csv(args.out / "scores.csv", ["path", *(f"score:{c}" for c in classes), *(f"label:{c}" for c in classes)],
              ([path, *(f"{s:.6f}" for s in scores), *("" if math.isnan(v) else int(v) for v in labels)]
               for path, scores, labels in zip(result.paths, result.scores, result.labels)))
    plot_roc_curves(result.labels, result.scores, classes, args.out / "roc_curves.png",
                    title=f"zero-shot ROC ({args.dataset}, n={len(result.paths)})")
    summary = {
        "model": str(args.model), "dataset": args.dataset, "root": str(args.root), "split": args.split,
        "official_split": args.official_split, "n_images": len(result.paths), "classes": list(classes),
        "prompts": prompts if isinstance(prompts, str) else str(prompts),
        "prompt_texts": {c: {"pos": list(p.positive), "neg": list(p.negative)} for c, p in table.items()},
        "per_class": report["per_class"], "macro_auc": report["mean_auc"],
        "mean_f1_weighted": report["mean_f1_weighted"], "mean_f1_macro": report["mean_f1_macro"],
        "macro_acc": report["mean_acc"], "threshold": report["threshold"],
        "n_skipped_rows": len(dataset.skips), "skipped_rows": dataset.skips.skipped,
        "n_unreadable": len(result.failures), "unreadable": result.failures,
    }
    write_json(args.out / "summary.json", summary)
    print(f"{'class':<24} {'n':>6} {'pos':>6} {'AUC':>7} {'F1w':>7} {'F1m':>7} {'ACC':>7}")
    for name, row in report["per_class"].items():
        print(f"{name:<24} {row['n']:>6} {row['n_pos']:>6} {row['auc']:>7.4f} {row['f1_weighted']:>7.4f} "
              f"{row['f1_macro']:>7.4f} {row['acc']:>7.4f}")
    print(f"{'macro':<24} {'':>6} {'':>6} {report['mean_auc']:>7.4f} {report['mean_f1_weighted']:>7.4f} "
          f"{report['mean_f1_macro']:>7.4f} "
          f"{report['mean_acc']:>7.4f}")
    if result.failures:
        print(f"{len(result.failures)} unreadable files left out (listed in summary.json); first: "
              f"{result.failures[0]['path']}: {result.failures[0]['reason']}")
    print(f"wrote {args.out / 'summary.json'}, scores.csv, roc_curves.png")
    return 0
