"""`maco-cxr pretrain --config FILE.yaml [key=value ...]`: pre-train MaCo (also under torchrun)."""

from __future__ import annotations

import argparse
import logging

from maco_cxr.cli._paths import existing_file


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="pre-train MaCo on image-report pairs (one CPU, one GPU or many under torchrun)",
        description="Pre-train MaCo as a YAML config says (see configs/pretrain/), with dotted "
        "key=value overrides, e.g. optim.lr=1e-4 model.preset=small runtime.output_dir=runs/x. "
        "Resumes from the newest checkpoint in runtime.output_dir by default. Many GPUs: "
        "torchrun --standalone --nproc_per_node 4 -m maco_cxr pretrain --config FILE.yaml",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides (values read as YAML)")
    parser.add_argument("--config", type=existing_file, metavar="FILE.yaml", help="pre-training config file")
    parser.add_argument("--preset", metavar="NAME", help="model preset: tiny, small or base "
                        "(= model.preset=NAME)")
    parser.add_argument("--synthetic", type=int, metavar="N", help="train on N synthetic phantoms "
                        "(= data.source=synthetic data.synthetic_count=N)")
    parser.add_argument("--output-dir", metavar="DIR", help="= runtime.output_dir=DIR")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show a progress bar (= runtime.progress)")
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


def run(args: argparse.Namespace) -> int:
    from maco_cxr.train.config import load_pretrain_config
    from maco_cxr.train.distributed import world_info_from_env
    from maco_cxr.train.pretrain import pretrain

    if not world_info_from_env().is_master:
        logging.getLogger().setLevel(logging.WARNING)
    config = load_pretrain_config(args.config, _flag_overrides(args) + list(args.overrides))
    final = pretrain(config)
    if world_info_from_env().is_master:
        print(f"model written to {final}")
    return 0
