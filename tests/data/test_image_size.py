"""Images too small or too elongated to be radiographs (1x1, 1x2000 px) are refused, with the size
found and the limit, by every scoring and grounding path; lenient datasets count them as skipped."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import maco_cxr
from maco_cxr.data.datasets import build_dataset
from maco_cxr.data.io import MAX_ASPECT_RATIO, MIN_IMAGE_SIDE, check_image_size, read_image
from maco_cxr.errors import DataError, ImageReadError
from maco_cxr.hub import create_model
from maco_cxr.inference import embed_dataset
from maco_cxr.models.config import preset
from maco_cxr.tasks.grounding import ground
from maco_cxr.tasks.zeroshot import zero_shot


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(preset("tiny")).eval()


def test_the_limits_and_what_the_message_says() -> None:
    assert (MIN_IMAGE_SIDE, MAX_ASPECT_RATIO) == (32, 10.0)
    for shape in ((32, 32), (32, 320), (320, 32), (2544, 3056)):
        check_image_size(shape, "ok.png")
    with pytest.raises(ImageReadError, match=r"^dot\.png: the image is 1x1 px .*at least 32 px on each side"):
        check_image_size((1, 1), "dot.png")
    with pytest.raises(ImageReadError, match=r"^a: the image is 100x31 px"):
        check_image_size((31, 100), "a")
    with pytest.raises(
        ImageReadError,
        match=r"^strip\.png: the image is 321x32 px .*10\.0 times longer "
        r"than wide; at most 10:1",
    ):
        check_image_size((32, 321), "strip.png")
    with pytest.raises(ImageReadError, match=r"the image is 2000x1 px .*leave it out"):
        check_image_size((1, 2000))


def test_scoring_and_grounding_refuse_tiny_and_strip_images(model) -> None:
    strip = np.full((1, 2000), 128, np.uint8)
    with pytest.raises(ImageReadError, match=r"^image: the image is 2000x1 px"):
        zero_shot(model, strip, ["Pneumothorax"])
    with pytest.raises(ImageReadError, match=r"^images\[1\]: the image is 1x1 px"):
        maco_cxr.encode_images(model, [np.zeros((64, 64), np.uint8), np.zeros((1, 1), np.uint8)])
    with pytest.raises(ImageReadError, match=r"^image: the image is 2000x1 px"):
        ground(model, strip, "left pleural effusion")
    assert zero_shot(model, np.zeros((32, 320), np.uint8), ["Pneumothorax"]).shape == (1, 1)


def test_an_image_given_by_path_is_named_by_its_path(model, tmp_path: Path) -> None:
    dot = tmp_path / "dot.png"
    Image.fromarray(np.full((1, 1), 90, np.uint8)).save(dot)
    for given in (dot, str(dot), [np.zeros((64, 64), np.uint8), dot]):
        with pytest.raises(ImageReadError, match=rf"^{re.escape(str(dot))}: the image is 1x1 px"):
            zero_shot(model, given, ["Pneumothorax"])
    with pytest.raises(ImageReadError, match=rf"^{re.escape(str(dot))}: the image is 1x1 px"):
        ground(model, dot, "left pleural effusion")


def test_lenient_datasets_count_them_as_skipped(model, tmp_path: Path, cxr_real_dir: Path) -> None:
    names = sorted(p.name for p in (cxr_real_dir / "images").glob("covid_*.png"))[:2]
    for name in names:
        shutil.copy(cxr_real_dir / "images" / name, tmp_path / name)
    Image.fromarray(np.full((1, 2000), 90, np.uint8)).save(tmp_path / "strip.png")
    Image.fromarray(np.full((1, 1), 90, np.uint8)).save(tmp_path / "dot.png")
    with (tmp_path / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_path", "report"])
        writer.writerows([name, "No acute findings."] for name in [*names, "strip.png", "dot.png"])
    assert read_image(tmp_path / "strip.png").shape == (1, 2000)  # readable: the reader keeps it
    embedded = embed_dataset(model, build_dataset("manifest", tmp_path, on_error="skip"))
    assert [Path(p).name for p in embedded.paths] == names and embedded.embeddings.shape[0] == 2
    reasons = {Path(f["path"]).name: f["reason"] for f in embedded.failures}
    assert sorted(reasons) == ["dot.png", "strip.png"]
    assert "strip.png: the image is 2000x1 px" in reasons["strip.png"]
    with pytest.raises(DataError, match=r"strip\.png: the image is 2000x1 px"):  # the first of the two
        embed_dataset(model, build_dataset("manifest", tmp_path))
