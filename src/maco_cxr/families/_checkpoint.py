"""Reading the peers' released state dicts: every mismatch an error naming the family, the file and the key.

The families build their modules from the tensors' shapes, so they share the three questions a loader asks:
how many numbered blocks a prefix holds, whether a tensor is there, and whether a module takes the file whole.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from maco_cxr.errors import CheckpointError

__all__ = ["count", "load_strict", "tensor"]


def count(state: dict[str, torch.Tensor], template: str) -> int:
    """How many consecutive indices ``template.format(i)`` names in ``state`` (blocks, layers)."""
    n = 0
    while template.format(n) in state:
        n += 1
    return n


def tensor(state: dict[str, torch.Tensor], key: str, path: Path, family: str) -> torch.Tensor:
    """``state[key]``, or a :class:`CheckpointError` naming the family and the missing key."""
    if key not in state:
        raise CheckpointError(f"{path}: the {family} checkpoint lacks tensor {key!r}")
    return state[key]


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: Path, family: str) -> None:
    """``load_state_dict`` whose every mismatch (shape, missing, unexpected) is a :class:`CheckpointError`."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the {family} checkpoint's tensors do not fit its sizes: {err}") from err
    if result.missing_keys:
        raise CheckpointError(f"{path}: the {family} checkpoint lacks tensor {result.missing_keys[0]!r}")
    if result.unexpected_keys:
        raise CheckpointError(f"{path}: the {family} checkpoint has an unexpected tensor {result.unexpected_keys[0]!r}")
