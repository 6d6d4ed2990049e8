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

from maco_cxr.data.inputs import ImageInput
from maco_cxr.errors import DataError
from maco_cxr.inference import embed_dataset, encode_images, encode_texts
from maco_cxr.metrics import image_text_recall

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
    "i2t_R@k"..., "t2i_R@k"..., "n_without_report", "n_unreadable", "unreadable"}``."""
    failures: list[dict[str, str]] = []
    if isinstance(data, torch.utils.data.Dataset):
        keep = [i for i, record in enumerate(data.records) if record.report and report_query(record.report)]
        missing = len(data.records) - len(keep)
        if missing:
            logger.warning("retrieve: %d of %d records have no report text and are left out",
                           missing, len(data.records))
        if not keep:
            raise DataError("retrieve: no record of the dataset has a report")
        embedded = embed_dataset(model, data, indices=keep, batch_size=batch_size, workers=num_workers,
                                 device=device, progress=progress, desc="retrieval")
        images, failures = embedded.embeddings, embedded.failures
        reports = [report_query(data.records[i].report or "") for i in embedded.indices]
    else:
        pairs = list(data)
        if not pairs:
            raise DataError("retrieve: no (image, report) pairs given")
        reports = [report_query(str(report)) for _, report in pairs]
        images = encode_images(model, [image for image, _ in pairs], batch_size=batch_size, device=device)
        missing = 0
    texts = encode_texts(model, reports, batch_size=batch_size, device=device)
    similarity = F.normalize(images.float(), dim=-1) @ F.normalize(texts, dim=-1).T
    codes = {text: i for i, text in enumerate(dict.fromkeys(reports))}
    ids = np.array([codes[text] for text in reports])
    positives = ids[:, None] == ids[None, :]
    return {"n": len(reports), "n_unique_reports": len(codes),
            **image_text_recall(similarity.numpy(), ks, positives), "n_without_report": missing,
            "n_unreadable": len(failures), "unreadable": failures}
