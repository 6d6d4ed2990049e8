"""Lenient datasets skip AND count unreadable files in every consumer; the encoders take what
zero_shot takes and return inference tensors; empty class names and phrases are refused."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import maco_cxr
from maco_cxr.cli import main
from maco_cxr.data.datasets import build_dataset
from maco_cxr.data.datasets.base import is_failed
from maco_cxr.errors import ConfigError, DataError
from maco_cxr.hub import create_model, save_pretrained
from maco_cxr.models.config import preset
from maco_cxr.tasks.grounding import evaluate_grounding
from maco_cxr.tasks.retrieval import retrieve
from maco_cxr.tasks.zeroshot import evaluate_zero_shot


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(preset("tiny")).eval()


@pytest.fixture()
def broken_manifest(tmp_path: Path, cxr_real_dir: Path) -> Path:
    """Four good PNGs, a truncated PNG and a text file named .dcm, each with a report and a box."""
    folder = tmp_path / "data"
    folder.mkdir()
    names = sorted(p.name for p in (cxr_real_dir / "images").glob("covid_*.png"))[:4]
    for name in names:
        shutil.copy(cxr_real_dir / "images" / name, folder / name)
    truncated = (cxr_real_dir / "images" / names[0]).read_bytes()
    (folder / "truncated.png").write_bytes(truncated[: len(truncated) // 3])
    (folder / "notes.dcm").write_text("this is not a DICOM file\n")
    rows = [*names, "truncated.png", "notes.dcm"]
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_path", "report", "labels"])
        for i, name in enumerate(rows):
            writer.writerow([name, f"Finding number {i} in the left lung.", "COVID-19" if i % 2 else "No Finding"])
    with (folder / "boxes.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_path", "label", "x_min", "y_min", "x_max", "y_max"])
        for name in rows:
            writer.writerow([name, "left lung opacity", 10, 10, 60, 60])
    return folder


def test_a_lenient_dataset_returns_failed_samples_for_unreadable_files(broken_manifest: Path) -> None:
    strict = build_dataset("manifest", broken_manifest)
    with pytest.raises(DataError, match="truncated.png"):
        strict[4]
    lenient = build_dataset("manifest", broken_manifest, on_error="skip")
    assert not is_failed(lenient[0]) and lenient[0]["image"].dtype == torch.uint8
    for index, name in ((4, "truncated.png"), (5, "notes.dcm")):
        sample = lenient[index]
        assert is_failed(sample) and sample["path"].endswith(name) and name in sample["error"]
        assert "image" not in sample


def test_every_consumer_skips_and_counts_unreadable_files(broken_manifest: Path, model) -> None:
    dataset = build_dataset("manifest", broken_manifest, on_error="skip")
    result = evaluate_zero_shot(model, dataset, ["COVID-19"], num_workers=0)
    assert len(result.paths) == 4 and result.scores.shape == (4, 1)
    assert sorted(Path(f["path"]).name for f in result.failures) == ["notes.dcm", "truncated.png"]
    assert all(f["reason"] for f in result.failures)
    recalls = retrieve(model, dataset)
    assert recalls["n"] == 4 and recalls["n_unreadable"] == 2
    grounded = evaluate_grounding(model, dataset)
    assert len(grounded.rows) == 4 and len(grounded.failures) == 2
    assert grounded.summary["n_unreadable_items"] == 2


def test_zeroshot_cli_with_skip_bad_lists_the_unreadable_files(
    broken_manifest: Path, model, tmp_path: Path, capsys
) -> None:
    save_pretrained(model, tmp_path / "m")
    out = tmp_path / "zs"
    assert (
        main(
            [
                "zeroshot",
                "--model",
                str(tmp_path / "m"),
                "--dataset",
                "manifest",
                "--root",
                str(broken_manifest),
                "--skip-bad",
                "--classes",
                "COVID-19",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 4 and summary["n_unreadable"] == 2
    assert "2 unreadable files left out" in capsys.readouterr().out
    assert (
        main(
            [
                "zeroshot",
                "--model",
                str(tmp_path / "m"),
                "--dataset",
                "manifest",
                "--root",
                str(broken_manifest),
                "--classes",
                "COVID-19",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "truncated.png" in capsys.readouterr().err


def test_encoders_take_paths_arrays_and_pil_and_return_inference_tensors(model, cxr_real_dir: Path) -> None:
    path = sorted((cxr_real_dir / "images").glob("*.png"))[0]
    pixels = maco_cxr.read_image(path)
    from_path = maco_cxr.encode_images(model, str(path))
    from_array = maco_cxr.encode_images(model, pixels)
    from_pil = maco_cxr.encode_images(model, Image.fromarray(pixels))
    from_batch = maco_cxr.encode_images(model, [path, pixels])
    for z in (from_path, from_array, from_pil):
        torch.testing.assert_close(z, from_path)
        assert z.shape == (1, model.config.embed_dim) and not z.requires_grad and z.numpy().dtype == np.float32
    torch.testing.assert_close(from_batch[1], from_path[0])
    patches = maco_cxr.patch_embeddings(model, np.stack([pixels[:200, :200]] * 2))
    assert patches.shape == (2, 14, 14, model.config.embed_dim) and not patches.requires_grad
    texts = maco_cxr.encode_texts(model, ["small left pleural effusion.", "no pneumothorax."])
    assert texts.shape == (2, model.config.embed_dim) and not texts.requires_grad
    assert texts.numpy().dtype == np.float32
    cosine = maco_cxr.similarity(model, [path, pixels], ["left lung opacity", "heart"])
    assert cosine.shape == (2, 2) and float(cosine.abs().max()) <= 1.0 + 1e-6
    with pytest.raises(DataError, match="maco_cxr.encode_images"):
        model.encode_images(pixels)


def test_empty_class_names_and_phrases_are_refused_with_a_plain_message(model) -> None:
    image = np.full((64, 64), 100, np.uint8)
    with pytest.raises(ConfigError, match=r"class 0 \(''\) is empty"):
        maco_cxr.zero_shot(model, image, [""])
    with pytest.raises(ConfigError, match=r"class 1 \(' '\) is empty"):
        maco_cxr.zero_shot(model, image, ["Edema", " "])
    with pytest.raises(DataError, match="phrase '' is empty"):
        maco_cxr.ground(model, image, "")
    with pytest.raises(DataError, match="text 1 is empty"):
        maco_cxr.encode_texts(model, ["edema", ""])
    assert maco_cxr.ground(model, image, "edema").shape == (64, 64)
