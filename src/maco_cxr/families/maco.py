"""The MaCo family: this package's own model, loaded by :func:`maco_cxr.hub.load`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maco_cxr.errors import ConfigError
from maco_cxr.hub import load as load_maco
from maco_cxr.models.maco import MacoModel

__all__ = ["load"]


def load(path: str | Path, *, tokenizer: str | Path | None = None, **options: Any) -> MacoModel:
    """A MaCo model directory, official ``maco.pth`` or named checkpoint (``options``: those of
    :func:`maco_cxr.hub.load`); MaCo's tokenizer ships with the package, so none is taken."""
    if tokenizer is not None:
        raise ConfigError("the maco family's tokenizer ships with the package; do not pass tokenizer=")
    return load_maco(path, **options)
