"""What `finetune`, `segment` and `detect` share: their common flags (as config keys), the
config they build, and the rank-0 printing under torchrun.

Flags map to config keys (``--model`` -> model.source, ``--dataset`` -> data.kind, ``--root``
-> data.root, ``--fraction`` -> data.fraction, ``--split-file`` -> data.train_split,
``--device`` -> runtime.device, ``--out`` -> runtime.out, ``--mode`` -> model.mode for
``finetune``); any other key is set with trailing ``key=value`` arguments (``optim.steps=500``).
Precedence: the ``--config`` file, then the flags, then the ``key=value`` arguments; an error
names where the bad key came from.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

from maco_cxr.cli._paths import existing_file, existing_path, model_source

TORCHRUN_HINT = ("Many GPUs: torchrun --standalone --nproc_per_node N -m maco_cxr {command} ... (optim.batch_size "
                 "is the global batch; a killed run resumes from its last checkpoint in --out)")


def add_common_arguments(parser: argparse.ArgumentParser, *, config_folder: str, dataset_help: str,
                         split_help: str) -> None:
    """--model, --dataset, --root, --fraction | --split-file, --config, --device, --out,
    --progress and trailing key=value overrides."""
    parser.add_argument("--model", required=True, type=model_source, metavar="M",
                        help="MaCo model directory, official maco.pth, or 'none' for random init (model.preset)")
    parser.add_argument("--dataset", metavar="KIND", help=dataset_help)
    parser.add_argument("--root", type=existing_path, metavar="DIR", help="dataset root folder (or store)")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--fraction", type=float, metavar="PCT",
                        help="keep a seeded PCT %% (1, 10, 100) of the training split, whole patients at a "
                        "time (clears data.train_split)")
    chosen.add_argument("--split-file", metavar="FILE|NAME", help=split_help)
    parser.add_argument("--config", type=existing_file, metavar="YAML", help=f"config file ({config_folder}/*.yaml)")
    parser.add_argument("--device", metavar="DEV", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. optim.steps=500 data.workers=8 runtime.resume=never")


def flag_overrides(args: argparse.Namespace) -> list[Any]:
    """The config keys the common flags set, each naming its flag (for error messages)."""
    from maco_cxr.config import Override

    values: list[Override] = [
        Override("model.source", None if args.model.lower() == "none" else args.model, "--model"),
        Override("runtime.out", str(args.out), "--out")]
    if args.dataset is not None:
        values.append(Override("data.kind", args.dataset, "--dataset"))
    if args.root is not None:
        values.append(Override("data.root", str(args.root), "--root"))
    if args.fraction is not None:
        values += [Override("data.fraction", float(args.fraction), "--fraction"),
                   Override("data.train_split", None, "--fraction")]
    if args.split_file is not None:
        values += [Override("data.train_split", args.split_file, "--split-file"),
                   Override("data.fraction", 100.0, "--split-file")]
    if args.device is not None:
        values.append(Override("runtime.device", args.device, "--device"))
    if args.progress:
        values.append(Override("runtime.progress", True, "--progress"))
    return values


def build_config(kind: type, args: argparse.Namespace, extra: list[Any] = ()) -> Any:
    """The task config: the --config file, then the flags, then the key=value arguments."""
    from maco_cxr.config import load_config, parse_overrides

    return load_config(kind, args.config, [*flag_overrides(args), *extra, *parse_overrides(args.overrides)])


def run_task(kind: type, train: Any, args: argparse.Namespace, extra: list[Any] = ()) -> tuple[Any, Any] | None:
    """Build the config, run ``train(config)`` and return ``(config, metrics)`` to report, or
    None on ranks other than 0 (they stay quiet) and for a run stopped by
    ``runtime.stop_at_step`` (it says how to continue)."""
    from maco_cxr.train.distributed import world_info_from_env

    config = build_config(kind, args, extra)
    master = world_info_from_env().is_master
    if not master:
        logging.getLogger().setLevel(logging.WARNING)
    metrics = train(config)
    if not master:
        return None
    if "stopped_at_step" in metrics:
        print(f"stopped at step {metrics['stopped_at_step']} (runtime.stop_at_step); run the same command again "
              f"to continue from the checkpoint in {args.out}")
        return None
    return config, metrics


def fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
