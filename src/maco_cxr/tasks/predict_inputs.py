"""The inputs of a :func:`~maco_cxr.tasks.predict.predict` run: which files, what each one is, and
reading them in the loader workers.

- :func:`collect_inputs` walks files, folders (recursive; hidden names, which start with ``.``,
  are ignored and counted, and so is the output folder) and list files (one path per line).
- :func:`file_kind` tells an image to try from a file that is not an image at all (a
  ``README.txt`` beside the DICOMs) and from an empty file, by extension and by content (the
  signature bytes of PNG, JPEG, DICOM's ``DICM`` at byte 128, TIFF, JPEG 2000, GIF, WebP), so
  that non-images are listed as skipped, apart from the files that should have decoded and did not.
- :class:`PredictFiles` is the loader's dataset: per file its kind, its DICOM identifiers, the
  frontal filter and the model's prepared input, every problem recorded on the item instead of
  raised (one bad file never stops a run over a hospital's folder).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch.utils.data import Dataset

from maco_cxr.data.inputs import PathsInput, as_path_list
from maco_cxr.data.io import check_image_size, read_dicom_header, read_image_with_info
from maco_cxr.errors import DataError, MacoError

__all__ = [
    "DICOM_COLUMNS",
    "FRONTAL_VIEWS",
    "IMAGE_SUFFIXES",
    "FileKind",
    "PredictFiles",
    "collect_inputs",
    "file_kind",
]

FRONTAL_VIEWS = ("PA", "AP")
DICOM_COLUMNS = ("SOPInstanceUID", "StudyInstanceUID", "ViewPosition")

#: Extensions of files that are meant to be images: one that does not decode is a failure.
IMAGE_SUFFIXES = frozenset(
    {
        ".png",
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".dcm",
        ".dicom",
        ".dic",
        ".tif",
        ".tiff",
        ".bmp",
        ".gif",
        ".webp",
        ".jp2",
        ".j2k",
        ".pgm",
        ".ppm",
        ".pnm",
    }
)
_SIGNATURES = (  # (offset, bytes, format): what the first bytes of an image file hold
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"\xff\xd8\xff", "JPEG"),
    (128, b"DICM", "DICOM"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (8, b"WEBP", "WebP"),
)
_HEAD_BYTES = 512


@dataclass(frozen=True)
class FileKind:
    """``image``: decode it (a failure is a real failure); ``not-image``, ``empty``: ``reason`` says why."""

    kind: Literal["image", "not-image", "empty"]
    reason: str = ""


def _extension(path: Path) -> str:
    """The lower-case suffix, or "" when there is none or it is all digits (DICOM files are often named by
    their UID, ``1.2.840.113619.2.55.3.604``, whose "suffix" is no file type)."""
    suffix = path.suffix.lower()
    return "" if suffix[1:].isdigit() else suffix


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start >= len(head) - 3  # only a character cut at the end of the sample
    return True


def file_kind(path: str | os.PathLike[str]) -> FileKind:
    """What ``path`` is, from its extension and its first bytes (see the module docstring).

    A file that cannot be opened is an ``image``: :func:`~maco_cxr.data.io.read_image` then names the problem.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(_HEAD_BYTES)
    except OSError:
        return FileKind("image")
    if any(head[offset : offset + len(magic)] == magic for offset, magic, _ in _SIGNATURES):
        return FileKind("image")
    extension = _extension(path)
    if size == 0:
        if extension and extension not in IMAGE_SUFFIXES:
            return FileKind("not-image", f"not an image: an empty {extension} file")
        return FileKind("empty", "the file is empty (0 bytes); copy it again from its source")
    if extension in IMAGE_SUFFIXES:
        return FileKind("image")
    formats = ", ".join(dict.fromkeys(name for _, _, name in _SIGNATURES))
    if extension:
        return FileKind("not-image", f"not an image: a {extension} file without the signature of {formats}")
    if _looks_like_text(head):
        return FileKind("not-image", "not an image: a text file without an image extension or signature")
    return FileKind("image")  # binary without an extension: let the reader try (and name what is wrong)


# ------------------------------------------------------------------------------ walking the inputs


def collect_inputs(
    inputs: PathsInput, list_file: str | os.PathLike[str] | None, *, exclude: Path
) -> tuple[list[str], int]:
    """Sorted unique absolute paths of the input files, and the number of hidden entries ignored.

    ``inputs``: one path (a ``str``/``os.PathLike`` is one input, never its characters) or many.
    """
    found: set[str] = set()
    hidden = 0
    entries = [(Path(p), False) for p in as_path_list(inputs, "inputs")]  # (path, listed in the list file)
    if list_file is not None:
        listing = Path(list_file)
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{listing}: cannot read the list file ({err})") from err
        for line in lines:
            text = line.strip()
            if text and not text.startswith("#"):
                entry = Path(text)
                entries.append((entry if entry.is_absolute() else listing.absolute().parent / entry, True))
    if not entries:
        raise DataError("no inputs: give image files, folders or a list file")
    for given, listed in entries:
        entry = Path(os.path.abspath(given))
        if entry.is_dir():
            n_hidden, files = _walk(entry, exclude)
            hidden += n_hidden
            found.update(files)
        elif entry.exists() or listed:
            found.add(str(entry))  # a listed file that is missing becomes a failure row
        else:
            raise DataError(f"{entry}: no such file or folder")
    if not found:
        raise DataError(f"no files found in {', '.join(str(e) for e, _ in entries[:3])}")
    return sorted(found), hidden


def _walk(folder: Path, exclude: Path) -> tuple[int, list[str]]:
    """Files under ``folder`` (symbolic links followed, each real folder once), hidden names and
    ``exclude`` left out; returns the number of hidden entries and the files."""
    hidden = 0
    files: list[str] = []
    seen: set[str] = set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link back up the tree: do not loop
            dirs[:] = []
            continue
        seen.add(real)
        keep = []
        for name in sorted(dirs):
            if name.startswith("."):
                hidden += 1
            elif Path(root, name) != exclude:
                keep.append(name)
        dirs[:] = keep
        for name in names:
            if name.startswith("."):
                hidden += 1
            else:
                files.append(os.path.join(root, name))
    return hidden, files


# ------------------------------------------------------------------------------ reading in workers


def _reason(err: BaseException) -> str:
    return str(err) if isinstance(err, MacoError) else f"{type(err).__name__}: {err}"


class PredictFiles(Dataset):
    """Reads, sorts out and preprocesses one file per item (in the loader workers).

    Each item is ``{"path", "tags"}`` plus one of ``"not_image"`` (why it is no image),
    ``"failure"`` (why it cannot be read), ``"skipped"`` (why the frontal filter left it out) or
    ``"inputs"`` (the model's prepared input) with ``"shape"`` (and ``"pixels"`` when ``keep_pixels``).
    """

    def __init__(
        self,
        paths: Sequence[str],
        prepare: Callable[[np.ndarray], dict[str, Any]],
        *,
        frontal_only: bool,
        patient_id: bool,
        keep_pixels: bool,
    ) -> None:
        self.paths, self.prepare = list(paths), prepare
        self.frontal_only, self.patient_id, self.keep_pixels = frontal_only, patient_id, keep_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        item: dict[str, Any] = {"path": path, "tags": {}}
        kind = file_kind(path)
        if kind.kind == "not-image":
            return {**item, "not_image": kind.reason}
        if kind.kind == "empty":
            return {**item, "failure": f"{path}: {kind.reason}"}
        # Any exception is this one file's failure: a run over a hospital's folder must not stop on it.
        try:
            header = read_dicom_header(path, identifiers=DICOM_COLUMNS + (("PatientID",) if self.patient_id else ()))
        except Exception as err:  # noqa: BLE001 - one bad file must not stop the run
            return {**item, "failure": _reason(err)}
        if header is not None:
            item["tags"] = dict(header.identifiers)
        if header is not None and header.is_dicomdir:
            return {**item, "not_image": "not an image: a DICOMDIR (the index of a DICOM export)"}
        view = item["tags"].get("ViewPosition", "")
        if self.frontal_only and view and view.upper() not in FRONTAL_VIEWS:
            return {**item, "skipped": f"ViewPosition {view!r} is not a frontal view ({'/'.join(FRONTAL_VIEWS)})"}
        try:
            pixels, info = read_image_with_info(path)
            check_image_size(pixels.shape, path)
            item["inputs"] = self.prepare(pixels)
        except Exception as err:  # noqa: BLE001 - one bad file must not stop the run
            return {**item, "failure": _reason(err)}
        item["shape"] = tuple(int(s) for s in pixels.shape)
        item["colour"] = info.mode if info.converted_from_colour else ""
        if self.keep_pixels:
            item["pixels"] = pixels
        return item
