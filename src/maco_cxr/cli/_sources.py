"""The provenance a dataset command records in its report: what --model, --dataset, --root and the
split arguments named (see :class:`maco_cxr.tasks.results.RunSource`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from maco_cxr.tasks.results import RunSource


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _source(args: argparse.Namespace, prefix: str, annotations: Any) -> RunSource:
    from maco_cxr.tasks.results import RunSource

    return RunSource(
        model=_text(args.model),
        dataset=args.dataset,
        root=_text(args.root),
        split=getattr(args, f"{prefix}split"),
        official_split=getattr(args, f"{prefix}official_split"),
        split_file=_text(getattr(args, f"{prefix}split_file")),
        annotations=_text(annotations),
    )


def run_source(args: argparse.Namespace, *, annotations: Any = None) -> RunSource:
    """The :class:`RunSource` of the evaluated split (``--split``, ``--official-split``, ``--split-file``)."""
    return _source(args, "", annotations)


def validation_source(args: argparse.Namespace, *, annotations: Any = None) -> RunSource:
    """The :class:`RunSource` of the validation split (``--val-split`` and its list or file)."""
    return _source(args, "val_", annotations)
