"""`maco-cxr segment`: UperNet segmentation fine-tuning (flags: see ``_finetune_args``)."""

from __future__ import annotations

import argparse
from typing import Any

from maco_cxr.cli._finetune_args import TORCHRUN_HINT, add_common_arguments, fmt, run_task


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="fine-tune a UperNet segmenter on a MaCo image encoder",
        description="Binary segmentation fine-tuning with the official MaCo recipe "
        "(--config {siim,covid}_{1,10,100}, shipped in maco_cxr/recipes/segment). "
        "Reports three named Dice figures on the test split. "
        "A manifest whose masks carry several labels needs data.options.mask_labels=[...] (the target is their "
        "union). model.freeze_backbone=true trains the head only. Writes metrics.json, per_image.csv, best/, "
        "final/, checkpoints/, overlays/, curves.png and log.jsonl into --out. "
        + TORCHRUN_HINT.format(command="segment"),
    )
    add_common_arguments(
        parser,
        config_folder="segment",
        dataset_help="dataset adapter: siim, covid-rural, chexlocalize, manifest, cxr-real, ...",
        split_help="training images: a split file or an official name (train_1, train_10, train) for siim",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maco_cxr.tasks.finetune.config import SegmentConfig

    done = run_task(SegmentConfig, "train_segmenter", args)
    if done is None:
        return 0
    from maco_cxr.tasks.finetune.segmentation import METRIC_NAMES

    config, metrics = done
    test = metrics["test"]
    print(
        f"test ({test['n_images']} images, {test['n_empty_targets']} with an empty mask; target "
        f"{', '.join(metrics['target_labels'])}); model from step {metrics['best_step']} ({metrics['selection']})"
    )
    for name in METRIC_NAMES:
        print(f"  {name:<26} {fmt(test[name])}")
    print(f"outputs: {config.runtime.out} (reload: maco_cxr.load_finetuned('{config.runtime.out}/best'))")
    return 0
