"""Image <-> report retrieval: recall@k of paired images and reports.

Images are embedded like zero-shot images (all patch tokens, resize + centre crop), reports
like training reports without the random sampling: every sentence, in order, lower-cased,
joined as the official code joins them (``"a. b. "``). Similarity is cosine. Two reports
with the same text are interchangeable, so a query counts every item with an identical report
as a match (template reports, "no acute findings", are common); the number of distinct
reports is reported next to the recalls.

:func:`run_retrieval` is what ``maco-cxr retrieve`` does: a dataset with reports in, the report
folder out (``summary.json`` with the recalls and their bootstrap intervals), a frozen
:class:`RetrievalResult` back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from maco_cxr.data.inputs import ImageInput, image_report_pairs
from maco_cxr.errors import DataError
from maco_cxr.inference import embed_dataset, encode_images, encode_texts
from maco_cxr.metrics import image_text_recall, recall_at_k
from maco_cxr.tasks.results import Estimate, ReportResult, RunSource

if TYPE_CHECKING:
    from maco_cxr.data.datasets.base import ChestXrayDataset
    from maco_cxr.models.maco import MacoModel

__all__ = ["RetrievalResult", "report_query", "retrieve", "run_retrieval"]

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
        paired = _embed_dataset(
            model, data, batch_size=batch_size, num_workers=num_workers, device=device, progress=progress
        )
        images, reports, failures = paired.images, paired.reports, paired.failures
        missing = paired.n_without_report
    else:
        pairs = image_report_pairs(data, "retrieve: data")
        if not pairs:
            raise DataError("retrieve: no (image, report) pairs given")
        reports = [report_query(str(report)) for _, report in pairs]
        images = encode_images(model, [image for image, _ in pairs], batch_size=batch_size, device=device)
        missing = 0
    similarity, positives = _similarity(model, images, reports, batch_size=batch_size, device=device)
    return {
        "n": len(reports),
        "n_unique_reports": len(set(reports)),
        **image_text_recall(similarity, ks, positives),
        "n_without_report": missing,
        "n_unreadable": len(failures),
        "unreadable": failures,
    }


@dataclass
class _Paired:
    """A dataset's images (embedded) and reports, row-aligned with ``indices`` (its records),
    and what was left out."""

    images: torch.Tensor
    reports: list[str]
    indices: list[int]
    n_without_report: int
    failures: list[dict[str, str]]


def _embed_dataset(
    model: MacoModel,
    dataset: ChestXrayDataset,
    *,
    batch_size: int,
    num_workers: int,
    device: str | torch.device | None,
    progress: bool,
) -> _Paired:
    """Embed the images of the records with a report (streaming); records without one are left out."""
    keep = [i for i, record in enumerate(dataset.records) if record.report and report_query(record.report)]
    missing = len(dataset.records) - len(keep)
    if missing:
        logger.warning("retrieve: %d of %d records have no report text and are left out", missing, len(dataset.records))
    if not keep:
        raise DataError("retrieve: no record of the dataset has a report")
    embedded = embed_dataset(
        model,
        dataset,
        indices=keep,
        batch_size=batch_size,
        workers=num_workers,
        device=device,
        progress=progress,
        desc="retrieval",
    )
    reports = [report_query(dataset.records[i].report or "") for i in embedded.indices]
    return _Paired(embedded.embeddings, reports, list(embedded.indices), missing, embedded.failures)


def _similarity(
    model: MacoModel, images: torch.Tensor, reports: list[str], *, batch_size: int, device: str | torch.device | None
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity ``[N_image, N_report]`` and the matches: items with identical report text."""
    texts = encode_texts(model, reports, batch_size=batch_size, device=device)
    similarity = F.normalize(images.float(), dim=-1) @ F.normalize(texts, dim=-1).T
    codes = {text: i for i, text in enumerate(dict.fromkeys(reports))}
    ids = np.array([codes[text] for text in reports])
    return similarity.numpy(), ids[:, None] == ids[None, :]


# ------------------------------------------------------------------------------ the report folder


@dataclass(frozen=True)
class RetrievalResult(ReportResult):
    """What :func:`run_retrieval` computed and wrote.

    ``metrics``: ``i2t_R@k`` (images querying reports) and ``t2i_R@k`` (reports querying
    images) for each k, with bootstrap intervals when resampled. ``n_pairs`` image-report pairs
    were scored (``n_unique_reports`` distinct texts); ``n_without_report`` records without a
    report were left out (the other counts: :class:`~maco_cxr.tasks.results.ReportResult`).
    """

    metrics: Mapping[str, Estimate]
    n_pairs: int
    n_unique_reports: int
    n_without_report: int


def run_retrieval(
    model: MacoModel,
    dataset: ChestXrayDataset,
    out: str | os.PathLike[str],
    *,
    ks: Sequence[int] = (1, 5, 10),
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
    source: RunSource | None = None,
) -> RetrievalResult:
    """Image <-> report recall@k over the records of ``dataset`` with a report, into ``out``.

    Writes ``summary.json``: the provenance (``source``), ``n``, ``n_unique_reports``, ``ks``,
    ``i2t_R@k`` and ``t2i_R@k`` as :func:`retrieve` computes them, ``ci`` (None when
    ``n_bootstrap`` is 0): seeded percentile bootstrap intervals of each recall over resampled
    queries (whole patients when every record has a ``patient_id``, else images) with the
    gallery held fixed, and the records and files left out.
    """
    from maco_cxr._atomic import claim_output_folder, write_json

    if n_bootstrap < 0:
        raise DataError(f"n_bootstrap must be >= 0 (0 = no intervals); got {n_bootstrap}")
    out, source, ks = claim_output_folder(out, "retrieval"), source or RunSource(), [int(k) for k in ks]
    paired = _embed_dataset(
        model, dataset, batch_size=batch_size, num_workers=num_workers, device=device, progress=progress
    )
    similarity, positives = _similarity(model, paired.images, paired.reports, batch_size=batch_size, device=device)
    recalls = image_text_recall(similarity, ks, positives)
    patients = [dataset.records[i].patient_id for i in paired.indices]
    ci = None
    if n_bootstrap:
        ci = _recall_intervals(similarity, positives, ks, patients, n_bootstrap, seed, confidence)
    summary = {
        **source.as_dict(),
        "n": len(paired.reports),
        "n_unique_reports": len(set(paired.reports)),
        "ks": ks,
        **recalls,
        "ci": ci,
        "n_without_report": paired.n_without_report,
        "n_skipped_rows": len(dataset.skips),
        "n_unreadable": len(paired.failures),
        "unreadable": paired.failures,
    }
    path = write_json(out / "summary.json", summary)
    metrics = {key: Estimate.of(value, (ci or {}).get(key)) for key, value in recalls.items()}
    return RetrievalResult(
        out,
        (path,),
        metrics,
        summary["n"],
        summary["n_unique_reports"],
        paired.n_without_report,
        n_skipped=len(dataset.skips),
        n_unreadable=len(paired.failures),
        summary=summary,
    )


def _query_hits(similarity: np.ndarray, positives: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """1.0 / 0.0 per query of each recall@k, both ways (:func:`recall_at_k` on the query's row, so
    their means are the recalls)."""
    hits: dict[str, np.ndarray] = {}
    for direction, sim, pos in (("i2t", similarity, positives), ("t2i", similarity.T, positives.T)):
        rows = [recall_at_k(sim[i : i + 1], ks, pos[i : i + 1]) for i in range(sim.shape[0])]
        hits.update({f"{direction}_R@{k}": np.array([row[f"R@{k}"] for row in rows]) for k in ks})
    return hits


def _recall_intervals(
    similarity: np.ndarray,
    positives: np.ndarray,
    ks: Sequence[int],
    patients: list[str | None],
    n_resamples: int,
    seed: int,
    confidence: float,
) -> dict[str, Any]:
    from maco_cxr.metrics import bootstrap_mean_ci  # here: it loads scikit-learn

    by_patient = all(patients)
    groups = list(patients) if by_patient else None
    out: dict[str, Any] = {
        "unit": "patient" if by_patient else "image",
        "n_groups": len(set(patients)) if by_patient else len(patients),
        "n_resamples": n_resamples,
        "seed": seed,
        "confidence": confidence,
    }
    for key, values in _query_hits(similarity, positives, ks).items():
        ci = bootstrap_mean_ci(values, groups=groups, n_resamples=n_resamples, confidence=confidence, seed=seed)
        out[key] = {"estimate": ci.estimate, "low": ci.low, "high": ci.high, "n_valid": ci.n_valid}
    return out
