"""Argument types that check input paths while the command line is parsed.

A missing image or model is then reported at once, before torch and the model are imported
(seconds on a small machine), by argparse's usual ``error: argument --model: ...`` message.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

__all__ = ["existing_file", "existing_path", "existing_path_or_none", "model_source", "recipe_file"]


def existing_path(text: str) -> Path:
    """A file or folder that exists."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or folder")
    return path


def model_path(text: str) -> Path:
    """A model file or folder that exists, the name of a named checkpoint (``maco-base``), an
    ``hf-hub:ORG/NAME[@REV]`` spec, which :func:`maco_cxr.hub.resolve_model_path` resolves, or
    ``FAMILY:PATH`` (another foundation-model family's released file, e.g. ``chexzero:best.pt``)."""
    from maco_cxr.cache import NAMED_CHECKPOINTS
    from maco_cxr.families import split_model_spec

    family, rest = split_model_spec(text)
    if family != "maco":
        if not Path(rest).exists():
            raise argparse.ArgumentTypeError(f"{text}: {rest}: no such file or folder (the {family} checkpoint)")
        return Path(text)
    path = Path(text)
    # an hf-hub: spec is checked by the hub client when the model loads
    if path.exists() or text.startswith("hf-hub:") or text in NAMED_CHECKPOINTS:
        return path
    raise argparse.ArgumentTypeError(
        f"{text}: no such file or folder (nor a named checkpoint: {', '.join(NAMED_CHECKPOINTS)})"
    )


def family_tokenizer(text: str) -> tuple[str, Path]:
    """``FAMILY=DIR``: the tokenizer folder of one family (``--tokenizer`` of compare and reproduce)."""
    family, sep, folder = text.partition("=")
    if not sep or not family or not folder:
        raise argparse.ArgumentTypeError(f"{text}: write FAMILY=DIR, e.g. biovil=CXR-BERT/")
    return family, existing_path(folder)


def existing_file(text: str) -> Path:
    """A file that exists."""
    path = existing_path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: is a folder, expected a file")
    return path


def model_source(text: str) -> str:
    """An existing model directory or checkpoint file, a named checkpoint, or ``none`` (random initialisation)."""
    return text if text.lower() == "none" else str(model_path(text))


def existing_path_or_none(text: str) -> Path | str:
    """An existing file or folder, or ``none`` (to switch something off)."""
    return "none" if text.lower() == "none" else existing_path(text)


def recipe_file(folder: str) -> Callable[[str], Path]:
    """The type of ``--config``: a config file, or the name of a shipped recipe of ``folder``
    (``tiny-synthetic``, ``siim_10``, ``segment/siim_10``), resolved by
    :func:`maco_cxr.config.resolve_recipe`."""

    def recipe(text: str) -> Path:
        from maco_cxr.config import resolve_recipe
        from maco_cxr.errors import ConfigError

        try:
            return resolve_recipe(text, folder)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    return recipe
