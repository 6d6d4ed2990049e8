"""What `finetune`, `segment` and `detect` share: their common flags as config keys."""

from __future__ import annotations

import argparse
import math
from typing import Any


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys set by the common flags (--model, --dataset, --root, --fraction,
    --split-file, --device, --out, --progress)."""
    values: dict[str, Any] = {"model.source": None if args.model.lower() == "none" else args.model,
                              "runtime.out": str(args.out)}
    if args.dataset is not None:
        values["data.kind"] = args.dataset
    if args.root is not None:
        values["data.root"] = str(args.root)
    if args.fraction is not None:
        values["data.fraction"] = float(args.fraction)
        values["data.train_split"] = None
    if args.split_file is not None:
        values["data.train_split"] = args.split_file
        values["data.fraction"] = 100.0
    if args.device is not None:
        values["runtime.device"] = args.device
    if args.progress:
        values["runtime.progress"] = True
    return values


def fmt(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"
