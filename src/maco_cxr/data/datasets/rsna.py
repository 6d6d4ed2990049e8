"""RSNA Pneumonia Detection Challenge: DICOM images with lung-opacity boxes."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np

from maco_cxr.data.datasets.base import (
    ChestXrayDataset,
    OnError,
    Record,
    SkipReport,
    cell,
    check_on_error,
    iter_csv,
    log_skips,
    parse_float,
    row_guard,
)
from maco_cxr.errors import ConfigError, DataError

__all__ = ["RSNA_CLASSES", "RsnaPneumonia"]

logger = logging.getLogger(__name__)

RSNA_CLASSES: tuple[str, ...] = ("Lung Opacity",)
_BOX_FIELDS = ("x", "y", "width", "height")


def _row_box(row: dict[str, str | None]) -> list[float] | None:
    """The row's box as xyxy, or None for a negative row (Target 0, empty box)."""
    target = cell(row, "Target")
    if target not in ("0", "1"):
        raise DataError(f"field 'Target': {target!r} is not 0 or 1")
    if target == "0":
        filled = [name for name in _BOX_FIELDS if cell(row, name)]
        if filled:
            raise DataError(f"fields {filled}: a Target 0 row must have an empty box")
        return None
    x, y, w, h = (parse_float(row, name) for name in _BOX_FIELDS)
    if w <= 0 or h <= 0:
        raise DataError(f"fields 'width', 'height': box size {w}x{h} is not positive")
    return [x, y, x + w, y + h]


class RsnaPneumonia(ChestXrayDataset):
    """RSNA Pneumonia Detection Challenge (stage 2), one record per DICOM image.

    Size: 26,684 labelled training DICOMs (1024x1024; 6,012 with 9,555 "Lung Opacity"
    boxes) and 3,000 unlabelled stage-2 test DICOMs.
    Licence: Kaggle competition data; images from NIH ChestX-ray14 (no restrictions),
    annotations by the RSNA and the Society of Thoracic Radiology; cite both and follow the
    Kaggle competition rules.
    Citation: Shih G. et al., "Augmenting the National Institutes of Health Chest Radiograph
    Dataset with Expert Annotations of Possible Pneumonia", Radiology: AI 1(1), 2019.

    Layout::

        <root>/stage_2_train_labels.csv          patientId, x, y, width, height, Target
        <root>/stage_2_detailed_class_info.csv   patientId, class (optional, into meta)
        <root>/stage_2_train_images/<patientId>.dcm
        <root>/stage_2_test_images/<patientId>.dcm

    ``split="train"``: one label row per box (several rows = several boxes; a negative has
    one row with Target 0 and an empty box). Label 1 when the image has a box; boxes as
    xyxy, an empty ``[0, 4]`` array for negatives. A bad row leaves its whole image out in
    ``on_error="skip"`` mode (a partial box list would be a wrong label); both are reported.
    ``positives_only`` keeps images with at least one box (the detection protocol).
    ``split="test"``: every DICOM of ``stage_2_test_images`` with unknown (NaN) labels and
    no boxes; the official MaCo test labels come with the split file
    (:func:`maco_cxr.data.splits.subset_by_split_file` with ``use_file_labels=True``).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Literal["train", "test"] = "train",
        *,
        on_error: OnError = "raise",
        positives_only: bool = False,
    ) -> None:
        on_error = check_on_error(on_error)
        if split not in ("train", "test"):
            raise ConfigError(f"split={split!r} is not one of ('train', 'test')")
        if split == "test" and positives_only:
            raise ConfigError("positives_only=True needs labels; split='test' has none")
        self.root = Path(root)
        images = self.root / f"stage_2_{split}_images"
        if not images.is_dir():
            raise DataError(f"{images}: no such folder; check the dataset root")
        skips = SkipReport()
        if split == "test":
            records = [
                Record(image_path=path, labels=np.full(1, np.nan, dtype=np.float32), patient_id=path.stem, split=split)
                for path in sorted(images.glob("*.dcm"))
            ]
        else:
            records = self._train_records(images, on_error, skips)
            if positives_only:
                records = [r for r in records if r.labels is not None and r.labels[0] == 1.0]
        log_skips(logger, self.root / "stage_2_train_labels.csv", skips, len(records))
        super().__init__(records, RSNA_CLASSES, skips=skips, on_error=on_error)

    def _train_records(self, images: Path, on_error: OnError, skips: SkipReport) -> list[Record]:
        csv_path = self.root / "stage_2_train_labels.csv"
        rows = iter_csv(csv_path, ["patientId", *_BOX_FIELDS, "Target"])
        classes = self._detailed_classes(on_error, skips)
        present = {name for name in os.listdir(images) if name.endswith(".dcm")}
        boxes: dict[str, list[list[float] | None]] = {}
        first_line: dict[str, int] = {}
        bad: dict[str, int] = {}
        for line, row in rows:
            patient = row.get("patientId") or ""
            first_line.setdefault(patient, line)
            boxes.setdefault(patient, [])
            parsed = False
            with row_guard(f"{csv_path}, line {line}", on_error, skips):
                if not patient:
                    raise DataError("field 'patientId' is empty")
                boxes[patient].append(_row_box(row))
                parsed = True
            if not parsed:
                bad.setdefault(patient, line)
        records: list[Record] = []
        for patient, rows_boxes in boxes.items():
            where = f"{csv_path}, line {first_line[patient]}"
            if patient in bad:
                skips.add(where, f"image {patient!r} left out: its row at line {bad[patient]} is invalid")
                continue
            with row_guard(where, on_error, skips):
                records.append(self._record(patient, rows_boxes, images, present, classes))
        return records

    def _detailed_classes(self, on_error: OnError, skips: SkipReport) -> dict[str, str]:
        path = self.root / "stage_2_detailed_class_info.csv"
        if not path.is_file():
            return {}
        classes: dict[str, str] = {}
        for line, row in iter_csv(path, ["patientId", "class"]):
            with row_guard(f"{path}, line {line}", on_error, skips):
                classes[cell(row, "patientId")] = cell(row, "class")
        return classes

    @staticmethod
    def _record(
        patient: str, rows_boxes: list[list[float] | None], images: Path, present: set[str], classes: dict[str, str]
    ) -> Record:
        positive = [box for box in rows_boxes if box is not None]
        if positive and len(positive) != len(rows_boxes):
            raise DataError(f"patientId {patient!r} has both Target 0 and Target 1 rows")
        if f"{patient}.dcm" not in present:
            raise DataError(f"image file {images / (patient + '.dcm')} does not exist")
        meta = {"class": classes[patient]} if patient in classes else {}
        return Record(
            image_path=images / f"{patient}.dcm",
            labels=np.array([1.0 if positive else 0.0], dtype=np.float32),
            boxes=np.array(positive, dtype=np.float32).reshape(-1, 4),
            box_labels=[RSNA_CLASSES[0]] * len(positive),
            patient_id=patient,
            split="train",
            meta=meta,
        )
