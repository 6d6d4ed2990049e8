"""SIIM-ACR Pneumothorax Segmentation: DICOM images with run-length-encoded masks."""

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
    index_files,
    iter_csv,
    log_skips,
    row_guard,
)
from maco_cxr.data.rle import rle_decode, rle_runs
from maco_cxr.errors import ConfigError, DataError

__all__ = ["SIIM_CLASSES", "SiimAcr"]

logger = logging.getLogger(__name__)

SIIM_CLASSES: tuple[str, ...] = ("Pneumothorax",)


class SiimAcr(ChestXrayDataset):
    """SIIM-ACR Pneumothorax Segmentation (Kaggle 2019), one record per DICOM image.

    Size: 12,089 training DICOMs (1024x1024; 2,669 with pneumothorax) with masks, plus the
    stage-1 test DICOMs without labels. Images derive from NIH ChestX-ray14.
    Licence: Kaggle competition data (SIIM and ACR), research use under the competition
    rules; cite the challenge.
    Citation: Zawacki A. et al., "SIIM-ACR Pneumothorax Segmentation", Kaggle, 2019
    (https://kaggle.com/competitions/siim-acr-pneumothorax-segmentation).

    Layout::

        <root>/train-rle.csv           header "ImageId, EncodedPixels" (note the space)
        <root>/dicom-images-train/<study>/<series>/<SOPInstanceUID>.dcm
        <root>/dicom-images-test/<study>/<series>/<SOPInstanceUID>.dcm

    Column names and values are stripped, so the file's " -1" (empty mask) is read as
    "-1": the official MaCo code compared the raw value with "-1" and marked every image
    positive. Several rows of one image are OR-ed into one mask, decoded from the RLE on
    read (:mod:`maco_cxr.data.rle`) at the image's size. Label 1 when any row holds a run.
    DICOMs are found with one walk, keyed by file name. A bad row leaves its whole image out
    in ``on_error="skip"`` mode (a partial mask would be a wrong target); both are reported.
    ``split="test"`` lists the test DICOMs with unknown (NaN) labels and no mask; the MaCo
    splits (train/val/test lists of SOPInstanceUIDs) are applied with
    :func:`maco_cxr.data.splits.subset_by_split_file`. ``patient_id`` is None (the id is only
    in the DICOM header, which is not read at construction).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Literal["train", "test"] = "train",
        *,
        on_error: OnError = "raise",
        rle_file: str = "train-rle.csv",
    ) -> None:
        on_error = check_on_error(on_error)
        if split not in ("train", "test"):
            raise ConfigError(f"split={split!r} is not one of ('train', 'test')")
        self.root = Path(root)
        self.rle_path = self.root / rle_file
        files = index_files(self.root / f"dicom-images-{split}", (".dcm",))
        skips = SkipReport()
        if split == "test":
            records = [
                Record(
                    image_path=path, labels=np.full(1, np.nan, dtype=np.float32), split=split, meta={"uid": path.stem}
                )
                for _, path in sorted(files.items())
            ]
        else:
            records = self._train_records(files, on_error, skips)
        log_skips(logger, self.rle_path, skips, len(records))
        super().__init__(records, SIIM_CLASSES, skips=skips, on_error=on_error)

    def _train_records(self, files: dict[str, Path], on_error: OnError, skips: SkipReport) -> list[Record]:
        rles: dict[str, list[tuple[int, str]]] = {}
        bad: dict[str, int] = {}
        for line, row in iter_csv(self.rle_path, ["ImageId", "EncodedPixels"]):
            uid = row.get("ImageId") or ""
            rles.setdefault(uid, [])
            parsed = False
            with row_guard(f"{self.rle_path}, line {line}", on_error, skips):
                if not uid:
                    raise DataError("field 'ImageId' is empty")
                encoded = cell(row, "EncodedPixels")
                try:
                    rle_runs(encoded)
                except DataError as err:
                    raise DataError(f"field 'EncodedPixels': {err}") from err
                rles[uid].append((line, encoded))
                parsed = True
            if not parsed:
                bad.setdefault(uid, line)
        records: list[Record] = []
        for uid, rows in rles.items():
            if uid in bad:
                skips.add(f"{self.rle_path}, line {bad[uid]}", f"image {uid!r} left out: one of its rows is invalid")
                continue
            with row_guard(f"{self.rle_path}, line {rows[0][0]}", on_error, skips):
                path = files.get(f"{uid}.dcm")
                if path is None:
                    raise DataError(f"field 'ImageId': no file {uid}.dcm under {self.root / 'dicom-images-train'}")
                positive = any(len(rle_runs(rle)) for _, rle in rows)
                records.append(
                    Record(
                        image_path=path,
                        labels=np.array([1.0 if positive else 0.0], dtype=np.float32),
                        split="train",
                        meta={"uid": uid, "rle": [rle for _, rle in rows], "rle_lines": [line for line, _ in rows]},
                    )
                )
        return records

    def read_mask(self, record: Record, height: int, width: int) -> np.ndarray | None:
        """Union of the record's RLE rows as uint8 0/1 ``[H, W]``; None for test images."""
        if "rle" not in record.meta:
            return None
        mask = np.zeros((height, width), dtype=np.uint8)
        for line, rle in zip(record.meta["rle_lines"], record.meta["rle"], strict=True):
            try:
                mask |= rle_decode(rle, height, width)
            except DataError as err:
                raise DataError(
                    f"{self.rle_path}, line {line}, field 'EncodedPixels' (image {record.image_path}): {err}"
                ) from err
        return mask
