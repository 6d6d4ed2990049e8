"""The contract every dataset adapter follows.

An adapter turns one public dataset layout into a list of :class:`Record` (cheap: paths,
text, labels, boxes; no pixels) and reads pixels only in ``__getitem__``. Everything
downstream (prepare, training, evaluation) relies only on this contract.

Conventions:
- ``labels``: float32 ``[K]`` in the order of ``classes``; 1 positive, 0 negative, NaN unknown.
- ``boxes``: float32 ``[M, 4]`` as ``x_min, y_min, x_max, y_max`` in pixels of the image as
  read by :func:`maco_cxr.data.read_image` (original geometry).
- ``box_labels``: one phrase or category name per box (MS-CXR style phrases where known).
- ``mask_paths``: binary masks, same size as the image; the adapter may instead build the
  mask itself (e.g. from RLE) by overriding :meth:`ChestXrayDataset.read_mask`.
- Bad rows: with ``on_error="raise"`` a :class:`DataError` names file, line and field; with
  ``on_error="skip"`` they go to ``skips`` and one warning gives their count
  (:func:`row_guard`, :func:`log_skips`).
- Unreadable files (a truncated PNG, a text file named ``.dcm``) are found only when pixels
  are read. With ``on_error="raise"`` ``__getitem__`` raises; with ``"skip"`` it returns a
  *failed sample* ``{"index", "path", "error"}`` without pixels, which every consumer (the
  loaders of zero-shot, grounding, retrieval, fine-tuning and pre-training) leaves out or
  replaces and counts in its report (:func:`is_failed`, :func:`failure_of`). A worker
  process cannot report back through the dataset, so the sample itself carries the failure.
"""

from __future__ import annotations

import csv
import gzip
import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO, TypedDict

import numpy as np
import torch
from torch.utils.data import Dataset

from maco_cxr.errors import ConfigError, DataError

OnError = Literal["raise", "skip"]


@dataclass
class Record:
    """One image and everything known about it, before any pixel is read."""

    image_path: Path
    report: str | None = None
    labels: np.ndarray | None = None
    boxes: np.ndarray | None = None
    box_labels: list[str] = field(default_factory=list)
    mask_paths: list[Path] = field(default_factory=list)
    patient_id: str | None = None
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Sample(TypedDict, total=False):
    """What ``__getitem__`` returns: ``image`` is always present except in a failed sample."""

    image: torch.Tensor  # uint8 [1, H, W]
    index: int
    path: str
    report: str
    labels: torch.Tensor  # float32 [K], NaN = unknown
    boxes: torch.Tensor  # float32 [M, 4] xyxy pixels
    box_labels: list[str]
    mask: torch.Tensor  # uint8 [H, W], 0/1
    patient_id: str
    error: str  # only in a failed sample (on_error="skip"): why the file could not be read


@dataclass
class SkipReport:
    """Rows an adapter could not use, kept so that nothing is dropped silently."""

    skipped: list[dict[str, str]] = field(default_factory=list)

    def add(self, where: str, reason: str) -> None:
        self.skipped.append({"where": where, "reason": reason})

    def __len__(self) -> int:
        return len(self.skipped)


class ChestXrayDataset(Dataset):
    """Base class: a list of :class:`Record` plus pixel reading.

    Subclasses fill ``self.records`` and ``self.classes`` in ``__init__`` and document the
    dataset's size, licence and citation in their docstring.
    """

    classes: tuple[str, ...] = ()

    def __init__(
        self,
        records: list[Record],
        classes: tuple[str, ...] = (),
        *,
        skips: SkipReport | None = None,
        on_error: OnError = "raise",
    ) -> None:
        self.records = records
        if classes:
            self.classes = tuple(classes)
        self.skips = skips if skips is not None else SkipReport()
        self.on_error = check_on_error(on_error)

    def __len__(self) -> int:
        return len(self.records)

    def read_mask(self, record: Record, height: int, width: int) -> np.ndarray | None:
        """Union of the record's mask files as uint8 0/1 ``[H, W]``; None when it has none."""
        if not record.mask_paths:
            return None
        from maco_cxr.data.io import read_mask

        union = np.zeros((height, width), dtype=np.uint8)
        for path in record.mask_paths:
            mask = read_mask(path)
            if mask.shape != (height, width):
                raise DataError(
                    f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                    f"{record.image_path} is {width}x{height}; masks must match their image size"
                )
            union |= mask
        return union

    def __getitem__(self, index: int) -> Sample:
        """The record's pixels and annotations; a failed sample when its files cannot be read
        and ``on_error == "skip"`` (see the module docstring)."""
        try:
            return self.read_sample(index)
        except DataError as err:
            if self.on_error == "raise":
                raise
            return {"index": index, "path": str(self.records[index].image_path), "error": str(err)}

    def read_sample(self, index: int) -> Sample:
        """Pixels and annotations of record ``index``; raises :class:`DataError` when a file
        cannot be read (what subclasses override to read pixels their own way)."""
        from maco_cxr.data.io import read_image

        record = self.records[index]
        pixels = read_image(record.image_path)
        sample: Sample = {
            "image": torch.from_numpy(pixels).unsqueeze(0),
            "index": index,
            "path": str(record.image_path),
        }
        if record.report is not None:
            sample["report"] = record.report
        if record.labels is not None:
            sample["labels"] = torch.as_tensor(record.labels, dtype=torch.float32)
        if record.boxes is not None:
            sample["boxes"] = torch.as_tensor(record.boxes, dtype=torch.float32).reshape(-1, 4)
            sample["box_labels"] = list(record.box_labels)
        mask = self.read_mask(record, *pixels.shape)
        if mask is not None:
            sample["mask"] = torch.from_numpy(mask)
        if record.patient_id is not None:
            sample["patient_id"] = record.patient_id
        return sample


# ---------------------------------------------------------------------------------------------
# Helpers shared by the adapters: CSV reading with line numbers, the raise-or-skip policy for
# bad rows, and one-walk file indexes. They keep every adapter's error messages uniform
# (file, line, field, what to do).
# ---------------------------------------------------------------------------------------------

ON_ERROR_CHOICES: tuple[str, ...] = ("raise", "skip")


def is_failed(sample: Any) -> bool:
    """True for the failed sample of an unreadable file (``on_error="skip"``)."""
    return isinstance(sample, dict) and "error" in sample


def failure_of(sample: Sample) -> dict[str, str]:
    """``{"path", "reason"}`` of a failed sample, as reports list them."""
    return {"path": str(sample.get("path")), "reason": str(sample["error"])}


def check_on_error(on_error: str) -> OnError:
    """Validate an adapter's ``on_error`` argument."""
    if on_error not in ON_ERROR_CHOICES:
        raise ConfigError(f"on_error={on_error!r} is not one of {ON_ERROR_CHOICES}")
    return on_error  # type: ignore[return-value]


@contextmanager
def row_guard(where: str, on_error: OnError, skips: SkipReport) -> Iterator[None]:
    """Route a :class:`DataError` raised while parsing one row or file.

    ``on_error="raise"`` re-raises it with ``where`` (file and line) prefixed;
    ``on_error="skip"`` records it in ``skips`` and lets the adapter go on with the next row.
    Code raising inside the block should describe only the field and the problem.
    """
    try:
        yield
    except DataError as err:
        if on_error == "raise":
            raise DataError(f"{where}: {err}") from err
        skips.add(where, str(err))


def log_skips(logger: logging.Logger, source: str | Path, skips: SkipReport, kept: int) -> None:
    """Warn once with the number of skipped rows, so that a skip is never silent."""
    if len(skips):
        first = skips.skipped[0]
        logger.warning(
            "%s: skipped %d bad rows/files, kept %d records (each listed in the dataset's .skips); first: %s: %s",
            source,
            len(skips),
            kept,
            first["where"],
            first["reason"],
        )


def csv_columns(path: Path) -> list[str]:
    """Header of a ``.csv`` or ``.csv.gz`` file, names stripped of surrounding spaces."""
    with _open_text(path) as handle:
        header = next(csv.reader(handle), None)
    if header is None:
        raise DataError(f"{path}: the CSV file is empty (no header line)")
    return [name.strip() for name in header]


def iter_csv(path: Path, required: Sequence[str] = ()) -> Iterator[tuple[int, dict[str, str | None]]]:
    """Rows of a CSV as ``(line, {column: value})`` with names and values stripped.

    ``line`` is the 1-based line where the row starts (the header is line 1). A value is None
    when the row has fewer fields than the header; use :func:`cell` to read it. The header is
    checked eagerly: a missing required column raises :class:`DataError` naming the file,
    the column and the columns found.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the dataset root")
    columns = csv_columns(path)
    missing = [name for name in required if name not in columns]
    if missing:
        raise DataError(f"{path}: required column(s) {missing} not found; the columns are {columns}")
    return _csv_rows(path, columns)


def cell(row: dict[str, str | None], column: str) -> str:
    """One value of a row from :func:`iter_csv`; raises when the row is too short."""
    value = row.get(column)
    if value is None:
        raise DataError(f"field {column!r} is missing (the row has fewer fields than the header)")
    return value


def parse_float(row: dict[str, str | None], column: str) -> float:
    """A finite float from a row; the error names the field and the bad value."""
    text = cell(row, column)
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"field {column!r}: cannot parse {text!r} as a number") from None
    if not math.isfinite(value):
        raise DataError(f"field {column!r}: {text!r} is not a finite number")
    return value


def find_file(folder: Path, names: Sequence[str]) -> Path:
    """The first of ``names`` that exists in ``folder`` (e.g. ``x.csv`` or ``x.csv.gz``)."""
    for name in names:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    raise DataError(f"{folder}: none of {list(names)} found; check the dataset root")


def index_files(root: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """Map file name -> path for every file under ``root`` with one of ``suffixes``.

    One directory walk instead of a ``stat`` per row. Two files with the same name in
    different folders make the name ambiguous and raise :class:`DataError`.
    """
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; check the dataset root")
    wanted = tuple(s.lower() for s in suffixes)
    found: dict[str, Path] = {}
    for folder, _, names in os.walk(root):
        for name in names:
            if not name.lower().endswith(wanted):
                continue
            path = Path(folder) / name
            if name in found:
                raise DataError(
                    f"{root}: the file name {name!r} occurs twice ({found[name]} and {path}); remove the duplicate"
                )
            found[name] = path
    return found


def _open_text(path: Path) -> TextIO:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open("r", encoding="utf-8-sig", newline="")


def _csv_rows(path: Path, columns: list[str]) -> Iterator[tuple[int, dict[str, str | None]]]:
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        next(reader)
        start = reader.line_num + 1
        for fields in reader:
            if fields:
                values: list[str | None] = [value.strip() for value in fields[: len(columns)]]
                values += [None] * (len(columns) - len(values))
                yield start, dict(zip(columns, values, strict=True))
            start = reader.line_num + 1
