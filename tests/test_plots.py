"""Plot helpers: overlay pixels, valid PNG files, legible curves, and no change to the matplotlib backend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maco_cxr.errors import DataError
from maco_cxr.plots import (
    _class_styles,
    overlay_heatmap,
    plot_reliability_diagram,
    plot_roc_curves,
    plot_training_curves,
    save_overlay,
)

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, size=(32, 48), dtype=np.uint8)
HEATMAP = np.linspace(0.0, 1.0, 32 * 48).reshape(32, 48)


def test_overlay_shape_dtype_and_blend() -> None:
    out = overlay_heatmap(IMAGE, HEATMAP, alpha=0.5, cmap="gray")
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    # gray colormap of the min-max scaled heat h is h * 255 in every channel
    expected = np.rint(0.5 * IMAGE + 0.5 * HEATMAP * 255.0)
    np.testing.assert_allclose(out[..., 0], expected, atol=1)


def test_alpha_zero_is_the_image() -> None:
    out = overlay_heatmap(IMAGE, HEATMAP, alpha=0.0)
    np.testing.assert_array_equal(out, np.repeat(IMAGE[..., None], 3, axis=2))
    np.testing.assert_array_equal(overlay_heatmap(IMAGE[None], HEATMAP, alpha=0.0)[..., 1], IMAGE)


def test_nan_heat_shows_the_image() -> None:
    heat = HEATMAP.copy()
    heat[:, :10] = np.nan
    out = overlay_heatmap(IMAGE, heat, alpha=0.9)
    np.testing.assert_array_equal(out[:, :10, 2], IMAGE[:, :10])
    assert not np.array_equal(out[:, 10:, 2], IMAGE[:, 10:])


def test_boxes_and_title_are_drawn() -> None:
    plain = np.zeros((40, 40), dtype=np.uint8)
    out = overlay_heatmap(plain, np.zeros((40, 40)), alpha=0.0, boxes=[[10, 10, 30, 30]])
    assert tuple(out[10, 20]) == (0, 255, 0) and tuple(out[29, 20]) == (0, 255, 0)
    assert tuple(out[20, 20]) == (0, 0, 0) and tuple(out[5, 5]) == (0, 0, 0)
    titled = overlay_heatmap(plain, np.zeros((40, 40)), alpha=0.0, title="effusion")
    assert titled[:15].max() > 200 and titled[20:].max() == 0  # white (antialiased) text at the top


def test_overlay_bad_inputs() -> None:
    with pytest.raises(DataError, match="uint8"):
        overlay_heatmap(IMAGE.astype(np.float32), HEATMAP)
    with pytest.raises(DataError, match="shape"):
        overlay_heatmap(IMAGE, HEATMAP[:10])


def test_save_overlay_writes_png(tmp_path: Path) -> None:
    path = save_overlay(tmp_path / "sub" / "overlay.png", IMAGE, HEATMAP, boxes=[[2, 2, 20, 20]], title="x")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (48, 32) and png.mode == "RGB"


def test_roc_curves_png(tmp_path: Path) -> None:
    labels = RNG.integers(0, 2, size=(50, 2)).astype(float)
    scores = labels * 0.4 + RNG.random((50, 2)) * 0.6
    path = plot_roc_curves(labels, scores, ["effusion", "pneumothorax"], tmp_path / "roc.png", title="roc")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (900, 600)
    single = np.zeros((4, 1))
    with pytest.warns(RuntimeWarning, match="undefined"):
        plot_roc_curves(single, RNG.random((4, 1)), ["hernia"], tmp_path / "na.png")
    assert (tmp_path / "na.png").stat().st_size > 0


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as png:
        return np.asarray(png.convert("RGB")).astype(int)


def test_roc_curves_14_classes_legend_beside_and_distinct_styles(tmp_path: Path) -> None:
    names = [f"finding {k}" for k in range(14)]
    labels = RNG.integers(0, 2, size=(80, 14)).astype(float)
    scores = labels * 0.3 + RNG.random((80, 14)) * 0.7
    pixels = _pixels(plot_roc_curves(labels, scores, names, tmp_path / "roc14.png"))
    assert pixels.shape == (600, 900, 3)
    # the square axes take the left ~2/3; the legend (dark text on white) sits to their right
    right = pixels[:, 700:]
    assert (right.sum(axis=2) < 300).sum() > 500
    styles = _class_styles(14)
    assert len(set((tuple(c), ls) for c, ls in styles)) == 14
    assert len({tuple(c) for c, _ in styles}) == 14  # 14 different colours, not tab10 reused


def test_class_styles_many_classes() -> None:
    assert all(ls == "-" for _, ls in _class_styles(10))
    many = _class_styles(30)
    assert len({tuple(c) for c, _ in many}) == 30
    assert all(many[k][1] != many[k + 1][1] for k in range(29))  # neighbouring colours differ in style


def test_roc_curves_many_classes_taller(tmp_path: Path) -> None:
    labels = RNG.integers(0, 2, size=(40, 40)).astype(float)
    with Image.open(
        plot_roc_curves(labels, RNG.random((40, 40)), [f"c{k}" for k in range(40)], tmp_path / "roc40.png")
    ) as png:
        assert png.size[0] == 900 and png.size[1] > 600


def test_single_point_training_curve_is_visible(tmp_path: Path) -> None:
    path = plot_training_curves([{"step": 0, "loss": 1.2}], ["loss"], tmp_path / "one.png")
    pixels = _pixels(path)
    # tab:blue (31, 119, 180) marker pixels; a line through one point would draw none
    blue = (np.abs(pixels - np.array([31, 119, 180])).sum(axis=2) < 40).sum()
    assert blue > 20


def test_reliability_diagram_png(tmp_path: Path) -> None:
    y = RNG.integers(0, 2, 300)
    p = np.clip(y * 0.3 + RNG.random(300) * 0.7, 0.0, 1.0)
    path = plot_reliability_diagram(y, p, tmp_path / "sub" / "reliability.png", n_bins=8, title="calibration")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (600, 700)
    with pytest.raises(DataError, match="probabilities"):
        plot_reliability_diagram(y, p + 1.0, tmp_path / "bad.png")


def test_training_curves_png(tmp_path: Path) -> None:
    rows = [{"step": s, "loss": 1.0 / (s + 1)} for s in range(20)] + [{"step": 10, "val_auc": 0.7}]
    path = plot_training_curves(rows, ["loss", "val_auc"], tmp_path / "curves.png")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (700, 480)
    with pytest.raises(DataError, match="appear in none"):
        plot_training_curves(rows, ["lr"], tmp_path / "x.png")
    with pytest.raises(DataError, match="row 0 has no 'step'"):
        plot_training_curves([{"loss": 1.0}], ["loss"], tmp_path / "x.png")


def test_backend_untouched(tmp_path: Path) -> None:
    code = (
        "import sys, numpy as np, matplotlib\n"
        "before = dict.__getitem__(matplotlib.rcParams, 'backend')\n"
        "from maco_cxr.plots import plot_training_curves\n"
        f"plot_training_curves([{{'step': 0, 'loss': 1.0}}], ['loss'], {str(tmp_path / 'c.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert dict.__getitem__(matplotlib.rcParams, 'backend') == before\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
