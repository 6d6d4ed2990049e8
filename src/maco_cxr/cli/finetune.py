"""`maco-cxr finetune`: classification fine-tuning or linear probing (flags: see ``_finetune_args``)."""

from __future__ import annotations

import argparse
from typing import Any

from maco_cxr.cli._finetune_args import TORCHRUN_HINT, add_common_arguments, fmt, run_task


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune (or linearly probe) a classifier on a MaCo image encoder",
        description="Multi-label classification fine-tuning with the official MaCo recipe "
        "(--config {nih,chexpert,rsna}_{1,10,100}, shipped in maco_cxr/recipes/finetune). "
        "Writes metrics.json, predictions.csv, best/, "
        "final/, checkpoints/, roc.png, training_curves.png and log.jsonl into --out. "
        + TORCHRUN_HINT.format(command="finetune"),
    )
    add_common_arguments(
        parser,
        config_folder="finetune",
        dataset_help="dataset adapter (nih, chexpert, rsna, siim, manifest, cxr-real, ...) or "
        "'store' for a folder written by `maco-cxr prepare`",
        split_help="training images: a split file ('path label...' per line) or an official name "
        "(train_1, train_10, train) for nih/chexpert/rsna/siim",
    )
    parser.add_argument("--mode", choices=("finetune", "linear_probe"), help="model.mode")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maco_cxr.config import Override
    from maco_cxr.tasks.finetune.config import ClassifyConfig

    extra = [Override("model.mode", args.mode, "--mode")] if args.mode is not None else []
    done = run_task(ClassifyConfig, "finetune_classifier", args, extra)
    if done is None:
        return 0
    config, metrics = done
    test = metrics["test"]
    ci = test.get("mean_auc_ci95")
    some = ci and ci["n_valid"] < ci["n_resamples"]
    defined = f", {ci['n_valid']} of {ci['n_resamples']} resamples defined" if some else ""
    interval = f" (95 % CI {fmt(ci['low'])}-{fmt(ci['high'])}{defined})" if ci else ""
    left_out = test.get("auc_undefined", {})
    classes = len(metrics["classes"])
    over = f"{classes - len(left_out)} of {classes}" if left_out else f"{classes}"
    print(
        f"test mean AUC {fmt(test['mean_auc'])}{interval} over {over} classes "
        f"({test['n_images']} test images); best validation AUC {fmt(metrics['val_best']['mean_auc'])} at "
        f"step {metrics['best_step']} of {metrics['steps']}"
    )
    for name, auc in test["per_class_auc"].items():
        why = f"  ({left_out[name]} in the test split: not in the mean)" if name in left_out else ""
        print(f"  {name:<28} {fmt(auc)}{why}")
    print(f"outputs: {config.runtime.out} (reload: maco_cxr.load_finetuned('{config.runtime.out}/best'))")
    return 0
