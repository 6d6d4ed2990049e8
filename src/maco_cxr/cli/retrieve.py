"""`maco-cxr retrieve`: image <-> report recall@k over a dataset with reports, with bootstrap intervals
(written to --out/summary.json by :func:`maco_cxr.tasks.retrieval.run_retrieval`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from maco_cxr.cli import _model_args as common
from maco_cxr.cli._paths import existing_path
from maco_cxr.cli._sources import run_source

if TYPE_CHECKING:
    from maco_cxr.tasks.results import Estimate


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "retrieve",
        help="image <-> report retrieval recall@1/5/10",
        description="Embed every image and its report, rank by cosine similarity and report recall@k "
        "both ways (image->report and report->image). Items with identical report text count as matches "
        "of each other. Give --manifest FILE, or --dataset KIND --root DIR.",
    )
    common.add_model_arguments(parser)
    parser.add_argument(
        "--manifest",
        type=existing_path,
        metavar="FILE",
        help="a manifest.csv / manifest.jsonl (same as --dataset manifest --root FILE)",
    )
    common.add_dataset_arguments(parser, required=False)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 10], help="cut-offs (default 1 5 10)")
    common.add_bootstrap_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("retrieval-results"), help="output folder (summary.json)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maco_cxr.errors import ConfigError
    from maco_cxr.tasks.retrieval import run_retrieval

    if args.manifest is not None:
        if args.dataset not in (None, "manifest"):
            raise ConfigError("give either --manifest FILE or --dataset KIND --root DIR, not both")
        args.dataset, args.root = "manifest", args.manifest
    elif args.dataset is None:
        raise ConfigError("give --manifest FILE or --dataset KIND --root DIR")
    dataset = common.build_dataset_from_args(args)
    model = common.load_model_from_args(args)
    result = run_retrieval(
        model,
        dataset,
        args.out,
        ks=args.k,
        **common.run_options(args),
        source=run_source(args),
    )
    print(
        f"{result.n_pairs} image-report pairs ({result.n_unique_reports} distinct reports, "
        f"{result.n_without_report} records without a report left out)"
    )
    common.print_unreadable(result)
    for direction, name in (("i2t", "image -> report"), ("t2i", "report -> image")):
        cells = "  ".join(_shown(f"R@{k}", result.metrics[f"{direction}_R@{k}"]) for k in args.k)
        print(f"{name:<16} {cells}")
    ci = result.summary["ci"]
    if ci is not None:
        print(
            f"95% CIs: {ci['n_resamples']} bootstrap resamples of the queries by {ci['unit']} "
            f"({ci['n_groups']}), seed {ci['seed']}"
        )
    print(f"wrote {result.summary_path}")
    return 0


def _shown(label: str, estimate: Estimate) -> str:
    interval = "" if estimate.low is None else f" [{estimate.low:.3f}, {estimate.high:.3f}]"
    return f"{label}={estimate.value:.4f}{interval}"
