"""Write a phantom dataset to disk in the package's generic-manifest layout.

Layout (the same as ``tests/assets/cxr-real``)::

    images/<id>.png                 uint8 grey radiographs
    masks/<kind>/<id>.png           0/255 mask of every finding of that kind in the image
    manifest.csv                    image_path, report, labels, patient_id, split
    boxes.csv                       image_path, label, category, x_min, y_min, x_max, y_max
    masks.csv                       image_path, mask_path, label
    README.md, phantom_config.json  what the data is and how it was made

Item ``i`` depends only on ``(seed, i)``, so any ``n`` and any number of workers give the
same items. Images are written first and the manifest last (temp file + rename), and an
old manifest is removed before anything else, so a killed run never leaves a manifest that
lists a missing or mismatched image.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from maco_cxr._atomic import claim_output_folder, write_csv, write_text, write_with
from maco_cxr.data.synthetic.findings import FINDINGS
from maco_cxr.data.synthetic.phantom import generate_phantom
from maco_cxr.errors import ConfigError

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
"""Bumped whenever the same seed would draw different images."""

SPLITS: tuple[str, str, str] = ("train", "val", "test")
MANIFEST_COLUMNS = ("image_path", "report", "labels", "patient_id", "split")
BOX_COLUMNS = ("image_path", "label", "category", "x_min", "y_min", "x_max", "y_max")
MASK_COLUMNS = ("image_path", "mask_path", "label")
NO_FINDING = "No Finding"


@dataclass(frozen=True)
class _Job:
    out: Path
    seed: int
    size: int
    split_fractions: tuple[float, float, float]
    p_normal: float
    p_extra: float
    negations: bool


@dataclass
class _Rows:
    manifest: dict[str, str]
    boxes: list[dict[str, str]]
    masks: list[dict[str, str]]


def write_synthetic_dataset(
    out: Path,
    n: int,
    seed: int,
    size: int = 512,
    *,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    p_normal: float = 0.25,
    p_extra: float = 0.25,
    negations: bool = True,
    workers: int = 0,
    progress: bool = False,
) -> Path:
    """Write ``n`` phantoms of ``size`` pixels drawn from ``seed`` under ``out``.

    ``split_fractions`` are the train/val/test probabilities of each image (one patient per
    image); ``p_normal``, ``p_extra`` and ``negations`` go to :func:`generate_phantom`; ``workers > 0``
    draws in that many processes. Returns the manifest path.
    """
    fractions = _check(n, size, split_fractions, workers)
    for name, value in (("p_normal", p_normal), ("p_extra", p_extra)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name}={value}: a probability must lie in [0, 1]")
    out = claim_output_folder(out, "synthetic-dataset")
    for name in ("manifest.csv", "boxes.csv", "masks.csv"):
        (out / name).unlink(missing_ok=True)
    (out / "images").mkdir(exist_ok=True)
    job = _Job(out, seed, size, fractions, p_normal, p_extra, negations)
    rows = list(_progress(_write_all(job, n, workers), n, progress))
    _write_csv(out / "boxes.csv", BOX_COLUMNS, [box for row in rows for box in row.boxes])
    _write_csv(out / "masks.csv", MASK_COLUMNS, [mask for row in rows for mask in row.masks])
    counts = _counts(rows)
    config = {
        "generator": "maco_cxr.data.synthetic",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "n": n,
        "size": size,
        "split_fractions": list(fractions),
        "p_normal": p_normal,
        "p_extra": p_extra,
        "negations": negations,
        "findings": list(FINDINGS),
        "counts": counts,
    }
    write_text(out / "phantom_config.json", json.dumps(config, indent=2) + "\n")
    write_text(out / "README.md", _readme(n, seed, size, fractions, counts))
    manifest = out / "manifest.csv"
    _write_csv(manifest, MANIFEST_COLUMNS, [row.manifest for row in rows])
    logger.info("wrote %d phantoms to %s", n, out)
    return manifest


def _check(n: int, size: int, split_fractions: Sequence[float], workers: int) -> tuple[float, float, float]:
    if n < 1:
        raise ConfigError(f"n={n}: write at least one phantom")
    if size < 64:
        raise ConfigError(f"size={size}: phantoms need at least 64 pixels a side")
    if workers < 0:
        raise ConfigError(f"workers={workers}: use 0 (this process) or a positive count")
    values = [float(fraction) for fraction in split_fractions]
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise ConfigError(
            f"split_fractions={list(split_fractions)}: give three non-negative train/val/test fractions that sum to 1"
        )
    return values[0], values[1], values[2]


def _write_all(job: _Job, n: int, workers: int) -> Iterator[_Rows]:
    if workers == 0:
        yield from (_write_item(job, index) for index in range(n))
        return
    chunk = max(1, min(64, n // (4 * workers)))
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        yield from pool.map(_write_item, [job] * n, range(n), chunksize=chunk)


def _progress(rows: Iterable[_Rows], n: int, show: bool) -> Iterable[_Rows]:
    if not show:
        return rows
    from tqdm.auto import tqdm

    return tqdm(rows, total=n, desc="phantoms", unit="img")


def _write_item(job: _Job, index: int) -> _Rows:
    """Draw phantom ``index`` and write its image and masks; return its CSV rows."""
    phantom = generate_phantom(
        np.random.default_rng([job.seed, index]),
        job.size,
        p_normal=job.p_normal,
        p_extra=job.p_extra,
        negations=job.negations,
    )
    name = f"phantom_{index:06d}"
    image_path = f"images/{name}.png"
    _write_png(job.out / image_path, phantom.image)
    boxes, masks = [], []
    for kind in phantom.label_names:
        of_kind = [finding for finding in phantom.findings if finding.kind == kind]
        mask_path = f"masks/{kind.replace(' ', '_')}/{name}.png"
        union = np.logical_or.reduce([finding.mask for finding in of_kind])
        _write_png(job.out / mask_path, union.astype(np.uint8) * 255)
        masks.append({"image_path": image_path, "mask_path": mask_path, "label": kind})
        for finding in of_kind:
            x_min, y_min, x_max, y_max = finding.box_xyxy
            boxes.append(
                {
                    "image_path": image_path,
                    "label": finding.phrase,
                    "category": kind,
                    "x_min": f"{x_min:g}",
                    "y_min": f"{y_min:g}",
                    "x_max": f"{x_max:g}",
                    "y_max": f"{y_max:g}",
                }
            )
    draw = float(np.random.default_rng([job.seed, index, 1]).random())
    split = SPLITS[int(np.searchsorted(np.cumsum(job.split_fractions[:2]), draw, side="right"))]
    manifest = {
        "image_path": image_path,
        "report": phantom.report,
        "labels": "|".join(phantom.label_names) or NO_FINDING,
        "patient_id": name,
        "split": split,
    }
    return _Rows(manifest, boxes, masks)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    write_with(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG", compress_level=4))


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, str]]) -> None:
    write_csv(path, columns, ([row.get(c, "") for c in columns] for row in rows))


def _counts(rows: Sequence[_Rows]) -> dict[str, int]:
    counts = {kind: 0 for kind in (*FINDINGS, NO_FINDING)}
    for row in rows:
        for label in row.manifest["labels"].split("|"):
            counts[label] += 1
    return counts


def _readme(n: int, seed: int, size: int, fractions: tuple[float, float, float], counts: dict[str, int]) -> str:
    table = "\n".join(f"| {name} | {count} |" for name, count in counts.items())
    return f"""# Synthetic chest-radiograph phantoms

NOT real patients: {n} procedurally drawn frontal chest radiographs ({size}x{size}, 8-bit
grey) made by `maco_cxr.data.synthetic` (generator version {GENERATOR_VERSION}) from seed
{seed}. Image `phantom_<i>` depends only on (seed, i). Regenerate with
`maco-cxr synth --out DIR --n {n} --seed {seed} --size {size}`.

Each image shows a thorax (body, lungs, heart, mediastinum, spine, ribs, clavicles,
diaphragm) with zero or more findings of known kind, side and extent, and a template report
that names them (with laterality and severity) and negates some absent classes.

| finding | images |
|---|---|
{table}

Files
- `images/<id>.png`: the radiographs.
- `manifest.csv`: `image_path, report, labels, patient_id, split`; `labels` is the
  "|"-joined positive classes in the order {", ".join(FINDINGS)}, or "{NO_FINDING}".
  One patient per image; split probabilities train/val/test = {fractions}.
- `boxes.csv`: one row per finding, `label` = MS-CXR style phrase ("small right pleural
  effusion"), `category` = class; `x_min, y_min, x_max, y_max` in pixels, pixel i spanning
  [i, i+1), so boxes are tight around their masks. Cardiomegaly's box is the heart.
- `masks.csv` + `masks/<class>/<id>.png`: 0/255 masks, same size as the image, one per
  image and class (both sides of a bilateral effusion in one mask).

Conventions: sides are the patient's, so "left" is on the image right. Findings: pleural
effusion (left/right/bilateral; small/moderate/large), pneumothorax (small/large),
consolidation (lobe/zone), cardiomegaly (mild/moderate/severe; cardiothoracic ratio > 0.55),
nodule (lobe/zone, size in cm), edema (bilateral perihilar; mild/moderate/severe).
"""
