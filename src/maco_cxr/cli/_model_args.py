"""The model and dataset arguments that `zeroshot`, `ground`, `retrieve` and `predict` share,
and what they build from them (the model on its device, the dataset with its split, the
validation split that operating points are chosen on)."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from maco_cxr.cli._paths import existing_file, existing_path, model_path

if TYPE_CHECKING:
    from maco_cxr.data.datasets.base import ChestXrayDataset
    from maco_cxr.models.maco import MacoModel

DATASET_KINDS = (
    "manifest",
    "cxr-real",
    "mimic-cxr",
    "chexpert",
    "nih",
    "rsna",
    "siim",
    "ms-cxr",
    "covid-rural",
    "vindr-cxr",
    "chexlocalize",
)
"""The names of :data:`maco_cxr.data.datasets.DATASETS` (a test keeps them equal), listed here
because the registry imports torch: ``--dataset`` is checked before it."""


def unknown_dataset_kind(kind: str, valid: Sequence[str] = DATASET_KINDS) -> str | None:
    """Why ``kind`` is not a dataset kind (with the nearest valid one), or None when it is one."""
    if kind in valid:
        return None
    near = difflib.get_close_matches(kind, valid, n=1, cutoff=0.6)
    hint = f"did you mean {near[0]}? " if near else ""
    return f"unknown dataset kind {kind!r}; {hint}valid kinds: {', '.join(sorted(valid))}"


def dataset_kind(*extra: str) -> Callable[[str], str]:
    """The type of ``--dataset``: a registered dataset kind or one of ``extra`` (``store``)."""

    def kind(text: str) -> str:
        problem = unknown_dataset_kind(text, (*DATASET_KINDS, *extra))
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return text

    return kind


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, head counts of official checkpoints, --device, --batch-size, --workers."""
    parser.add_argument(
        "--model",
        required=True,
        type=model_path,
        metavar="M",
        help="model directory (config.json + model.safetensors), official maco.pth, a named checkpoint "
        "(maco-base: see maco-cxr download), or FAMILY:PATH for another family's released file "
        "(chexzero:best.pt; the README's families table)",
    )
    parser.add_argument(
        "--tokenizer",
        type=existing_path,
        metavar="DIR",
        help="the tokenizer files a FAMILY:PATH model's authors publish (the README's families table)",
    )
    parser.add_argument(
        "--text-heads",
        type=int,
        metavar="N",
        help="BERT heads of an official maco.pth (not stored in it; default width / 64)",
    )
    parser.add_argument("--vision-heads", type=int, metavar="N", help="ViT heads of an official maco.pth")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--workers", type=int, default=0, help="image-decoding processes (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_dataset_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    """--dataset KIND --root DIR [--split] [--official-split | --split-file] [-o key=value]."""
    parser.add_argument(
        "--dataset",
        required=required,
        type=dataset_kind(),
        metavar="KIND",
        help="dataset adapter: manifest, cxr-real, nih, chexpert, rsna, siim, ms-cxr, ...",
    )
    parser.add_argument("--root", type=existing_path, metavar="DIR", help="dataset root folder (or manifest file)")
    parser.add_argument("--split", default=None, help="the adapter's split (e.g. test, val)")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument(
        "--official-split",
        metavar="NAME",
        help="keep the images of the official MaCo split NAME (test, val, train_1, ...) "
        "with its labels (nih, chexpert, rsna, siim)",
    )
    chosen.add_argument(
        "--split-file",
        type=existing_file,
        metavar="FILE",
        help="keep the images listed in FILE ('path label...' per line)",
    )
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra keyword argument of the dataset adapter (value read as a config value: "
        "true/false, numbers, [lists]), "
        "e.g. -o annotations=ms_cxr.csv; repeatable",
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip (and count and list) unusable rows and unreadable image files instead of stopping at the first",
    )


def add_validation_arguments(parser: argparse.ArgumentParser) -> None:
    """--val-split NAME [--val-official-split NAME | --val-split-file FILE]: a validation split."""
    group = parser.add_argument_group(
        "validation split",
        "score a validation split of the same dataset first, with the same model, and "
        "choose operating points (thresholds) on it that are then applied to the evaluated split. It is "
        "built like the evaluated split (same --dataset, --root, -o options) with: the adapter split "
        "--val-split (default: --split), and the official split or split file given here (the evaluated "
        "split's --official-split / --split-file are not carried over)",
    )
    group.add_argument("--val-split", metavar="NAME", help="the adapter's validation split (e.g. val)")
    chosen = group.add_mutually_exclusive_group()
    chosen.add_argument(
        "--val-official-split",
        metavar="NAME",
        help="keep the images of the official MaCo split NAME (e.g. val) for validation",
    )
    chosen.add_argument(
        "--val-split-file",
        type=existing_file,
        metavar="FILE",
        help="keep the images listed in FILE ('path label...' per line) for validation",
    )


def _resamples(text: str) -> int:
    """A number of bootstrap resamples: 0 (no intervals) or more."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: give 0 (no intervals) or a number of resamples")
    return value


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments every dataset task function takes from the same flags: the
    bootstrap, the batch size, the loader workers and the progress bar."""
    return {
        "n_bootstrap": args.bootstrap,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "progress": not args.no_progress,
    }


def print_unreadable(result: Any) -> None:
    """The line a dataset command prints when images could not be read (listed in summary.json)."""
    if result.n_unreadable:
        first = result.summary["unreadable"][0]
        print(
            f"{result.n_unreadable} unreadable files left out (listed in summary.json); first: "
            f"{first['path']}: {first['reason']}"
        )


def add_bootstrap_arguments(parser: argparse.ArgumentParser) -> None:
    """--bootstrap N (default 1000, 0 = off) and --seed S (default 0)."""
    parser.add_argument(
        "--bootstrap",
        type=_resamples,
        default=1000,
        metavar="N",
        help="bootstrap resamples of the 95%% confidence intervals (default 1000; 0 = none); "
        "whole patients are resampled when the dataset records patient ids, else images",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default 0)")


def wants_validation(args: argparse.Namespace) -> bool:
    """True when any validation-split argument was given."""
    return any(getattr(args, name, None) is not None for name in ("val_split", "val_official_split", "val_split_file"))


def build_validation_dataset_from_args(
    args: argparse.Namespace, *, inherit_split: bool = True, **extra: Any
) -> ChestXrayDataset:
    """The validation dataset of :func:`add_validation_arguments`: the adapter split is
    ``--val-split``, else ``--split`` (``inherit_split=False``: else none, e.g. for a separate
    validation annotation file); ``extra`` are adapter keyword arguments."""
    values = dict(vars(args))
    values.update(
        split=args.val_split if args.val_split is not None else (args.split if inherit_split else None),
        official_split=getattr(args, "val_official_split", None),
        split_file=getattr(args, "val_split_file", None),
    )
    return build_dataset_from_args(argparse.Namespace(**values), **extra)


def load_model_from_args(args: argparse.Namespace) -> MacoModel:
    """The ``--model`` of the command: MaCo with its head counts, or a ``FAMILY:PATH`` model."""
    import torch

    from maco_cxr.errors import ConfigError
    from maco_cxr.families import load_family, split_model_spec
    from maco_cxr.hub import load

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    family, path = split_model_spec(str(args.model))
    if family != "maco":
        if args.text_heads is not None or args.vision_heads is not None:
            raise ConfigError(f"--text-heads and --vision-heads are options of MaCo checkpoints, not of {family}")
        return load_family(path, family, tokenizer=getattr(args, "tokenizer", None)).to(device)
    if getattr(args, "tokenizer", None) is not None:
        raise ConfigError("--tokenizer is for FAMILY:PATH models; MaCo's tokenizer ships with the package")
    return load(args.model, args.text_heads, vision_heads=args.vision_heads, map_location=device)


def build_dataset_from_args(args: argparse.Namespace, **extra: Any) -> ChestXrayDataset:
    from maco_cxr.config import parse_options
    from maco_cxr.data.datasets import build_dataset
    from maco_cxr.errors import ConfigError

    if args.root is None:
        raise ConfigError(f"--dataset {args.dataset} needs --root DIR")
    kwargs: dict[str, Any] = {**extra, **parse_options(args.option, "-o")}
    if args.split is not None:
        kwargs["split"] = args.split
    if args.skip_bad:
        kwargs["on_error"] = "skip"
    dataset = build_dataset(args.dataset, args.root, **kwargs)
    if args.official_split or args.split_file:
        from maco_cxr.data.splits import official_split_path, read_split_file, subset_by_split_file

        path = args.split_file or official_split_path(args.dataset, args.official_split)
        entries = read_split_file(path)
        dataset = subset_by_split_file(
            dataset,
            entries,
            use_file_labels=bool(entries and len(entries[0].labels)),
            on_error="skip" if args.skip_bad else "raise",
        )
    if len(dataset.skips):
        print(f"note: {len(dataset.skips)} rows/files were skipped (first: {dataset.skips.skipped[0]})")
    return dataset
