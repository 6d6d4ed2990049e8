"""Random-number state for exact resume, stored as plain types and tensors.

``torch.load(weights_only=True)`` accepts tensors, numbers, strings, lists, tuples and dicts,
so the Python and NumPy states are converted to those (NumPy's array becomes an int64 tensor).
Training runs inside :func:`isolated_rng`, which seeds the global generators for the run and
puts the caller's states back afterwards: the library never leaves global seeding behind.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def seed_for(*parts: int) -> int:
    """A 63-bit seed derived from ``parts`` (e.g. the run's seed, a rank, a stream number), so each
    stream of a run (data order, per-rank dropout, augmentation) has its own independent seed."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


def capture_rng_state(generator: torch.Generator | None, device: torch.device) -> dict[str, Any]:
    """Python, NumPy, torch CPU, the device's CUDA generator and ``generator`` (augmentation)."""
    version, internal, gauss = random.getstate()
    key, array, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": {
            "key": key,
            "state": torch.from_numpy(array.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "generator": generator.get_state() if generator is not None else None,
    }


def restore_rng_state(state: dict[str, Any], generator: torch.Generator | None, device: torch.device) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["key"],
            numpy_state["state"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])


@contextmanager
def isolated_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global generators (torch CPU, ``device``'s CUDA, Python, NumPy) with ``seed`` for
    the block and restore the caller's states when it ends."""
    saved = capture_rng_state(None, device)
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        restore_rng_state(saved, None, device)
