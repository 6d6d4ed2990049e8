"""CheXlocalize: radiologist segmentations of 10 pathologies on CheXpert valid/test images."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
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
    row_guard,
)
from maco_cxr.data.datasets.chexpert import chexpert_value
from maco_cxr.errors import ConfigError, DataError

__all__ = ["CHEXLOCALIZE_PATHOLOGIES", "CheXlocalize", "decode_coco_rle"]

logger = logging.getLogger(__name__)

# The localisation tasks in the order of the official code (eval_constants.LOCALIZATION_TASKS),
# spelled as the keys of the segmentation JSON files ("Airspace Opacity" is CheXpert's
# "Lung Opacity").
CHEXLOCALIZE_PATHOLOGIES: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Airspace Opacity",
    "Edema",
    "Consolidation",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Support Devices",
)
_ALIASES = {"lung opacity": "Airspace Opacity"}
_CANONICAL = {name.lower(): name for name in CHEXLOCALIZE_PATHOLOGIES}
# Label-file columns that may hold a pathology (CheXpert files say "Lung Opacity").
_LABEL_COLUMNS = {"Airspace Opacity": ("Airspace Opacity", "Lung Opacity")}
_CXR_ID = re.compile(r"^(patient\d+)_(study\d+)_(view\d+_[A-Za-z]+)$")
_SPLIT_FOLDERS = {"val": ("val", "valid"), "test": ("test",)}


def _import_mask_api() -> Any:
    try:
        from pycocotools import mask as mask_api
    except ImportError as exc:  # pragma: no cover - pycocotools is a dependency
        raise ImportError(
            "CheXlocalize masks are COCO RLE and need pycocotools; install it with `pip install pycocotools`"
        ) from exc
    return mask_api


def decode_coco_rle(rle: dict[str, Any]) -> np.ndarray:
    """A COCO run-length encoding ``{"size": [h, w], "counts": str}`` as uint8 0/1 ``[h, w]``."""
    mask_api = _import_mask_api()
    counts = rle["counts"]
    encoded = {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }
    return (np.asarray(mask_api.decode(encoded)) > 0).astype(np.uint8)


def _rle_area(rle: dict[str, Any]) -> int:
    mask_api = _import_mask_api()
    counts = rle["counts"]
    encoded = {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }
    return int(mask_api.area(encoded))


def _check_rle(item: Any, pathology: str) -> dict[str, Any]:
    """A segmentation entry ``{"size": [h, w], "counts": str}``; errors name the field."""
    field = f"field {pathology!r}"
    if not isinstance(item, dict) or "size" not in item or "counts" not in item:
        raise DataError(f"{field}: expected a COCO RLE {{'size': [h, w], 'counts': ...}}, got {type(item).__name__}")
    size = item["size"]
    if not isinstance(size, list) or len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise DataError(f"{field}: 'size' {size!r} is not [height, width]")
    if not isinstance(item["counts"], str):
        raise DataError(f"{field}: 'counts' is a {type(item['counts']).__name__}, not the compressed RLE string")
    try:
        _rle_area(item)
    except (ValueError, TypeError, UnicodeEncodeError) as err:
        raise DataError(f"{field}: 'counts' is not a valid COCO RLE ({err})") from err
    return {"size": list(size), "counts": item["counts"]}


def _pathology_name(name: str) -> str:
    """The CheXlocalize spelling of a pathology (case-insensitive; "Lung Opacity" accepted)."""
    key = name.strip().lower()
    canonical = _CANONICAL.get(key) or _ALIASES.get(key)
    if canonical is None:
        raise ConfigError(
            f"pathology {name!r} is not a CheXlocalize pathology; choose from {list(CHEXLOCALIZE_PATHOLOGIES)}"
        )
    return canonical


class CheXlocalize(ChestXrayDataset):
    """CheXlocalize (Stanford AIMI), one record per CheXpert validation or test image.

    Size: validation 234 images of 200 patients (187 with at least one segmentation), test
    668 images of 500 patients; pixel-level segmentations of 10 pathologies drawn by two
    board-certified radiologists (ground truth; a separate human benchmark set exists too).
    Licence: the Stanford AIMI dataset research use agreement accepted at download
    (non-commercial research; no redistribution); the official code
    (rajpurkarlab/cheXlocalize) is MIT.
    Citation: Saporta A. et al., "Benchmarking saliency methods for chest X-ray
    interpretation", Nature Machine Intelligence 4, 867-878 (2022).

    Layout (the Stanford AIMI download; ``root`` holds both folders)::

        <root>/CheXlocalize/gt_segmentations_{val,test}.json
        <root>/CheXpert/{val,test}/patient64541/study1/view1_frontal.jpg
        <root>/CheXpert/{val,test}_labels.csv     (optional) Path or Study, 14 observations

    The JSON files may also sit directly in ``root``; ``valid/`` is accepted for ``val/``.
    JSON format (verified against rajpurkarlab/cheXlocalize, eval.py and
    annotation_to_segmentation.py): ``{cxr_id: {pathology: {"size": [h, w], "counts": str}}}``
    with ``cxr_id`` like ``patient64541_study1_view1_frontal`` (the image
    ``patient64541/study1/view1_frontal.jpg``), each a pycocotools RLE in the image's
    original size, one for each of the 10 pathologies (all zeros when absent). The files
    hold only images with at least one positive label, so an image listed only in the
    labels file has empty masks.

    Records: every image of the labels file when it exists (a "Study" column applies the
    study's labels to each of its images on disk), else every image of the JSON file;
    ``segmented_only=True`` keeps the JSON's images only. Labels: ``pathologies`` (default
    all 10, names case-insensitive, "Lung Opacity" = "Airspace Opacity") in that order, from
    the labels file (-1 becomes NaN, blank 0; the column "Lung Opacity" serves "Airspace
    Opacity"), or, without one, 1 where the pathology's mask is non-empty. ``mask`` of a
    sample: the union of the chosen pathologies' masks (choose one pathology for a
    per-pathology target); :meth:`read_pathology_masks` returns each one separately and
    :meth:`pathology_pairs` lists the (record, pathology) pairs to evaluate grounding on.
    ``meta``: ``cxr_id``, ``relative_path``, ``segmentations`` ({pathology: RLE}, absent for
    images without any), ``label_source`` ("labels file" or "masks").
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Literal["val", "test"] = "val",
        *,
        on_error: OnError = "raise",
        pathologies: str | Sequence[str] | None = None,
        segmented_only: bool = False,
        use_labels_file: bool = True,
    ) -> None:
        on_error = check_on_error(on_error)
        if split not in _SPLIT_FOLDERS:
            raise ConfigError(f"split={split!r} is not one of {tuple(_SPLIT_FOLDERS)}")
        if isinstance(pathologies, str):
            pathologies = [pathologies]
        chosen = tuple(_pathology_name(p) for p in (pathologies or CHEXLOCALIZE_PATHOLOGIES))
        if len(set(chosen)) != len(chosen):
            raise ConfigError(f"pathologies {list(chosen)} name one pathology twice")
        self.root = Path(root)
        self.split = split
        self.pathologies = chosen
        self.json_path = self._find_json(split)
        self.images = self._find_images(split)
        skips = SkipReport()
        segmentations = self._read_segmentations(on_error, skips)
        labels_path = self.root / "CheXpert" / f"{split}_labels.csv"
        if use_labels_file and labels_path.is_file():
            records = self._records_from_labels(labels_path, segmentations, on_error, skips)
            source: Path = labels_path
        else:
            records = self._records_from_masks(segmentations, on_error, skips)
            source = self.json_path
        if segmented_only:
            records = [r for r in records if "segmentations" in r.meta]
        log_skips(logger, source, skips, len(records))
        super().__init__(records, chosen, skips=skips, on_error=on_error)

    # --- layout ------------------------------------------------------------------------------

    def _find_json(self, split: str) -> Path:
        name = f"gt_segmentations_{split}.json"
        for candidate in (self.root / "CheXlocalize" / name, self.root / name):
            if candidate.is_file():
                return candidate
        raise DataError(f"{self.root}: {name} found neither in CheXlocalize/ nor in the root; check the dataset root")

    def _find_images(self, split: str) -> Path:
        for folder in _SPLIT_FOLDERS[split]:
            candidate = self.root / "CheXpert" / folder
            if candidate.is_dir():
                return candidate
        raise DataError(
            f"{self.root / 'CheXpert'}: no image folder {' or '.join(_SPLIT_FOLDERS[split])}/; check the dataset root"
        )

    def _image_path(self, cxr_id: str) -> Path:
        match = _CXR_ID.match(cxr_id)
        if match is None:
            raise DataError(f"image id {cxr_id!r} is not 'patientN_studyN_viewN_frontal'")
        patient, study, view = match.groups()
        return self.images / patient / study / f"{view}.jpg"

    # --- files -------------------------------------------------------------------------------

    def _read_segmentations(self, on_error: OnError, skips: SkipReport) -> dict[str, dict[str, dict[str, Any]] | None]:
        """{cxr_id: {pathology: RLE}} of the chosen pathologies; None for a bad entry."""
        try:
            data = json.loads(self.json_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"{self.json_path}: cannot read the JSON file ({err})") from err
        if not isinstance(data, dict):
            raise DataError(
                f"{self.json_path}: expected an object {{cxr_id: {{pathology: RLE}}}}, got {type(data).__name__}"
            )
        result: dict[str, dict[str, dict[str, Any]] | None] = {}
        for cxr_id, entry in data.items():
            result[cxr_id] = None
            with row_guard(f"{self.json_path}, image {cxr_id!r}", on_error, skips):
                if not isinstance(entry, dict):
                    raise DataError(f"expected {{pathology: RLE}}, got {type(entry).__name__}")
                missing = [p for p in self.pathologies if p not in entry]
                if missing:
                    raise DataError(f"field(s) {missing} missing; the entry has {sorted(entry)}")
                rles = {p: _check_rle(entry[p], p) for p in self.pathologies}
                sizes = {tuple(r["size"]) for r in rles.values()}
                if len(sizes) > 1:
                    raise DataError(f"the pathologies' masks have different sizes {sorted(sizes)}")
                self._image_path(cxr_id)
                result[cxr_id] = rles
        return result

    def _records_from_masks(
        self, segmentations: dict[str, dict[str, dict[str, Any]] | None], on_error: OnError, skips: SkipReport
    ) -> list[Record]:
        records: list[Record] = []
        for cxr_id, rles in segmentations.items():
            if rles is None:
                continue
            with row_guard(f"{self.json_path}, image {cxr_id!r}", on_error, skips):
                labels = np.array([1.0 if _rle_area(rles[p]) else 0.0 for p in self.pathologies], dtype=np.float32)
                records.append(self._record(cxr_id, labels, rles, "masks"))
        return records

    def _records_from_labels(
        self,
        path: Path,
        segmentations: dict[str, dict[str, dict[str, Any]] | None],
        on_error: OnError,
        skips: SkipReport,
    ) -> list[Record]:
        header = csv_columns(path)
        key = "Path" if "Path" in header or "Study" not in header else "Study"
        columns = [next((c for c in _LABEL_COLUMNS.get(p, (p,)) if c in header), p) for p in self.pathologies]
        records: list[Record] = []
        listed: set[str] = set()
        for line, row in iter_csv(path, [key, *columns]):
            with row_guard(f"{path}, line {line}", on_error, skips):
                ids = self._ids_of(cell(row, key), key)
                twice = [cxr_id for cxr_id in ids if cxr_id in listed]
                if twice:
                    raise DataError(f"field {key!r}: image {twice[0]!r} is listed twice")
                listed.update(ids)
                labels = np.empty(len(columns), dtype=np.float32)
                for k, column in enumerate(columns):
                    try:
                        labels[k] = chexpert_value(cell(row, column), "ignore", "zeros")
                    except DataError as err:
                        raise DataError(f"field {column!r}: {err}") from err
                invalid = [cxr_id for cxr_id in ids if cxr_id in segmentations and segmentations[cxr_id] is None]
                if invalid:
                    raise DataError(f"image {invalid[0]!r} left out: its entry in {self.json_path} is invalid")
                rows = [self._record(cxr_id, labels.copy(), segmentations.get(cxr_id), "labels file") for cxr_id in ids]
                records.extend(rows)
        unlisted = sorted({k for k, v in segmentations.items() if v is not None} - listed)
        if unlisted:
            with row_guard(str(path), on_error, skips):
                raise DataError(
                    f"{len(unlisted)} image(s) of {self.json_path} have no row "
                    f"(first: {unlisted[0]!r}); pass use_labels_file=False to take "
                    "labels from the masks"
                )
        return records

    def _ids_of(self, value: str, key: str) -> list[str]:
        """The cxr ids a labels-file row covers: its image ("Path") or its study's images."""
        parts = value.replace("\\", "/").strip("/").split("/")
        if key == "Path":
            if len(parts) < 3 or not parts[-1].lower().endswith(".jpg"):
                raise DataError(f"field 'Path': {value!r} is not '.../patientN/studyN/viewN_*.jpg'")
            return ["_".join([parts[-3], parts[-2], parts[-1][: -len(".jpg")]])]
        if len(parts) < 2 or not parts[-2].startswith("patient"):
            raise DataError(f"field 'Study': {value!r} is not '.../patientN/studyN'")
        folder = self.images / parts[-2] / parts[-1]
        views = sorted(p.stem for p in folder.glob("*.jpg")) if folder.is_dir() else []
        if not views:
            raise DataError(f"field 'Study': no images in {folder}")
        return [f"{parts[-2]}_{parts[-1]}_{view}" for view in views]

    def _record(self, cxr_id: str, labels: np.ndarray, rles: dict[str, dict[str, Any]] | None, source: str) -> Record:
        path = self._image_path(cxr_id)
        if not path.is_file():
            raise DataError(f"image file {path} (image {cxr_id!r}) does not exist")
        meta: dict[str, Any] = {
            "cxr_id": cxr_id,
            "label_source": source,
            "relative_path": path.relative_to(self.images.parent).as_posix(),
        }
        if rles is not None:
            meta["segmentations"] = rles
        return Record(image_path=path, labels=labels, patient_id=cxr_id.split("_")[0], split=self.split, meta=meta)

    # --- masks -------------------------------------------------------------------------------

    def read_mask(self, record: Record, height: int, width: int) -> np.ndarray | None:
        """Union of the chosen pathologies' masks as uint8 0/1 ``[H, W]``."""
        masks = self._masks(record, height, width)
        union = np.zeros((height, width), dtype=np.uint8)
        for mask in masks.values():
            union |= mask
        return union

    def read_pathology_masks(self, index: int) -> dict[str, np.ndarray]:
        """{pathology: uint8 0/1 ``[H, W]``} of record ``index`` for each chosen pathology.

        The size is the one stored in the JSON file (the original image's), or the image
        file's for images without segmentations (whose masks are all zero).
        """
        record = self.records[index]
        rles = record.meta.get("segmentations")
        if rles:
            height, width = next(iter(rles.values()))["size"]
        else:
            from PIL import Image

            with Image.open(record.image_path) as image:
                width, height = image.size
        return self._masks(record, height, width)

    def pathology_pairs(self, positive_only: bool = True) -> list[tuple[int, str]]:
        """(record index, pathology) pairs, one per chosen pathology of each record.

        ``positive_only`` keeps the pairs whose label is 1, the pairs a grounding
        evaluation scores (CheXlocalize's IoU on true positives).
        """
        pairs: list[tuple[int, str]] = []
        for index, record in enumerate(self.records):
            for k, pathology in enumerate(self.pathologies):
                if not positive_only or (record.labels is not None and record.labels[k] == 1.0):
                    pairs.append((index, pathology))
        return pairs

    def _masks(self, record: Record, height: int, width: int) -> dict[str, np.ndarray]:
        rles = record.meta.get("segmentations")
        if not rles:
            return {p: np.zeros((height, width), dtype=np.uint8) for p in self.pathologies}
        masks: dict[str, np.ndarray] = {}
        for pathology in self.pathologies:
            rle = rles[pathology]
            stored_h, stored_w = rle["size"]
            if (stored_h, stored_w) != (height, width):
                raise DataError(
                    f"{self.json_path}, image {record.meta['cxr_id']!r}, field {pathology!r}: "
                    f"the mask is {stored_w}x{stored_h} (WxH) but the image {record.image_path} "
                    f"is {width}x{height}; CheXlocalize masks need the original-resolution "
                    "CheXpert images (not CheXpert-v1.0-small)"
                )
            masks[pathology] = decode_coco_rle(rle)
        return masks
