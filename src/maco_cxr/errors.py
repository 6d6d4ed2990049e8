"""Exception types of maco-cxr.

Every error says what went wrong, where (file, row, field, shape) and what to do about it.
Catch :class:`MacoError` to handle all of them.
"""

from __future__ import annotations


class MacoError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(MacoError, ValueError):
    """A configuration value or key is invalid (the message names the key)."""


class DataError(MacoError, ValueError):
    """An input file, row or field cannot be used (the message names file, row and field)."""


class ImageReadError(DataError):
    """An image file cannot be decoded into pixels."""


class CheckpointError(MacoError, ValueError):
    """A checkpoint is missing tensors, has unexpected ones, or has the wrong shapes."""
