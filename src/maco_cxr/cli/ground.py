"""`maco-cxr ground`: a phrase's heatmap on one image, or a grounding evaluation of a dataset.

With ``--dataset`` the command builds the dataset(s) and model and calls
:func:`maco_cxr.tasks.grounding.run_grounding`, which writes (to --out):

- ``items.csv``: one row per (image, phrase) item: item, record, phrase, query, category,
  n_boxes, cnr, miou, pointing, target (boxes | mask), mask_pixels (ground-truth pixels on the
  224 grid), ``iou@t``, ``dice@t``, ``precision@t``, ``recall@t`` for t = 0.1 ... 0.5 (map
  scaled to [-1, 1], the official ``Pipeline.test`` thresholds), with validation also
  opt_threshold and opt_iou (the item's IoU at its category's validation threshold, map
  scaled to [0, 1]), then patient and path.
- ``metric.csv``: the official ``metric.csv`` of eval/common.py ``Pipeline.test``: one row per
  threshold 0.1 ... 0.5 and a last row "mean"; columns threshold, iou, cnr, pg, dice,
  recall, precision (item means, plain mean: an item NaN at a threshold makes it NaN),
  iou_cat ... precision_cat (mean over categories of the NaN-skipping category means), then
  iou_<category>, cnr_<category>, pg_<category>, dice_<category> for every category. Rounded
  to 3 decimals as the official file; NaN is an empty cell; summary.json holds it at full
  precision ("metric_table").
- ``opt_thresholds.csv`` (with a validation split): one row per category and a last row
  "mean" (over categories): category, threshold (chosen on validation: best mean IoU on the
  [0, 1] scaled map over 0.2 ... 0.8, ``Pipeline.get_opt_th``), val_iou, n_val, n_test, and
  the test items' mean iou, dice, precision and recall at that threshold (NaN-skipping means;
  the threshold rounded to 3 decimals as the official ``opt_th_only_pos.csv``, exact in
  summary.json).
- ``summary.json``: model, dataset, root, split and annotations (provenance), CNR, mIoU,
  pointing game per item, per category and category-averaged, the metric table, ``ci``
  (bootstrap intervals of CNR and mIoU), ``opt_thresholds`` and the overlays written
  (relative to --out).
- ``overlays/``: the first K items' maps over their images.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from maco_cxr.cli import _model_args as common
from maco_cxr.cli._paths import existing_file
from maco_cxr.cli._sources import run_source, validation_source

_DEFAULT_TEMPLATE = "Findings suggesting {c}."  # maco_cxr.tasks.grounding.DEFAULT_PHRASE_TEMPLATE


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ground",
        help="phrase grounding: a heatmap on one image, or CNR / mIoU over a dataset",
        description="With IMAGE and PHRASE: write the official MaCo grounding map of PHRASE on IMAGE (in the "
        "image's own geometry) as an overlay PNG and the raw map as .npy. With --dataset: evaluate every "
        "(image, phrase) item with boxes (MS-CXR, or a generic manifest with boxes.csv) or with masks (SIIM, "
        "covid-rural, chexlocalize, a manifest's masks.csv): CNR, mIoU, pointing game and the official "
        "per-threshold IoU / Dice / precision / recall on the letterboxed 224 grid, per item, per category "
        "and overall, with bootstrap 95 % intervals; with a validation split (--val-annotations or "
        "--val-split ...) also each category's threshold chosen on it and applied here. Writes items.csv, "
        "metric.csv (the official layout: one row per threshold 0.1..0.5 and 'mean'; columns threshold, "
        "iou, cnr, pg, dice, recall, precision, their _cat (category-mean) versions, then iou_/cnr_/pg_/"
        "dice_<category>), opt_thresholds.csv (with validation), summary.json and overlays of the first K "
        "items. See `maco_cxr.cli.ground` for every column.",
    )
    parser.add_argument("image", nargs="?", type=existing_file, help="image file (PNG, JPEG or DICOM)")
    parser.add_argument("phrase", nargs="?", help="the phrase to ground, e.g. 'right pleural effusion'")
    common.add_model_arguments(parser)
    common.add_dataset_arguments(parser, required=False)
    parser.add_argument(
        "--annotations",
        type=existing_file,
        metavar="FILE",
        help="MS-CXR annotations (CSV or COCO JSON) for --dataset ms-cxr",
    )
    parser.add_argument(
        "--target",
        choices=("auto", "boxes", "masks"),
        default="auto",
        help="ground truth: boxes (grouped by label into one item per image and phrase) or "
        "masks (one item per image and category: SIIM pneumothorax, covid-rural opacity, "
        "chexlocalize positive pathologies, manifest mask labels; mapped to the 224 grid "
        "nearest-neighbour; empty ones left out). Default auto: boxes when the dataset has "
        "any, else masks",
    )
    parser.add_argument(
        "--phrase-template",
        default=_DEFAULT_TEMPLATE,
        metavar="TEXT",
        help="the phrase of a mask item, {c} = its category (default "
        f"{_DEFAULT_TEMPLATE!r}, the official one; '{{c}}' = the bare name; without {{c}} "
        "one phrase for all, e.g. the official covid-rural 'Findings suggesting pneumonia.')",
    )
    parser.add_argument(
        "--phrases",
        nargs="+",
        metavar="LABEL",
        help="with --dataset: evaluate only boxes with these labels (e.g. 'left lung'), or "
        "with masks only these categories (e.g. Cardiomegaly)",
    )
    parser.add_argument(
        "--overlays",
        type=int,
        default=8,
        metavar="K",
        help="with --dataset: write overlays of the first K items (default 8)",
    )
    parser.add_argument(
        "--val-annotations",
        type=existing_file,
        metavar="FILE",
        help="MS-CXR validation annotations (CSV or COCO JSON): its items choose each "
        "category's threshold (read whole unless --val-split is given)",
    )
    common.add_validation_arguments(parser)
    common.add_bootstrap_arguments(parser)
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

    from maco_cxr._atomic import claim_output_folder, write_with
    from maco_cxr.data.io import read_image
    from maco_cxr.plots import save_overlay
    from maco_cxr.tasks.grounding import ground

    claim_output_folder(args.out, "grounding")
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
    from maco_cxr.tasks.grounding import run_grounding

    extra = {"annotations": args.annotations} if args.annotations is not None else {}
    dataset = common.build_dataset_from_args(args, **extra)
    val_dataset = None
    if args.val_annotations is not None:
        val_dataset = common.build_validation_dataset_from_args(
            args, inherit_split=False, annotations=args.val_annotations
        )
    elif common.wants_validation(args):
        val_dataset = common.build_validation_dataset_from_args(args, **extra)
    model = common.load_model_from_args(args)
    result = run_grounding(
        model,
        dataset,
        args.out,
        phrases=args.phrases,
        target=args.target,
        phrase_template=args.phrase_template,
        validation=val_dataset,
        overlays=args.overlays,
        **common.run_options(args),
        source=run_source(args, annotations=args.annotations),
        validation_source=None
        if val_dataset is None
        else validation_source(
            args, annotations=args.val_annotations if args.val_annotations is not None else args.annotations
        ),
    )
    _print_report(result.summary)
    tables = [p.name for p in result.files if p.suffix in (".csv", ".json")]
    print(f"wrote {', '.join(tables)} and {len(result.summary['overlays'])} overlays to {result.out}")
    return 0


def _interval(ci: dict[str, Any] | None, key: str) -> str:
    if ci is None:
        return ""
    low, high = ci[key]["low"], ci[key]["high"]
    return f"[{low:.3f}, {high:.3f}]"


def _print_report(s: dict[str, Any]) -> None:
    ci, table = s.get("ci"), s["metric_table"]
    print(f"{'category':<28} {'n':>5} {'CNR':>8} {'mIoU':>8} {'pointing':>9}")
    for name, row in s["per_category"].items():
        print(f"{name:<28} {row['n']:>5} {row['cnr']:>8.4f} {row['miou']:>8.4f} {row['pointing']:>9.3f}")
    print(f"{'items (mean)':<28} {s['n']:>5} {s['cnr']:>8.4f} {s['miou']:>8.4f} {s['pointing']:>9.3f}")
    c = s["category_mean"]
    print(
        f"{'categories (mean)':<28} {len(s['per_category']):>5} {c['cnr']:>8.4f} {c['miou']:>8.4f} "
        f"{c['pointing']:>9.3f}"
    )
    if ci is not None:
        print(
            f"{'items 95% CI':<28} {'':>5} CNR {_interval(ci, 'cnr')}  mIoU {_interval(ci, 'miou')}  "
            f"({ci['n_resamples']} resamples by {ci['unit']}, {ci['n_groups']} {ci['unit']}s, seed {ci['seed']})"
        )
    print(f"\n{'threshold':<10} {'IoU':>8} {'Dice':>8} {'precision':>10} {'recall':>8} {'IoU_cat':>8}")
    for i, t in enumerate(table["threshold"]):
        label = t if isinstance(t, str) else f"{t:.1f}"
        print(
            f"{label:<10} {table['iou'][i]:>8.4f} {table['dice'][i]:>8.4f} {table['precision'][i]:>10.4f} "
            f"{table['recall'][i]:>8.4f} {table['iou_cat'][i]:>8.4f}"
        )
    opt = s.get("opt_thresholds")
    if opt is not None:
        print(f"\n{'category (val threshold)':<28} {'thr':>5} {'val IoU':>8} {'n_test':>7} {'IoU':>8} {'Dice':>8}")
        for name, v in opt["per_category"].items():
            print(
                f"{name:<28} {v['threshold']:>5.2f} {v['val_iou']:>8.4f} {v['n_test']:>7} {v['iou']:>8.4f} "
                f"{v['dice']:>8.4f}"
            )
        print(
            f"{'items / categories':<28} {'':>5} {'':>8} {opt['n_test']:>7} {opt['iou']:>8.4f} "
            f"(category mean {opt['iou_cat']:.4f})"
        )
