"""`maco-cxr synth`: write a synthetic phantom dataset (images, reports, labels, boxes, masks)."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic chest-radiograph phantom dataset",
        description="Draw N phantom chest radiographs with findings, reports, boxes and masks "
        "into DIR in the generic-manifest layout (manifest.csv, boxes.csv, masks.csv). "
        "Item i depends only on (seed, i).",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--n", type=int, required=True, metavar="N", help="number of images")
    parser.add_argument("--seed", type=int, required=True, metavar="S", help="random seed")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (512)")
    parser.add_argument("--workers", type=int, default=0, help="drawing processes; 0 draws in this process (default)")
    parser.add_argument(
        "--no-negations",
        dest="negations",
        action="store_false",
        help="reports name only what is present (no 'No pneumothorax.' sentences)",
    )
    parser.set_defaults(func=synth)


def synth(args: argparse.Namespace) -> int:
    from maco_cxr.data.synthetic import FINDINGS
    from maco_cxr.data.synthetic.writer import NO_FINDING, write_synthetic_dataset

    manifest = write_synthetic_dataset(
        args.out,
        args.n,
        args.seed,
        args.size,
        negations=args.negations,
        workers=args.workers,
        progress=sys.stderr.isatty(),
    )
    counts = {name: 0 for name in (*FINDINGS, NO_FINDING)}
    with manifest.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            for label in row["labels"].split("|"):
                counts[label] += 1
    summary = ", ".join(f"{name} {count}" for name, count in counts.items())
    print(f"wrote {args.n} phantoms to {args.out}: {summary}")
    return 0
