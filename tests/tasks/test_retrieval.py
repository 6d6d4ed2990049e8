"""Image <-> report retrieval."""

from __future__ import annotations

import numpy as np
import pytest

from maco_cxr.hub import load
from maco_cxr.tasks.retrieval import report_query, retrieve


def test_report_query_keeps_every_sentence_in_order():
    assert report_query("Small LEFT effusion. None. . No pneumothorax") == "small left effusion. no pneumothorax. "
    assert report_query("None.") == ""


@pytest.fixture(scope="module")
def model(official_fixture_dir):
    return load(official_fixture_dir / "maco.pth", text_heads=2, vision_heads=4, decoder_heads=2)


def test_recall_over_pairs_counts_identical_reports_as_matches(model, official_fixture_dir):
    images = np.load(official_fixture_dir / "inputs.npz")["images_224"]
    reports = ["Right effusion.", "Left pneumothorax.", "Right effusion.", "Clear lungs."]
    result = retrieve(model, list(zip(images, reports)), ks=(1, 3, 4))
    assert result["n"] == 4 and result["n_unique_reports"] == 3
    # with k = 3 distinct reports every image finds its report; k >= N finds every image
    assert result["i2t_R@3"] == 1.0 and result["t2i_R@4"] == 1.0
    assert all(0.0 <= result[key] <= 1.0 for key in result if "R@" in key)
