"""`maco-cxr retrieve`: image <-> report recall@k over a dataset with reports."""

from __future__ import annotations

import argparse
from pathlib import Path

from maco_cxr.cli._paths import existing_path
from maco_cxr.cli import _model_args as common


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "retrieve", help="image <-> report retrieval recall@1/5/10",
        description="Embed every image and its report, rank by cosine similarity and report recall@k "
        "both ways (image->report and report->image). Items with identical report text count as matches "
        "of each other. Give --manifest FILE, or --dataset KIND --root DIR.")
    common.add_model_arguments(parser)
    parser.add_argument("--manifest", type=existing_path, metavar="FILE",
                        help="a manifest.csv / manifest.jsonl (same as --dataset manifest --root FILE)")
    common.add_dataset_arguments(parser, required=False)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 10], help="cut-offs (default 1 5 10)")
    parser.add_argument("--out", type=Path, default=None, help="write summary.json into this folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maco_cxr._atomic import write_json
    from maco_cxr.errors import ConfigError
    from maco_cxr.tasks.retrieval import retrieve

    if args.manifest is not None:
        if args.dataset not in (None, "manifest"):
            raise ConfigError("give either --manifest FILE or --dataset KIND --root DIR, not both")
        args.dataset, args.root = "manifest", args.manifest
    elif args.dataset is None:
        raise ConfigError("give --manifest FILE or --dataset KIND --root DIR")
    dataset = common.build_dataset_from_args(args)
    model = common.load_model_from_args(args)
    result = retrieve(model, dataset, ks=args.k, batch_size=args.batch_size, num_workers=args.workers,
                      progress=not args.no_progress)
    print(f"{result['n']} image-report pairs ({result['n_unique_reports']} distinct reports, "
          f"{result['n_without_report']} records without a report left out)")
    if result["n_unreadable"]:
        first = result["unreadable"][0]
        print(f"{result['n_unreadable']} unreadable images left out; first: {first['path']}: {first['reason']}")
    for direction, name in (("i2t", "image -> report"), ("t2i", "report -> image")):
        cells = "  ".join(f"R@{k}={result[f'{direction}_R@{k}']:.4f}" for k in args.k)
        print(f"{name:<16} {cells}")
    if args.out is not None:
        write_json(args.out / "summary.json", {"model": str(args.model), "dataset": args.dataset,
                                               "root": str(args.root), "split": args.split, **result})
        print(f"wrote {args.out / 'summary.json'}")
    return 0
