"""`maco-cxr reproduce --model M --data data.yaml --out DIR`: the paper's evaluation protocol as one table."""

from __future__ import annotations

import argparse
from pathlib import Path

from maco_cxr.cli._paths import existing_file, existing_path, family_tokenizer, model_path

_TASKS = ("zeroshot", "grounding", "linear", "finetune", "segment", "detect")  # maco_cxr.tasks.reproduce.TASKS
_DATASETS = ("nih", "chexpert", "rsna", "siim", "ms-cxr", "covid-rural")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reproduce",
        help="run the paper's evaluations on the datasets you have; one table beside the published numbers",
        description="Run the MaCo paper's evaluation protocol (docs/protocols.md) on the datasets named in "
        "--data: zero-shot NIH-14 / RSNA / SIIM / CheXpert-5, MS-CXR grounding, linear probe and fine-tuning at "
        "1/10/100 % (NIH, CheXpert, RSNA), segmentation (SIIM, COVID rural) and RSNA detection, each with the "
        "shipped recipe. Datasets without a root are skipped and listed. Writes DIR/<cell>/ per cell and "
        "DIR/reproduce.md + reproduce.json: our number, the published one with its table and row, the "
        "difference and the equivalent maco-cxr command. A failing cell is recorded and the run goes on; "
        "rerunning the command reuses finished cells and resumes interrupted fine-tuning. The full table is "
        "days of GPU time: select cells with --tasks, --datasets and --fractions.",
    )
    parser.add_argument(
        "--model",
        required=True,
        type=model_path,
        metavar="M",
        help="MaCo model directory, official maco.pth or a named checkpoint",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=[],
        type=model_path,
        metavar="SPEC",
        help="other models (FAMILY:PATH, e.g. mrm:MRM.pth) run through the same cells: extra table columns",
    )
    parser.add_argument(
        "--tokenizer",
        action="append",
        default=[],
        type=family_tokenizer,
        metavar="FAMILY=DIR",
        help="tokenizer folder of a --models family that needs one (repeatable)",
    )
    parser.add_argument(
        "--data",
        required=True,
        type=existing_file,
        metavar="YAML",
        help="dataset roots: nih: {root: DIR}, chexpert, rsna, siim, ms_cxr: {root: MIMIC-JPG, "
        "annotations: FILE}, covid_rural: {root: DIR, train_split/val_split/test_split: FILE}, "
        "mimic; each may also give options (adapter arguments)",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=_TASKS,
        default=list(_TASKS),
        metavar="TASK",
        help=f"tasks to run (default all): {' '.join(_TASKS)}",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=_DATASETS,
        metavar="NAME",
        help=f"datasets to run (default: all in --data): {' '.join(_DATASETS)}",
    )
    parser.add_argument(
        "--fractions",
        nargs="+",
        type=int,
        choices=(1, 10, 100),
        default=[1, 10, 100],
        metavar="PCT",
        help="label fractions in %% of the fine-tuning tasks (default 1 10 100)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny schedules and image sizes (tests, smoke runs); labelled NOT comparable",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--workers", type=int, default=0, help="image-decoding processes (default 0)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="images per forward pass of the zero-shot and grounding cells (default 32)",
    )
    parser.add_argument("--overlays", type=int, default=8, metavar="K", help="grounding overlays written (default 8)")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip (count and list) rows, files and split entries that are missing or unreadable "
        "instead of failing the cell; cells finished without it are reused, and cells "
        "finished with it are reused without it when they left nothing out",
    )
    parser.add_argument(
        "--configs",
        type=existing_path,
        metavar="DIR",
        help="a folder of recipes (finetune/, segment/, detect/) to use instead of the shipped maco_cxr/recipes",
    )
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="data-file overrides, e.g. nih.root=/data/nih rsna.options.positives_only=true",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maco_cxr.tasks.reproduce import ReproduceOptions, load_reproduce_data, reproduce

    data = load_reproduce_data(args.data, args.overrides)
    options = ReproduceOptions(
        tasks=tuple(args.tasks),
        fractions=tuple(args.fractions),
        datasets=None if args.datasets is None else tuple(args.datasets),
        quick=args.quick,
        device=args.device,
        workers=args.workers,
        batch_size=args.batch_size,
        skip_bad=args.skip_bad,
        configs=None if args.configs is None else str(args.configs),
        overlays=args.overlays,
        progress=args.progress,
    )
    report = reproduce(
        args.model,
        data,
        args.out,
        options,
        data_file=str(args.data),
        peers=[str(m) for m in args.models],
        tokenizers=dict(args.tokenizer),
    )
    every = [*report.cells, *(c for cells in report.peers.values() for c in cells)]
    counts = {status: sum(c.status == status for c in every) for status in ("done", "reused", "failed")}
    print(
        f"{len(every)} cells: {counts['done']} run, {counts['reused']} reused, {counts['failed']} failed"
        + (f"; skipped datasets: {', '.join(report.skipped_datasets)}" if report.skipped_datasets else "")
    )
    for cell in report.failed:
        print(f"  failed {cell.id}: {cell.error}")
    if report.quick:
        print("quick mode: tiny schedules, NOT comparable to the paper")
    print(f"wrote {report.markdown_path} and {report.json_path}")
    return 1 if report.failed else 0
