"""Zero-shot phrase grounding: MaCo's official similarity map, on any image, and its evaluation.

The map (``Phrase Grounding.py`` of the official code; fixtures/official-maco-tiny/README.md):
patch embeddings e_j = img_proj(h_j) of the unmasked encoder, each weighted by the correlation
prior w = softmax(a / 0.02); s_j = (w_j e_j) . t with t the pooled embedding of the processed
phrase (no normalisation); a Gaussian filter (sigma 1.5, mode 'reflect') on the 14 x 14 grid;
bilinear resize to 224 x 224 (align_corners=False).

Geometry: an image is letterboxed to 224 (longest side, area resampling, centred zero
padding), as the MS-CXR protocol prescribes, and the 224 map is mapped back to the original
pixel grid through the recorded :class:`~maco_cxr.data.letterbox.Letterbox`. Each original
pixel reads the map over the content area it became; the padding strips carry map values too
(the model sees black there) but no original pixel maps onto them, so they never reach the
returned map. The MS-CXR metrics are computed on the 224 grid (padding included), with the
boxes mapped through the same letterbox, as the protocol does; ground-truth masks (SIIM,
COVID rural, CheXlocalize, manifest masks) are mapped there with ``Letterbox.apply_mask``
(nearest neighbour).

Evaluation reports (:func:`evaluate_grounding`) follow the official eval/common.py: the
per-threshold IoU, Dice, precision and recall of ``Pipeline.test`` (its ``metric.csv``), the
per-category threshold of ``Pipeline.get_opt_th`` chosen on a validation result and applied
to the evaluated items, plus bootstrap intervals of the item-mean CNR and mIoU.

:func:`run_grounding` is what ``maco-cxr ground --dataset`` and the grounding cell of
``reproduce`` do: a dataset (and optionally its validation split) in, the report folder out
(``items.csv``, the official ``metric.csv``, ``opt_thresholds.csv``, ``summary.json``,
``overlays/``), a frozen :class:`GroundingResult` back.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from maco_cxr.data.datasets.base import ChestXrayDataset, Record, failure_of, is_failed
from maco_cxr.data.inputs import ImagesInput, input_name, is_single_image, load_images
from maco_cxr.data.io import check_image_size
from maco_cxr.data.letterbox import Letterbox, letterbox_image
from maco_cxr.data.reports import grounding_phrase
from maco_cxr.errors import DataError
from maco_cxr.families.base import require
from maco_cxr.inference import encode_texts, inference_mode, patch_embeddings
from maco_cxr.metrics import (
    DEFAULT_THRESHOLDS,
    OPT_TH_THRESHOLDS,
    boxes_to_mask,
    grounding_metric_table,
    grounding_threshold_metrics,
    score_grounding,
    select_grounding_thresholds,
    summarise_grounding,
)
from maco_cxr.tasks.results import Estimate, ReportResult, RunSource

if TYPE_CHECKING:
    from maco_cxr.models.maco import MacoModel

__all__ = [
    "DEFAULT_PHRASE_TEMPLATE",
    "fill_unseen",
    "GroundingEvaluation",
    "GroundingItem",
    "GroundingResult",
    "GroundingTarget",
    "evaluate_grounding",
    "ground",
    "grounding_items",
    "grounding_map",
    "letterboxed_maps",
    "mask_grounding_items",
    "phrase_query",
    "run_grounding",
]

logger = logging.getLogger(__name__)

PATCH_WEIGHT_TEMPERATURE = 0.02
SIGMA = 1.5


def grounding_map(
    patch_embeddings: np.ndarray | torch.Tensor,
    patch_weights: np.ndarray | torch.Tensor,
    phrase_embedding: np.ndarray | torch.Tensor,
    out_size: int = 224,
    sigma: float = SIGMA,
) -> np.ndarray:
    """The official map ``[out_size, out_size]`` (float32) from patch embeddings ``[g, g, D]``,
    patch weights ``[g, g]`` and a phrase embedding ``[D]``."""
    e = torch.as_tensor(patch_embeddings, dtype=torch.float32).cpu()
    w = torch.as_tensor(patch_weights, dtype=torch.float32).cpu()
    t = torch.as_tensor(phrase_embedding, dtype=torch.float32).cpu()
    if e.ndim != 3 or w.shape != e.shape[:2] or t.shape != e.shape[2:]:
        raise DataError(
            f"grounding_map expects patch embeddings [g, g, D], weights [g, g] and a "
            f"phrase embedding [D]; got {list(e.shape)}, {list(w.shape)}, {list(t.shape)}"
        )
    similarity = (e * w[..., None]) @ t
    smoothed = gaussian_filter(similarity.numpy(), sigma=sigma, mode="reflect")
    resized = F.interpolate(
        torch.from_numpy(smoothed)[None, None], size=(out_size, out_size), mode="bilinear", align_corners=False
    )
    return resized[0, 0].numpy()


def phrase_query(phrase: str) -> str:
    """The official grounding query of a phrase; raises when nothing of it survives."""
    if not isinstance(phrase, str) or not phrase.strip():
        raise DataError(f"phrase {phrase!r} is empty; give the finding to locate, e.g. 'left pleural effusion'")
    query = grounding_phrase(phrase)
    if not query:
        raise DataError(
            f"phrase {phrase!r} has nothing the official processing keeps: it splits the phrase "
            "on '.' and drops pieces of 3 characters or fewer, pieces containing '_' and pieces "
            "starting with ','; give a word or more, e.g. 'edema'"
        )
    return query


def fill_unseen(maps: np.ndarray) -> np.ndarray:
    """Maps ``[P, S, S]`` with the NaN a family marks where its model saw nothing (BioViL's centre crop cuts the
    letterboxed image's edges) set to each map's lowest seen value: what the model did not see is the least
    related, so thresholds, the pointing game and min-max scaling read the same map the authors draw, and no
    metric meets a NaN. A map the model saw none of is an error (there is nothing to rank)."""
    out = np.array(maps, dtype=np.float32)
    for k, m in enumerate(out):
        seen = ~np.isnan(m)
        if not seen.any():
            raise DataError(f"grounding map {k} is NaN everywhere: the model saw none of the image")
        m[~seen] = m[seen].min()
    return out


def letterboxed_maps(
    model: MacoModel, images: torch.Tensor | np.ndarray, phrases: Sequence[Sequence[str]]
) -> list[np.ndarray]:
    """Maps ``[P_i, S, S]`` for letterboxed uint8 images ``[N, S, S]`` and phrases per image.

    ``phrases[i]`` are raw phrases (processed here).
    """
    require(model, "grounding")
    pixels = torch.as_tensor(images)
    if len(phrases) != pixels.shape[0]:
        raise DataError(f"{len(phrases)} phrase lists for {pixels.shape[0]} images")
    if hasattr(model, "phrase_maps"):  # another family: its authors' map
        return [fill_unseen(m) for m in model.phrase_maps(pixels, phrases)]
    size = model.config.vision.img_size
    queries = [phrase_query(p) for group in phrases for p in group]
    patches = patch_embeddings(model, pixels[:, None], batch_size=max(1, pixels.shape[0]))  # [N, 1, S, S]
    with inference_mode(model):
        weights = model.patch_weights(PATCH_WEIGHT_TEMPERATURE).float().cpu()
    texts = encode_texts(model, queries) if queries else torch.empty(0, patches.shape[-1])
    maps, cursor = [], 0
    for i, group in enumerate(phrases):
        stack = [grounding_map(patches[i], weights, texts[cursor + k], size) for k in range(len(group))]
        cursor += len(group)
        maps.append(np.stack(stack) if stack else np.empty((0, size, size), np.float32))
    return maps


def ground(
    model: MacoModel,
    image: ImagesInput,
    phrase: str | Sequence[str],
    *,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> np.ndarray | list[np.ndarray]:
    """Grounding map of ``phrase`` on ``image``, float32 ``[H, W]`` in the image's original grid.

    Many images (a list, or a batch array/tensor, see :mod:`maco_cxr.data.inputs`) give a list
    of maps; ``phrase`` is then one phrase for all or one per image. Higher = more related.
    The image is letterboxed to the model's input size (224) and the map mapped back; the
    padding strips never reach the returned map (see the module docstring).
    """
    require(model, "grounding")
    single = is_single_image(image)
    pictures = load_images(image)
    for k, picture in enumerate(pictures):
        check_image_size(picture.shape, input_name(image, k))
    phrases = [phrase] * len(pictures) if isinstance(phrase, str) else list(phrase)
    if len(phrases) != len(pictures):
        raise DataError(f"{len(phrases)} phrases for {len(pictures)} images; give one phrase or one per image")
    for text in phrases:
        phrase_query(text)
    size = model.input_size
    if device is not None:
        model.to(device)
    out: list[np.ndarray] = []
    for start in range(0, len(pictures), batch_size):
        boxed = [letterbox_image(p, size) for p in pictures[start : start + batch_size]]
        stack = np.stack([pixels for pixels, _ in boxed])
        maps = letterboxed_maps(model, stack, [[p] for p in phrases[start : start + batch_size]])
        out += [box.map_to_original(m[0]) for (_, box), m in zip(boxed, maps)]
    return out[0] if single else out


# ------------------------------------------------------------------------------ evaluation

#: The phrase of a mask item (a category, pathology or mask label, not a report phrase):
#: ``{c}`` becomes the category name. It is the official one (eval/utils.py ``load_siim_acr``,
#: ``load_chexlocalize``: "Findings suggesting {category}."); the query is lower-cased by the
#: official phrase processing.
DEFAULT_PHRASE_TEMPLATE = "Findings suggesting {c}."

GroundingTarget = Literal["auto", "boxes", "masks"]


@dataclass
class GroundingItem:
    """One (image, phrase) pair and its ground truth in the original image geometry.

    ``target="boxes"``: ``boxes`` (xyxy, original pixels) are all boxes of the image with that
    phrase, rasterised on the letterboxed grid. ``target="mask"``: the ground truth is a
    mask, mapped to the letterboxed grid with :meth:`Letterbox.apply_mask` (nearest), and
    ``boxes`` is empty ``[0, 4]``. The mask is ``mask`` (0/1 ``[H, W]``) when given, else read
    with the image: the record's mask (``dataset.read_mask``, e.g. SIIM's RLE) when
    ``mask_part`` is None, else the part named ``mask_part``: a CheXlocalize pathology
    (``read_pathology_masks``) or a manifest mask label (the union of its mask files).
    """

    record_index: int
    phrase: str
    category: str
    boxes: np.ndarray
    target: Literal["boxes", "mask"] = "boxes"
    mask: np.ndarray | None = None
    mask_part: str | None = None


@dataclass
class GroundingEvaluation:
    """Per-item scores (``rows``), the aggregated figures (``summary``) and the official table
    (what :func:`evaluate_grounding` computes in memory; :func:`run_grounding` writes it out).

    ``threshold_metrics[i]`` and ``opt_th_metrics[i]`` belong to ``rows[i]``: the per-threshold
    IoU, Dice, precision and recall of the item (:func:`grounding_threshold_metrics`) on the
    [-1, 1] scaled map at :data:`DEFAULT_THRESHOLDS` (the ``metric.csv`` figures) and on the
    [0, 1] scaled map at :data:`OPT_TH_THRESHOLDS` (what a validation threshold search uses).
    ``table`` is :func:`grounding_metric_table` of the rows, full precision.
    """

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    overlays: list[Path]
    failures: list[dict[str, str]] = field(default_factory=list)
    table: dict[str, list[Any]] = field(default_factory=dict)
    threshold_metrics: list[dict[str, list[float]]] = field(default_factory=list)
    opt_th_metrics: list[dict[str, list[float]]] = field(default_factory=list)


def grounding_items(
    dataset: ChestXrayDataset,
    phrases: Sequence[str] | None = None,
    *,
    target: GroundingTarget = "auto",
    phrase_template: str = DEFAULT_PHRASE_TEMPLATE,
) -> list[GroundingItem]:
    """The (image, phrase) items of a dataset, with boxes or with masks as ground truth.

    ``target="boxes"``: boxes of one image grouped by lower-cased label; category
    ``meta["category"]`` of the record (MS-CXR), else the box meta ``category`` field, else
    the phrase. ``target="masks"``: see :func:`mask_grounding_items` (``phrase_template``
    applies to these only). ``target="auto"``: boxes when any record has boxes, else masks.
    ``phrases``: keep only these labels (boxes) or categories (masks), case-insensitive.
    """
    if target not in ("auto", "boxes", "masks"):
        raise DataError(f"target must be 'auto', 'boxes' or 'masks'; got {target!r}")
    if target == "auto":
        has_boxes = any(r.boxes is not None and len(r.boxes) for r in dataset.records)
        target = "boxes" if has_boxes or not _has_masks(dataset) else "masks"
    if target == "masks":
        return mask_grounding_items(dataset, phrases, phrase_template=phrase_template)
    wanted = None if phrases is None else {p.lower() for p in phrases}
    items: list[GroundingItem] = []
    for index, record in enumerate(dataset.records):
        if record.boxes is None or not len(record.boxes):
            continue
        box_meta = record.meta.get("box_meta") or [{}] * len(record.boxes)
        groups: dict[str, list[int]] = {}
        for k, label in enumerate(record.box_labels):
            key = label.strip().lower()
            if key and (wanted is None or key in wanted):
                groups.setdefault(key, []).append(k)
        for key, members in groups.items():
            category = record.meta.get("category") or box_meta[members[0]].get("category") or key
            items.append(
                GroundingItem(
                    index,
                    record.box_labels[members[0]].strip(),
                    str(category),
                    np.asarray(record.boxes, np.float64)[members],
                )
            )
    return items


def _overrides_read_mask(dataset: ChestXrayDataset) -> bool:
    return type(dataset).read_mask is not ChestXrayDataset.read_mask


def _has_masks(dataset: ChestXrayDataset) -> bool:
    return (
        hasattr(dataset, "pathology_pairs")
        or _overrides_read_mask(dataset)
        or any(r.mask_paths for r in dataset.records)
    )


def mask_grounding_items(
    dataset: ChestXrayDataset,
    categories: Sequence[str] | None = None,
    *,
    phrase_template: str = DEFAULT_PHRASE_TEMPLATE,
) -> list[GroundingItem]:
    """Items whose ground truth is a mask, one per (image, category), phrase from a template.

    - CheXlocalize (an adapter with ``pathology_pairs``): one item per positive (image,
      pathology) pair, that pathology's mask, category the pathology.
    - Records with mask files (``covid-rural``, ``manifest`` masks.csv): one item per mask
      label of the image (the union of its files with that label), category the label; a
      blank label takes the dataset's class name when it has one class (COVID rural:
      "Opacity"), else "mask".
    - Other adapters that build masks themselves (SIIM's RLE): one item per record with a
      positive label, its ``read_mask``; category the dataset's class (SIIM:
      "Pneumothorax"), or the positive classes joined by "|".

    The phrase is ``phrase_template`` with ``{c}`` replaced by the category (default
    "Findings suggesting {c}.", the official phrase; "{c}" grounds the bare name; a template
    without ``{c}`` is one phrase for all, e.g. the official COVID rural "Findings
    suggesting pneumonia."). ``categories`` keeps only these (case-insensitive). Masks are
    read with the images; an item whose mask is empty on the letterboxed grid is left out
    of the evaluation and counted (``n_empty_mask``), as the official loaders drop images
    without a mask.
    """
    if not isinstance(phrase_template, str) or not phrase_template.strip():
        raise DataError(f"phrase_template {phrase_template!r} is empty; give e.g. 'Findings suggesting {{c}}.'")
    wanted = None if categories is None else {c.lower() for c in categories}
    items: list[GroundingItem] = []
    empty = np.zeros((0, 4), np.float64)

    def add(index: int, category: str, part: str | None) -> None:
        if wanted is None or category.lower() in wanted:
            items.append(
                GroundingItem(
                    index, phrase_template.replace("{c}", category), category, empty, target="mask", mask_part=part
                )
            )

    single = dataset.classes[0] if len(dataset.classes) == 1 else None
    if hasattr(dataset, "pathology_pairs"):
        for index, pathology in dataset.pathology_pairs(positive_only=True):
            add(index, pathology, pathology)
        return items
    for index, record in enumerate(dataset.records):
        if record.mask_paths:
            labels = record.meta.get("mask_labels") or [""] * len(record.mask_paths)
            if len(labels) != len(record.mask_paths):
                raise DataError(
                    f"record {record.image_path}: {len(labels)} mask labels for {len(record.mask_paths)} mask files"
                )
            distinct = list(dict.fromkeys(str(label).strip() for label in labels))
            for label in distinct:
                category = label or single or "mask"
                add(index, category, None if len(distinct) == 1 else label)
        elif _overrides_read_mask(dataset) and record.labels is not None:
            positive = [
                dataset.classes[k] for k in np.flatnonzero(np.asarray(record.labels) == 1.0) if k < len(dataset.classes)
            ]
            if positive:
                add(index, single or "|".join(positive), None)
    return items


class _ItemImages(torch.utils.data.Dataset):
    """Reads each image of the items once, letterboxed, with its items' letterboxed masks."""

    def __init__(self, dataset: ChestXrayDataset, items: Sequence[GroundingItem], size: int) -> None:
        self.dataset, self.items, self.size = dataset, items, size
        by_record: dict[int, list[int]] = {}
        for i, item in enumerate(items):
            by_record.setdefault(item.record_index, []).append(i)
        self.groups = list(by_record.items())

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record_index, item_ids = self.groups[index]
        sample = self.dataset[record_index]
        if is_failed(sample):
            return {"failure": failure_of(sample), "item_ids": item_ids}
        original = sample["image"][0].numpy()
        pixels, box = letterbox_image(original, self.size)
        record = self.dataset.records[record_index]
        try:
            masks = self._masks(record_index, item_ids, sample, original.shape, box)
        except DataError as err:
            if self.dataset.on_error == "raise":
                raise
            return {"failure": {"path": str(record.image_path), "reason": str(err)}, "item_ids": item_ids}
        return {
            "pixels": pixels,
            "letterbox": box,
            "item_ids": item_ids,
            "original": original,
            "path": str(record.image_path),
            "patient": record.patient_id,
            "masks": masks,
        }

    def _masks(
        self, record_index: int, item_ids: list[int], sample: dict[str, Any], shape: tuple[int, int], box: Letterbox
    ) -> dict[int, np.ndarray]:
        """Letterboxed bool masks ``[size, size]`` of the mask items of one image."""
        out: dict[int, np.ndarray] = {}
        parts: dict[str, np.ndarray] | None = None
        record = self.dataset.records[record_index]
        for i in item_ids:
            item = self.items[i]
            if item.target != "mask":
                continue
            if item.mask is not None:
                mask = np.asarray(item.mask)
            elif item.mask_part is None:
                if "mask" not in sample:
                    raise DataError(
                        f"{record.image_path}: the dataset gives no mask for this image "
                        f"(item {item.phrase!r}); evaluate it with target='boxes'"
                    )
                mask = sample["mask"].numpy()
            elif hasattr(self.dataset, "read_pathology_masks"):
                if parts is None:
                    parts = self.dataset.read_pathology_masks(record_index)
                if item.mask_part not in parts:
                    raise DataError(f"{record.image_path}: no mask {item.mask_part!r}; the dataset has {sorted(parts)}")
                mask = parts[item.mask_part]
            else:
                mask = self._labelled_mask(record, item.mask_part, shape)
            if mask.shape != shape:
                raise DataError(
                    f"{record.image_path}: the mask of {item.phrase!r} is {list(mask.shape)} "
                    f"but the image is {list(shape)}; masks must have the image's size"
                )
            out[i] = box.apply_mask((mask != 0).astype(np.uint8)) != 0
        return out

    @staticmethod
    def _labelled_mask(record: Record, label: str, shape: tuple[int, int]) -> np.ndarray:
        """Union of the record's mask files labelled ``label`` (a manifest's masks.csv)."""
        from maco_cxr.data.io import read_mask

        labels = [str(v).strip() for v in record.meta.get("mask_labels") or [""] * len(record.mask_paths)]
        union = np.zeros(shape, dtype=np.uint8)
        paths = [p for p, name in zip(record.mask_paths, labels) if name == label]
        if not paths:
            raise DataError(f"{record.image_path}: no mask file labelled {label!r} (labels: {labels})")
        for path in paths:
            mask = read_mask(path)
            if mask.shape != shape:
                raise DataError(
                    f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                    f"{record.image_path} is {shape[1]}x{shape[0]}; masks must match their image"
                )
            union |= mask
        return union


def _collate(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return samples


def evaluate_grounding(
    model: MacoModel,
    dataset: ChestXrayDataset,
    *,
    items: Sequence[GroundingItem] | None = None,
    overlays: int = 0,
    overlay_dir: str | Path | None = None,
    batch_size: int = 16,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    validation: GroundingEvaluation | None = None,
    n_bootstrap: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
) -> GroundingEvaluation:
    """CNR, mIoU, pointing game and the per-threshold figures of every (image, phrase) item.

    Everything is computed on the letterboxed 224 grid (padding included), box items with
    their boxes rasterised there, mask items with their mask mapped there (nearest); mask
    items whose mask is empty there are left out (``summary["n_empty_mask"]``). Each row
    holds the item's CNR, mIoU, pointing game and, from :func:`grounding_threshold_metrics`,
    ``iou@t``, ``dice@t``, ``precision@t`` and ``recall@t`` for t in 0.1 ... 0.5 (map scaled
    to [-1, 1], as the official ``Pipeline.test``). The summary is
    :func:`maco_cxr.metrics.summarise_grounding` of the rows plus ``target``,
    ``metric_table`` (:func:`grounding_metric_table`, also ``result.table``) and:

    - ``validation`` (a result of this function on a validation split, same kind of items):
      ``summary["opt_thresholds"]``, :func:`select_grounding_thresholds`: each category's
      threshold maximising its mean validation IoU on the [0, 1] scaled map over
      :data:`OPT_TH_THRESHOLDS` (official ``Pipeline.get_opt_th``, first stage), applied to
      these items (rows gain ``opt_threshold`` and ``opt_iou``). Categories without
      validation items are left out of it and listed.
    - ``n_bootstrap > 0``: ``summary["ci"]``, seeded percentile bootstrap intervals
      (:func:`bootstrap_mean_ci`) of the item-mean CNR and mIoU, resampling whole patients
      when every item's record has a ``patient_id``, else whole images.

    Overlays (map over the original image, boxes in green) of the first ``overlays`` items go
    into ``overlay_dir``.
    """
    items, n_unusable = _usable_items(dataset, items)
    if overlays and overlay_dir is None:
        raise DataError("overlays > 0 needs an overlay_dir")
    if n_bootstrap < 0:
        raise DataError(f"n_bootstrap must be >= 0 (0 = no intervals); got {n_bootstrap}")
    if device is not None:
        model.to(device)
    writer = _OverlayWriter(None if overlay_dir is None else Path(overlay_dir), overlays)
    scoring = _score_items(
        model, dataset, items, writer, batch_size=batch_size, num_workers=num_workers, progress=progress
    )
    summary, table = _summarise(scoring, n_unusable)
    if validation is not None:
        summary["opt_thresholds"] = _apply_validation_thresholds(validation, scoring.rows, scoring.unit)
    if n_bootstrap:
        summary["ci"] = _bootstrap_intervals(scoring.rows, n_bootstrap, seed, confidence)
    return GroundingEvaluation(
        scoring.rows, summary, sorted(writer.written), scoring.failures, table, scoring.signed, scoring.unit
    )


def _usable_items(
    dataset: ChestXrayDataset,
    items: Sequence[GroundingItem] | None,
) -> tuple[list[GroundingItem], int]:
    """The items to score (default: every item of the dataset) without those whose phrase the
    official processing empties, and how many were dropped; raises when none is left."""
    items = list(items if items is not None else grounding_items(dataset))
    usable = [item for item in items if grounding_phrase(item.phrase)]
    if len(usable) < len(items):
        first = next(item for item in items if not grounding_phrase(item.phrase))
        logger.warning(
            "%d of %d items are left out: their phrases are empty after the official processing (first: %r)",
            len(items) - len(usable),
            len(items),
            first.phrase,
        )
    if not usable:
        raise DataError("the dataset has nothing to ground (no record has boxes with usable labels or masks)")
    return usable, len(items) - len(usable)


@dataclass
class _OverlayWriter:
    """Writes the overlays of the first ``count`` items into ``folder``."""

    folder: Path | None
    count: int
    written: list[Path] = field(default_factory=list)

    def __call__(self, item_id: int, item: GroundingItem, sample: dict[str, Any], heatmap: np.ndarray) -> None:
        if item_id < self.count and self.folder is not None:
            self.written.append(_write_overlay(self.folder, item_id, item, sample, heatmap))


@dataclass
class _Scoring:
    """What scoring the items gave: per item its row and per-threshold metrics (signed and unit
    scaling), and what was left out (unreadable images and their items, empty masks)."""

    scored: dict[int, tuple[dict[str, Any], dict[str, list[float]], dict[str, list[float]]]] = field(
        default_factory=dict
    )
    failures: list[dict[str, str]] = field(default_factory=list)
    n_unreadable_items: int = 0
    n_empty_mask: int = 0

    def _column(self, k: int) -> list[Any]:
        return [self.scored[i][k] for i in sorted(self.scored)]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self._column(0)

    @property
    def signed(self) -> list[dict[str, list[float]]]:
        return self._column(1)

    @property
    def unit(self) -> list[dict[str, list[float]]]:
        return self._column(2)


def _score_items(
    model: MacoModel,
    dataset: ChestXrayDataset,
    items: list[GroundingItem],
    overlays: _OverlayWriter,
    *,
    batch_size: int,
    num_workers: int,
    progress: bool,
) -> _Scoring:
    """Read each image of the items once, map its phrases and score every item; raises when nothing
    could be scored, warns about what was left out."""
    require(model, "grounding")
    size = model.input_size
    loader = DataLoader(
        _ItemImages(dataset, items, size), batch_size=batch_size, num_workers=num_workers, collate_fn=_collate
    )
    scoring = _Scoring()
    for batch in tqdm(loader, desc="grounding", unit="batch", disable=not progress):
        for sample in batch:
            if "failure" in sample:
                scoring.failures.append(sample["failure"])
                scoring.n_unreadable_items += len(sample["item_ids"])
        readable = [sample for sample in batch if "failure" not in sample]
        if readable:
            _score_batch(model, readable, items, size, scoring, overlays)
    _check_scored(scoring, size)
    return scoring


def _score_batch(
    model: MacoModel,
    batch: list[dict[str, Any]],
    items: list[GroundingItem],
    size: int,
    scoring: _Scoring,
    overlays: _OverlayWriter,
) -> None:
    """Map the phrases of a batch of read images and score their items into ``scoring``."""
    phrases = [[items[i].phrase for i in sample["item_ids"]] for sample in batch]
    maps = letterboxed_maps(model, np.stack([s["pixels"] for s in batch]), phrases)
    for sample, image_maps in zip(batch, maps, strict=True):
        for item_id, heatmap in zip(sample["item_ids"], image_maps, strict=True):
            item = items[item_id]
            mask = _truth_mask(item, item_id, sample, size)
            if mask is None:
                scoring.n_empty_mask += 1
                continue
            row, signed, unit = _score(item_id, item, heatmap, mask)
            row.update(patient=sample["patient"] or "", path=sample["path"])
            scoring.scored[item_id] = (row, signed, unit)
            overlays(item_id, item, sample, heatmap)


def _truth_mask(item: GroundingItem, item_id: int, sample: dict[str, Any], size: int) -> np.ndarray | None:
    """The item's ground truth on the letterboxed grid; None for a mask item whose mask is empty there."""
    if item.target == "mask":
        mask = sample["masks"][item_id]
        return mask if mask.any() else None
    return boxes_to_mask(sample["letterbox"].boxes_to_letterbox(item.boxes), size, size)


def _check_scored(scoring: _Scoring, size: int) -> None:
    """Raise when no item was scored; warn about unreadable images and empty masks."""
    failures, empty = scoring.failures, scoring.n_empty_mask
    if not scoring.scored:
        if empty:
            raise DataError(
                f"every one of the {empty} mask items has an empty mask on the {size} grid; nothing to score"
            )
        raise DataError(
            f"no image of the grounding items could be read ({len(failures)} failed; first: "
            f"{failures[0]['path']}: {failures[0]['reason']})"
        )
    if failures:
        logger.warning(
            "grounding: %d unreadable images (%d items) left out; first: %s: %s",
            len(failures),
            scoring.n_unreadable_items,
            failures[0]["path"],
            failures[0]["reason"],
        )
    if empty:
        logger.warning("grounding: %d mask items left out: their mask is empty on the %d grid", empty, size)


def _summarise(scoring: _Scoring, n_unusable: int) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """:func:`summarise_grounding` of the rows with the counts left out, the target, and the
    official metric table (also returned)."""
    rows = scoring.rows
    summary = summarise_grounding((r["category"], r["cnr"], r["miou"], r["pointing"]) for r in rows)
    targets = sorted({r["target"] for r in rows})
    summary.update(
        n_left_out=n_unusable,
        n_unreadable_items=scoring.n_unreadable_items,
        n_empty_mask=scoring.n_empty_mask,
        target=targets[0] if len(targets) == 1 else "mixed",
    )
    table = grounding_metric_table(
        (r["category"], m, r["cnr"], r["pointing"]) for r, m in zip(rows, scoring.signed, strict=True)
    )
    summary["metric_table"] = table
    return summary, table


def _threshold_key(name: str, threshold: float) -> str:
    return f"{name}@{threshold:g}"


def _score(
    item_id: int,
    item: GroundingItem,
    heatmap: np.ndarray,
    mask: np.ndarray,
) -> tuple[dict[str, Any], dict[str, list[float]], dict[str, list[float]]]:
    """The row of one item and its per-threshold metrics (signed, then unit scaling)."""
    scores = score_grounding(heatmap, mask)
    signed = grounding_threshold_metrics(heatmap, mask, DEFAULT_THRESHOLDS, scaling="signed")
    unit = grounding_threshold_metrics(heatmap, mask, OPT_TH_THRESHOLDS, scaling="unit")
    row: dict[str, Any] = {
        "item": item_id,
        "record": item.record_index,
        "phrase": item.phrase,
        "query": phrase_query(item.phrase),
        "category": item.category,
        "n_boxes": len(item.boxes),
        "cnr": scores.cnr,
        "miou": scores.miou,
        "pointing": bool(scores.pointing),
        "target": item.target,
        "mask_pixels": int(np.count_nonzero(mask)),
    }
    for name in ("iou", "dice", "precision", "recall"):
        for t, value in zip(signed["thresholds"], signed[name]):
            row[_threshold_key(name, t)] = value
    return row, signed, unit


def _apply_validation_thresholds(
    validation: GroundingEvaluation, rows: list[dict[str, Any]], unit_metrics: list[dict[str, list[float]]]
) -> dict[str, Any]:
    """Per-category thresholds chosen on ``validation``, applied to ``rows`` (which gain
    ``opt_threshold`` / ``opt_iou``)."""
    if not validation.rows or len(validation.opt_th_metrics) != len(validation.rows):
        raise DataError(
            "the validation result has no per-item threshold metrics; build it with "
            "evaluate_grounding on the validation split"
        )
    val_rows = [(r["category"], m) for r, m in zip(validation.rows, validation.opt_th_metrics)]
    known = {category for category, _ in val_rows}
    chosen = [i for i, r in enumerate(rows) if r["category"] in known]
    missing = sorted({r["category"] for r in rows} - known)
    if not chosen:
        raise DataError(
            f"no test category has validation items (test: {missing}, validation: "
            f"{sorted(known)}); validate on a split with the same categories"
        )
    if missing:
        logger.warning("grounding: categories %s have no validation items; no threshold is chosen for them", missing)
    selection = select_grounding_thresholds(val_rows, [(rows[i]["category"], unit_metrics[i]) for i in chosen])
    grid = list(OPT_TH_THRESHOLDS)
    for i, row in enumerate(rows):
        entry = selection["per_category"].get(row["category"])
        if entry is None:
            row.update(opt_threshold=float("nan"), opt_iou=float("nan"))
        else:
            k = grid.index(entry["threshold"])
            row.update(opt_threshold=entry["threshold"], opt_iou=unit_metrics[i]["iou"][k])
    return {
        **selection,
        "scaling": "unit",
        "searched": grid,
        "iou_rule": "only_pos",
        "n_val": len(val_rows),
        "n_test_without_validation": len(rows) - len(chosen),
        "categories_without_validation": missing,
    }


def _bootstrap_intervals(rows: list[dict[str, Any]], n_resamples: int, seed: int, confidence: float) -> dict[str, Any]:
    from maco_cxr.metrics import bootstrap_mean_ci  # here: it loads scikit-learn

    by_patient = all(r["patient"] for r in rows)
    groups = [r["patient"] if by_patient else str(r["record"]) for r in rows]
    out: dict[str, Any] = {
        "unit": "patient" if by_patient else "image",
        "n_groups": len(set(groups)),
        "n_resamples": n_resamples,
        "seed": seed,
        "confidence": confidence,
    }
    for key in ("cnr", "miou"):
        ci = bootstrap_mean_ci(
            [r[key] for r in rows], groups=groups, n_resamples=n_resamples, confidence=confidence, seed=seed
        )
        out[key] = {"estimate": ci.estimate, "low": ci.low, "high": ci.high, "n_valid": ci.n_valid}
    return out


def _write_overlay(
    folder: Path, item_id: int, item: GroundingItem, sample: dict[str, Any], heatmap: np.ndarray
) -> Path:
    from maco_cxr.plots import save_overlay

    original = sample["original"]
    box: Letterbox = sample["letterbox"]
    slug = "".join(ch if ch.isalnum() else "-" for ch in item.phrase.lower()).strip("-")[:40]
    return save_overlay(
        folder / f"{item_id:04d}_{slug}.png",
        original,
        box.map_to_original(heatmap),
        boxes=item.boxes if len(item.boxes) else None,
        title=item.phrase,
    )


# ------------------------------------------------------------------------------ the report folder


@dataclass(frozen=True)
class GroundingResult(ReportResult):
    """What :func:`run_grounding` computed and wrote.

    ``metrics``: the item means ``cnr`` and ``miou`` (with bootstrap intervals when resampled)
    and ``pointing``; ``per_category``: each category's ``cnr``, ``miou`` and ``pointing``.
    ``files`` include the overlays. Left out, beyond :class:`~maco_cxr.tasks.results.ReportResult`'s
    counts: ``n_unreadable_items`` items of the unreadable images, ``n_empty_mask`` mask items with
    an empty mask on the 224 grid and ``n_unusable`` items whose phrase the official processing empties.
    """

    metrics: Mapping[str, Estimate]
    per_category: Mapping[str, Mapping[str, Estimate]]
    n_items: int
    n_unreadable_items: int
    n_empty_mask: int
    n_unusable: int


def run_grounding(
    model: MacoModel,
    dataset: ChestXrayDataset,
    out: str | os.PathLike[str],
    *,
    phrases: Sequence[str] | None = None,
    target: GroundingTarget = "auto",
    phrase_template: str = DEFAULT_PHRASE_TEMPLATE,
    validation: ChestXrayDataset | None = None,
    overlays: int = 8,
    n_bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int = 16,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    source: RunSource | None = None,
    validation_source: RunSource | None = None,
) -> GroundingResult:
    """Phrase grounding of every (image, phrase) item of ``dataset`` into the report folder ``out``.

    Items are :func:`grounding_items` of ``phrases``, ``target`` and ``phrase_template`` (the same
    for ``validation``, whose items choose each category's threshold). Writes ``items.csv`` (one
    row per item: :func:`evaluate_grounding`'s row, patient and path last), ``metric.csv`` (the
    official table, 3 decimals, NaN empty), ``opt_thresholds.csv`` (with ``validation``: per
    category and "mean"), ``overlays/`` (the first ``overlays`` items) and ``summary.json``: the
    provenance (``source``), the evaluation summary (``metric_table`` at full precision, ``ci``
    when ``n_bootstrap`` > 0, ``opt_thresholds``), the validation figures, the overlays (relative
    to ``out``) and the images left out.
    """
    from maco_cxr._atomic import claim_output_folder, write_json

    out, source = claim_output_folder(out, "grounding"), source or RunSource()
    options: dict[str, Any] = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "device": device,
        "progress": progress,
    }
    chosen: dict[str, Any] = {"target": target, "phrase_template": phrase_template}
    items = grounding_items(dataset, phrases, **chosen)
    evaluated_val = None
    if validation is not None:
        val_items = grounding_items(validation, phrases, **chosen)
        evaluated_val = evaluate_grounding(model, validation, items=val_items, **options)
    evaluated = evaluate_grounding(
        model,
        dataset,
        items=items,
        overlays=overlays,
        overlay_dir=out / "overlays",
        validation=evaluated_val,
        n_bootstrap=n_bootstrap,
        seed=seed,
        **options,
    )
    s = evaluated.summary
    files = [_write_items(out / "items.csv", evaluated.rows), _write_metric_table(out / "metric.csv", evaluated.table)]
    if "opt_thresholds" in s:
        files.append(_write_opt_thresholds(out / "opt_thresholds.csv", s["opt_thresholds"]))
    files += evaluated.overlays
    summary = {
        **source.as_dict(),
        **s,
        "validation": None
        if evaluated_val is None
        else {
            **(validation_source or RunSource()).split_fields(),
            "n": evaluated_val.summary["n"],
            "cnr": evaluated_val.summary["cnr"],
            "miou": evaluated_val.summary["miou"],
            "n_unreadable": len(evaluated_val.failures),
        },
        "overlays": [str(path.relative_to(out)) for path in evaluated.overlays],
        "n_skipped_rows": len(dataset.skips),
        "n_unreadable": len(evaluated.failures),
        "unreadable": evaluated.failures,
    }
    files.append(write_json(out / "summary.json", summary))
    ci = s.get("ci") or {}
    return GroundingResult(
        out,
        tuple(files),
        {key: Estimate.of(s[key], ci.get(key)) for key in ("cnr", "miou", "pointing")},
        {
            name: {key: Estimate.of(row[key]) for key in ("cnr", "miou", "pointing")}
            for name, row in s["per_category"].items()
        },
        s["n"],
        s["n_unreadable_items"],
        s["n_empty_mask"],
        s["n_left_out"],
        n_skipped=len(dataset.skips),
        n_unreadable=len(evaluated.failures),
        summary=summary,
    )


def _cell(value: Any, decimals: int | None = None) -> Any:
    """A CSV cell: NaN empty (as pandas writes it), floats rounded to ``decimals`` if given."""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return round(value, decimals) if decimals is not None else value
    return value


def _write_items(path: Path, rows: list[dict[str, Any]]) -> Path:
    """items.csv: the rows, full precision, patient and path last."""
    from maco_cxr._atomic import write_csv

    tail = ("patient", "path")
    columns = [c for c in rows[0] if c not in tail] + list(tail)
    return write_csv(path, columns, ([_cell(row[c]) for c in columns] for row in rows))


def _write_metric_table(path: Path, table: dict[str, list[Any]]) -> Path:
    """The official metric.csv: 3 decimals, NaN an empty cell."""
    from maco_cxr._atomic import write_csv

    return write_csv(
        path, list(table), ([_cell(table[c][i], 3) for c in table] for i in range(len(table["threshold"])))
    )


def _write_opt_thresholds(path: Path, selection: dict[str, Any]) -> Path:
    """opt_thresholds.csv: one row per category and "mean" (the threshold rounded as the official
    opt_th_only_pos.csv)."""
    from maco_cxr._atomic import write_csv

    header = ["category", "threshold", "val_iou", "n_val", "n_test", "iou", "dice", "precision", "recall"]
    per = selection["per_category"]
    rows = [[name, _cell(v["threshold"], 3), *(_cell(v[k]) for k in header[2:])] for name, v in per.items()]

    def mean(key: str) -> float:
        values = [v[key] for v in per.values() if not math.isnan(v[key])]
        return sum(values) / len(values) if values else float("nan")

    rows.append(
        [
            "mean",
            _cell(selection["mean"]["threshold"], 3),
            _cell(selection["mean"]["val_iou"]),
            sum(v["n_val"] for v in per.values()),
            sum(v["n_test"] for v in per.values()),
            *(_cell(mean(k)) for k in ("iou", "dice", "precision", "recall")),
        ]
    )
    return write_csv(path, header, rows)
