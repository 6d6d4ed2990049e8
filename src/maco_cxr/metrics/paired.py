"""Paired tests of two models scored on the same items: is model B's figure different from model A's?

- :func:`delong_test`: DeLong, DeLong & Clarke-Pearson (1988) for the difference of two correlated ROC
  AUCs, with the fast mid-rank computation of Sun & Xu (2014). Written here because neither
  scikit-learn nor scipy has it; it is the test the field reports beside an AUC.
- :func:`paired_bootstrap_test`: a paired percentile bootstrap of the difference of any figure (a mean
  AUC over classes, a mean CNR or IoU over items): each replicate draws the same items (or whole
  patients) for both models, so what the images share cancels out.

Both return a :class:`PairedTest` of B - A with a two-sided p-value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata

from maco_cxr.errors import DataError
from maco_cxr.metrics._arrays import check_same_shape, to_numpy
from maco_cxr.metrics.uncertainty import bootstrap_replicates, percentile_interval

__all__ = ["PairedTest", "delong_covariance", "delong_test", "paired_bootstrap_test"]


@dataclass(frozen=True)
class PairedTest:
    """``delta`` = ``b`` - ``a`` with its interval and the two-sided p-value of "no difference"."""

    a: float
    b: float
    delta: float
    low: float
    high: float
    p_value: float
    method: str
    n: int


def _known_binary(y_true: Any, *scores: Any) -> tuple[np.ndarray, list[np.ndarray]]:
    truth = to_numpy(y_true).astype(np.float64)
    arrays = [to_numpy(s).astype(np.float64) for s in scores]
    for k, s in enumerate(arrays):
        check_same_shape(truth, s, "y_true", f"scores {k}")
    if truth.ndim != 1:
        raise DataError(f"y_true must be one class's labels [N]; got shape {truth.shape}")
    keep = ~np.isnan(truth)
    truth = truth[keep]
    if not np.isin(truth, (0.0, 1.0)).all():
        raise DataError("y_true must hold 0, 1 or NaN (unknown)")
    if truth.min(initial=1.0) == truth.max(initial=0.0):
        raise DataError("DeLong's test needs both positive and negative known labels")
    return truth.astype(bool), [s[keep] for s in arrays]


def delong_covariance(y_true: Any, *scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """The AUCs ``[K]`` of K score vectors on the same labels and DeLong's covariance ``[K, K]`` of them.

    Sun & Xu's mid-rank form: with m positives and n negatives, the structural components are
    V10_i = (rank of positive i among all - its rank among positives) / n and
    V01_j = 1 - (rank of negative j among all - its rank among negatives) / m; the covariance is
    cov(V10) / m + cov(V01) / n. Ties count one half, as in the AUC. NaN labels are left out.
    """
    truth, arrays = _known_binary(y_true, *scores)
    positives, negatives = np.stack([s[truth] for s in arrays]), np.stack([s[~truth] for s in arrays])
    m, n = positives.shape[1], negatives.shape[1]
    ranks_all = rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    ranks_pos, ranks_neg = rankdata(positives, axis=1), rankdata(negatives, axis=1)
    aucs = (ranks_all[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (ranks_all[:, :m] - ranks_pos) / n
    v01 = 1.0 - (ranks_all[:, m:] - ranks_neg) / m
    cov10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(arrays), len(arrays)))
    cov01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(arrays), len(arrays)))
    return aucs, cov10 / m + cov01 / n


def delong_test(y_true: Any, score_a: Any, score_b: Any, *, confidence: float = 0.95) -> PairedTest:
    """DeLong's test of AUC(b) - AUC(a) on the same labels ``[N]`` (1, 0, NaN unknown).

    The interval is delta +- z * sd; the p-value is two-sided normal. Identical AUC components give a
    zero variance: p = 1 when the AUCs are equal.
    """
    if not 0.0 < confidence < 1.0:
        raise DataError(f"confidence must lie strictly between 0 and 1; got {confidence}")
    aucs, cov = delong_covariance(y_true, score_a, score_b)
    delta = float(aucs[1] - aucs[0])
    variance = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    n = int((~np.isnan(to_numpy(y_true).astype(np.float64))).sum())
    if variance <= 1e-15:
        p = 1.0 if abs(delta) < 1e-12 else 0.0
        return PairedTest(float(aucs[0]), float(aucs[1]), delta, delta, delta, p, "delong", n)
    sd = math.sqrt(variance)
    z = float(norm.ppf(0.5 + confidence / 2))
    p = float(2 * norm.sf(abs(delta) / sd))
    return PairedTest(float(aucs[0]), float(aucs[1]), delta, delta - z * sd, delta + z * sd, p, "delong", n)


def paired_bootstrap_test(
    statistic: Callable[[np.ndarray, int], float],
    n: int,
    *,
    groups: Any = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedTest:
    """Paired bootstrap of ``statistic(indices, 1) - statistic(indices, 0)``.

    ``statistic(idx, model)`` is the figure of model 0 (A) or 1 (B) on the items ``idx``; each
    replicate draws one set of items (or, with ``groups``, whole groups) for both. The interval is
    the percentile interval of the replicated differences; the p-value is two-sided,
    2 * min(P(d* <= 0), P(d* >= 0)) over the defined replicates, at most 1 (at least 1 / replicates
    when they all fall on one side, so that a finite bootstrap never claims p = 0).
    """
    a = float(statistic(np.arange(n), 0)) if n else float("nan")
    delta, values = bootstrap_replicates(
        lambda idx: statistic(idx, 1) - statistic(idx, 0),
        n,
        groups=groups,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
    )
    low, high = percentile_interval(values, confidence)
    valid = values[np.isfinite(values)]
    if valid.size == 0:
        p = float("nan")
    else:
        tail = min(float(np.mean(valid <= 0)), float(np.mean(valid >= 0)))
        p = min(1.0, max(2 * tail, 1.0 / valid.size))
    return PairedTest(a, a + delta, delta, low, high, p, "paired bootstrap", n)
