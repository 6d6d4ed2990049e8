"""Image <-> report retrieval: recall@k of paired images and reports.

Images are embedded like zero-shot images (all patch tokens, resize + centre crop), reports
like training reports without the random sampling: every sentence, in order, lower-cased,
joined as the official code joins them (``"a. b. "``). Similarity is cosine. Two reports
with the same text are interchangeable, so a query counts every item with an identical report
as a match (template reports, "no acute findings", are common); the number of distinct
reports is reported next to the recalls.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from maco_cxr.errors import DataError
from maco_cxr.metrics import image_text_recall
from maco_cxr.tasks.inputs import ImageInput, load_images
from maco_cxr.tasks.zeroshot import encode_image_list, inference_mode

if TYPE_CHECKING:
    from maco_cxr.data.datasets.base import ChestXrayDataset
    from maco_cxr.models.maco import MacoModel

__all__ = ["report_query", "retrieve"]

logger = logging.getLogger(__name__)


def report_query(text: str) -> str:
    """A report as the text tower reads it: sentences split on ".", stripped, empty and
    "none" pieces dropped, lower-cased, each followed by ". "."""
    pieces = [piece.strip() for piece in text.split(".")]
    return "".join(piece.lower() + ". " for piece in pieces if piece and piece.lower() != "none")


def _collate(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return samples


def retrieve(
    model: MacoModel,
    data: ChestXrayDataset | Sequence[tuple[ImageInput, str]],
    *,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Recall@k both ways over (image, report) pairs: a dataset whose records have reports, or
    a sequence of ``(image, report)``. Returns ``{"n", "n_unique_reports",
    "i2t_R@k"..., "t2i_R@k"..., "n_without_report"}``."""
    with inference_mode(model, device):
        if isinstance(data, torch.utils.data.Dataset):
            images, reports, missing = _embed_dataset(model, data, batch_size, num_workers, progress)
        else:
            pairs = list(data)
            if not pairs:
                raise DataError("retrieve: no (image, report) pairs given")
            reports = [report_query(str(report)) for _, report in pairs]
            images = encode_image_list(model, load_images([image for image, _ in pairs]), batch_size)
            missing = 0
        texts = torch.cat([model.encode_texts(reports[i: i + batch_size]).float()
                           for i in range(0, len(reports), batch_size)])
    similarity = F.normalize(images.float(), dim=-1) @ F.normalize(texts, dim=-1).T
    codes = {text: i for i, text in enumerate(dict.fromkeys(reports))}
    ids = np.array([codes[text] for text in reports])
    positives = ids[:, None] == ids[None, :]
    return {"n": len(reports), "n_unique_reports": len(codes),
            **image_text_recall(similarity.cpu().numpy(), ks, positives), "n_without_report": missing}


def _embed_dataset(model: MacoModel, dataset: ChestXrayDataset, batch_size: int, num_workers: int,
                   progress: bool) -> tuple[torch.Tensor, list[str], int]:
    keep = [i for i, record in enumerate(dataset.records) if record.report and report_query(record.report)]
    missing = len(dataset.records) - len(keep)
    if missing:
        logger.warning("retrieve: %d of %d records have no report text and are left out",
                       missing, len(dataset.records))
    if not keep:
        raise DataError("retrieve: no record of the dataset has a report")
    loader = DataLoader(Subset(dataset, keep), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate)
    chunks = []
    for batch in tqdm(loader, desc="retrieval", unit="batch", disable=not progress):
        chunks.append(encode_image_list(model, [s["image"][0].numpy() for s in batch], batch_size))
    reports = [report_query(dataset.records[i].report or "") for i in keep]
    return torch.cat(chunks), reports, missing
