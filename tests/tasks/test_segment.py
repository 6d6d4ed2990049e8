"""Segmentation fine-tuning: configs, data pipeline, geometry round trip, lr scales, runs end to end."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from maco_cxr.cli import main
from maco_cxr.models.config import DecoderConfig, MacoConfig, TextConfig, VisionConfig
from maco_cxr.data.datasets import build_dataset
from maco_cxr.data.rle import rle_encode
from maco_cxr.data.synthetic import write_synthetic_dataset
from maco_cxr.errors import ConfigError
from maco_cxr.hub import create_model, save_pretrained
from maco_cxr.models.maco import MacoModel
from maco_cxr.models.upernet import IGNORE_INDEX, SegmentationOutput
from maco_cxr.tasks.finetune_common import build_optimizer, load_task_config
from maco_cxr.tasks.segment import (
    METRIC_NAMES,
    SegmentConfig,
    SegmentInputConfig,
    _normalise,
    _TrainSet,
    build_segmenter,
    evaluate_segmenter,
    predict_masks,
    segment,
)
from maco_cxr.train.schedules import set_learning_rate

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "segment"
SMALL = ["input.image_size=64", "head.channels=16", "head.aux_channels=8", "head.pool_scales=[1, 2]",
         "optim.batch_size=2", "optim.warmup_steps=1", "optim.lr=1e-3", "data.workers=0", "evaluation.overlays=2",
         "runtime.device=cpu", "runtime.log_every=1"]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = MacoConfig(vision=VisionConfig(embed_dim=32, depth=2, num_heads=2),
                        decoder=DecoderConfig(embed_dim=32, depth=1, num_heads=2),
                        text=TextConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64))
    directory = tmp_path_factory.mktemp("model") / "tiny"
    save_pretrained(create_model(config), directory)
    return directory


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    write_synthetic_dataset(out, 32, 1, 64, split_fractions=(0.5, 0.25, 0.25))
    return out


class _Threshold(nn.Module):
    """A fake segmenter: foreground logit +10 where the (normalised) input is bright, at stride 4."""

    def forward(self, x: torch.Tensor) -> SegmentationOutput:
        bright = (x[:, :1] > 1.0).float()
        return SegmentationOutput(logits=nn.functional.avg_pool2d(bright, 4) * 20.0 - 10.0)


def test_shipped_configs_hold_the_paper_schedules() -> None:
    expected = {"siim_1": (5e-6, 1000, 100), "siim_10": (2e-5, 5000, 100), "siim_100": (1.5e-5, 160_000, 1500),
                "covid_1": (2e-5, 1000, 100), "covid_10": (8e-6, 650, 100), "covid_100": (1e-5, 6700, 100)}
    for name, (lr, steps, warmup) in expected.items():
        config = load_task_config(SegmentConfig, CONFIGS / f"{name}.yaml")
        optim = config.optim
        assert (optim.lr, optim.steps, optim.warmup_steps) == (lr, steps, warmup), name
        assert (optim.name, optim.weight_decay, optim.layer_decay, optim.schedule) == ("adamw", 0.05, 0.65, "poly")
        assert optim.betas == (0.9, 0.999) and optim.batch_size == 8
        assert config.input.image_size == 512 and config.head.channels == 768
        assert config.head.pool_scales == (1, 2, 3, 6) and config.head.aux_channels == 256
        assert (config.loss.focal, config.loss.dice, config.loss.aux_focal, config.loss.aux_dice) == (2, 1, 0.8, 0.4)
    assert load_task_config(SegmentConfig, CONFIGS / "siim_10.yaml").data.train_split == "train_10"


def test_config_sections_keep_task_defaults_and_name_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-4\nhead:\n  channels: 64\n")
    config = load_task_config(SegmentConfig, path)
    assert config.optim.lr == 1e-4 and config.optim.name == "adamw" and config.optim.layer_decay == 0.65
    assert config.head.channels == 64 and config.head.aux_channels == 256
    path.write_text("head:\n  chanels: 64\n")
    with pytest.raises(ConfigError, match="head.chanels"):
        load_task_config(SegmentConfig, path)
    with pytest.raises(ConfigError, match="optim.batch_size"):
        load_task_config(SegmentConfig, None, ["optim.batch_size=1"])


def test_layerwise_lr_scales_follow_065_per_block() -> None:
    config = load_task_config(SegmentConfig, None, ["model.preset=tiny", "input.image_size=64", "head.channels=8"])
    model, summary = build_segmenter(config)
    depth = len(model.backbone.blocks)
    assert summary["feature_blocks_0_based"] == [0, 1, 2, 3] and depth == 4
    optimizer = build_optimizer(model, config.optim, num_layers=depth, no_decay_names=model.no_weight_decay(),
                                device=torch.device("cpu"))
    set_learning_rate(optimizer, 0.5)
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    lr = config.optim.lr

    def group(name: str) -> dict:
        return by_param[id(named[name])]

    assert group("backbone.patch_embed.proj.weight")["lr_scale"] == pytest.approx(0.65**5)
    assert group("backbone.blocks.0.attn.qkv.weight")["lr_scale"] == pytest.approx(0.65**4)
    assert group("backbone.blocks.3.mlp.fc1.weight")["lr_scale"] == pytest.approx(0.65)
    assert group("decode_head.classifier.weight")["lr_scale"] == 1.0
    assert group("decode_head.classifier.weight")["lr"] == pytest.approx(lr * 0.5)
    assert group("backbone.blocks.0.attn.qkv.weight")["lr"] == pytest.approx(lr * 0.5 * 0.65**4)
    assert group("backbone.blocks.0.attn.qkv.weight")["weight_decay"] == 0.05
    for name in ("backbone.cls_token", "backbone.blocks.0.norm1.weight", "decode_head.classifier.bias"):
        assert group(name)["weight_decay"] == 0.0, name


def test_position_table_is_resampled_once_for_the_input_size(tiny_model_dir: Path) -> None:
    config = load_task_config(SegmentConfig, None, [f"model.source={tiny_model_dir}", "input.image_size=96",
                                                    "head.channels=8"])
    model, summary = build_segmenter(config)
    assert model.backbone.pos_embed.shape == (1, 1 + 6 * 6, 32)
    assert summary["loaded"] == len(model.backbone.state_dict()) and summary["missing"] == []


def test_train_items_letterbox_ignore_padding_and_flip_by_draw(phantoms: Path) -> None:
    base = build_dataset("manifest", phantoms, mask_labels=["pneumothorax", "pleural effusion"])
    cfg = SegmentInputConfig(image_size=32, flip_p=0.5, missing_mask="empty")
    # a 64 x 64 phantom fits exactly; crop one to 64 x 40 to force padding
    wide = _TrainSet(_Cropped(base), cfg, seed=3)
    item = wide[(0, 0)]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.uint8
    target, valid = item["target"].numpy(), item["valid"].numpy()
    assert valid.sum() == 32 * 20 and not valid[:6].any() and not valid[-6:].any()
    assert np.all(target[~valid] == IGNORE_INDEX) and set(np.unique(target[valid])) <= {0, 1}
    flips = {d: bool(np.random.default_rng([3, d]).random() < 0.5) for d in range(6)}
    unflipped = [d for d, f in flips.items() if not f][0]
    flipped = [d for d, f in flips.items() if f][0]
    a, b = wide[(0, unflipped)], wide[(0, flipped)]
    assert torch.equal(a["image"], b["image"].flip(-1)) and torch.equal(a["target"], b["target"].flip(-1))
    x = _normalise(item["image"][None], item["valid"][None], 0.5, 0.25)
    assert x.shape == (1, 3, 32, 32) and torch.all(x[0, :, ~item["valid"]] == 0)


class _Cropped(torch.utils.data.Dataset):
    """The first phantom cut to 40 rows, with its mask, through the dataset contract."""

    def __init__(self, base: torch.utils.data.Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> dict:
        sample = dict(self.base[index])
        sample["image"] = sample["image"][:, 12:52]
        if "mask" in sample:
            sample["mask"] = sample["mask"][12:52]
        return sample


def test_predictions_are_mapped_back_to_the_original_geometry() -> None:
    image = np.full((90, 150), 20, dtype=np.uint8)
    image[30:60, 40:100] = 230  # a bright rectangle: the fake model segments it
    cfg = SegmentInputConfig(image_size=64)
    (mask,) = predict_masks(_Threshold(), [image], cfg)
    assert mask.shape == (90, 150) and mask.dtype == np.uint8
    truth = (image > 100).astype(np.uint8)
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.9


def test_evaluation_scores_in_original_geometry_with_named_figures(cxr_real_dir: Path) -> None:
    dataset = build_dataset("manifest", cxr_real_dir, split="val", mask_labels=["lungs"])
    dataset.records = [r for r in dataset.records if r.mask_paths][:2]
    report, rows, examples = evaluate_segmenter(_Threshold(), dataset, SegmentInputConfig(image_size=64), keep=1)
    assert set(METRIC_NAMES) <= set(report) and report["n_images"] == 2
    assert len(rows) == 2 and len(examples) == 1
    first = dataset[0]
    assert examples[0]["pred"].shape == first["mask"].shape == first["image"].shape[1:]
    assert rows[0]["truth_pixels"] == int(first["mask"].sum()) and rows[0]["empty_truth"] == 0
    assert 0.0 <= report["dice_per_image_mean"] <= 1.0


@pytest.mark.slow
def test_segment_trains_on_cxr_real_lungs(cxr_real_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    overrides = [*SMALL, "data.kind=manifest", f"data.root={cxr_real_dir}", "data.test_name=val",
                 "data.options={mask_labels: [lungs]}", f"model.source={tiny_model_dir}", "optim.steps=3",
                 "evaluation.every=2", f"runtime.out={tmp_path / 'run'}"]
    result = segment(load_task_config(SegmentConfig, None, overrides))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data"]["counts"] == {"train": 18, "val": 6, "test": 6}
    assert metrics["data"]["skipped_without_mask"] == {"train": 1, "val": 1, "test": 1}
    assert metrics["backbone"]["loaded"] == len(result.model.backbone.state_dict())
    assert set(METRIC_NAMES) <= set(metrics["test"]) and metrics["test"]["n_images"] == 6
    assert metrics["best_step"] in (2, 3)
    with (tmp_path / "run" / "per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and all(r["empty_truth"] == "0" for r in rows)
    assert len(list((tmp_path / "run" / "overlays").glob("*.png"))) == 2
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    steps = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "loss" in r] == [0, 1, 2]


@pytest.mark.slow
def test_cli_segment_on_phantoms(phantoms: Path, tiny_model_dir: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    code = main(["segment", "--model", str(tiny_model_dir), "--dataset", "manifest", "--root", str(phantoms),
                 "--out", str(out), *SMALL, "optim.steps=2", "evaluation.every=0", "input.missing_mask=empty",
                 "data.options={mask_labels: [pneumothorax, pleural effusion]}"])
    assert code == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in METRIC_NAMES)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["skipped_without_mask"] == {"train": 0, "val": 0, "test": 0}
    assert metrics["test"]["n_images"] == metrics["data"]["counts"]["test"] > 0
    assert (out / "curves.png").is_file() and (out / "best" / "checkpoint.json").is_file()


@pytest.mark.slow
def test_segment_reads_siim_rle_masks(cxr_real_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    # a SIIM-ACR tree: the real SIIM DICOM under 6 UIDs, masks as RLE (one empty, one of two rows)
    dicom = next((cxr_real_dir / "dicom").glob("1.2.276*.dcm"))
    root = tmp_path / "siim"
    folder = root / "dicom-images-train" / "study" / "series"
    folder.mkdir(parents=True)
    mask = np.zeros((1024, 1024), dtype=np.uint8)
    mask[100:300, 600:700] = 1
    rows = []
    for i in range(6):
        uid = f"1.2.3.{i}"
        shutil.copy(dicom, folder / f"{uid}.dcm")
        rows.append(f"{uid}, -1" if i == 5 else f"{uid}, {rle_encode(mask)}")
    rows.append(f"1.2.3.0, {rle_encode(np.roll(mask, 400, axis=0))}")
    (root / "train-rle.csv").write_text("ImageId, EncodedPixels\n" + "\n".join(rows) + "\n")
    for role, uids in (("train", [0, 1, 2]), ("val", [3]), ("test", [4, 5])):
        (tmp_path / f"{role}.txt").write_text("".join(f"1.2.3.{i}\n" for i in uids))
    overrides = [*SMALL, "data.kind=siim", f"data.root={root}", f"model.source={tiny_model_dir}", "optim.steps=2",
                 "evaluation.every=0", f"runtime.out={tmp_path / 'run'}",
                 *(f"data.{role}_split={tmp_path / role}.txt" for role in ("train", "val", "test"))]
    segment(load_task_config(SegmentConfig, None, overrides))
    with (tmp_path / "run" / "per_image.csv").open() as handle:
        rows_out = list(csv.DictReader(handle))
    assert [r["truth_pixels"] for r in rows_out] == [str(200 * 100), "0"]  # test: an RLE mask, then " -1"
    assert [r["empty_truth"] for r in rows_out] == ["0", "1"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data"]["counts"] == {"train": 3, "val": 1, "test": 2}
    assert metrics["test"]["n_empty_targets"] == 1


@pytest.mark.slow
def test_segment_reads_covid_rural_folders(phantoms: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    # the COVID rural layout: images/<stem>.png with masks/<stem>.png, split files of image paths
    root = tmp_path / "covid"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(6):
        image = np.asarray(Image.open(phantoms / "images" / f"phantom_{i:06d}.png"))
        mask = np.zeros((48, 64), dtype=np.uint8)
        mask[10 + i:30, 20:40] = 255
        Image.fromarray(image[8:56]).save(root / "images" / f"case{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"case{i}.png")
    for role, cases in (("train", [0, 1, 2]), ("val", [3]), ("test", [4, 5])):
        (tmp_path / f"{role}.txt").write_text("".join(f"images/case{i}.png\n" for i in cases))
    overrides = [*SMALL, "data.kind=covid-rural", f"data.root={root}", f"model.source={tiny_model_dir}",
                 "optim.steps=2", "evaluation.every=0", f"runtime.out={tmp_path / 'run'}",
                 *(f"data.{role}_split={tmp_path / role}.txt" for role in ("train", "val", "test"))]
    result = segment(load_task_config(SegmentConfig, None, overrides))
    assert result.metrics["data"]["counts"] == {"train": 3, "val": 1, "test": 2}
    with (tmp_path / "run" / "per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["image"]).name for r in rows] == ["case4.png", "case5.png"]
    assert [r["truth_pixels"] for r in rows] == [str(16 * 20), str(15 * 20)]  # original 48 x 64 geometry
