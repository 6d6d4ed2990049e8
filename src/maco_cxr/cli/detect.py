"""`maco-cxr detect`: ViTDet-style detection fine-tuning (flags: see ``_finetune_args``)."""

from __future__ import annotations

import argparse
from typing import Any

from maco_cxr.cli._finetune_args import TORCHRUN_HINT, add_common_arguments, fmt, run_task


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "detect",
        help="fine-tune a ViTDet-style Faster R-CNN on a MaCo image encoder",
        description="Box detection fine-tuning with the official MaCo recipe (--config rsna_{1,10,100}, "
        "shipped in maco_cxr/recipes/detect). "
        "RSNA is tested on the paper's detection test set by default (its images are kept out of training and "
        "validation). Reports COCO AP, AP50, AP75. Writes metrics.json, predictions.csv, best/, final/, "
        "checkpoints/, overlays/, curves.png and log.jsonl into --out. " + TORCHRUN_HINT.format(command="detect"),
    )
    add_common_arguments(
        parser,
        config_folder="detect",
        dataset_help="dataset adapter: rsna, vindr-cxr, nih (boxes), manifest with boxes.csv, ...",
        split_help="training images: a split file or an official name (train_1, train_10, train) for rsna",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maco_cxr.tasks.finetune.config import DetectConfig

    done = run_task(DetectConfig, "train_detector", args)
    if done is None:
        return 0
    config, metrics = done
    test = metrics["test"]
    print(
        f"test ({test['n_images']} images, {test['n_boxes']} boxes); model from step {metrics['best_step']} "
        f"({metrics['selection']})"
    )
    for name in ("AP", "AP50", "AP75"):
        print(f"  {name:<5} {fmt(test[name])}")
    print(f"outputs: {config.runtime.out} (reload: maco_cxr.load_finetuned('{config.runtime.out}/best'))")
    return 0
