"""Recall@k against hand-ranked similarity matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maco_cxr.errors import DataError
from maco_cxr.metrics import image_text_recall, recall_at_k

SIM = np.array(
    [
        [0.9, 0.1, 0.2],  # query 0: positive 0.9 is the best -> rank 0
        [0.3, 0.2, 0.8],  # query 1: 0.3 and 0.8 beat the positive 0.2 -> rank 2
        [0.1, 0.5, 0.4],  # query 2: 0.5 beats the positive 0.4 -> rank 1
    ]
)


def test_recall_by_hand() -> None:
    assert recall_at_k(SIM, ks=(1, 2, 3)) == {"R@1": 1 / 3, "R@2": 2 / 3, "R@3": 1.0}
    assert recall_at_k(torch.from_numpy(SIM), ks=(1, 10)) == {"R@1": 1 / 3, "R@10": 1.0}


def test_both_directions_by_hand() -> None:
    # texts as queries (columns): text 0 rank 0; text 1 positive 0.2 < 0.5 -> rank 1;
    # text 2 positive 0.4 < 0.8 -> rank 1
    result = image_text_recall(SIM, ks=(1, 2))
    assert result == {"i2t_R@1": 1 / 3, "i2t_R@2": 2 / 3, "t2i_R@1": 1 / 3, "t2i_R@2": 1.0}


def test_ties_count_against_the_query() -> None:
    # every item ties with the positive: 2 negatives rank ahead -> rank 2
    assert recall_at_k(np.ones((3, 3)), ks=(1, 2, 3)) == {"R@1": 0.0, "R@2": 0.0, "R@3": 1.0}


def test_explicit_positives() -> None:
    sim = np.array([[0.1, 0.5, 0.9, 0.7], [0.2, 0.3, 0.1, 0.0]])
    positives = np.array([[0, 1, 0, 1], [1, 0, 0, 0]], dtype=bool)
    # query 0: best positive 0.7, beaten by 0.9 -> rank 1; query 1: 0.2 beaten by 0.3 -> rank 1
    assert recall_at_k(sim, ks=(1, 2), positives=positives) == {"R@1": 0.0, "R@2": 1.0}


def test_bad_inputs() -> None:
    with pytest.raises(DataError, match="square"):
        recall_at_k(np.zeros((2, 3)))
    with pytest.raises(DataError, match=r"rows \[1\]"):
        recall_at_k(np.zeros((2, 2)), positives=np.array([[1, 0], [0, 0]]))
    with pytest.raises(DataError, match="NaN"):
        recall_at_k(np.array([[np.nan]]))
    with pytest.raises(DataError, match=">= 1"):
        recall_at_k(SIM, ks=(0,))
