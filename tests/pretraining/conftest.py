"""Fixtures of the training tests: a small image-report manifest and a smaller-than-tiny model."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maco_cxr.config import from_dict
from maco_cxr.pretraining.config import PretrainConfig

REPORTS = (
    "Large left pleural effusion.",
    "Right upper lobe pneumonia.",
    "The heart is enlarged.",
    "Small right apical pneumothorax.",
    "Pulmonary edema with vascular congestion.",
    "A nodule in the left lower lobe.",
    "No acute cardiopulmonary process.",
    "Retrocardiac atelectasis is seen.",
)

# A model far smaller than the tiny preset: 128 px input, encoder at 64 px (16 patches),
# reports truncated to 16 tokens.
MICRO_MODEL = {
    "preset": "tiny",
    "vision": {"img_size": 64, "embed_dim": 32, "depth": 1, "num_heads": 2},
    "decoder": {"embed_dim": 32, "depth": 1, "num_heads": 2},
    "text": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "max_length": 16},
}


def pattern_image(index: int, height: int = 112, width: int = 96) -> np.ndarray:
    """A distinct grey image per index (of 8): its own brightness, and a bright block in one of
    8 places."""
    level = 25 * (index % 8)
    image = np.tile(np.linspace(level, level + 40, width, dtype=np.float32), (height, 1))
    row, col = divmod(index % 8, 2)
    top, left = 8 + row * 24, 10 + col * 40
    image[top : top + 20, left : left + 36] = 250
    return image.astype(np.uint8)


def write_manifest(folder: Path, count: int, reports: tuple[str, ...] = REPORTS, missing: tuple[int, ...] = ()) -> Path:
    """``count`` PNGs with reports in ``folder/manifest.csv``; indices in ``missing`` get no file."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        name = f"img_{i:03d}.png"
        if i not in missing:
            Image.fromarray(pattern_image(i)).save(folder / name)
        rows.append({"image_path": name, "report": reports[i % len(reports)], "split": "train"})
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image_path", "report", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


def micro_config(data_path: Path, output_dir: Path, **sections: dict) -> PretrainConfig:
    """A CPU config on ``data_path`` (a manifest folder); ``sections`` update its sections."""
    data = {
        "model": {**MICRO_MODEL, "text": {**MICRO_MODEL["text"], "dropout": 0.0}},
        "data": {"source": "manifest", "path": str(data_path), "split": "train", "workers": 0},
        "optim": {"batch_size": 4, "accum_steps": 1, "max_steps": 4, "warmup_steps": 1, "lr": 1e-3},
        "augment": {},
        "runtime": {"device": "cpu", "output_dir": str(output_dir), "log_every": 1, "save_every": 2, "keep_last": 2},
    }
    for name, values in sections.items():
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(data[name].get(key), dict):
                data[name][key] = {**data[name][key], **value}
            else:
                data[name][key] = value
    return from_dict(PretrainConfig, data)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and far faster when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def manifest_dir(tmp_path: Path) -> Path:
    return write_manifest(tmp_path / "data", 8)
