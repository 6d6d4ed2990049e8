"""Recall@k for image-report retrieval from a similarity matrix.

A query scores a hit at k when its best-scored positive ranks among the top k. Ties count
against the query: the rank is the number of non-positive gallery items scored at least as high
as the best positive, so a constant similarity matrix cannot look good.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from maco_cxr.errors import DataError
from maco_cxr.metrics._arrays import check_same_shape, to_numpy


def _positives_matrix(positives: Any, shape: tuple[int, int]) -> np.ndarray:
    if positives is None:
        n_query, n_gallery = shape
        if n_query != n_gallery:
            raise DataError(
                f"similarity is {n_query} x {n_gallery}; the default diagonal matches need a square "
                "matrix, pass positives [N_query, N_gallery] otherwise"
            )
        return np.eye(n_query, dtype=bool)
    pos = to_numpy(positives) != 0
    check_same_shape(pos, np.empty(shape), "positives", "similarity")
    missing = np.flatnonzero(~pos.any(axis=1))
    if missing.size:
        raise DataError(
            f"{missing.size} queries have no positive (rows {missing[:10].tolist()}); "
            "every query needs at least one match"
        )
    return pos


def recall_at_k(similarity: Any, ks: Sequence[int] = (1, 5, 10), positives: Any = None) -> dict[str, float]:
    """Fraction of queries with a positive in the top k: ``{"R@1": ..., "R@5": ..., ...}``.

    ``similarity`` is ``[N_query, N_gallery]`` (higher = more similar); ``positives`` is a
    boolean matrix of the same shape, by default the diagonal (query i matches item i).
    """
    sim = to_numpy(similarity).astype(np.float64)
    if sim.ndim != 2 or sim.size == 0:
        raise DataError(f"similarity must be a non-empty [N_query, N_gallery] matrix; got shape {sim.shape}")
    if not np.all(np.isfinite(sim)):
        raise DataError("similarity holds NaN or infinite values")
    if any(int(k) < 1 for k in ks):
        raise DataError(f"every k must be >= 1; got {list(ks)}")
    pos = _positives_matrix(positives, sim.shape)
    best_positive = np.where(pos, sim, -np.inf).max(axis=1, keepdims=True)
    rank = np.sum(~pos & (sim >= best_positive), axis=1)
    return {f"R@{int(k)}": float(np.mean(rank < int(k))) for k in ks}


def image_text_recall(similarity: Any, ks: Sequence[int] = (1, 5, 10), positives: Any = None) -> dict[str, float]:
    """Recall@k both ways from image-text similarity ``[N_image, N_text]``.

    Returns ``{"i2t_R@1", ..., "t2i_R@1", ...}``: images querying texts (rows) and texts
    querying images (columns); ``positives`` as in :func:`recall_at_k`, image-major.
    """
    sim = to_numpy(similarity)
    pos = None if positives is None else to_numpy(positives).T
    image_to_text = recall_at_k(sim, ks, positives)
    text_to_image = recall_at_k(sim.T, ks, pos)
    return {
        **{f"i2t_{name}": value for name, value in image_to_text.items()},
        **{f"t2i_{name}": value for name, value in text_to_image.items()},
    }
