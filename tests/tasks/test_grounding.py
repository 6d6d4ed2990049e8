"""Phrase grounding: the official fixture, the pure map, letterbox geometry, dataset evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import maco_cxr
from maco_cxr.data.datasets.base import ChestXrayDataset, Record
from maco_cxr.hub import load
from maco_cxr.metrics import boxes_to_mask, grounding_cnr, grounding_miou, minmax_to_unit_range
from maco_cxr.tasks.grounding import evaluate_grounding, ground, grounding_items, grounding_map


@pytest.fixture(scope="module")
def official(official_fixture_dir):
    config = json.loads((official_fixture_dir / "fixture.json").read_text())
    inputs = np.load(official_fixture_dir / "inputs.npz")
    expected = np.load(official_fixture_dir / "expected.npz")
    model = load(official_fixture_dir / "maco.pth", text_heads=2, vision_heads=4, decoder_heads=2)
    return config, inputs, expected, model


def test_heatmaps_and_metrics_reproduce_the_official_code(official):
    config, inputs, expected, model = official
    maps = ground(model, list(inputs["images_224"][:2]), config["phrases"])
    for k in range(2):
        assert maps[k].shape == (224, 224)
        np.testing.assert_allclose(maps[k], expected["ground_heatmap"][k], atol=1e-4, rtol=0)
        np.testing.assert_allclose(minmax_to_unit_range(maps[k]), expected["ground_heatmap_norm"][k], atol=1e-4)
        mask = boxes_to_mask(inputs["ground_boxes_xywh"][k], 224, 224, box_format="xywh")
        assert grounding_cnr(maps[k], mask) == pytest.approx(float(expected["ground_cnr"][k]), abs=1e-4)
        assert grounding_miou(maps[k], mask) == pytest.approx(float(expected["ground_miou"][k]), abs=1e-4)
    single = maco_cxr.ground(model, inputs["images_224"][1], config["phrases"][1])
    np.testing.assert_allclose(single, expected["ground_heatmap"][1], atol=1e-4, rtol=0)


def _one_hot_grid(row: int, col: int, grid: int = 14) -> np.ndarray:
    embeddings = np.zeros((grid, grid, 1), np.float32)
    embeddings[row, col, 0] = 1.0
    return embeddings


def test_grounding_map_peaks_at_the_hot_patch_centre():
    heatmap = grounding_map(_one_hot_grid(3, 10), np.ones((14, 14)), np.ones(1))
    assert heatmap.shape == (224, 224)
    rows, cols = np.nonzero(heatmap >= heatmap.max() * (1 - 1e-4))  # float32 ties
    # patch (3, 10) covers rows 48..63 and columns 160..175; with align_corners=False the two
    # central pixels of each axis (55, 56 and 167, 168) sit 0.5 px either side of its centre
    assert set(rows) == {55, 56} and set(cols) == {167, 168}


def test_grounding_map_is_linear_in_the_weights_and_smooths_before_resizing():
    base = grounding_map(_one_hot_grid(7, 7), np.ones((14, 14)), np.ones(1), out_size=14)
    doubled = grounding_map(_one_hot_grid(7, 7), np.full((14, 14), 2.0), np.ones(1), out_size=14)
    np.testing.assert_allclose(doubled, 2 * base, rtol=1e-6)
    # at out_size 14 the resize is the identity: the map is the Gaussian of a delta (sum 1,
    # symmetric around the hot patch)
    assert base.sum() == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(base[7, 5], base[7, 9], rtol=1e-6)
    assert base[7, 7] == base.max()


def test_grounding_map_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[g, g, D\]"):
        grounding_map(np.zeros((14, 14, 4)), np.ones((14, 14)), np.ones(3))


@pytest.fixture()
def hot_patch_model(official, monkeypatch):
    """The fixture model with its patch grid replaced by a one-hot patch at (row 7, col 2)."""
    _, _, _, model = official

    def patch_embeddings(model, images: torch.Tensor, **kwargs) -> torch.Tensor:
        hot = torch.zeros(images.shape[0], 14, 14, model.config.embed_dim)
        hot[:, 7, 2] = 1.0
        return hot

    monkeypatch.setattr("maco_cxr.tasks.grounding.patch_embeddings", patch_embeddings)
    monkeypatch.setattr(
        "maco_cxr.tasks.grounding.encode_texts",
        lambda model, texts, **kwargs: torch.ones(len(texts), model.config.embed_dim),
    )
    return model


def test_ground_returns_the_original_geometry_of_a_non_square_image(hot_patch_model):
    image = np.full((100, 300), 128, np.uint8)
    heatmap = ground(hot_patch_model, image, "left lower lobe opacity")
    assert heatmap.shape == (100, 300) and heatmap.dtype == np.float32
    # letterbox: scale 224/300, content 75 rows at pad_top 74. Patch (7, 2) centres on
    # letterbox (y=120, x=40) -> original y = (120 - 74) * 300/224 = 61.6, x = 40 * 300/224 = 53.6
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    assert abs(row - 61.6) <= 1.5 and abs(col - 53.6) <= 1.5
    tall = ground(hot_patch_model, [np.zeros((300, 100), np.uint8)], "x-ray opacity")
    assert isinstance(tall, list) and tall[0].shape == (300, 100)


def test_ground_rejects_a_phrase_emptied_by_the_official_processing(official):
    _, inputs, _, model = official
    with pytest.raises(ValueError, match="has nothing the official processing keeps.*3 characters or fewer"):
        ground(model, inputs["images_224"][0], "RUL")  # "rul. " has 5 characters
    with pytest.raises(ValueError, match="phrase '  ' is empty; give the finding to locate"):
        ground(model, inputs["images_224"][0], "  ")
    assert ground(model, inputs["images_224"][0], "edema").shape == (224, 224)


class _Boxes(ChestXrayDataset):
    def __init__(self, images, records):
        super().__init__(records)
        self.images = images

    def __getitem__(self, index):
        return {"image": torch.from_numpy(self.images[index])[None], "index": index, "path": "mem"}


def test_evaluation_groups_boxes_by_phrase_and_maps_boxes_through_the_letterbox(hot_patch_model, tmp_path):
    image = np.zeros((100, 300), np.uint8)
    # a box around the hot patch's original location and one far away, plus a second box with
    # the first box's phrase (merged into one item)
    records = [
        Record(
            image_path=tmp_path / "a.png",
            boxes=np.array([[40, 50, 70, 75], [250, 0, 300, 20], [0, 90, 10, 100]], np.float32),
            box_labels=["Left lung", "far away", "left lung"],
        )
    ]
    dataset = _Boxes([image], records)
    items = grounding_items(dataset)
    assert [(i.phrase, len(i.boxes), i.category) for i in items] == [
        ("Left lung", 2, "left lung"),
        ("far away", 1, "far away"),
    ]
    result = evaluate_grounding(hot_patch_model, dataset, overlays=1, overlay_dir=tmp_path / "ov")
    near, far = result.rows
    assert near["pointing"] and not far["pointing"]
    assert near["cnr"] > 1.0 and far["cnr"] < 0
    assert result.summary["n"] == 2 and set(result.summary["per_category"]) == {"left lung", "far away"}
    assert [p.name for p in result.overlays] == ["0000_left-lung.png"]
