"""`maco-cxr zeroshot`: official zero-shot classification of a dataset, with AUC / F1 / ACC.

Also holds the model and dataset arguments that ``ground`` and ``retrieve`` share.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from maco_cxr.cli._paths import existing_file, existing_path

if TYPE_CHECKING:
    from maco_cxr.data.datasets.base import ChestXrayDataset
    from maco_cxr.models.maco import MacoModel


# ----------------------------------------------------------------------- shared arguments


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, head counts of official checkpoints, --device, --batch-size, --workers."""
    parser.add_argument("--model", required=True, type=existing_path, metavar="M",
                        help="model directory (config.json + model.safetensors) or official maco.pth")
    parser.add_argument("--text-heads", type=int, metavar="N",
                        help="BERT heads of an official maco.pth (not stored in it; default width / 64)")
    parser.add_argument("--vision-heads", type=int, metavar="N", help="ViT heads of an official maco.pth")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--workers", type=int, default=0, help="image-decoding processes (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_dataset_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    """--dataset KIND --root DIR [--split] [--official-split | --split-file] [-o key=value]."""
    parser.add_argument("--dataset", required=required, metavar="KIND",
                        help="dataset adapter: manifest, cxr-real, nih, chexpert, rsna, siim, ms-cxr, ...")
    parser.add_argument("--root", type=existing_path, metavar="DIR", help="dataset root folder (or manifest file)")
    parser.add_argument("--split", default=None, help="the adapter's split (e.g. test, val)")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--official-split", metavar="NAME",
                        help="keep the images of the official MaCo split NAME (test, val, train_1, ...) "
                        "with its labels (nih, chexpert, rsna, siim)")
    chosen.add_argument("--split-file", type=existing_file, metavar="FILE",
                        help="keep the images listed in FILE ('path label...' per line)")
    parser.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                        help="extra keyword argument of the dataset adapter (value parsed as YAML), "
                        "e.g. -o annotations=ms_cxr.csv; repeatable")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip (and count and list) unusable rows and unreadable image files instead of "
                        "stopping at the first")


def load_model_from_args(args: argparse.Namespace) -> MacoModel:
    import torch

    from maco_cxr.hub import load

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load(args.model, args.text_heads, vision_heads=args.vision_heads, map_location=device)


def build_dataset_from_args(args: argparse.Namespace, **extra: Any) -> ChestXrayDataset:
    import yaml

    from maco_cxr.data.datasets import build_dataset
    from maco_cxr.errors import ConfigError

    if args.root is None:
        raise ConfigError(f"--dataset {args.dataset} needs --root DIR")
    kwargs: dict[str, Any] = dict(extra)
    for option in args.option:
        if "=" not in option:
            raise ConfigError(f"-o {option!r} is not of the form KEY=VALUE")
        key, value = option.split("=", 1)
        kwargs[key.strip()] = yaml.safe_load(value)
    if args.split is not None:
        kwargs["split"] = args.split
    if args.skip_bad:
        kwargs["on_error"] = "skip"
    dataset = build_dataset(args.dataset, args.root, **kwargs)
    if args.official_split or args.split_file:
        from maco_cxr.data.splits import official_split_path, read_split_file, subset_by_split_file

        path = args.split_file or official_split_path(args.dataset, args.official_split)
        entries = read_split_file(path)
        dataset = subset_by_split_file(dataset, entries, use_file_labels=bool(entries and len(entries[0].labels)),
                                       on_error="skip" if args.skip_bad else "raise")
    if len(dataset.skips):
        print(f"note: {len(dataset.skips)} rows/files were skipped (first: {dataset.skips.skipped[0]})")
    return dataset


def write_json(path: Path, data: Any) -> None:
    """JSON with NaN written as null (strict JSON readers reject NaN)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_nan_to_none(data), indent=2) + "\n")


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


# ----------------------------------------------------------------------- the command


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "zeroshot", help="zero-shot classification of a dataset (official prompts and scoring)",
        description="Score every image of a dataset against text prompts: p_c = softmax([z.P_c, z.N_c])[0] "
        "with P_c / N_c the mean embeddings of the positive / negative prompts (official MaCo). Writes "
        "scores.csv, roc_curves.png and summary.json (per-class and macro AUC, F1, ACC at 0.5) to --out.")
    add_model_arguments(parser)
    add_dataset_arguments(parser, required=True)
    parser.add_argument("--classes", nargs="+", metavar="NAME",
                        help="class names to score (default: the dataset's classes); labels are matched "
                        "to the dataset's classes by name, case-insensitively")
    parser.add_argument("--prompts", default=None, metavar="SET|FILE",
                        help="prompt set 'default' or 'siim' (official), or a YAML/JSON prompt file "
                        "(default: 'siim' for --dataset siim, else 'default')")
    parser.add_argument("--out", type=Path, default=Path("zeroshot-results"), help="output folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maco_cxr.metrics import classification_report
    from maco_cxr.plots import plot_roc_curves
    from maco_cxr.tasks.prompts import resolve_prompts
    from maco_cxr.tasks.zeroshot import evaluate_zero_shot

    dataset = build_dataset_from_args(args)
    classes = tuple(args.classes or dataset.classes)
    prompts = args.prompts or ("siim" if args.dataset == "siim" else "default")
    table = resolve_prompts(classes, prompts)
    model = load_model_from_args(args)
    result = evaluate_zero_shot(model, dataset, classes, table, batch_size=args.batch_size,
                                num_workers=args.workers, progress=not args.no_progress)
    report = classification_report(result.labels, result.scores, classes)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "scores.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", *(f"score:{c}" for c in classes), *(f"label:{c}" for c in classes)])
        for path, scores, labels in zip(result.paths, result.scores, result.labels):
            writer.writerow([path, *(f"{s:.6f}" for s in scores),
                             *("" if math.isnan(v) else int(v) for v in labels)])
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
