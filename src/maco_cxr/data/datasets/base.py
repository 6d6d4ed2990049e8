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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
import torch
from torch.utils.data import Dataset

from maco_cxr.errors import DataError

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
    """What ``__getitem__`` returns. ``image`` is always present."""

    image: torch.Tensor  # uint8 [1, H, W]
    index: int
    path: str
    report: str
    labels: torch.Tensor  # float32 [K], NaN = unknown
    boxes: torch.Tensor  # float32 [M, 4] xyxy pixels
    box_labels: list[str]
    mask: torch.Tensor  # uint8 [H, W], 0/1
    patient_id: str


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

    def __init__(self, records: list[Record], classes: tuple[str, ...] = (), *,
                 skips: SkipReport | None = None) -> None:
        self.records = records
        if classes:
            self.classes = tuple(classes)
        self.skips = skips if skips is not None else SkipReport()

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
