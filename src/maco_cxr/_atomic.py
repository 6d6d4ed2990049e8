"""The one way this package writes outputs: never half written, readable by the user's group.

Everything is written into a hidden temporary sibling (same directory, so the final rename
stays on one file system), flushed to disk with ``fsync``, given the permissions a plain
``open``/``mkdir`` would have given it under the process umask, and renamed into place with
``os.replace`` (atomic on POSIX). A kill leaves either the old or the new version, plus at
most a hidden ``.tmp-*`` leftover that :func:`remove_stale_temporaries` clears.

The permission step matters: ``tempfile.mkdtemp`` creates 0700 directories and the
safetensors writer 0600 files, which would make a model saved on a shared cluster private to
its creator.

Folders follow one rule (:func:`claim_output_folder`, :func:`atomic_directory`): a writer uses a
new or empty folder, or one that this package wrote before for the same purpose, recognised by the
marker file :data:`MARKER_NAME` it leaves inside; any other folder is refused with the files it
holds, never filled or emptied.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from maco_cxr._version import __version__
from maco_cxr.errors import OutputFolderError

__all__ = [
    "MARKER_NAME",
    "TEMP_PREFIX",
    "atomic_directory",
    "claim_output_folder",
    "run_folder_kind",
    "atomic_file",
    "json_ready",
    "remove_stale_temporaries",
    "write_csv",
    "write_json",
    "write_text",
    "write_with",
]

TEMP_PREFIX = ".tmp-"
MARKER_NAME = ".maco-cxr.json"
_LISTED_FILES = 5


def _umask() -> int:
    """The process umask (read by setting it and putting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publishable(path: Path) -> None:
    """Give ``path`` (a file or a tree) the modes ``open``/``mkdir`` would give under the umask,
    then flush it to disk, deepest entries first."""
    mask = _umask()
    entries = [path, *path.rglob("*")] if path.is_dir() else [path]
    for entry in sorted(entries, key=lambda p: len(p.parts), reverse=True):
        os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~mask)
        flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if entry.is_dir() else 0)
        fd = os.open(entry, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``; an existing directory there (checked to be ours) is swapped out,
    then removed."""
    if final.is_dir() and not final.is_symlink():
        old = final.with_name(f"{TEMP_PREFIX}old.{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _resolved(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute, so that ``.`` or ``x/..`` have a name and a parent."""
    return Path(path).expanduser().resolve()


def _marker_kind(folder: Path) -> str | None:
    """The kind recorded in ``folder``'s marker, or None when it has no readable marker."""
    try:
        marker = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("written_by") != "maco-cxr":
        return None
    return str(marker.get("kind"))


def _check_ours(folder: Path, kind: str, verb: str) -> bool:
    """True when ``folder`` holds a ``kind`` output of this package, False when it is absent or
    empty; raises :class:`OutputFolderError` for anything else."""
    if not folder.exists() and not folder.is_symlink():
        return False
    if not folder.is_dir():
        raise OutputFolderError(f"{folder}: exists and is not a folder; choose another output folder")
    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return False
    found = _marker_kind(folder)
    if found == kind:
        return True
    shown = ", ".join(entries[:_LISTED_FILES]) + (
        f" and {len(entries) - _LISTED_FILES} more" if len(entries) > _LISTED_FILES else ""
    )
    whose = (
        f"maco-cxr wrote it as a {found} output, not a {kind} output"
        if found is not None
        else "maco-cxr did not write it (no " + MARKER_NAME + " marker)"
    )
    raise OutputFolderError(
        f"{folder}: refusing to {verb} a folder that holds files ({shown}): {whose}. "
        "Choose a new or empty folder, or move those files away yourself"
    )


def _marker(kind: str) -> dict[str, str]:
    return {"written_by": "maco-cxr", "version": __version__, "kind": kind}


def run_folder_kind(name: str) -> str:
    """The output-folder kind of a training run named ``name`` (``pretrain``, ``segmentation``...)."""
    return f"{name}-run"


def claim_output_folder(path: str | os.PathLike[str], kind: str) -> Path:
    """The output folder ``path`` for a writer that adds files to it (a report, a run, a store):
    created when new, marked when empty, reused when this package's ``kind`` writer marked it
    before; any other folder raises :class:`OutputFolderError` naming it and its files.

    Returns the resolved path.
    """
    folder = _resolved(path)
    if not _check_ours(folder, kind, "write into"):
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / MARKER_NAME, _marker(kind))
    return folder


@contextmanager
def atomic_directory(path: str | os.PathLike[str], kind: str) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes ``path`` when the block succeeds.

    ``path`` must be absent, empty, or a ``kind`` folder this package wrote (its marker, which the
    new folder gets too); anything else raises :class:`OutputFolderError` before any work is done.
    On an exception the temporary directory is removed and ``path`` is left as it was.
    """
    final = _resolved(path)
    _check_ours(final, kind, "replace")
    if final.is_dir() and (Path.cwd() == final or final in Path.cwd().parents):
        raise OutputFolderError(
            f"{final}: is the current working directory or holds it; replacing it would "
            "leave this shell in a deleted folder. Name a new subfolder instead, e.g. "
            f"{final / 'out'}"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{final.name}.", dir=final.parent))
    try:
        yield tmp
        write_json(tmp / MARKER_NAME, _marker(kind))
        _publishable(tmp)
        _replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w", **open_kwargs: Any) -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; it replaces ``path`` when the block ends."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{final.name}.", dir=final.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
        _publishable(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_with(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` (e.g. ``numpy.save``, ``safetensors.save_file``) on a temporary
    sibling file, then publish it as ``path``."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{final.name}.", dir=final.parent, suffix=final.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        writer(tmp)
        _publishable(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_file(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def write_csv(path: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """``header`` then ``rows`` as CSV, published in one rename."""
    with atomic_file(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return Path(path)


def json_ready(value: Any) -> Any:
    """Plain JSON types: NaN/inf -> null (JSON has none), numpy and torch scalars and arrays
    -> numbers and lists, paths -> strings, tuples -> lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return json_ready(value.tolist())
    return value


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Atomic, strict JSON (``allow_nan=False`` after :func:`json_ready`)."""
    return write_text(path, json.dumps(json_ready(payload), indent=2, allow_nan=False) + "\n")


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove the ``.tmp-*`` leftovers a killed write left directly inside ``directory``."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale
