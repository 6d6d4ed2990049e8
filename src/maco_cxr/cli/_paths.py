"""Argument types that check input paths while the command line is parsed.

A missing image or model is then reported at once, before torch and the model are imported
(seconds on a small machine), by argparse's usual ``error: argument --model: ...`` message.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["existing_file", "existing_path", "existing_path_or_none", "model_source"]


def existing_path(text: str) -> Path:
    """A file or folder that exists."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or folder")
    return path


def existing_file(text: str) -> Path:
    """A file that exists."""
    path = existing_path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: is a folder, expected a file")
    return path


def model_source(text: str) -> str:
    """An existing model directory or checkpoint file, or ``none`` (random initialisation)."""
    return text if text.lower() == "none" else str(existing_path(text))


def existing_path_or_none(text: str) -> Path | str:
    """An existing file or folder, or ``none`` (to switch something off)."""
    return "none" if text.lower() == "none" else existing_path(text)
