"""`maco-cxr compare`: several foundation models on the same images under one protocol
(:func:`maco_cxr.tasks.compare.compare` writes compare.csv, compare.md, compare.png and summary.json)."""

from __future__ import annotations

import argparse
from pathlib import Path

from maco_cxr.cli._model_args import dataset_kind
from maco_cxr.cli._paths import existing_path, family_tokenizer, model_path, recipe_file


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare foundation models (MaCo, CheXzero, BioViL, MRM, ...) on the same images",
        description="Run every --models spec (FAMILY:PATH; a plain path is MaCo) through the same task on the same "
        "images and write compare.csv (model, task, dataset, metric, value, ci_low, ci_high, n, and the paired "
        "test against the first model: DeLong for a class's AUC, paired bootstrap for means), compare.md, "
        "compare.png and summary.json to --out. A model whose family cannot do the task gets a row saying so.",
    )
    parser.add_argument("--models", nargs="+", required=True, type=model_path, metavar="SPEC", help="models")
    parser.add_argument("--task", required=True, choices=("zeroshot", "grounding", "linear", "finetune"))
    parser.add_argument("--dataset", required=True, type=dataset_kind(), metavar="KIND", help="dataset adapter")
    parser.add_argument("--root", required=True, type=existing_path, metavar="DIR", help="dataset root")
    parser.add_argument("--split", default=None, help="the adapter's split for zeroshot / grounding (e.g. test)")
    parser.add_argument(
        "--protocol",
        choices=("own", "common"),
        default="own",
        help="own (default): each model's authors' preprocessing, prompts and rule; common: our letterbox "
        "geometry and MaCo's official prompts for every model",
    )
    parser.add_argument(
        "--tokenizer",
        action="append",
        default=[],
        type=family_tokenizer,
        metavar="FAMILY=DIR",
        help="tokenizer folder of a family that needs one (repeatable)",
    )
    parser.add_argument("--classes", nargs="+", metavar="NAME", help="zero-shot classes (default: the dataset's)")
    parser.add_argument(
        "--config",
        type=recipe_file("finetune"),
        metavar="FILE|NAME",
        help="fine-tuning recipe for linear / finetune (a file, or a shipped name: rsna_1, tiny-synthetic, ...)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="fine-tuning recipe override (repeatable)"
    )
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap replicates (0 = none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maco_cxr.tasks.compare import compare

    result = compare(
        [str(m) for m in args.models],
        args.task,
        args.dataset,
        args.root,
        args.out,
        tokenizers=dict(args.tokenizer),
        protocol=args.protocol,
        classes=args.classes,
        dataset_options={} if args.split is None else {"split": args.split},
        finetune_config=args.config,
        finetune_overrides=args.set,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
    )
    print((result.out / "compare.md").read_text(encoding="utf-8"), end="")
    print(f"wrote {', '.join(path.name for path in result.files)} to {result.out}")
    return 0
