"""Exception types of maco-cxr.

Every error says what went wrong, where (file, row, field, shape) and what to do about it.
Catch :class:`MacoError` to handle all of them.
"""

from __future__ import annotations


class MacoError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(MacoError, ValueError):
    """A configuration value or key is invalid.

    ``key`` is the dotted key at fault (when one is), ``source`` where its value came from (a
    config file, the command line); both are part of the message.
    """

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None) -> None:
        self.detail, self.key, self.source = message, key, source
        super().__init__(message)

    def __str__(self) -> str:
        where = f"{self.key}: " if self.key else ""
        return f"{self.source}: {where}{self.detail}" if self.source else f"{where}{self.detail}"

    def within(self, prefix: str) -> ConfigError:
        """The same error one section down: ``key`` prefixed with ``prefix`` (e.g. ``"model."``)."""
        return ConfigError(
            self.detail, key=f"{prefix}{self.key}" if self.key else prefix.rstrip(".") or None, source=self.source
        )

    def from_source(self, source: str | None) -> ConfigError:
        return ConfigError(self.detail, key=self.key, source=self.source or source)


class DataError(MacoError, ValueError):
    """An input file, row or field cannot be used (the message names file, row and field)."""


class ImageReadError(DataError):
    """An image file cannot be decoded into pixels."""


class CheckpointError(MacoError, ValueError):
    """A checkpoint is missing tensors, has unexpected ones, or has the wrong shapes."""


class OutputFolderError(MacoError, FileExistsError):
    """An output folder holds files this package did not write, so it is neither filled nor replaced."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a resumable run; ``where`` says how far it got (e.g. ``"step 120"``, ``"chunk 3"``).

    A ``KeyboardInterrupt`` subclass so that code which lets Ctrl-C through still does; the CLI prints
    one line from it instead of a traceback.
    """

    def __init__(self, where: str) -> None:
        self.where = where
        super().__init__(where)
