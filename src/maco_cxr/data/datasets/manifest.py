"""The package's own dataset format: a manifest (CSV or JSONL) with optional sidecars.

It is what ``prepare`` and the synthetic phantom generator write, and the easiest way to
bring any other collection of radiographs: one row per image with its report, labels and
patient, plus ``boxes.csv`` / ``masks.csv`` next to it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from maco_cxr.data.datasets.base import (
    ChestXrayDataset,
    OnError,
    Record,
    SkipReport,
    cell,
    check_on_error,
    csv_columns,
    iter_csv,
    log_skips,
    parse_float,
    row_guard,
)
from maco_cxr.errors import ConfigError, DataError

__all__ = ["NO_FINDING", "CxrReal", "GenericManifest"]

logger = logging.getLogger(__name__)

NO_FINDING = "No Finding"
_FIELDS = ("image_path", "report", "labels", "patient_id", "split")
_JSONL_FIELDS = (*_FIELDS, "boxes", "mask_paths", "mask_labels")
_BOX_FIELDS = ("x_min", "y_min", "x_max", "y_max")


@dataclass
class _Row:
    """One manifest row, parsed but not yet turned into a :class:`Record`."""

    where: str
    image_path: Path
    report: str | None
    labels: list[str] | None
    patient_id: str | None
    split: str | None
    meta: dict[str, Any]
    boxes: list[tuple[str, list[float], dict[str, Any]]] | None = None
    masks: list[tuple[Path, str]] = field(default_factory=list)


def _resolve(folder: Path, text: str) -> Path:
    path = Path(text)
    return path if path.is_absolute() else folder / path


def _key(path: Path) -> str:
    return os.path.normpath(path)


def _label_names(value: Any) -> list[str] | None:
    """``"A|B"`` or ``["A", "B"]`` -> names; empty -> None (labels unknown)."""
    if isinstance(value, list):
        names = [str(v).strip() for v in value]
    elif isinstance(value, str):
        names = value.split("|")
    else:
        raise DataError(f"field 'labels': {value!r} is neither a '|'-separated string nor a list")
    names = [name.strip() for name in names if name.strip()]
    if NO_FINDING in names and len(names) > 1:
        raise DataError(f"field 'labels': {NO_FINDING!r} together with findings {names}")
    return names or None


def _box(values: Sequence[Any]) -> list[float]:
    try:
        box = [float(v) for v in values]
    except (TypeError, ValueError):
        raise DataError(f"box {list(values)!r} is not four numbers") from None
    if len(box) != 4 or not np.isfinite(box).all():
        raise DataError(f"box {list(values)!r} is not four finite numbers")
    if box[0] >= box[2] or box[1] >= box[3]:
        raise DataError(f"box {box} is empty or inverted; expected x_min < x_max, y_min < y_max")
    return box


class GenericManifest(ChestXrayDataset):
    """A dataset described by ``manifest.csv`` or ``manifest.jsonl`` (this package's format).

    Size, licence and citation: those of the data it lists (see the folder's README or
    ATTRIBUTION file).

    Layout (``root`` is the folder, or the manifest file itself)::

        <root>/manifest.csv | manifest.jsonl
        <root>/boxes.csv    image_path, label, x_min, y_min, x_max, y_max[, more]  (optional)
        <root>/masks.csv    image_path, mask_path, label[, more]                   (optional)

    Manifest fields: ``image_path`` (required; relative to the manifest's folder or
    absolute), ``report`` (empty = none), ``labels`` ("|"-separated positive class names;
    "No Finding" = all classes negative; empty = unknown, a NaN row), ``patient_id``,
    ``split`` (``split=`` keeps matching rows); any other field goes into ``Record.meta``.
    A JSONL line is one object with the same fields, where ``labels`` may be a list, and
    boxes and masks may be given inline: ``boxes`` ``[{"box": [x0, y0, x1, y1], "label":
    str, ...}]`` (an explicit empty list = no boxes) and ``mask_paths`` (with an optional
    parallel ``mask_labels``).

    Classes: ``classes`` or the sorted union of all label names in the manifest (every
    split, "No Finding" excluded); names not in an explicit ``classes`` are ignored (they
    are findings of other classes). Boxes are xyxy pixels of the image as read; extra
    box columns are kept per box in ``meta["box_meta"]``. An image without box rows has
    ``boxes=None`` (not annotated). Masks: ``mask_labels`` selects which mask labels form
    the target (their union; default all); the chosen labels are in ``meta["mask_labels"]``.
    Sidecar rows naming an image that is not in the manifest are bad rows.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | None = None,
        *,
        on_error: OnError = "raise",
        classes: Sequence[str] | None = None,
        mask_labels: Sequence[str] | None = None,
    ) -> None:
        on_error = check_on_error(on_error)
        self.manifest = self._find_manifest(Path(root))
        folder = self.manifest.parent
        skips = SkipReport()
        rows: list[_Row] = []
        for where, parse in self._manifest_rows():
            with row_guard(where, on_error, skips):
                rows.append(parse())
        if split is not None and not any(row.split for row in rows):
            raise DataError(f"{self.manifest}: split={split!r} was given but no row has a 'split' value")
        if classes is None:
            names = {n for row in rows for n in (row.labels or []) if n != NO_FINDING}
            classes = sorted(names)
        by_path: dict[str, list[_Row]] = {}
        for row in rows:
            by_path.setdefault(_key(row.image_path), []).append(row)
        self._read_boxes(folder / "boxes.csv", by_path, on_error, skips)
        self._read_masks(folder / "masks.csv", by_path, on_error, skips)
        wanted = None if mask_labels is None else set(mask_labels)
        records: list[Record] = []
        for row in rows:
            if split is not None and row.split != split:
                continue
            with row_guard(row.where, on_error, skips):
                records.append(self._record(row, tuple(classes), wanted))
        log_skips(logger, self.manifest, skips, len(records))
        super().__init__(records, tuple(classes), skips=skips, on_error=on_error)

    @staticmethod
    def _find_manifest(root: Path) -> Path:
        if root.is_file():
            return root
        if not root.is_dir():
            raise DataError(f"{root}: no such file or folder; expected a manifest or its folder")
        found = [root / name for name in ("manifest.csv", "manifest.jsonl") if (root / name).is_file()]
        if len(found) != 1:
            problem = "both" if found else "neither"
            raise ConfigError(
                f"{root}: {problem} of manifest.csv and manifest.jsonl found; pass the manifest file itself as root"
            )
        return found[0]

    def _manifest_rows(self) -> Iterator[tuple[str, Callable[[], _Row]]]:
        """``(where, parse)`` per manifest row; ``parse()`` returns a :class:`_Row`."""
        folder = self.manifest.parent
        if self.manifest.suffix.lower() == ".jsonl":
            lines = self.manifest.read_text(encoding="utf-8").splitlines()
            for number, text in enumerate(lines, start=1):
                if text.strip():
                    where = f"{self.manifest}, line {number}"
                    yield where, partial(self._jsonl_row, text, where, folder)
            return
        for line, values in iter_csv(self.manifest, ["image_path"]):
            where = f"{self.manifest}, line {line}"
            yield where, partial(self._csv_row, values, where, folder)

    @staticmethod
    def _csv_row(values: dict[str, str | None], where: str, folder: Path) -> _Row:
        image = cell(values, "image_path")
        if not image:
            raise DataError("field 'image_path' is empty")
        text = {name: cell(values, name) for name in _FIELDS if name in values}
        meta = {k: v for k, v in values.items() if k not in _FIELDS and k and v is not None}
        return _Row(
            where=where,
            image_path=_resolve(folder, image),
            report=text.get("report") or None,
            labels=_label_names(text["labels"]) if "labels" in text else None,
            patient_id=text.get("patient_id") or None,
            split=text.get("split") or None,
            meta=meta,
        )

    @staticmethod
    def _jsonl_row(text: str, where: str, folder: Path) -> _Row:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"invalid JSON ({err})") from err
        if not isinstance(obj, dict):
            raise DataError(f"a line must hold one JSON object, not {type(obj).__name__}")
        image = obj.get("image_path")
        if not isinstance(image, str) or not image:
            raise DataError(f"field 'image_path' is missing or not a string: {image!r}")
        row = _Row(
            where=where,
            image_path=_resolve(folder, image),
            report=obj.get("report") or None,
            labels=_label_names(obj["labels"]) if obj.get("labels") is not None else None,
            patient_id=str(obj["patient_id"]) if obj.get("patient_id") is not None else None,
            split=obj.get("split") or None,
            meta={k: v for k, v in obj.items() if k not in _JSONL_FIELDS},
        )
        if "boxes" in obj:
            if not isinstance(obj["boxes"], list):
                raise DataError("field 'boxes' is not a list")
            row.boxes = []
            for box in obj["boxes"]:
                if not isinstance(box, dict) or "box" not in box:
                    raise DataError(f"field 'boxes': {box!r} is not {{'box': [...], 'label': ...}}")
                extra = {k: v for k, v in box.items() if k not in ("box", "label")}
                row.boxes.append((str(box.get("label", "")), _box(box["box"]), extra))
        paths = obj.get("mask_paths", [])
        labels = obj.get("mask_labels", [""] * len(paths))
        if not isinstance(paths, list) or not isinstance(labels, list) or len(paths) != len(labels):
            raise DataError("fields 'mask_paths' / 'mask_labels' must be lists of equal length")
        for mask_path, label in zip(paths, labels, strict=True):
            row.masks.append((_mask_file(folder, str(mask_path)), str(label)))
        return row

    @staticmethod
    def _read_boxes(path: Path, by_path: dict[str, list[_Row]], on_error: OnError, skips: SkipReport) -> None:
        if not path.is_file():
            return
        columns = csv_columns(path)
        extra = [c for c in columns if c and c not in ("image_path", "label", *_BOX_FIELDS)]
        for line, values in iter_csv(path, ["image_path", "label", *_BOX_FIELDS]):
            with row_guard(f"{path}, line {line}", on_error, skips):
                rows = _rows_of(by_path, path.parent, cell(values, "image_path"))
                box = _box([parse_float(values, name) for name in _BOX_FIELDS])
                meta = {c: values[c] for c in extra if values.get(c) is not None}
                for row in rows:
                    if row.boxes is None:
                        row.boxes = []
                    row.boxes.append((cell(values, "label"), box, meta))

    @staticmethod
    def _read_masks(path: Path, by_path: dict[str, list[_Row]], on_error: OnError, skips: SkipReport) -> None:
        if not path.is_file():
            return
        for line, values in iter_csv(path, ["image_path", "mask_path", "label"]):
            with row_guard(f"{path}, line {line}", on_error, skips):
                rows = _rows_of(by_path, path.parent, cell(values, "image_path"))
                mask = _mask_file(path.parent, cell(values, "mask_path"))
                for row in rows:
                    row.masks.append((mask, cell(values, "label")))

    @staticmethod
    def _record(row: _Row, classes: tuple[str, ...], mask_labels: set[str] | None) -> Record:
        if not row.image_path.is_file():
            raise DataError(f"field 'image_path': image file {row.image_path} does not exist")
        labels = None
        if row.labels is not None:
            labels = np.zeros(len(classes), dtype=np.float32)
            for name in row.labels:
                if name in classes:
                    labels[classes.index(name)] = 1.0
        elif classes:
            labels = np.full(len(classes), np.nan, dtype=np.float32)
        masks = [(p, label) for p, label in row.masks if mask_labels is None or label in mask_labels]
        record = Record(
            image_path=row.image_path,
            report=row.report,
            labels=labels,
            mask_paths=[p for p, _ in masks],
            patient_id=row.patient_id,
            split=row.split,
            meta=dict(row.meta),
        )
        if masks:
            record.meta["mask_labels"] = [label for _, label in masks]
        if row.boxes is not None:
            record.boxes = np.array([b for _, b, _ in row.boxes], dtype=np.float32).reshape(-1, 4)
            record.box_labels = [label for label, _, _ in row.boxes]
            record.meta["box_meta"] = [extra for _, _, extra in row.boxes]
        return record


def _rows_of(by_path: dict[str, list[_Row]], folder: Path, image: str) -> list[_Row]:
    rows = by_path.get(_key(_resolve(folder, image)))
    if rows is None:
        raise DataError(f"field 'image_path': {image!r} is not in the manifest")
    return rows


def _mask_file(folder: Path, text: str) -> Path:
    if not text:
        raise DataError("field 'mask_path' is empty")
    path = _resolve(folder, text)
    if not path.is_file():
        raise DataError(f"field 'mask_path': mask file {path} does not exist")
    return path


class CxrReal(GenericManifest):
    """cxr-real: a small set of real chest X-rays shipped for tests and small experiments.

    Size: 391 images of 196 patients (the copy in ``tests/assets/cxr-real`` holds 26), with
    lung boxes and masks for most COVID images, clinical notes as ``report``, patient-disjoint
    train/val/test splits, and two CR DICOM files.
    Licence: per image in ``manifest.csv`` (``license``; non-commercial policy): images from
    the COVID-19 Image Data Collection (CC BY / CC BY-SA / CC BY-NC-SA by source) and NIH
    ChestX-ray14 (no restrictions); boxes and radiologist masks CC BY 4.0 (General
    Blockchain); see the folder's ``ATTRIBUTION.md``.
    Citation: Cohen J.P. et al., "COVID-19 Image Data Collection", arXiv:2006.11988;
    Wang X. et al., CVPR 2017.

    Layout: the :class:`GenericManifest` layout (``manifest.csv``, ``boxes.csv``,
    ``masks.csv``, ``images/``, ``masks/<source>/``).
    """
