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
boxes mapped through the same letterbox, as the protocol does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from maco_cxr.data.datasets.base import failure_of, is_failed
from maco_cxr.data.inputs import ImagesInput, is_single_image, load_images
from maco_cxr.data.letterbox import Letterbox, letterbox_image
from maco_cxr.data.reports import grounding_phrase
from maco_cxr.errors import DataError
from maco_cxr.inference import encode_texts, inference_mode, patch_embeddings
from maco_cxr.metrics import boxes_to_mask, score_grounding, summarise_grounding

if TYPE_CHECKING:
    from maco_cxr.data.datasets.base import ChestXrayDataset
    from maco_cxr.models.maco import MacoModel

__all__ = [
    "GroundingItem",
    "GroundingResult",
    "evaluate_grounding",
    "ground",
    "grounding_items",
    "grounding_map",
    "letterboxed_maps",
    "phrase_query",
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
        raise DataError(f"grounding_map expects patch embeddings [g, g, D], weights [g, g] and a "
                        f"phrase embedding [D]; got {list(e.shape)}, {list(w.shape)}, {list(t.shape)}")
    similarity = (e * w[..., None]) @ t
    smoothed = gaussian_filter(similarity.numpy(), sigma=sigma, mode="reflect")
    resized = F.interpolate(torch.from_numpy(smoothed)[None, None], size=(out_size, out_size),
                            mode="bilinear", align_corners=False)
    return resized[0, 0].numpy()


def phrase_query(phrase: str) -> str:
    """The official grounding query of a phrase; raises when nothing of it survives."""
    if not isinstance(phrase, str) or not phrase.strip():
        raise DataError(f"phrase {phrase!r} is empty; give the finding to locate, e.g. 'left pleural effusion'")
    query = grounding_phrase(phrase)
    if not query:
        raise DataError(f"phrase {phrase!r} has nothing the official processing keeps: it splits the phrase "
                        "on '.' and drops pieces of 3 characters or fewer, pieces containing '_' and pieces "
                        "starting with ','; give a word or more, e.g. 'edema'")
    return query


def letterboxed_maps(model: MacoModel, images: torch.Tensor | np.ndarray,
                     phrases: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """Maps ``[P_i, S, S]`` for letterboxed uint8 images ``[N, S, S]`` and phrases per image.

    ``phrases[i]`` are raw phrases (processed here).
    """
    pixels = torch.as_tensor(images)
    if len(phrases) != pixels.shape[0]:
        raise DataError(f"{len(phrases)} phrase lists for {pixels.shape[0]} images")
    size = model.config.vision.img_size
    queries = [phrase_query(p) for group in phrases for p in group]
    patches = patch_embeddings(model, pixels, batch_size=max(1, pixels.shape[0]))
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
    single = is_single_image(image)
    pictures = load_images(image)
    phrases = [phrase] * len(pictures) if isinstance(phrase, str) else list(phrase)
    if len(phrases) != len(pictures):
        raise DataError(f"{len(phrases)} phrases for {len(pictures)} images; give one phrase or "
                        "one per image")
    for text in phrases:
        phrase_query(text)
    size = model.config.vision.img_size
    if device is not None:
        model.to(device)
    out: list[np.ndarray] = []
    for start in range(0, len(pictures), batch_size):
        boxed = [letterbox_image(p, size) for p in pictures[start: start + batch_size]]
        stack = np.stack([pixels for pixels, _ in boxed])
        maps = letterboxed_maps(model, stack, [[p] for p in phrases[start: start + batch_size]])
        out += [box.map_to_original(m[0]) for (_, box), m in zip(boxed, maps)]
    return out[0] if single else out


# ------------------------------------------------------------------------------ evaluation


@dataclass
class GroundingItem:
    """One (image, phrase) pair: all boxes of the image with that phrase (xyxy, original pixels)."""

    record_index: int
    phrase: str
    category: str
    boxes: np.ndarray


@dataclass
class GroundingResult:
    """Per-item scores (``rows``) and the aggregated figures (``summary``)."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    overlays: list[Path]
    failures: list[dict[str, str]] = field(default_factory=list)


def grounding_items(dataset: ChestXrayDataset, phrases: Sequence[str] | None = None
                    ) -> list[GroundingItem]:
    """Items of a dataset with boxes: boxes of one image grouped by lower-cased label.

    Category: ``meta["category"]`` of the record (MS-CXR), else the box meta ``category``
    field, else the phrase. ``phrases``: keep only these labels (case-insensitive).
    """
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
            items.append(GroundingItem(index, record.box_labels[members[0]].strip(), str(category),
                                       np.asarray(record.boxes, np.float64)[members]))
    return items


class _ItemImages(torch.utils.data.Dataset):
    """Reads each image of the items once, letterboxed, with its items (DataLoader-friendly)."""

    def __init__(self, dataset: ChestXrayDataset, items: Sequence[GroundingItem], size: int) -> None:
        self.dataset, self.size = dataset, size
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
        return {"pixels": pixels, "letterbox": box, "item_ids": item_ids, "original": original,
                "path": str(self.dataset.records[record_index].image_path)}


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
) -> GroundingResult:
    """CNR, mIoU and pointing game of every (image, phrase) item on the letterboxed 224 grid.

    Returns per-item rows and :func:`maco_cxr.metrics.summarise_grounding` of them, and
    writes overlays (map over the original image, boxes in green) for the first ``overlays``
    items into ``overlay_dir``.
    """
    items = list(items if items is not None else grounding_items(dataset))
    unusable = [item for item in items if not grounding_phrase(item.phrase)]
    if unusable:
        logger.warning("%d of %d items are left out: their phrases are empty after the official "
                       "processing (first: %r)", len(unusable), len(items), unusable[0].phrase)
        items = [item for item in items if grounding_phrase(item.phrase)]
    if not items:
        raise DataError("the dataset has no boxes to ground (no record has boxes with usable labels)")
    if overlays and overlay_dir is None:
        raise DataError("overlays > 0 needs an overlay_dir")
    size = model.config.vision.img_size
    loader = DataLoader(_ItemImages(dataset, items, size), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=_collate)
    rows: list[dict[str, Any] | None] = [None] * len(items)
    failures: list[dict[str, str]] = []
    unread = 0
    written: list[Path] = []
    if device is not None:
        model.to(device)
    for batch in tqdm(loader, desc="grounding", unit="batch", disable=not progress):
        failed = [sample for sample in batch if "failure" in sample]
        failures += [sample["failure"] for sample in failed]
        unread += sum(len(sample["item_ids"]) for sample in failed)
        batch = [sample for sample in batch if "failure" not in sample]
        if not batch:
            continue
        phrases = [[items[i].phrase for i in sample["item_ids"]] for sample in batch]
        maps = letterboxed_maps(model, np.stack([s["pixels"] for s in batch]), phrases)
        for sample, image_maps in zip(batch, maps):
            for item_id, heatmap in zip(sample["item_ids"], image_maps):
                rows[item_id] = {**_score(item_id, items[item_id], heatmap, sample["letterbox"],
                                          size), "path": sample["path"]}
                if item_id < overlays:
                    written.append(_write_overlay(Path(overlay_dir), item_id, items[item_id],  # type: ignore[arg-type]
                                                  sample, heatmap))
    done = [row for row in rows if row is not None]
    if not done:
        raise DataError(f"no image of the grounding items could be read ({len(failures)} failed; first: "
                        f"{failures[0]['path']}: {failures[0]['reason']})")
    if failures:
        logger.warning("grounding: %d unreadable images (%d items) left out; first: %s: %s", len(failures),
                       unread, failures[0]["path"], failures[0]["reason"])
    summary = summarise_grounding((r["category"], r["cnr"], r["miou"], r["pointing"]) for r in done)
    summary["n_left_out"] = len(unusable)
    summary["n_unreadable_items"] = unread
    return GroundingResult(done, summary, sorted(written), failures)


def _score(item_id: int, item: GroundingItem, heatmap: np.ndarray, box: Letterbox, size: int,
           ) -> dict[str, Any]:
    mask = boxes_to_mask(box.boxes_to_letterbox(item.boxes), size, size)
    scores = score_grounding(heatmap, mask)
    return {"item": item_id, "record": item.record_index, "phrase": item.phrase,
            "query": phrase_query(item.phrase), "category": item.category,
            "n_boxes": len(item.boxes), "cnr": scores.cnr, "miou": scores.miou,
            "pointing": bool(scores.pointing)}


def _write_overlay(folder: Path, item_id: int, item: GroundingItem, sample: dict[str, Any],
                   heatmap: np.ndarray) -> Path:
    from maco_cxr.plots import save_overlay

    original = sample["original"]
    box: Letterbox = sample["letterbox"]
    slug = "".join(ch if ch.isalnum() else "-" for ch in item.phrase.lower()).strip("-")[:40]
    return save_overlay(folder / f"{item_id:04d}_{slug}.png", original, box.map_to_original(heatmap),
                        boxes=item.boxes, title=item.phrase)

