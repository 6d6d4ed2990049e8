"""VinDr-CXR: DICOM chest X-rays with per-radiologist finding boxes and image-level labels."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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

__all__ = [
    "VINDR_GLOBAL_LABELS",
    "VINDR_KAGGLE_CLASSES",
    "VINDR_LABELS",
    "VINDR_LOCAL_LABELS",
    "VinDrCxr",
]

logger = logging.getLogger(__name__)

# The 22 local findings (boxes) and 6 global labels, in the column order of the PhysioNet
# image_labels_{train,test}.csv files.
VINDR_LOCAL_LABELS: tuple[str, ...] = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Clavicle fracture",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Enlarged PA",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Lung cavity",
    "Lung cyst",
    "Mediastinal shift",
    "Nodule/Mass",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "Rib fracture",
    "Other lesion",
)
VINDR_GLOBAL_LABELS: tuple[str, ...] = (
    "COPD",
    "Lung tumor",
    "Pneumonia",
    "Tuberculosis",
    "Other diseases",
    "No finding",
)
VINDR_LABELS: tuple[str, ...] = VINDR_LOCAL_LABELS + VINDR_GLOBAL_LABELS
# The Kaggle competition (VinBigData Chest X-ray Abnormalities Detection) kept 14 local
# findings (class_id 0..13) plus "No finding" (class_id 14).
VINDR_KAGGLE_CLASSES: tuple[str, ...] = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "No finding",
)
NO_FINDING = "No finding"

Vote = Literal["majority", "any"]
Layout = Literal["auto", "physionet", "kaggle"]
_VOTES = ("majority", "any")
_LAYOUTS = ("auto", "physionet", "kaggle")
_BOX_FIELDS = ("x_min", "y_min", "x_max", "y_max")
_IMAGE_SUFFIXES = (".dicom", ".dcm")
# Column spellings that differ between files: image_labels_test.csv says "Other disease".
_COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "Other diseases": ("Other diseases", "Other disease"),
}
_LOCAL = {name.lower(): name for name in VINDR_LOCAL_LABELS}
_GLOBAL = {name.lower(): name for name in VINDR_GLOBAL_LABELS}
# Readers of a file without a rad_id column (one consensus row per image).
_CONSENSUS = "consensus"


@dataclass
class _Image:
    """Everything read about one image id while its rows are collected."""

    where: str  # file and line of its first row, for errors about the image as a whole
    rad_labels: dict[str, np.ndarray] = field(default_factory=dict)
    boxes: list[list[float]] = field(default_factory=list)
    box_labels: list[str] = field(default_factory=list)
    box_rads: list[str] = field(default_factory=list)
    bad: str | None = None  # file and line of its first invalid row


def _vote(rad_labels: dict[str, np.ndarray], size: int, vote: Vote) -> np.ndarray:
    """Image labels ``[K]`` from the readers' 0/1 labels (majority: more than half)."""
    if not rad_labels:
        return np.full(size, np.nan, dtype=np.float32)
    votes = np.stack(list(rad_labels.values())).sum(axis=0)
    if vote == "any":
        return (votes >= 1).astype(np.float32)
    return (2 * votes > len(rad_labels)).astype(np.float32)


def _binary(row: dict[str, str | None], column: str) -> float:
    """One 0/1 cell; blank counts as 0 (the finding was not marked)."""
    text = cell(row, column)
    if text == "":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"field {column!r}: {text!r} is not 0 or 1") from None
    if value not in (0.0, 1.0):
        raise DataError(f"field {column!r}: {text!r} is not 0 or 1")
    return value


def _box(row: dict[str, str | None]) -> list[float]:
    x0, y0, x1, y1 = (parse_float(row, name) for name in _BOX_FIELDS)
    if x1 <= x0 or y1 <= y0:
        raise DataError(
            f"fields {list(_BOX_FIELDS)}: box ({x0}, {y0}, {x1}, {y1}) has no area "
            "(x_max must exceed x_min and y_max exceed y_min)"
        )
    return [x0, y0, x1, y1]


def _no_box(row: dict[str, str | None], class_name: str) -> None:
    filled = [name for name in _BOX_FIELDS if cell(row, name)]
    if filled:
        raise DataError(f"fields {filled}: a {class_name!r} row must have an empty box")


class VinDrCxr(ChestXrayDataset):
    """VinDr-CXR (Vingroup Big Data Institute), one record per DICOM image.

    Size: 18,000 posterior-anterior DICOMs: train 15,000 (each read independently by 3 of 17
    radiologists), test 3,000 (consensus of 5 radiologists). 22 local findings with boxes and
    6 global labels (diagnoses).
    Licence: PhysioNet credentialed access (VinDr-CXR 1.0.0; its data use agreement allows
    research and education only, no redistribution); the Kaggle copy is under the
    competition rules.
    Citation: Nguyen H. Q. et al., "VinDr-CXR: An open dataset of chest X-rays with
    radiologist's annotations", Scientific Data 9, 429 (2022); PhysioNet
    https://doi.org/10.13026/3akn-b287.

    Layout (``layout="physionet"``, ``root`` is the ``1.0.0`` folder)::

        <root>/annotations/annotations_{train,test}.csv
            image_id, rad_id, class_name, x_min, y_min, x_max, y_max
            one row per box; "No finding" rows have an empty box
        <root>/annotations/image_labels_{train,test}.csv
            image_id, rad_id, then one 0/1 column per label (VINDR_LABELS order; the test
            file spells "Other diseases" as "Other disease")
        <root>/{train,test}/<image_id>.dicom

    Layout (``layout="kaggle"``, VinBigData competition)::

        <root>/train.csv   image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max
        <root>/{train,test}/<image_id>.dicom

    ``layout="auto"`` picks "physionet" when ``<root>/annotations`` exists, else "kaggle"
    when ``<root>/train.csv`` does.

    Labels: ``classes`` (default all 28 PhysioNet labels, or the 15 Kaggle classes; a subset
    may be chosen) get one 0/1 vector per radiologist: from image_labels (PhysioNet, a blank
    cell counts as 0) or from the boxes each radiologist drew and their "No finding" rows
    (Kaggle). The image label is their vote: ``vote="majority"`` (the default: positive when
    more than half of the image's radiologists marked it, i.e. 2 of 3 in train; the test
    set's single consensus row is taken as is) or ``vote="any"`` (any radiologist). A file
    without a ``rad_id`` column counts as one reader, "consensus".
    ``meta``: ``image_id``, ``rad_ids``, ``rad_labels`` ({rad_id: float32 [K]} in the order
    of ``meta["rad_label_classes"]``, the adapter's classes), ``box_rad_ids`` (one per box),
    ``vote``.
    Boxes: every radiologist's box of a local finding, xyxy in original DICOM pixels, one
    label (class_name) per box; boxes of different radiologists are not fused. Images
    without boxes have an empty ``[0, 4]`` array.
    Bad rows: a bad row leaves its whole image out in ``on_error="skip"`` mode (partial
    labels or boxes would be wrong); both are reported. ``patient_id`` is None (the release
    has no patient ids). ``split="test"`` of the Kaggle layout has no labels: every DICOM of
    ``test/`` with NaN labels and no boxes.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Literal["train", "test"] = "train",
        *,
        on_error: OnError = "raise",
        vote: Vote = "majority",
        classes: Sequence[str] | None = None,
        layout: Layout = "auto",
    ) -> None:
        on_error = check_on_error(on_error)
        if split not in ("train", "test"):
            raise ConfigError(f"split={split!r} is not one of ('train', 'test')")
        if vote not in _VOTES:
            raise ConfigError(f"vote={vote!r} is not one of {_VOTES}")
        if layout not in _LAYOUTS:
            raise ConfigError(f"layout={layout!r} is not one of {_LAYOUTS}")
        self.root = Path(root)
        self.layout = self._detect_layout(layout)
        self.vote = vote
        available = VINDR_LABELS if self.layout == "physionet" else VINDR_KAGGLE_CLASSES
        chosen = self._check_classes(classes, available)
        images = self.root / split
        if not images.is_dir():
            raise DataError(f"{images}: no such folder; check the dataset root")
        present = {
            Path(name).stem: images / name for name in os.listdir(images) if name.lower().endswith(_IMAGE_SUFFIXES)
        }
        skips = SkipReport()
        if self.layout == "kaggle" and split == "test":
            source: Path = images
            records = [
                Record(
                    image_path=path,
                    labels=np.full(len(chosen), np.nan, dtype=np.float32),
                    split=split,
                    meta={"image_id": image_id},
                )
                for image_id, path in sorted(present.items())
            ]
        else:
            if self.layout == "physionet":
                source = self.root / "annotations" / f"image_labels_{split}.csv"
                collected = self._read_image_labels(source, chosen, on_error, skips)
                self._read_boxes(
                    self.root / "annotations" / f"annotations_{split}.csv", collected, on_error, skips, kaggle=False
                )
            else:
                source = self.root / "train.csv"
                collected = {}
                self._read_boxes(source, collected, on_error, skips, kaggle=True)
                self._kaggle_labels(collected, chosen)
            records = self._records(collected, chosen, split, present, on_error, skips)
        log_skips(logger, source, skips, len(records))
        super().__init__(records, chosen, skips=skips, on_error=on_error)

    def _detect_layout(self, layout: Layout) -> Literal["physionet", "kaggle"]:
        if layout != "auto":
            return layout
        if (self.root / "annotations").is_dir():
            return "physionet"
        if (self.root / "train.csv").is_file():
            return "kaggle"
        raise DataError(
            f"{self.root}: neither annotations/ (PhysioNet VinDr-CXR 1.0.0) nor "
            "train.csv (Kaggle VinBigData) found; check the dataset root"
        )

    def _check_classes(self, classes: Sequence[str] | None, available: tuple[str, ...]) -> tuple[str, ...]:
        if classes is None:
            return available
        chosen = tuple(classes)
        unknown = [name for name in chosen if name not in available]
        if unknown or not chosen:
            raise ConfigError(
                f"classes {unknown or list(chosen)} are not VinDr-CXR "
                f"({self.layout} layout) labels; choose from {list(available)}"
            )
        return chosen

    @staticmethod
    def _read_image_labels(
        path: Path, classes: tuple[str, ...], on_error: OnError, skips: SkipReport
    ) -> dict[str, _Image]:
        header = csv_columns(path) if path.is_file() else []
        columns = [next((a for a in _COLUMN_ALIASES.get(c, (c,)) if a in header), c) for c in classes]
        rows = iter_csv(path, ["image_id", *columns])
        has_rad = "rad_id" in header
        collected: dict[str, _Image] = {}
        for line, row in rows:
            where = f"{path}, line {line}"
            image_id = row.get("image_id") or ""
            image = collected.setdefault(image_id, _Image(where))
            parsed = False
            with row_guard(where, on_error, skips):
                if not image_id:
                    raise DataError("field 'image_id' is empty")
                rad = cell(row, "rad_id") if has_rad else _CONSENSUS
                if not rad:
                    raise DataError("field 'rad_id' is empty")
                if rad in image.rad_labels:
                    raise DataError(
                        f"field 'rad_id': image {image_id!r} has a second row for "
                        f"radiologist {rad!r} (first at {image.where})"
                    )
                image.rad_labels[rad] = np.array([_binary(row, c) for c in columns], dtype=np.float32)
                parsed = True
            if not parsed and image.bad is None:
                image.bad = where
        return collected

    @staticmethod
    def _read_boxes(
        path: Path, collected: dict[str, _Image], on_error: OnError, skips: SkipReport, *, kaggle: bool
    ) -> None:
        """Boxes (and, for the Kaggle layout, readers and their rows) of every image in ``path``.

        PhysioNet: ``collected`` holds the image_labels images, and an image id without an
        image_labels row is an error. Kaggle: every id is new; every row, "No finding" ones
        too, is kept for :meth:`_kaggle_labels`.
        """
        header = csv_columns(path) if path.is_file() else []
        rows = iter_csv(path, ["image_id", "class_name", *_BOX_FIELDS] + (["rad_id"] if kaggle else []))
        has_rad = "rad_id" in header
        for line, row in rows:
            where = f"{path}, line {line}"
            image_id = row.get("image_id") or ""
            if kaggle:
                image = collected.setdefault(image_id, _Image(where))
            else:
                image = collected.get(image_id) or _Image(where)
            parsed = False
            with row_guard(where, on_error, skips):
                if not image_id:
                    raise DataError("field 'image_id' is empty")
                if image_id not in collected:
                    labels_file = path.name.replace("annotations_", "image_labels_")
                    raise DataError(
                        f"field 'image_id': {image_id!r} has boxes but no row in {path.parent / labels_file}"
                    )
                rad = cell(row, "rad_id") if has_rad else _CONSENSUS
                if not rad:
                    raise DataError("field 'rad_id' is empty")
                name = cell(row, "class_name")
                if name.lower() in _LOCAL:
                    label, box = _LOCAL[name.lower()], _box(row)
                elif name.lower() in _GLOBAL:
                    _no_box(row, name)
                    label, box = _GLOBAL[name.lower()], []
                else:
                    raise DataError(f"field 'class_name': {name!r} is not a VinDr-CXR label {list(VINDR_LABELS)}")
                if kaggle:  # every row, so that "No finding" rows name their reader
                    image.rad_labels.setdefault(rad, np.zeros(0, dtype=np.float32))
                if kaggle or box:
                    image.boxes.append(box)
                    image.box_labels.append(label)
                    image.box_rads.append(rad)
                parsed = True
            if not parsed and image_id in collected and collected[image_id].bad is None:
                collected[image_id].bad = where

    @staticmethod
    def _kaggle_labels(collected: dict[str, _Image], classes: tuple[str, ...]) -> None:
        """Readers' labels from their rows: a box of a class, or a "No finding" row."""
        index = {name: k for k, name in enumerate(classes)}
        for image in collected.values():
            labels = {rad: np.zeros(len(classes), dtype=np.float32) for rad in image.rad_labels}
            kept: list[int] = []
            for k, (name, rad) in enumerate(zip(image.box_labels, image.box_rads, strict=True)):
                if name in index:
                    labels[rad][index[name]] = 1.0
                if name != NO_FINDING and image.boxes[k]:
                    kept.append(k)
            image.rad_labels = labels
            image.boxes = [image.boxes[k] for k in kept]
            image.box_labels = [image.box_labels[k] for k in kept]
            image.box_rads = [image.box_rads[k] for k in kept]

    def _records(
        self,
        collected: dict[str, _Image],
        classes: tuple[str, ...],
        split: str,
        present: dict[str, Path],
        on_error: OnError,
        skips: SkipReport,
    ) -> list[Record]:
        records: list[Record] = []
        for image_id, image in collected.items():
            if image.bad is not None:
                skips.add(image.where, f"image {image_id!r} left out: its row at {image.bad} is invalid")
                continue
            with row_guard(image.where, on_error, skips):
                path = present.get(image_id)
                if path is None:
                    raise DataError(
                        f"field 'image_id': image file {self.root / split / (image_id + '.dicom')} does not exist"
                    )
                records.append(
                    Record(
                        image_path=path,
                        labels=_vote(image.rad_labels, len(classes), self.vote),
                        boxes=np.array(image.boxes, dtype=np.float32).reshape(-1, 4),
                        box_labels=list(image.box_labels),
                        split=split,
                        meta=self._meta(image_id, image, classes),
                    )
                )
        return records

    def _meta(self, image_id: str, image: _Image, classes: tuple[str, ...]) -> dict[str, Any]:
        return {
            "image_id": image_id,
            "rad_ids": list(image.rad_labels),
            "rad_labels": dict(image.rad_labels),
            "rad_label_classes": classes,
            "box_rad_ids": list(image.box_rads),
            "vote": self.vote,
        }
