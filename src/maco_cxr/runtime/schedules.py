"""Per-iteration learning-rate schedules, as multipliers of each param group's base lr.

Pure functions of the step so that resuming at step k gives exactly the lr an uninterrupted run
had at step k (no scheduler state to restore beyond the step itself).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

ScheduleName = Literal["cosine", "poly", "constant"]


def lr_multiplier(
    step: int,
    total_steps: int,
    warmup_steps: int,
    schedule: ScheduleName = "cosine",
    *,
    warmup_start: float = 0.0,
    final: float = 0.0,
    power: float = 1.0,
) -> float:
    """Linear warm-up from ``warmup_start`` to 1 over ``warmup_steps``, then decay to ``final``.

    ``cosine``: half-cycle cosine; ``poly``: (1 - progress)^power; ``constant``: 1.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_start + (1.0 - warmup_start) * step / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "cosine":
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "poly":
        return final + (1.0 - final) * (1.0 - progress) ** power
    raise ValueError(f"schedule: unknown schedule {schedule!r}; choose cosine, poly or constant")


def set_learning_rate(optimizer: torch.optim.Optimizer, multiplier: float) -> None:
    """Set every group's lr to its ``base_lr`` (x its ``lr_scale``) times ``multiplier``."""
    for group in optimizer.param_groups:
        group.setdefault("base_lr", group["lr"])
        group["lr"] = group["base_lr"] * group.get("lr_scale", 1.0) * multiplier
