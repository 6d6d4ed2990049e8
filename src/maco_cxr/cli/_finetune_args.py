"""What `finetune`, `segment` and `detect` share: their common flags (as config keys), the
config they build, and the rank-0 printing under torchrun.

Flags map to config keys (``--model`` -> model.source, ``--dataset`` -> data.kind, ``--root``
-> data.root, ``--fraction`` -> data.fraction, ``--split-file`` -> data.train_split,
``--device`` -> runtime.device, ``--out`` -> runtime.out, ``--mode`` -> model.mode for
``finetune``); any other key is set with trailing ``key=value`` arguments (``optim.steps=500``).
Precedence: the ``--config`` file, then the flags, then the ``key=value`` arguments; an error
names where the bad key came from. The whole config (keys, types, ranges, the dataset kind) is
read and checked before the training code and torch are imported, so a typo fails at once.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

from maco_cxr.cli._model_args import DATASET_KINDS, dataset_kind, unknown_dataset_kind
from maco_cxr.cli._paths import existing_path, model_source, recipe_file

DATASET_KINDS_AND_STORE = (*DATASET_KINDS, "store")

TORCHRUN_HINT = (
    "Many GPUs: torchrun --standalone --nproc_per_node N -m maco_cxr {command} ... (optim.batch_size "
    "is the global batch; a killed run resumes from its last checkpoint in --out)"
)


def add_common_arguments(
    parser: argparse.ArgumentParser, *, config_folder: str, dataset_help: str, split_help: str
) -> None:
    """--model, --dataset, --root, --fraction | --split-file, --config, --device, --out,
    --progress and trailing key=value overrides."""
    parser.add_argument(
        "--model",
        required=True,
        type=model_source,
        metavar="M",
        help="MaCo model directory, official maco.pth, or 'none' for random init (model.preset)",
    )
    parser.add_argument("--dataset", type=dataset_kind("store"), metavar="KIND", help=dataset_help)
    parser.add_argument("--root", type=existing_path, metavar="DIR", help="dataset root folder (or store)")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument(
        "--fraction",
        type=float,
        metavar="PCT",
        help="keep a seeded PCT %% (1, 10, 100) of the training split, whole patients at a "
        "time (clears data.train_split)",
    )
    chosen.add_argument("--split-file", metavar="FILE|NAME", help=split_help)
    parser.add_argument(
        "--config",
        type=recipe_file(config_folder),
        metavar="NAME|YAML",
        help=f"a shipped {config_folder} recipe by name (maco_cxr/recipes/{config_folder}/NAME.yaml) or a config file",
    )
    parser.add_argument("--device", metavar="DEV", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. optim.steps=500 data.workers=8 runtime.resume=never",
    )


def flag_overrides(args: argparse.Namespace) -> list[Any]:
    """The config keys the common flags set, each naming its flag (for error messages)."""
    from maco_cxr.config import Override

    values: list[Override] = [
        Override("model.source", None if args.model.lower() == "none" else args.model, "--model"),
        Override("runtime.out", str(args.out), "--out"),
    ]
    if args.dataset is not None:
        values.append(Override("data.kind", args.dataset, "--dataset"))
    if args.root is not None:
        values.append(Override("data.root", str(args.root), "--root"))
    if args.fraction is not None:
        values += [
            Override("data.fraction", float(args.fraction), "--fraction"),
            Override("data.train_split", None, "--fraction"),
        ]
    if args.split_file is not None:
        values += [
            Override("data.train_split", args.split_file, "--split-file"),
            Override("data.fraction", 100.0, "--split-file"),
        ]
    if args.device is not None:
        values.append(Override("runtime.device", args.device, "--device"))
    if args.progress:
        values.append(Override("runtime.progress", True, "--progress"))
    return values


def build_config(kind: type, args: argparse.Namespace, extra: list[Any] = ()) -> Any:
    """The task config: the --config file, then the flags, then the key=value arguments; its
    ``data.kind`` must be a dataset kind or ``store`` (the error names where it was set)."""
    from maco_cxr.config import load_config, parse_overrides
    from maco_cxr.errors import ConfigError

    overrides = [*flag_overrides(args), *extra, *parse_overrides(args.overrides)]
    config = load_config(kind, args.config, overrides)
    problem = unknown_dataset_kind(config.data.kind, DATASET_KINDS_AND_STORE)
    if problem is not None:
        setters = [o.source for o in overrides if o.key == "data.kind"]
        source = setters[-1] if setters else str(args.config) if args.config is not None else None
        raise ConfigError(problem, key="data.kind", source=source)
    return config


def run_task(kind: type, trainer: str, args: argparse.Namespace, extra: list[Any] = ()) -> tuple[Any, Any] | None:
    """Build and check the config, then import and run ``maco_cxr.tasks.finetune.<trainer>``
    on it and return ``(config, metrics)`` to report, or None on ranks other than 0 (they stay quiet)
    and for a run stopped by ``runtime.stop_at_step`` (it says how to continue)."""
    config = build_config(kind, args, extra)
    import maco_cxr.tasks.finetune as tasks
    from maco_cxr.runtime.distributed import world_info_from_env

    train = getattr(tasks, trainer)
    master = world_info_from_env().is_master
    if not master:
        logging.getLogger().setLevel(logging.WARNING)
    result = train(config)
    if not master:
        return None
    if result.stopped_at_step is not None:
        print(
            f"stopped at step {result.stopped_at_step} (runtime.stop_at_step); run the same command again "
            f"to continue from the checkpoint in {args.out}"
        )
        return None
    return config, result.summary


def fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
