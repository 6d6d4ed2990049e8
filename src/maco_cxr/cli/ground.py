"""`maco-cxr ground`: a phrase's heatmap on one image, or the MS-CXR grounding evaluation."""

from __future__ import annotations

import argparse
from pathlib import Path

from maco_cxr.cli._paths import existing_file
from maco_cxr.cli import _model_args as common


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ground", help="phrase grounding: a heatmap on one image, or CNR / mIoU over a dataset",
        description="With IMAGE and PHRASE: write the official MaCo grounding map of PHRASE on IMAGE (in the "
        "image's own geometry) as an overlay PNG and the raw map as .npy. With --dataset: evaluate every "
        "(image, phrase) item with boxes (MS-CXR, or a generic manifest with boxes.csv): CNR, mIoU and "
        "pointing game on the letterboxed 224 grid, per item, per category and overall; writes items.csv, "
        "summary.json and overlays of the first K items.")
    parser.add_argument("image", nargs="?", type=existing_file, help="image file (PNG, JPEG or DICOM)")
    parser.add_argument("phrase", nargs="?", help="the phrase to ground, e.g. 'right pleural effusion'")
    common.add_model_arguments(parser)
    common.add_dataset_arguments(parser, required=False)
    parser.add_argument("--annotations", type=existing_file, metavar="FILE",
                        help="MS-CXR annotations (CSV or COCO JSON) for --dataset ms-cxr")
    parser.add_argument("--phrases", nargs="+", metavar="LABEL",
                        help="with --dataset: evaluate only boxes with these labels (e.g. 'left lung')")
    parser.add_argument("--overlays", type=int, default=8, metavar="K",
                        help="with --dataset: write overlays of the first K items (default 8)")
    parser.add_argument("--out", type=Path, default=Path("grounding-results"), help="output folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maco_cxr.errors import ConfigError

    if args.dataset is None:
        if args.image is None or args.phrase is None:
            raise ConfigError("give IMAGE and PHRASE, or --dataset KIND --root DIR to evaluate")
        return _one_image(args)
    if args.image is not None:
        raise ConfigError("give either IMAGE PHRASE or --dataset, not both")
    return _evaluate(args)


def _one_image(args: argparse.Namespace) -> int:
    import numpy as np

    from maco_cxr._atomic import write_with
    from maco_cxr.data.io import read_image
    from maco_cxr.plots import save_overlay
    from maco_cxr.tasks.grounding import ground

    model = common.load_model_from_args(args)
    image = read_image(args.image)
    heatmap = ground(model, image, args.phrase)
    slug = "".join(ch if ch.isalnum() else "-" for ch in args.phrase.lower()).strip("-")[:40]
    stem = f"{args.image.stem}_{slug}"
    write_with(args.out / f"{stem}.npy", lambda tmp: np.save(tmp, heatmap))
    overlay = save_overlay(args.out / f"{stem}.png", image, heatmap, title=args.phrase)
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    print(f"{args.image} ({image.shape[1]}x{image.shape[0]}): peak of {args.phrase!r} at x={col}, y={row}")
    print(f"wrote {overlay} and {args.out / (stem + '.npy')}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from maco_cxr._atomic import write_csv, write_json
    from maco_cxr.tasks.grounding import evaluate_grounding, grounding_items

    extra = {"annotations": args.annotations} if args.annotations is not None else {}
    dataset = common.build_dataset_from_args(args, **extra)
    items = grounding_items(dataset, args.phrases)
    model = common.load_model_from_args(args)
    result = evaluate_grounding(model, dataset, items=items, overlays=args.overlays,
                                overlay_dir=args.out / "overlays", batch_size=args.batch_size,
                                num_workers=args.workers, progress=not args.no_progress)
    columns = list(result.rows[0])
    write_csv(args.out / "items.csv", columns, ([row[c] for c in columns] for row in result.rows))
    s = result.summary
    write_json(args.out / "summary.json", {"model": str(args.model), "dataset": args.dataset,
                                           "root": str(args.root), "split": args.split, **s,
                                           "overlays": [str(p) for p in result.overlays],
                                           "n_unreadable": len(result.failures), "unreadable": result.failures})
    print(f"{'category':<28} {'n':>5} {'CNR':>8} {'mIoU':>8} {'pointing':>9}")
    for name, row in s["per_category"].items():
        print(f"{name:<28} {row['n']:>5} {row['cnr']:>8.4f} {row['miou']:>8.4f} {row['pointing']:>9.3f}")
    print(f"{'items (mean)':<28} {s['n']:>5} {s['cnr']:>8.4f} {s['miou']:>8.4f} {s['pointing']:>9.3f}")
    c = s["category_mean"]
    print(f"{'categories (mean)':<28} {len(s['per_category']):>5} {c['cnr']:>8.4f} {c['miou']:>8.4f} "
          f"{c['pointing']:>9.3f}")
    print(f"wrote {args.out / 'summary.json'}, items.csv and {len(result.overlays)} overlays")
    return 0
