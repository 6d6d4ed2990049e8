"""CheXpert v1.0 (Stanford) and the CheXpert label conventions shared with MIMIC-CXR."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
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
    row_guard,
)
from maco_cxr.errors import ConfigError, DataError

__all__ = ["CHEXPERT_5", "CHEXPERT_OBSERVATIONS", "CheXpert", "chexpert_labels", "chexpert_value"]

logger = logging.getLogger(__name__)

CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
# The CheXpert-5 competition tasks in the order of the official MaCo split files.
CHEXPERT_5: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)

UncertainPolicy = Literal["ones", "zeros", "ignore"]
BlankPolicy = Literal["zeros", "nan"]
_UNCERTAIN = {"ones": 1.0, "zeros": 0.0, "ignore": math.nan}
_BLANK = {"zeros": 0.0, "nan": math.nan}


def chexpert_value(text: str, uncertain: UncertainPolicy, blank: BlankPolicy) -> float:
    """Map one CheXpert-labeller cell (``1``, ``0``, ``-1``, blank) to 1 / 0 / NaN.

    ``uncertain`` says what -1 becomes ("ignore" = NaN, i.e. unknown); ``blank`` (the
    observation was not mentioned) becomes 0 ("zeros", the CheXpert convention) or NaN.
    """
    if text == "":
        return _BLANK[blank]
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"cannot parse {text!r}; expected 1, 0, -1 or blank") from None
    if value == -1.0:
        return _UNCERTAIN[uncertain]
    if value in (0.0, 1.0):
        return value
    raise DataError(f"value {text!r} is not one of 1, 0, -1 or blank")


def chexpert_labels(
    row: dict[str, str | None], classes: Sequence[str], uncertain: UncertainPolicy, blank: BlankPolicy
) -> np.ndarray:
    """float32 ``[K]`` labels of one CSV row for ``classes``; errors name the field."""
    values = np.empty(len(classes), dtype=np.float32)
    for k, name in enumerate(classes):
        try:
            values[k] = chexpert_value(cell(row, name), uncertain, blank)
        except DataError as err:
            raise DataError(f"field {name!r}: {err}") from err
    return values


def check_label_policy(uncertain: str, blank: str) -> None:
    """Validate the ``uncertain`` and ``blank`` arguments of a CheXpert-labelled adapter."""
    if uncertain not in _UNCERTAIN:
        raise ConfigError(f"uncertain={uncertain!r} is not one of {tuple(_UNCERTAIN)}")
    if blank not in _BLANK:
        raise ConfigError(f"blank={blank!r} is not one of {tuple(_BLANK)}")


def check_classes(classes: Sequence[str], available: Sequence[str], source: str) -> tuple[str, ...]:
    """Validate requested class names against the observations a label file provides."""
    unknown = [name for name in classes if name not in available]
    if unknown or not classes:
        raise ConfigError(
            f"classes {list(unknown or classes)} are not {source} observations; choose from {list(available)}"
        )
    return tuple(classes)


class CheXpert(ChestXrayDataset):
    """CheXpert v1.0 (the "small" 320-px copy or the original), one record per image.

    Size: 224,316 chest radiographs of 65,240 patients (train 223,414 / valid 234), 14
    observations labelled from reports by the CheXpert labeller (valid: radiologist consensus).
    Licence: Stanford University CheXpert Dataset Research Use Agreement (non-commercial
    research use; no redistribution).
    Citation: Irvin J. et al., "CheXpert: A Large Chest Radiograph Dataset with Uncertainty
    Labels and Expert Comparison", AAAI 2019.

    Layout (``root`` is the dataset folder)::

        CheXpert-v1.0-small/
          train.csv  valid.csv      Path, Sex, Age, Frontal/Lateral, AP/PA, 14 observations
          train/patient00001/study1/view1_frontal.jpg
          valid/patient64541/study1/view1_frontal.jpg

    ``Path`` ("CheXpert-v1.0-small/train/...") is relative to the root's parent; its first
    component (the folder's name) is replaced by ``root``, so a renamed folder still works.
    The original value is kept in ``meta["relative_path"]``, which the official split files
    use. Labels: 1 / 0 / NaN per ``classes`` (default CheXpert-5 in the split files' order);
    -1 follows ``uncertain`` ("ignore" = NaN); blank follows ``blank`` ("zeros" by default:
    not mentioned = negative, the CheXpert convention). ``frontal_only`` keeps rows whose
    ``Frontal/Lateral`` is "Frontal".
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Literal["train", "valid"] = "train",
        *,
        on_error: OnError = "raise",
        classes: Sequence[str] = CHEXPERT_5,
        uncertain: UncertainPolicy = "ignore",
        blank: BlankPolicy = "zeros",
        frontal_only: bool = True,
    ) -> None:
        on_error = check_on_error(on_error)
        check_label_policy(uncertain, blank)
        if split not in ("train", "valid"):
            raise ConfigError(f"split={split!r} is not one of ('train', 'valid')")
        self.root = Path(root)
        chosen = check_classes(classes, CHEXPERT_OBSERVATIONS, "CheXpert")
        csv_path = self.root / f"{split}.csv"
        required = ["Path", *chosen] + (["Frontal/Lateral"] if frontal_only else [])
        skips = SkipReport()
        records: list[Record] = []
        lateral = 0
        for line, row in iter_csv(csv_path, required):
            with row_guard(f"{csv_path}, line {line}", on_error, skips):
                if frontal_only and cell(row, "Frontal/Lateral") != "Frontal":
                    lateral += 1
                    continue
                records.append(self._record(row, chosen, uncertain, blank))
        logger.info("%s: %d records, %d non-frontal rows left out (frontal_only)", csv_path, len(records), lateral)
        log_skips(logger, csv_path, skips, len(records))
        super().__init__(records, chosen, skips=skips, on_error=on_error)

    def _record(
        self, row: dict[str, str | None], classes: tuple[str, ...], uncertain: UncertainPolicy, blank: BlankPolicy
    ) -> Record:
        relative = cell(row, "Path")
        parts = PurePosixPath(relative.replace("\\", "/")).parts
        if len(parts) < 2:
            raise DataError(f"field 'Path': {relative!r} is not '<dataset folder>/<split>/...'")
        labels = chexpert_labels(row, classes, uncertain, blank)
        image_path = self.root.joinpath(*parts[1:])
        if not image_path.is_file():
            raise DataError(f"field 'Path': image file {image_path} does not exist")
        patient = next((p for p in parts if p.startswith("patient")), None)
        meta = {key: row.get(key) for key in ("Sex", "Age", "Frontal/Lateral", "AP/PA") if row.get(key) is not None}
        meta["relative_path"] = relative
        return Record(image_path=image_path, labels=labels, patient_id=patient, split=parts[1], meta=meta)
