"""Training checkpoints, written atomically so a kill never leaves half of one.

Layout: ``<output_dir>/checkpoints/step-00000100/`` holding ``model/`` (the package format of
:func:`maco_cxr.hub.save_pretrained`, loadable with ``maco_cxr.hub.load``) and
``trainer_state.pt`` (optimizer, step, epoch, sampler position, RNG states, skipped samples,
schedule; plain types and tensors, read with ``torch.load(weights_only=True)``).

Atomicity: everything is written into a hidden temporary sibling directory which is then
renamed into place with ``os.replace`` (atomic on POSIX within one file system). A checkpoint
directory therefore exists complete or not at all; temporary leftovers of a killed write are
ignored by :func:`list_checkpoints` and removed by :func:`remove_stale_temporaries`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from maco_cxr.errors import CheckpointError
from maco_cxr.hub import WEIGHTS_NAME, save_pretrained
from maco_cxr.models.maco import MacoModel

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
MODEL_DIR = "model"
STATE_NAME = "trainer_state.pt"
STATE_VERSION = 1
_NAME = re.compile(r"^step-(\d+)$")
_TEMP_PREFIX = ".tmp-"


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


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """``runtime.resume`` -> the checkpoint to resume from (None: start afresh).

    ``auto``: the newest complete checkpoint in ``output_dir`` if any. A path: that checkpoint,
    or the newest one of a run directory; it must exist.
    """
    if resume is None:
        return None
    if resume == "auto":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if path.is_dir() and is_complete(path):
        return path
    latest = latest_checkpoint(path) if path.is_dir() else None
    if latest is None:
        raise CheckpointError(f"runtime.resume={resume}: no complete checkpoint there (expected a "
                              f"step-N directory with {STATE_NAME} and {MODEL_DIR}/, or a run "
                              "directory containing checkpoints/); use resume=auto or null")
    return latest


def save_checkpoint(output_dir: str | Path, step: int, model: MacoModel, state: dict[str, Any],
                    keep_last: int | None = None, extra_config: dict[str, Any] | None = None) -> Path:
    """Write checkpoint ``step`` atomically, then keep only the newest ``keep_last``."""
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{final.name}.", dir=root))
    try:
        save_pretrained(model, tmp / MODEL_DIR, extra_config)
        torch.save({"format_version": STATE_VERSION, **state}, tmp / STATE_NAME)
        _fsync_tree(tmp)
        if final.exists():
            old = root / f"{_TEMP_PREFIX}old.{final.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_last is not None:
        prune_checkpoints(output_dir, keep_last)
    return final


def _fsync_tree(directory: Path) -> None:
    """Flush the files to disk before the rename publishes them (survives a machine crash too)."""
    for path in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints; returns what was deleted."""
    found = list_checkpoints(output_dir)
    doomed = [path for _, path in found[:-keep_last]] if keep_last > 0 else [p for _, p in found]
    for path in doomed:
        shutil.rmtree(path)
        logger.debug("removed old checkpoint %s", path)
    return doomed


def remove_stale_temporaries(output_dir: str | Path) -> list[Path]:
    """Remove temporary directories that a killed write left behind."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    stale = [p for p in root.iterdir() if p.name.startswith(_TEMP_PREFIX) and p.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


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
        raise CheckpointError(f"{path}: trainer state format {version!r}, this maco-cxr reads "
                              f"{STATE_VERSION}; start afresh (runtime.resume=null) or use a matching version")
    return state


def load_model_weights(model: MacoModel, checkpoint: str | Path) -> None:
    """Copy a checkpoint's weights into ``model`` in place; every tensor must match."""
    path = Path(checkpoint) / MODEL_DIR / WEIGHTS_NAME
    try:
        state = load_file(str(path))
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint weights: {err}") from err
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: tensor shapes do not match the model ({err}); was model.* "
                              "changed since the checkpoint?") from err
    missing = [k for k in result.missing_keys if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{path}: does not match the model (missing {missing[:8]}, unexpected "
                              f"{result.unexpected_keys[:8]}); was model.* changed since the checkpoint?")
