"""`maco-cxr pretrain --config NAME|FILE.yaml [key=value ...]`: pre-train MaCo (also under torchrun)."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from maco_cxr.cli._paths import recipe_file

if TYPE_CHECKING:
    from maco_cxr.pretraining.config import PretrainConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="pre-train MaCo on image-report pairs (one CPU, one GPU or many under torchrun)",
        description="Pre-train MaCo as a YAML config says (a shipped recipe by name: tiny-synthetic, "
        "base-paper; or a file), with dotted "
        "key=value overrides, e.g. optim.lr=1e-4 model.preset=small runtime.output_dir=runs/x. "
        "Resumes from the newest checkpoint in runtime.output_dir by default. Many GPUs: "
        "torchrun --standalone --nproc_per_node 4 -m maco_cxr pretrain --config base-paper",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (values read as YAML)")
    parser.add_argument(
        "--config",
        type=recipe_file("pretrain"),
        metavar="NAME|FILE.yaml",
        help="pre-training recipe name (tiny-synthetic, base-paper) or config file",
    )
    parser.add_argument("--preset", metavar="NAME", help="model preset: tiny, small or base (= model.preset=NAME)")
    parser.add_argument(
        "--synthetic",
        type=int,
        metavar="N",
        help="train on N synthetic phantoms (= data.source=synthetic data.synthetic_count=N)",
    )
    parser.add_argument("--output-dir", metavar="DIR", help="= runtime.output_dir=DIR")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (= runtime.progress)",
    )
    parser.set_defaults(func=run)


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    items = []
    if args.preset is not None:
        items.append(f"model.preset={args.preset}")
    if args.synthetic is not None:
        items += ["data.source=synthetic", f"data.synthetic_count={args.synthetic}"]
    if args.output_dir is not None:
        items.append(f"runtime.output_dir={args.output_dir}")
    if args.progress is not None:
        items.append(f"runtime.progress={str(args.progress).lower()}")
    return items


def load_checked_config(args: argparse.Namespace) -> PretrainConfig:
    """The config of the command line, wholly checked (keys, types, ranges, the keys that depend
    on each other, the dataset kind) before torch is imported, so that a typo fails at once."""
    from maco_cxr.cli._model_args import unknown_dataset_kind
    from maco_cxr.errors import ConfigError
    from maco_cxr.pretraining.config import check_config, load_pretrain_config

    config = load_pretrain_config(args.config, _flag_overrides(args) + list(args.overrides))
    check_config(config)
    problem = unknown_dataset_kind(config.data.kind) if config.data.source == "manifest" else None
    if problem is not None:
        raise ConfigError(problem, key="data.kind")
    return config


def run(args: argparse.Namespace) -> int:
    config = load_checked_config(args)
    from maco_cxr.pretraining.pretrain import pretrain
    from maco_cxr.runtime.distributed import world_info_from_env

    if not world_info_from_env().is_master:
        logging.getLogger().setLevel(logging.WARNING)
    result = pretrain(config)
    if world_info_from_env().is_master and result.stopped_at_step is not None:
        print(
            f"stopped at step {result.stopped_at_step} of {result.total_steps} (runtime.stop_at_step); run "
            f"the same command again to continue from the checkpoint in {result.output_dir}"
        )
    elif world_info_from_env().is_master:
        print(f"model written to {result.model_dir}")
    return 0
