"""NIH ChestX-ray14: 14 text-mined findings, and boxes for a subset of images."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
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
    index_files,
    iter_csv,
    log_skips,
    parse_float,
    row_guard,
)
from maco_cxr.errors import ConfigError, DataError

__all__ = ["NIH_CLASSES", "NihChestXray14"]

logger = logging.getLogger(__name__)

# Class order of the official MaCo split files and zero-shot evaluation (docs/protocols.md section 2).
NIH_CLASSES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural Thickening",
    "Hernia",
)
# The dataset's own spellings (Data_Entry_2017 and BBox_List_2017) -> class names.
_SPELLINGS = {name: name for name in NIH_CLASSES} | {
    "Pleural_Thickening": "Pleural Thickening",
    "Infiltrate": "Infiltration",
}
_NO_FINDING = "No Finding"
_SPLIT_FILES = {"train_val": "train_val_list.txt", "test": "test_list.txt"}
_BOX_COLUMNS = ("Bbox [x", "y", "w", "h]")


class NihChestXray14(ChestXrayDataset):
    """NIH ChestX-ray14, one record per image, labels for 14 findings.

    Size: 112,120 frontal PNGs (1024x1024) of 30,805 patients; 984 boxes on 880 images.
    Official split by patient: train_val (86,524) / test (25,596).
    Licence: NIH Clinical Center, no restrictions on use; cite the paper and acknowledge the
    NIH Clinical Center.
    Citation: Wang X. et al., "ChestX-ray8: Hospital-scale Chest X-ray Database and
    Benchmarks on Weakly-Supervised Classification and Localization of Common Thorax
    Diseases", CVPR 2017.

    Layout::

        <root>/Data_Entry_2017.csv      Image Index, Finding Labels ("A|B" or "No Finding"),
                                        Follow-up #, Patient ID, Patient Age, ...
        <root>/BBox_List_2017.csv       Image Index, Finding Label, Bbox [x, y, w, h] (optional)
        <root>/train_val_list.txt, test_list.txt
        <root>/images_001/images/*.png ... images_012/...   or   <root>/images/*.png

    PNGs are indexed with one walk of ``root``, so any folder arrangement works as long as
    file names are unique. Labels follow :data:`NIH_CLASSES` ("Pleural_Thickening" becomes
    "Pleural Thickening"; the box list's "Infiltrate" becomes "Infiltration"); an unknown
    finding name is a bad row. Boxes (``[x, y, w, h]`` in the file) become ``x_min, y_min,
    x_max, y_max``; images without a box row have ``boxes=None`` (not annotated).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Literal["train_val", "test"] | None = None,
        *,
        on_error: OnError = "raise",
        data_entry: str = "Data_Entry_2017.csv",
        bbox_list: str | None = "BBox_List_2017.csv",
    ) -> None:
        on_error = check_on_error(on_error)
        if split is not None and split not in _SPLIT_FILES:
            raise ConfigError(f"split={split!r} is not one of {tuple(_SPLIT_FILES)} or None")
        self.root = Path(root)
        skips = SkipReport()
        files = index_files(self.root, (".png",))
        entry_path = self.root / data_entry
        rows = iter_csv(entry_path, ["Image Index", "Finding Labels", "Patient ID"])
        wanted = self._split_names(self.root / _SPLIT_FILES[split]) if split else None
        boxes = self._boxes(self.root / bbox_list, on_error, skips) if bbox_list else {}
        records: list[Record] = []
        seen: set[str] = set()
        for line, row in rows:
            name = row.get("Image Index") or ""
            if wanted is not None and name not in wanted:
                continue
            seen.add(name)
            with row_guard(f"{entry_path}, line {line}", on_error, skips):
                records.append(self._record(row, files, boxes.get(name), split))
        if wanted is not None:
            split_file = self.root / _SPLIT_FILES[split]  # type: ignore[index]
            for name, line in wanted.items():
                if name not in seen:
                    with row_guard(f"{split_file}, line {line}", on_error, skips):
                        raise DataError(f"image {name!r} is not in {entry_path}")
        log_skips(logger, entry_path, skips, len(records))
        super().__init__(records, NIH_CLASSES, skips=skips, on_error=on_error)

    @staticmethod
    def _split_names(path: Path) -> dict[str, int]:
        if not path.is_file():
            raise DataError(f"{path}: split list not found; check the dataset root")
        names: dict[str, int] = {}
        for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if text.strip():
                names[text.strip()] = line
        return names

    @staticmethod
    def _boxes(path: Path, on_error: OnError, skips: SkipReport) -> dict[str, list[tuple[str, list[float]]]]:
        """Boxes per image name from BBox_List_2017.csv (its header splits "Bbox [x,y,w,h]")."""
        boxes: dict[str, list[tuple[str, list[float]]]] = defaultdict(list)
        for line, row in iter_csv(path, ["Image Index", "Finding Label", *_BOX_COLUMNS]):
            with row_guard(f"{path}, line {line}", on_error, skips):
                label = cell(row, "Finding Label")
                if label not in _SPELLINGS:
                    raise DataError(f"field 'Finding Label': unknown finding {label!r}")
                x, y, w, h = (parse_float(row, column) for column in _BOX_COLUMNS)
                if w <= 0 or h <= 0:
                    raise DataError(f"fields 'w', 'h]': box size {w}x{h} is not positive")
                boxes[cell(row, "Image Index")].append((_SPELLINGS[label], [x, y, x + w, y + h]))
        return boxes

    def _record(
        self,
        row: dict[str, str | None],
        files: dict[str, Path],
        boxes: list[tuple[str, list[float]]] | None,
        split: str | None,
    ) -> Record:
        name = cell(row, "Image Index")
        findings = [f.strip() for f in cell(row, "Finding Labels").split("|") if f.strip()]
        if not findings:
            raise DataError(f"field 'Finding Labels' is empty; expected {_NO_FINDING!r} or finding names joined by '|'")
        labels = np.zeros(len(NIH_CLASSES), dtype=np.float32)
        if findings != [_NO_FINDING]:
            for finding in findings:
                if finding not in _SPELLINGS:
                    raise DataError(
                        f"field 'Finding Labels': unknown finding {finding!r}; "
                        f"expected {_NO_FINDING!r} or names from {list(_SPELLINGS)}"
                    )
                labels[NIH_CLASSES.index(_SPELLINGS[finding])] = 1.0
        patient = cell(row, "Patient ID")
        if not patient:
            raise DataError("field 'Patient ID' is empty")
        if name not in files:
            raise DataError(f"field 'Image Index': image file {name!r} not found under {self.root}")
        meta = {
            key: value
            for key, value in row.items()
            if key not in ("", "Image Index", "Finding Labels", "Patient ID") and value is not None
        }
        record = Record(image_path=files[name], labels=labels, patient_id=patient, split=split, meta=meta)
        if boxes:
            record.boxes = np.array([box for _, box in boxes], dtype=np.float32)
            record.box_labels = [label for label, _ in boxes]
        return record
