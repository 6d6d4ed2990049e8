"""`maco-cxr finetune`: classification fine-tuning or linear probing on a MaCo encoder.

Flags map to config keys (``--model`` -> model.source, ``--dataset`` -> data.kind, ``--root``
-> data.root, ``--fraction`` -> data.fraction, ``--split-file`` -> data.train_split,
``--mode`` -> model.mode, ``--device`` -> runtime.device, ``--out`` -> runtime.out); any other
key is set with trailing ``key=value`` arguments (``optim.steps=500``). Precedence: the
``--config`` file, then the flags, then the ``key=value`` arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from maco_cxr.cli._finetune_args import flag_overrides, fmt


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune (or linearly probe) a classifier on a MaCo image encoder",
        description="Multi-label classification fine-tuning with the official MaCo recipe "
        "(configs/finetune/{nih,chexpert,rsna}_{1,10,100}.yaml). Writes metrics.json, "
        "predictions.csv, best/, roc.png, training_curves.png and log.jsonl into --out.",
    )
    parser.add_argument("--model", required=True, metavar="M",
                        help="MaCo model directory, official maco.pth, or 'none' for random init "
                        "(model.preset)")
    parser.add_argument("--dataset", metavar="KIND",
                        help="dataset adapter (nih, chexpert, rsna, siim, manifest, cxr-real, ...) or "
                        "'store' for a folder written by `maco-cxr prepare`")
    parser.add_argument("--root", type=Path, metavar="DIR", help="dataset root folder (or store)")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--fraction", type=float, metavar="PCT",
                        help="keep a seeded PCT %% (1, 10, 100) of the whole training split, whole "
                        "patients at a time (clears data.train_split)")
    chosen.add_argument("--split-file", metavar="FILE|NAME",
                        help="training images: a split file ('path label...' per line) or an official "
                        "name (train_1, train_10, train) for nih/chexpert/rsna/siim")
    parser.add_argument("--config", type=Path, metavar="YAML", help="config file (configs/finetune/*.yaml)")
    parser.add_argument("--mode", choices=("finetune", "linear_probe"), help="model.mode")
    parser.add_argument("--device", metavar="DEV", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. optim.lr=1e-3 optim.steps=500 data.workers=8")
    parser.set_defaults(func=run)


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = flag_overrides(args)
    if args.mode is not None:
        values["model.mode"] = args.mode
    return values


def run(args: argparse.Namespace) -> int:
    from maco_cxr.config import apply_overrides
    from maco_cxr.tasks.classify import FinetuneConfig, finetune_classifier
    from maco_cxr.tasks.finetune_common import load_task_config

    config = load_task_config(FinetuneConfig, args.config)
    config = apply_overrides(config, _flag_overrides(args))
    config = apply_overrides(config, list(args.overrides))
    metrics = finetune_classifier(config)
    print(f"test mean AUC {fmt(metrics['mean_auc'])} over {len(metrics['classes'])} classes "
          f"({metrics['counts']['test']} test images); best validation AUC "
          f"{fmt(metrics['best_val_auc'])} at step {metrics['best_step']} of {metrics['steps']}")
    for name, auc in metrics["per_class_auc"].items():
        print(f"  {name:<28} {fmt(auc)}")
    print(f"outputs: {config.runtime.out}")
    return 0

