"""The package root exports what the README names, and former names say what they became."""

from __future__ import annotations

import pytest

import maco_cxr


@pytest.mark.parametrize("name", maco_cxr.__all__)
def test_every_export_resolves(name):
    assert getattr(maco_cxr, name) is not None


@pytest.mark.parametrize(("old", "new"), [("segment", "train_segmenter"), ("detect", "train_detector")])
def test_a_former_training_name_names_the_new_one(old, new):
    with pytest.raises(AttributeError, match=f"maco_cxr.{old} is now maco_cxr.{new}"):
        getattr(maco_cxr, old)
    assert callable(getattr(maco_cxr, new))
