"""`maco-cxr detect`: ViTDet-style Faster R-CNN fine-tuning on a MaCo encoder.

Flags map to config keys as in ``maco-cxr segment`` (``--model`` -> model.source,
``--dataset`` -> data.kind, ``--root`` -> data.root, ``--fraction`` -> data.fraction,
``--split-file`` -> data.train_split, ``--device`` -> runtime.device, ``--out`` ->
runtime.out); trailing ``key=value`` arguments set any other key. Precedence: the
``--config`` file, then the flags, then the ``key=value`` arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from maco_cxr.cli._finetune_args import flag_overrides, fmt


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "detect",
        help="fine-tune a ViTDet-style detector on a MaCo image encoder",
        description="Box detection fine-tuning with the official MaCo recipe (configs/detect/rsna_{1,10,100}.yaml), "
        "scored by COCO AP, AP50 and AP75 on the test split. Writes metrics.json, predictions.csv, best/, "
        "overlays/, curves.png and log.jsonl into --out.",
    )
    parser.add_argument("--model", required=True, metavar="M",
                        help="MaCo model directory, official maco.pth, or 'none' for random init (model.preset)")
    parser.add_argument("--dataset", metavar="KIND", help="dataset adapter: rsna, manifest, cxr-real, ...")
    parser.add_argument("--root", type=Path, metavar="DIR", help="dataset root folder")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--fraction", type=float, metavar="PCT",
                        help="keep a seeded PCT %% (1, 10, 100) of the training split, whole patients at a "
                        "time (clears data.train_split)")
    chosen.add_argument("--split-file", metavar="FILE|NAME",
                        help="training images: a split file or an official name (train_1, train_10, train) for rsna")
    parser.add_argument("--config", type=Path, metavar="YAML", help="config file (configs/detect/*.yaml)")
    parser.add_argument("--device", metavar="DEV", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. optim.steps=500 input.image_size=512 "
                        "'input.box_labels=[nodule]'")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maco_cxr.config import apply_overrides
    from maco_cxr.tasks.detect import DetectConfig, detect
    from maco_cxr.tasks.finetune_common import load_task_config

    config = load_task_config(DetectConfig, args.config)
    config = apply_overrides(config, flag_overrides(args))
    config = apply_overrides(config, list(args.overrides))
    result = detect(config)
    test = result.metrics["test"]
    print(f"test ({test['n_images']} images, {test['n_boxes']} boxes); checkpoint from step "
          f"{result.metrics['best_step']} ({result.metrics['selection']})")
    for name in ("AP", "AP50", "AP75"):
        print(f"  {name:<5} {fmt(test[name])}")
    print(f"outputs: {result.out_dir}")
    return 0

