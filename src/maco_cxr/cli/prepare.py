"""`maco-cxr prepare SOURCE --dataset KIND --out STORE`: decode a dataset once into a store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from maco_cxr.cli._paths import existing_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="decode, letterbox and store a dataset for fast training",
        description="Read every image of a dataset once, letterbox it to SIZE x SIZE and write "
        "uint8 shards + manifest.jsonl + store.json into STORE (SIZE^2 bytes per image: 196 KiB "
        "at 448). Unreadable files are listed in STORE/prepare_report.json. Rerunning the same "
        "command after an interruption resumes from the finished shards.",
    )
    parser.add_argument("source", type=existing_path, help="dataset root directory")
    parser.add_argument(
        "--dataset",
        required=True,
        metavar="KIND",
        help="dataset adapter: manifest, cxr-real, mimic-cxr, chexpert, nih, rsna, siim, ms-cxr, covid-rural",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="STORE", help="output directory of the store")
    parser.add_argument("--size", type=int, default=448, help="side of the letterboxed images")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes (0 = in this process)")
    parser.add_argument("--split", default=None, help="the adapter's split to prepare (e.g. train, test)")
    parser.add_argument(
        "--dataset-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra adapter option, e.g. annotations=ms_cxr.csv or "
        "positives_only=true (VALUE is read as a config value; repeatable)",
    )
    parser.add_argument(
        "--exclude",
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE|ID",
        help="leave these images out (e.g. test images of a downstream evaluation): id-list "
        "files (one image id or path per line, official split files 'path label...', a CSV "
        "with an id column, MS-CXR's annotations) and/or inline ids; an image is left out "
        "when an entry equals its file stem or the last components of its path. The count "
        "is printed and listed in STORE/prepare_report.json",
    )
    parser.add_argument(
        "--ms-cxr",
        metavar="FILE",
        help="MS-CXR's annotations (or its dicom_id list): with --dataset mimic-cxr, count "
        "and warn about MS-CXR images left in the store (only --exclude removes them)",
    )
    parser.add_argument("--shard-size", type=int, default=1024, help="images per shard file")
    parser.add_argument(
        "--strict", action="store_true", help="stop at the first unreadable file instead of skipping and reporting it"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maco_cxr.config import parse_options
    from maco_cxr.data.datasets import build_dataset
    from maco_cxr.data.prepare import REPORT_FILE, prepare_dataset

    kwargs = parse_options(args.dataset_arg, "--dataset-arg")
    if args.split is not None:
        kwargs["split"] = args.split
    kwargs.setdefault("on_error", "raise" if args.strict else "skip")
    # absolute paths keep the manifest and the resume fingerprints independent of the cwd
    dataset = build_dataset(args.dataset, args.source.resolve(), **kwargs)
    report = prepare_dataset(
        dataset,
        args.out,
        args.size,
        workers=args.workers,
        shard_size=args.shard_size,
        on_error="raise" if args.strict else "skip",
        progress=not args.no_progress,
        source=args.dataset,
        exclude=args.exclude,
        ms_cxr=args.ms_cxr,
    )
    megabytes = report.n_ok * args.size * args.size / 1e6
    print(
        f"prepared {report.n_ok} images at {args.size}x{args.size} into {args.out} "
        f"({report.n_shards} shards, {report.n_reused_shards} reused, {megabytes:.1f} MB)"
    )
    if args.exclude:
        print(f"excluded {report.n_excluded} images named by --exclude (listed in {args.out / REPORT_FILE})")
    check = report.exclusion.ms_cxr if report.exclusion is not None else None
    if check and check["checked"] and check["remaining"]:
        print(
            f"warning: {check['remaining']} MS-CXR images are in the store; add {check['annotations'][0]} "
            "to --exclude to leave them out",
            file=sys.stderr,
        )
    if report.n_failed or report.skipped_rows:
        print(
            f"{report.n_failed} images could not be read and {len(report.skipped_rows)} "
            f"dataset rows were skipped; none of them is in the store; see "
            f"{args.out / REPORT_FILE}",
            file=sys.stderr,
        )
    return 0
