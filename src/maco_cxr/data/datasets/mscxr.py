"""MS-CXR: radiologist boxes for report phrases on MIMIC-CXR images (phrase grounding)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
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
from maco_cxr.errors import DataError

__all__ = ["MSCXR_CATEGORIES", "MsCxr"]

logger = logging.getLogger(__name__)

MSCXR_CATEGORIES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Lung Opacity",
    "Pleural Effusion",
    "Pneumonia",
    "Pneumothorax",
)
_CATEGORY = {name.lower(): name for name in MSCXR_CATEGORIES}
_CSV_COLUMNS = ("dicom_id", "path", "x", "y", "w", "h", "image_width", "image_height", "category_name", "label_text")


@dataclass
class _Item:
    """One (image, phrase) pair being assembled from its box rows."""

    where: str
    path: str
    label_text: str
    category: str
    split: str | None
    meta: dict[str, Any]
    boxes: list[list[float]] = field(default_factory=list)


_Parse = Callable[[], tuple[_Item, list[float]]]


def _category(name: str) -> str:
    canonical = _CATEGORY.get(name.strip().lower())
    if canonical is None:
        raise DataError(f"field 'category_name': {name!r} is not an MS-CXR category {list(MSCXR_CATEGORIES)}")
    return canonical


def _xywh_to_xyxy(x: float, y: float, w: float, h: float) -> list[float]:
    if w <= 0 or h <= 0:
        raise DataError(f"box size {w}x{h} (w x h) is not positive")
    return [x, y, x + w, y + h]


def _parse_csv_row(row: dict[str, str | None], where: str) -> tuple[_Item, list[float]]:
    box = _xywh_to_xyxy(*(parse_float(row, c) for c in ("x", "y", "w", "h")))
    label_text = cell(row, "label_text")
    if not label_text:
        raise DataError("field 'label_text' is empty")
    item = _Item(
        where=where,
        path=cell(row, "path"),
        label_text=label_text,
        category=_category(cell(row, "category_name")),
        split=row.get("split"),
        meta={
            "dicom_id": cell(row, "dicom_id"),
            "image_width": parse_float(row, "image_width"),
            "image_height": parse_float(row, "image_height"),
        },
    )
    return item, box


def _parse_annotation(
    annotation: dict[str, Any], images: dict[Any, dict[str, Any]], categories: dict[Any, str], where: str
) -> tuple[_Item, list[float]]:
    for key in ("image_id", "bbox", "category_id", "label_text"):
        if key not in annotation:
            raise DataError(f"field {key!r} is missing")
    image = images.get(annotation["image_id"])
    if image is None or "path" not in image:
        raise DataError(f"field 'image_id': {annotation['image_id']!r} names no entry with a 'path' in 'images'")
    bbox = annotation["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        raise DataError(f"field 'bbox': {bbox!r} is not [x, y, w, h]")
    if annotation["category_id"] not in categories:
        raise DataError(f"field 'category_id': {annotation['category_id']!r} is not in 'categories'")
    label_text = str(annotation["label_text"]).strip()
    if not label_text:
        raise DataError("field 'label_text' is empty")
    meta: dict[str, Any] = {k: image[k] for k in ("width", "height", "dicom_id") if k in image}
    item = _Item(
        where=where,
        path=str(image["path"]),
        label_text=label_text,
        category=_category(categories[annotation["category_id"]]),
        split=image.get("split"),
        meta=meta,
    )
    return item, _xywh_to_xyxy(*(float(v) for v in bbox))


class MsCxr(ChestXrayDataset):
    """MS-CXR phrase grounding: one record per (image, lower-cased phrase).

    Size: 1,162 image-phrase pairs (1,448 boxes) on 1,153 frontal MIMIC-CXR images,
    8 categories (:data:`MSCXR_CATEGORIES`). Licence: PhysioNet Credentialed Health Data
    License 1.5.0 (like MIMIC-CXR). Citation: Boecking B. et al., "Making the Most of Text
    Semantics to Improve Biomedical Vision-Language Processing", ECCV 2022; MS-CXR on
    PhysioNet (doi:10.13026/b35z-x439).

    Layout: ``root`` is the MIMIC-CXR-JPG root (image paths in the annotations are relative
    to it); ``annotations`` is the MS-CXR file, either CSV::

        dicom_id, path, x, y, w, h, image_width, image_height, category_name, label_text[, split]

    or COCO-style JSON: ``images`` (``id``, ``path``[, ``width``, ``height``, ``split``]),
    ``annotations`` (``image_id``, ``bbox`` ``[x, y, w, h]``, ``category_id``,
    ``label_text``) and ``categories`` (``id``, ``name``).

    All boxes of one image whose ``label_text`` is equal after lower-casing are merged into
    one record (its ``boxes``, xyxy in original image pixels); ``report`` is the phrase and
    ``meta["category"]`` its category. ``split`` filters on the optional split field (MS-CXR
    1.1). A bad annotation leaves its whole item out in ``on_error="skip"`` mode (a partial
    box set would be a wrong target); both are reported.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | None = None,
        *,
        annotations: str | os.PathLike[str],
        on_error: OnError = "raise",
    ) -> None:
        on_error = check_on_error(on_error)
        self.root = Path(root)
        self.annotations = Path(annotations)
        skips = SkipReport()
        items: dict[tuple[str, str], _Item] = {}
        bad: dict[tuple[str, str], str] = {}
        if self.annotations.suffix.lower() == ".json":
            rows = self._json_rows(self.annotations)
        else:
            rows = self._csv_rows(self.annotations, split is not None)
        for where, parse in rows:
            key: tuple[str, str] | None = None
            merged = False
            with row_guard(where, on_error, skips):
                item, box = parse()
                key = (item.path, item.label_text.lower())
                self._merge(items, key, item, box)
                merged = True
            if not merged and key is not None:
                bad.setdefault(key, where)
        records: list[Record] = []
        for key, item in items.items():
            if split is not None and item.split != split:
                continue
            if key in bad:
                skips.add(item.where, f"item {key} left out: its annotation at {bad[key]} is invalid")
                continue
            with row_guard(item.where, on_error, skips):
                records.append(self._record(item))
        log_skips(logger, self.annotations, skips, len(records))
        super().__init__(records, MSCXR_CATEGORIES, skips=skips, on_error=on_error)

    @staticmethod
    def _merge(items: dict[tuple[str, str], _Item], key: tuple[str, str], item: _Item, box: list[float]) -> None:
        if key not in items:
            items[key] = item
        elif items[key].category != item.category:
            raise DataError(
                f"phrase {item.label_text!r} on {item.path} has category "
                f"{item.category!r} here but {items[key].category!r} at "
                f"{items[key].where}"
            )
        items[key].boxes.append(box)

    @staticmethod
    def _csv_rows(path: Path, need_split: bool) -> Iterator[tuple[str, _Parse]]:
        rows = iter_csv(path, _CSV_COLUMNS)
        if need_split and "split" not in csv_columns(path):
            raise DataError(
                f"{path}: split= was given but the file has no 'split' column; the columns are {csv_columns(path)}"
            )
        for line, row in rows:
            where = f"{path}, line {line}"
            yield where, partial(_parse_csv_row, row, where)

    @staticmethod
    def _json_rows(path: Path) -> Iterator[tuple[str, _Parse]]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"{path}: cannot read the JSON annotations ({err})") from err
        missing = [key for key in ("images", "annotations", "categories") if key not in data]
        if missing:
            raise DataError(f"{path}: keys {missing} not found; the keys are {list(data)}")
        images = {image.get("id"): image for image in data["images"]}
        categories = {c.get("id"): c.get("name", "") for c in data["categories"]}
        for index, annotation in enumerate(data["annotations"]):
            where = f"{path}, annotations[{index}]"
            yield where, partial(_parse_annotation, annotation, images, categories, where)

    def _record(self, item: _Item) -> Record:
        image_path = self.root / item.path
        if not image_path.is_file():
            raise DataError(f"field 'path': image file {image_path} does not exist")
        parts = PurePosixPath(item.path).parts
        patient = parts[2][1:] if len(parts) > 3 and parts[2].startswith("p") else None
        return Record(
            image_path=image_path,
            report=item.label_text,
            boxes=np.array(item.boxes, dtype=np.float32).reshape(-1, 4),
            box_labels=[item.label_text] * len(item.boxes),
            patient_id=patient,
            split=item.split,
            meta={**item.meta, "category": item.category, "label_text": item.label_text},
        )
