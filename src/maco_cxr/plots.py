"""Figures for reports: heatmap overlays, ROC curves, training curves and reliability diagrams.

Figures are drawn on ``matplotlib.figure.Figure`` with an Agg canvas and never through
``pyplot``, so importing or using this module leaves the user's matplotlib backend alone.
Overlays are blended in numpy and annotated with Pillow; they come back as RGB arrays. Their
default colour map, jet, is matplotlib's own table rebuilt in numpy (:func:`jet_colours`), so
inference commands that only draw overlays never import matplotlib (about 1.5 s of start-up);
matplotlib and the metrics are imported by the figure functions that need them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from maco_cxr._atomic import write_with
from maco_cxr.errors import DataError
from maco_cxr.metrics._arrays import to_numpy

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_BOX_COLOUR = (0, 255, 0)
_MARKER_LIMIT = 50  # training-curve panels with at most this many points get markers
_LINE_STYLES = ("-", "--", "-.", ":")
_TITLE_COLOUR = (255, 255, 255)
# matplotlib's jet (``_jet_data`` in matplotlib._cm): piecewise-linear (x, value) per channel
_JET = (
    ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
)
_LUT_SIZE = 256


def jet_colours(unit: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] ``[..., 3]`` of values in [0, 1], exactly as ``matplotlib.colormaps["jet"]``:
    a 256-entry table sampled from the channels' breakpoints, indexed by ``floor(x * 256)``."""
    grid = np.linspace(0.0, 1.0, _LUT_SIZE)
    lut = np.stack([np.interp(grid, *zip(*channel)) for channel in _JET], axis=-1)
    index = np.clip((np.asarray(unit, dtype=np.float64) * _LUT_SIZE).astype(np.int64), 0, _LUT_SIZE - 1)
    return lut[index]


def _image_rgb(image: Any) -> np.ndarray:
    """uint8 ``[H, W]``, ``[1, H, W]`` or ``[H, W, 3]`` -> uint8 ``[H, W, 3]``."""
    arr = to_numpy(image)
    if arr.dtype != np.uint8:
        raise DataError(f"image must be uint8; got {arr.dtype} (convert with maco_cxr.data first)")
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return arr
    raise DataError(f"image must be [H, W], [1, H, W] or [H, W, 3]; got shape {arr.shape}")


def _unit_interval(heatmap: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    """Map finite heatmap values to [0, 1] (min-max unless ``value_range`` is given)."""
    finite = np.isfinite(heatmap)
    if value_range is None:
        if not finite.any():
            return heatmap
        lo, hi = float(heatmap[finite].min()), float(heatmap[finite].max())
    else:
        lo, hi = value_range
    if hi <= lo:
        return np.where(finite, 0.0, np.nan)
    return np.clip((heatmap - lo) / (hi - lo), 0.0, 1.0)


def overlay_heatmap(
    image_uint8: Any,
    heatmap: Any,
    *,
    alpha: float = 0.45,
    cmap: str = "jet",
    boxes: Any = None,
    title: str | None = None,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Blend a heatmap ``[H, W]`` over an image; returns RGB uint8 ``[H, W, 3]`` without axes.

    Each pixel is ``(1 - alpha) * image + alpha * cmap(heat)``, the heat min-max scaled to
    [0, 1] (or by ``value_range``, e.g. (-1, 1) to compare maps); NaN heat shows the image
    alone. ``boxes`` ``[M, 4]`` (x_min, y_min, x_max, y_max, pixels) are outlined in green and
    ``title`` is written in the top-left corner.
    """
    rgb = _image_rgb(image_uint8)
    heat = to_numpy(heatmap).astype(np.float64)
    if heat.shape != rgb.shape[:2]:
        raise DataError(f"heatmap has shape {heat.shape} but the image is {rgb.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise DataError(f"alpha must lie in [0, 1]; got {alpha}")
    unit = _unit_interval(heat, value_range)
    finite = np.isfinite(unit)
    safe = np.where(finite, unit, 0.0)
    if cmap == "jet":
        colours = jet_colours(safe) * 255.0
    else:
        import matplotlib

        colours = matplotlib.colormaps[cmap](safe)[..., :3] * 255.0
    blended = (1.0 - alpha) * rgb + alpha * colours
    out = np.where(finite[..., None], np.rint(blended), rgb).astype(np.uint8)
    if boxes is None and title is None:
        return out
    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    if boxes is not None:
        width = max(1, round(min(out.shape[:2]) / 150))
        for x0, y0, x1, y1 in to_numpy(boxes).astype(np.float64).reshape(-1, 4):
            draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=_BOX_COLOUR, width=width)
    if title is not None:
        font = ImageFont.load_default(size=max(10, out.shape[0] // 20))
        draw.text((4, 2), title, fill=_TITLE_COLOUR, font=font, stroke_width=1, stroke_fill=(0, 0, 0))
    return np.asarray(canvas)


def save_overlay(path: str | Path, image_uint8: Any, heatmap: Any, **kwargs: Any) -> Path:
    """Write :func:`overlay_heatmap` (same keyword arguments) as a PNG and return the path."""
    rgb = overlay_heatmap(image_uint8, heatmap, **kwargs)
    return write_with(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"))


def _figure(**kwargs: Any) -> Figure:
    """A matplotlib figure on an Agg canvas (matplotlib imported here, when a figure is drawn)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def _save_figure(figure: Figure, path: str | Path) -> Path:
    return write_with(path, lambda tmp: figure.savefig(tmp, format="png"))


def _class_styles(n: int) -> list[tuple[tuple[float, ...], str]]:
    """A distinct (colour, line style) for each of ``n`` curves.

    Up to 10: tab10, solid. Up to 20: tab20's dark shades then its light ones, the light
    shades dashed so that the pair sharing a hue still differs. Beyond: evenly spaced turbo
    colours cycling through four line styles, so that neighbouring colours differ in style.
    """
    import matplotlib

    if n <= 10:
        return [(matplotlib.colormaps["tab10"](k), "-") for k in range(n)]
    if n <= 20:
        tab20 = matplotlib.colormaps["tab20"]
        order = [*range(0, 20, 2), *range(1, 20, 2)]  # dark shades, then the light ones
        return [(tab20(order[k]), "-" if k < 10 else "--") for k in range(n)]
    turbo = matplotlib.colormaps["turbo"]
    return [(turbo(0.05 + 0.9 * k / (n - 1)), _LINE_STYLES[k % 4]) for k in range(n)]


def plot_roc_curves(
    y_true: Any,
    y_score: Any,
    class_names: Sequence[str],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Write one ROC curve per class to a PNG, with each class's AUC in the legend.

    Labels and scores are ``[N, K]`` (NaN labels left out per class); a class with a single
    known label value appears in the legend as "AUC n/a" without a curve. The legend sits to
    the right of the axes, so it never hides a curve, and each class gets its own colour and
    line style (see ``_class_styles``), also beyond 10 classes. The image is 900 x 600 pixels,
    taller beyond 24 classes so that the legend fits.
    """
    labels = to_numpy(y_true).astype(np.float64)
    scores = to_numpy(y_score).astype(np.float64)
    if labels.ndim == 1:
        labels, scores = labels[:, None], scores[:, None]
    if len(class_names) != labels.shape[1]:
        raise DataError(f"{len(class_names)} class_names given for {labels.shape[1]} label columns")
    from maco_cxr.metrics.classification import roc_auc_per_class, roc_curve_points

    aucs = roc_auc_per_class(labels, scores, class_names)
    many = len(class_names) > 24
    height = max(6.0, 0.19 * (len(class_names) + 1) + 0.8) if many else 6.0
    figure = _figure(figsize=(9, height), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle=(0, (1, 3)), color="grey", linewidth=1, label="chance")
    for k, (name, (colour, style)) in enumerate(zip(class_names, _class_styles(len(class_names)))):
        if np.isnan(aucs[k]):
            axes.plot([], [], color=colour, linestyle=style, label=f"{name} (AUC n/a)")
            continue
        curve = roc_curve_points(labels[:, k], scores[:, k])
        axes.plot(
            curve.fpr, curve.tpr, color=colour, linestyle=style, linewidth=1.5, label=f"{name} (AUC {curve.auc:.3f})"
        )
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    axes.set_aspect("equal")
    axes.legend(
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        fontsize="x-small" if many else "small",
        handlelength=3.0,
    )
    if title is not None:
        axes.set_title(title)
    return _save_figure(figure, path)


def plot_training_curves(
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    path: str | Path,
    *,
    x_key: str = "step",
    title: str | None = None,
) -> Path:
    """Plot metrics against ``x_key`` from per-step metric rows, one panel per key, to a PNG.

    Rows without a key (e.g. validation logged every N steps) simply add no point to that
    panel; points are drawn in ``x_key`` order, with markers when a panel has at most
    ``_MARKER_LIMIT`` points, so a single logged value still shows. A key found in no row, or
    a row without ``x_key``, is an error.
    """
    if not keys:
        raise DataError("plot_training_curves needs at least one key to plot")
    for i, row in enumerate(rows):
        if x_key not in row:
            raise DataError(f"row {i} has no {x_key!r} field; its keys are {sorted(row)}")
    missing = [k for k in keys if not any(k in row for row in rows)]
    if missing:
        raise DataError(f"keys {missing} appear in none of the {len(rows)} rows")
    figure = _figure(figsize=(7, 2.4 * len(keys)), dpi=100, layout="constrained")
    panels = figure.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    for axes, key in zip(panels, keys):
        points = sorted((float(row[x_key]), float(row[key])) for row in rows if key in row)
        xs, ys = zip(*points)
        marker = "o" if len(points) <= _MARKER_LIMIT else None
        axes.plot(xs, ys, linewidth=1.2, marker=marker, markersize=4)
        axes.set_ylabel(key)
        axes.grid(alpha=0.3)
    panels[-1].set_xlabel(x_key)
    if title is not None:
        figure.suptitle(title)
    return _save_figure(figure, path)


def plot_reliability_diagram(
    y_true: Any,
    y_prob: Any,
    path: str | Path,
    *,
    n_bins: int = 10,
    title: str | None = None,
) -> Path:
    """Write the reliability diagram of one class's probabilities ``[N]`` to a PNG (600 x 700).

    Top: observed frequency of positives against mean predicted probability per bin (from
    :func:`~maco_cxr.metrics.uncertainty.reliability_curve`, same ``n_bins``), each point's
    vertical gap to the diagonal marked, and the ECE in the legend. Bottom: how many items
    fall in each bin. Empty bins draw nothing.
    """
    from maco_cxr.metrics.uncertainty import reliability_curve

    curve = reliability_curve(y_true, y_prob, n_bins=n_bins)
    filled = curve.counts > 0
    centres = (curve.bin_edges[:-1] + curve.bin_edges[1:]) / 2.0
    width = curve.bin_edges[1] - curve.bin_edges[0]
    figure = _figure(figsize=(6, 7), dpi=100, layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    predicted, observed = curve.mean_predicted[filled], curve.observed_frequency[filled]
    top.vlines(predicted, predicted, observed, color="tab:red", linewidth=3, alpha=0.45, label="gap to the diagonal")
    top.plot(
        predicted,
        observed,
        marker="o",
        color="tab:blue",
        linewidth=1.5,
        label=f"model (ECE {curve.ece:.3f}, n = {curve.n})",
    )
    top.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), ylabel="observed frequency of positives")
    top.legend(loc="upper left", fontsize="small")
    top.grid(alpha=0.3)
    bottom.bar(centres, curve.counts, width=width * 0.9, color="tab:blue", alpha=0.6)
    bottom.set(xlabel="mean predicted probability", ylabel="items")
    if title is not None:
        top.set_title(title)
    return _save_figure(figure, path)


def plot_variant_comparison(
    values: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | Path,
    *,
    reference: str | None = None,
    title: str | None = None,
) -> Path:
    """One panel per metric; per variant every seed's value as a dot and their mean as a bar.

    values: ``{metric: {variant: [value per seed]}}`` (variants in display order; NaN values
    are left out). ``reference``: a variant whose mean is drawn as a dashed line across the
    panel, so a difference can be read against the seed spread of both.
    """
    metrics = list(values)
    if not metrics:
        raise DataError("plot_variant_comparison: no metrics to plot")
    variants = list(values[metrics[0]])
    columns = min(3, len(metrics))
    rows = -(-len(metrics) // columns)
    figure = _figure(figsize=(4.6 * columns, 0.35 * len(variants) + 2.6 * rows), layout="constrained")
    for k, metric in enumerate(metrics):
        axes = figure.add_subplot(rows, columns, k + 1)
        for position, variant in enumerate(variants):
            points = np.asarray([v for v in values[metric].get(variant, ()) if not np.isnan(v)], dtype=float)
            if points.size == 0:
                continue
            axes.barh(position, points.mean(), color="#9ecae1", height=0.6)
            axes.plot(points, np.full(points.size, position), "o", color="#08519c", markersize=4)
        if reference is not None and values[metric].get(reference):
            known = [v for v in values[metric][reference] if not np.isnan(v)]
            if known:
                axes.axvline(float(np.mean(known)), color="#555", linestyle="--", linewidth=1)
        axes.set_yticks(range(len(variants)), variants if k % columns == 0 else [""] * len(variants))
        axes.invert_yaxis()
        axes.set_title(metric, fontsize=10)
        axes.grid(axis="x", alpha=0.3)
    if title:
        figure.suptitle(title)
    return _save_figure(figure, path)


def plot_compare(rows: Sequence[Any], metric: str, path: str | Path, title: str | None = None) -> Path:
    """One line per model: its ``metric`` with the 95 % interval (filled dot), a published figure of the same
    metric name prefix (hollow diamond), or the reason it has none (a model that cannot do the task).

    ``rows``: objects with ``model``, ``metric``, ``value``, ``ci_low``, ``ci_high``, ``source`` and ``note``
    (:class:`maco_cxr.tasks.compare.CompareRow`).
    """
    shown = [r for r in rows if r.metric == metric or (r.source == "published" and r.metric.startswith(metric))]
    refused = [r for r in rows if r.metric == "-"]
    lines = shown + refused
    if not lines:
        raise DataError(f"no row has the metric {metric!r} to plot")
    figure = _figure(figsize=(9, 1.2 + 0.45 * len(lines)), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    finite = [v for r in shown for v in (r.value, r.ci_low, r.ci_high) if np.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    pad = max(0.05 * (high - low), 0.01)
    for y, row in enumerate(lines):
        if row in refused:
            axes.text(low, y, f"  {row.note}", va="center", fontsize=9, color="grey")
        elif row.source == "published":
            axes.plot([row.value], [y], marker="D", markerfacecolor="none", color="tab:orange", linestyle="none")
        else:
            has_ci = np.isfinite(row.ci_low) and np.isfinite(row.ci_high)
            error = [[row.value - row.ci_low], [row.ci_high - row.value]] if has_ci else None
            axes.errorbar([row.value], [y], xerr=error, fmt="o", color="tab:blue", capsize=4)
    axes.set_yticks(
        range(len(lines)), [f"{r.model} ({r.metric})" if r.source == "published" else r.model for r in lines]
    )
    axes.set_ylim(len(lines) - 0.5, -0.5)  # first model on top, every line inside the axes
    axes.set_xlim(low - pad, high + pad)
    axes.set_xlabel(f"{metric} (dot: measured, 95 % CI; diamond: published)")
    axes.grid(axis="x", alpha=0.3)
    if title:
        axes.set_title(title)
    return _save_figure(figure, path)
