"""Paired tests: DeLong against its definition computed by brute force, the bootstrap on cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from maco_cxr.errors import DataError
from maco_cxr.metrics import delong_covariance, delong_test, paired_bootstrap_test


def _brute_force_covariance(truth: np.ndarray, scores: list[np.ndarray]) -> np.ndarray:
    """DeLong 1988 from the definition: psi(x, y) = 1, 1/2, 0 for x >, =, < y over every positive-negative pair."""
    components10, components01 = [], []
    for s in scores:
        pos, neg = s[truth == 1], s[truth == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        components10.append(psi.mean(axis=1))
        components01.append(psi.mean(axis=0))
    m, n = int((truth == 1).sum()), int((truth == 0).sum())
    return np.cov(np.stack(components10)) / m + np.cov(np.stack(components01)) / n


def test_delong_equals_its_definition_with_ties_and_unknown_labels() -> None:
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 2, 60).astype(float)
    a = np.round(truth + rng.normal(0, 1.0, 60), 1)  # rounded: ties inside and across the classes
    b = np.round(truth + rng.normal(0, 0.6, 60), 1)
    labels = truth.copy()
    labels[:5] = np.nan
    aucs, cov = delong_covariance(labels, a, b)
    keep = slice(5, None)
    np.testing.assert_allclose(aucs, [roc_auc_score(truth[keep], a[keep]), roc_auc_score(truth[keep], b[keep])])
    np.testing.assert_allclose(cov, _brute_force_covariance(truth[keep], [a[keep], b[keep]]), rtol=1e-10, atol=1e-15)
    test = delong_test(labels, a, b)
    sd = np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert test.delta == pytest.approx(aucs[1] - aucs[0])
    assert test.high - test.delta == pytest.approx(1.959963984540054 * sd)
    assert test.p_value == pytest.approx(2 * norm.sf(abs(test.delta) / sd))
    assert test.n == 55 and test.method == "delong"


def test_delong_on_identical_and_on_clearly_different_models() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 200).astype(float)
    a = rng.normal(0, 1, 200)
    same = delong_test(truth, a, a)
    assert same.delta == 0 and same.p_value == 1.0
    better = delong_test(truth, a, truth * 2 + rng.normal(0, 1, 200))
    assert better.delta > 0.3 and better.p_value < 1e-6 and better.low > 0
    swapped = delong_test(truth, truth * 2 + rng.normal(0, 1, 200), a)
    assert swapped.delta < 0
    with pytest.raises(DataError, match="both positive and negative"):
        delong_test(np.ones(5), a[:5], a[:5])
    with pytest.raises(DataError, match="shape"):
        delong_test(truth, a, a[:10])


def test_paired_bootstrap_of_a_constant_shift_is_exact() -> None:
    values = np.random.default_rng(1).normal(size=40)
    test = paired_bootstrap_test(lambda idx, k: values[idx].mean() + 0.25 * k, 40, n_resamples=200)
    assert test.delta == pytest.approx(0.25) and test.low == pytest.approx(0.25) and test.high == pytest.approx(0.25)
    assert test.p_value == pytest.approx(1 / 200)  # every replicate on one side: the smallest p 200 draws can give
    assert test.a == pytest.approx(values.mean()) and test.b == pytest.approx(values.mean() + 0.25)


def test_paired_bootstrap_pairs_the_draws_and_resamples_patients() -> None:
    rng = np.random.default_rng(2)
    shared = rng.normal(0, 5, 60)  # a large per-item effect both models share
    a, b = shared + rng.normal(0, 0.1, 60), shared + rng.normal(0, 0.1, 60)
    pairs = np.stack([a, b])
    test = paired_bootstrap_test(lambda idx, k: pairs[k, idx].mean(), 60, n_resamples=500, seed=4)
    assert test.high - test.low < 0.2  # paired: the shared effect cancels (unpaired it would be ~2.5 wide)
    assert test.low < test.delta < test.high and 0 < test.p_value <= 1
    again = paired_bootstrap_test(lambda idx, k: pairs[k, idx].mean(), 60, n_resamples=500, seed=4)
    assert again == test
    patients = np.repeat(np.arange(20), 3)
    grouped = paired_bootstrap_test(lambda idx, k: pairs[k, idx].mean(), 60, groups=patients, n_resamples=300)
    assert grouped.n == 60 and grouped.delta == pytest.approx(test.delta)
