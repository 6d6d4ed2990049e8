"""The provenance a dataset command records in its report: what --model, --dataset, --root and the
split arguments named (see :class:`maco_cxr.tasks.results.RunSource`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from maco_cxr.tasks.results import RunSource


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def run_source(args: argparse.Namespace, *, annotations: Any = None) -> RunSource:
    """The :class:`RunSource` of the evaluated split (``--split``, ``--official-split``, ``--split-file``)."""
    from maco_cxr.tasks.results import RunSource

    return RunSource(
        model=_text(args.model),
        dataset=args.dataset,
        root=_text(args.root),
        split=args.split,
        official_split=args.official_split,
        split_file=_text(args.split_file),
        annotations=_text(annotations),
    )


def validation_source(args: argparse.Namespace, *, annotations: Any = None) -> RunSource:
    """The :class:`RunSource` of the validation split (``--val-split`` and its list or file)."""
    from maco_cxr.tasks.results import RunSource

    return RunSource(
        model=_text(args.model),
        dataset=args.dataset,
        root=_text(args.root),
        split=args.val_split,
        official_split=args.val_official_split,
        split_file=_text(args.val_split_file),
        annotations=_text(annotations),
    )
