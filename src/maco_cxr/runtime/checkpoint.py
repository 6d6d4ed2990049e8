"""Training checkpoints of every loop (pre-training and fine-tuning), written atomically.

Layout: ``<output_dir>/checkpoints/step-00000100/`` holding ``model/`` (written by the loop's
model writer: :func:`maco_cxr.hub.save_pretrained` for MaCo, the fine-tuned format for task
models; ``model.safetensors`` inside) and ``trainer_state.pt`` (optimizer, step, sampler
position, RNG states, skipped samples, the run's config; plain types and tensors, read with
``torch.load(weights_only=True)``).

Each checkpoint is written through :func:`maco_cxr._atomic.atomic_directory`, so it exists
complete or not at all, and an old one is renamed to a hidden temporary before it is deleted;
so a run killed at any moment (Ctrl-C included) keeps its newest complete checkpoint, and the
leftovers of a killed write or deletion are ignored by :func:`list_checkpoints` and removed by
:func:`remove_stale_temporaries`.

Resuming checks that the run asked for is the run that was saved (:func:`check_same_run`):
a changed learning rate or model must not silently continue an old run.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from maco_cxr._atomic import TEMP_PREFIX, atomic_directory
from maco_cxr._atomic import remove_stale_temporaries as remove_temporaries_in
from maco_cxr.errors import CheckpointError

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
MODEL_DIR = "model"
WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "trainer_state.pt"
STATE_VERSION = 1
_NAME = re.compile(r"^step-(\d+)$")
_OPTIONAL_BUFFERS = ("position_ids", "token_type_ids")


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS


def is_complete(path: Path) -> bool:
    return (path / STATE_NAME).is_file() and (path / MODEL_DIR / WEIGHTS_NAME).is_file()


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as ``(step, path)``, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir() and is_complete(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in ``output_dir``, or None."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def resolve_resume(resume: str, output_dir: str | Path) -> Path | None:
    """``runtime.resume`` -> the checkpoint to resume from (None: start afresh).

    ``auto``: the newest complete checkpoint in ``output_dir`` if any; ``never``: None. A path:
    that checkpoint, or the newest one of a run directory; it must exist.
    """
    if resume == "never":
        return None
    if resume == "auto":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if path.is_dir() and is_complete(path):
        return path
    latest = latest_checkpoint(path) if path.is_dir() else None
    if latest is None:
        raise CheckpointError(
            f"runtime.resume={resume}: no complete checkpoint there (expected a "
            f"step-N directory with {STATE_NAME} and {MODEL_DIR}/, or a run "
            "directory containing checkpoints/); use resume=auto or never"
        )
    return latest


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    state: dict[str, Any],
    write_model: Callable[[Path], None],
    keep_last: int | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically, then keep only the newest ``keep_last``.

    ``write_model(folder)`` writes the model into ``folder`` (``MODEL_DIR``, with
    ``model.safetensors`` inside); ``state`` (plain types and tensors) goes to ``STATE_NAME``.
    """
    final = checkpoint_root(output_dir) / f"step-{step:08d}"
    with atomic_directory(final, "checkpoint") as tmp:
        write_model(tmp / MODEL_DIR)
        torch.save({"format_version": STATE_VERSION, **state}, tmp / STATE_NAME)
    if keep_last is not None:
        prune_checkpoints(output_dir, keep_last)
    return final


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints; returns what was deleted.

    Each is renamed to a hidden temporary first (one atomic step), so an interrupted deletion
    leaves no half-deleted folder under a checkpoint's name."""
    found = list_checkpoints(output_dir)
    doomed = [path for _, path in found[:-keep_last]] if keep_last > 0 else [p for _, p in found]
    for path in doomed:
        hidden = path.with_name(f"{TEMP_PREFIX}old.{path.name}")
        shutil.rmtree(hidden, ignore_errors=True)
        os.replace(path, hidden)
        shutil.rmtree(hidden)
        logger.debug("removed old checkpoint %s", path)
    return doomed


def remove_stale_temporaries(output_dir: str | Path) -> list[Path]:
    """Remove the temporaries that a killed checkpoint write left behind."""
    return remove_temporaries_in(checkpoint_root(output_dir))


def load_trainer_state(checkpoint: str | Path) -> dict[str, Any]:
    """``trainer_state.pt`` of a checkpoint, read with ``weights_only=True`` onto the CPU."""
    path = Path(checkpoint) / STATE_NAME
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: missing; {checkpoint} is not a complete checkpoint") from err
    except Exception as err:
        raise CheckpointError(f"{path}: cannot be read (weights_only=True): {err}") from err
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != STATE_VERSION:
        raise CheckpointError(
            f"{path}: trainer state format {version!r}, this maco-cxr reads "
            f"{STATE_VERSION}; start afresh (runtime.resume=never) or use a matching "
            "version"
        )
    return state


def load_model_weights(model: nn.Module, checkpoint: str | Path) -> None:
    """Copy a checkpoint's weights into ``model`` in place; every tensor must match."""
    path = Path(checkpoint) / MODEL_DIR / WEIGHTS_NAME
    try:
        state = load_file(str(path))
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint weights: {err}") from err
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: tensor shapes do not match the model ({err}); was model.* changed since the checkpoint?"
        ) from err
    missing = [k for k in result.missing_keys if not k.endswith(_OPTIONAL_BUFFERS)]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: does not match the model (missing {missing[:8]}, unexpected "
            f"{result.unexpected_keys[:8]}); was model.* changed since the checkpoint?"
        )


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_same_run(
    saved: Mapping[str, Any], current: Mapping[str, Any], *, checkpoint: Path, may_differ: Iterable[str]
) -> None:
    """Refuse to resume ``checkpoint`` when the config asked for differs from the saved one.

    ``saved``/``current`` are plain config dicts; keys listed in ``may_differ`` (how the run is
    watched or where it runs) may change. The error names every differing key with both values
    and says how to start afresh.
    """
    allowed = tuple(may_differ)
    old, new = _flatten(saved), _flatten(current)
    differing = sorted(
        key for key in old.keys() | new.keys() if old.get(key) != new.get(key) and not key.startswith(allowed)
    )
    if differing:
        shown = "; ".join(f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in differing[:12])
        more = f" (+{len(differing) - 12} more)" if len(differing) > 12 else ""
        raise CheckpointError(
            f"{checkpoint.parent.parent}: holds a run with other settings ({shown}{more}), so it cannot be "
            "resumed with these. Write the new run to another folder (runtime.output_dir / --out), or start "
            "afresh in this one with runtime.resume=never (its checkpoints are then replaced)."
        )
