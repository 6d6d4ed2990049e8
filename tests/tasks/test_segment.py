"""Segmentation fine-tuning: configs, head widths, lr scales, data pipeline, geometry round trip, runs."""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from maco_cxr.cli import main
from maco_cxr.config import load_config, recipe_folder
from maco_cxr.data.datasets import build_dataset
from maco_cxr.data.rle import rle_encode
from maco_cxr.data.synthetic import write_synthetic_dataset
from maco_cxr.errors import ConfigError, DataError
from maco_cxr.hub import create_model, load, save_pretrained
from maco_cxr.models.config import DecoderConfig, MacoConfig, TextConfig, VisionConfig
from maco_cxr.models.upernet import IGNORE_INDEX, SegmentationOutput
from maco_cxr.runtime.distributed import DistInfo
from maco_cxr.runtime.loop import Run
from maco_cxr.runtime.rng import isolated_rng
from maco_cxr.runtime.schedules import set_learning_rate
from maco_cxr.tasks.finetune import SegmentConfig, load_finetuned, train_segmenter
from maco_cxr.tasks.finetune.backbone import load_backbone
from maco_cxr.tasks.finetune.engine import build_optimizer
from maco_cxr.tasks.finetune.segmentation import (
    METRIC_NAMES,
    FinetunedSegmenter,
    SegmentInput,
    SegmentTask,
    _normalise,
    _TrainItems,
)

CONFIGS = recipe_folder() / "segment"
PHANTOM_MASKS = "data.options={mask_labels: [pneumothorax, pleural effusion]}"
SMALL = [
    "input.image_size=64",
    "head.channels=16",
    "head.aux_channels=8",
    "head.pool_scales=[1, 2]",
    "optim.batch_size=2",
    "optim.warmup_steps=1",
    "optim.lr=1e-3",
    "data.workers=0",
    "evaluation.overlays=2",
    "evaluation.bootstrap=20",
    "runtime.device=cpu",
    "runtime.log_every=1",
]
CPU_RUN = Run(torch.device("cpu"), DistInfo(), "fp32", 0, False)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = MacoConfig(
        vision=VisionConfig(embed_dim=32, depth=2, num_heads=2),
        decoder=DecoderConfig(embed_dim=32, depth=1, num_heads=2),
        text=TextConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
    )
    directory = tmp_path_factory.mktemp("model") / "tiny"
    save_pretrained(create_model(config), directory)
    return directory


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    write_synthetic_dataset(out, 32, 1, 64, split_fractions=(0.5, 0.25, 0.25))
    return out


def _built(root: Path, *overrides: str) -> tuple[SegmentTask, FinetunedSegmenter, dict]:
    """The task on ``root`` (phantoms: their two mask labels) and the model a run would train."""
    config = load_config(
        SegmentConfig, None, [f"data.root={root}", "input.missing_mask=empty", PHANTOM_MASKS, *overrides]
    )
    task = SegmentTask(config)
    model, summary = task.build_model(task.splits())
    return task, model, summary


def _run(*overrides: str) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return dict(train_segmenter(load_config(SegmentConfig, None, [*SMALL, *overrides])).summary)
    finally:
        torch.set_num_threads(threads)


def _initial_model(*overrides: str) -> FinetunedSegmenter:
    """The model a run of these overrides starts from (built first under the run's seeded generator)."""
    config = load_config(SegmentConfig, None, [*SMALL, *overrides])
    task = SegmentTask(config)
    with isolated_rng(config.runtime.seed, torch.device("cpu")):
        return task.build_model(task.splits())[0]


class _Threshold(nn.Module):
    """A fake segmenter: foreground logit +10 where the (normalised) input is bright, at stride 4."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))  # gives the wrapping model a device

    def forward(self, x: torch.Tensor) -> SegmentationOutput:
        bright = (x[:, :1] > 1.0).float()
        return SegmentationOutput(logits=nn.functional.avg_pool2d(bright, 4) * 20.0 - 10.0)


def _fake_segmenter(image_size: int = 64) -> FinetunedSegmenter:
    cfg = SegmentInput(image_size=image_size)
    return FinetunedSegmenter(
        _Threshold(),
        ("foreground",),
        {"image_size": image_size, "mean": cfg.pixel_mean, "std": cfg.pixel_std, "threshold": 0.5},
    ).eval()


# ---------------------------------------------------------------------------------- configs


def test_shipped_configs_hold_the_paper_schedules() -> None:
    expected = {
        "siim_1": (5e-6, 1000, 100),
        "siim_10": (2e-5, 5000, 100),
        "siim_100": (1.5e-5, 160_000, 1500),
        "covid_1": (2e-5, 1000, 100),
        "covid_10": (8e-6, 650, 100),
        "covid_100": (1e-5, 6700, 100),
    }
    for name, (lr, steps, warmup) in expected.items():
        config = load_config(SegmentConfig, CONFIGS / f"{name}.yaml")
        optim = config.optim
        assert (optim.lr, optim.steps, optim.warmup_steps) == (lr, steps, warmup), name
        assert (optim.name, optim.weight_decay, optim.layer_decay, optim.schedule) == ("adamw", 0.05, 0.65, "poly")
        assert optim.betas == (0.9, 0.999) and optim.batch_size == 8 and optim.clip_grad is None
        assert config.input.image_size == 512 and config.head.channels == 768 and config.model.preset == "base"
        assert config.head.pool_scales == (1, 2, 3, 6) and config.head.aux_channels == 256
        assert (config.loss.focal, config.loss.dice, config.loss.aux_focal, config.loss.aux_dice) == (2, 1, 0.8, 0.4)
        assert config.input.missing_mask == "skip" and not config.model.freeze_backbone
        assert config.data.kind == name.split("_")[0].replace("covid", "covid-rural")
    assert load_config(SegmentConfig, CONFIGS / "siim_10.yaml").data.train_split == "train_10"
    assert load_config(SegmentConfig, CONFIGS / "covid_10.yaml").data.fraction == 10.0


def test_config_sections_keep_task_defaults_and_name_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-4\nhead:\n  channels: 64\n")
    config = load_config(SegmentConfig, path)
    assert config.optim.lr == 1e-4 and config.optim.name == "adamw" and config.optim.layer_decay == 0.65
    assert config.head.channels == 64 and config.head.aux_channels is None  # None: a third of the width
    path.write_text("head:\n  chanels: 64\n")
    with pytest.raises(ConfigError, match=r"head\.chanels"):
        load_config(SegmentConfig, path)
    with pytest.raises(ConfigError, match=r"optim\.batch_size"):
        load_config(SegmentConfig, None, ["optim.batch_size=1"])
    with pytest.raises(ConfigError, match=r"input\.image_size"):
        load_config(SegmentConfig, None, ["input.image_size=100"])
    with pytest.raises(ConfigError, match=r"model\.freeze_backbone"):
        load_config(SegmentConfig, None, ["model.freeze_backbone=maybe"])


def test_head_widths_follow_the_backbone(phantoms: Path) -> None:
    _, tiny, summary = _built(phantoms, "model.preset=tiny", "input.image_size=64")
    width = summary["backbone_width"]
    assert width == 128 and tiny.net.decode_head.classifier.in_channels == width
    assert tiny.net.aux_head.classifier.in_channels == width // 3
    # the shipped recipes on ViT-B keep the paper's 768 / 256, set or left to the default
    for extra in ([], ["head.channels=null", "head.aux_channels=null"]):
        config = load_config(SegmentConfig, CONFIGS / "siim_100.yaml", ["input.image_size=64", *extra])
        splits = SimpleNamespace(notes={"target_labels": ["pneumothorax"]})  # what splits() notes, without a SIIM tree
        net = SegmentTask(config).build_model(splits)[0].net
        assert net.backbone.embed_dim == 768 and net.decode_head.classifier.in_channels == 768
        assert net.aux_head.classifier.in_channels == 256
    _, no_aux, _ = _built(phantoms, "model.preset=tiny", "input.image_size=64", "head.aux_channels=0")
    assert no_aux.net.aux_head is None


def test_layerwise_lr_scales_follow_065_per_block(phantoms: Path) -> None:
    task, model, summary = _built(phantoms, "model.preset=tiny", "input.image_size=64", "head.channels=8")
    depth = len(model.net.backbone.blocks)
    assert summary["feature_blocks_0_based"] == [0, 1, 2, 3] and depth == 4 and task.num_layers(model) == 4
    optimizer = build_optimizer(task.config.optim, task, model, torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.AdamW)
    set_learning_rate(optimizer, 0.5)
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    lr = task.config.optim.lr

    def group(name: str) -> dict:
        return by_param[id(named[name])]

    assert group("net.backbone.patch_embed.proj.weight")["lr_scale"] == pytest.approx(0.65**5)
    assert group("net.backbone.blocks.0.attn.qkv.weight")["lr_scale"] == pytest.approx(0.65**4)
    assert group("net.backbone.blocks.3.mlp.fc1.weight")["lr_scale"] == pytest.approx(0.65)
    assert group("net.decode_head.classifier.weight")["lr_scale"] == 1.0
    assert group("net.rescale.up4.0.weight")["lr_scale"] == 1.0
    assert group("net.decode_head.classifier.weight")["lr"] == pytest.approx(lr * 0.5)
    assert group("net.backbone.blocks.0.attn.qkv.weight")["lr"] == pytest.approx(lr * 0.5 * 0.65**4)
    assert group("net.backbone.blocks.0.attn.qkv.weight")["weight_decay"] == 0.05
    for name in (
        "net.backbone.cls_token",
        "net.backbone.blocks.0.norm1.weight",
        "net.decode_head.classifier.bias",
        "net.decode_head.fpn_bottleneck.1.weight",
    ):
        assert group(name)["weight_decay"] == 0.0, name
    assert id(named["net.backbone.pos_embed"]) not in by_param


def test_position_table_is_resampled_once_for_the_input_size(phantoms: Path, tiny_model_dir: Path) -> None:
    _, model, summary = _built(phantoms, f"model.source={tiny_model_dir}", "input.image_size=96", "head.channels=8")
    assert model.net.backbone.pos_embed.shape == (1, 1 + 6 * 6, 32)
    assert summary["loaded"] == len(load(tiny_model_dir).visual.state_dict()) and summary["missing"] == []
    assert summary["backbone_width"] == 32 and model.net.aux_head.classifier.in_channels == 10


# --------------------------------------------------------------------------------- the target


def test_several_mask_labels_need_a_choice(phantoms: Path) -> None:
    config = load_config(SegmentConfig, None, [f"data.root={phantoms}", "input.missing_mask=empty"])
    with pytest.raises(ConfigError, match=r"data\.options\.mask_labels.*pneumothorax") as err:
        SegmentTask(config).splits()
    assert "pleural effusion" in str(err.value)
    task = SegmentTask(
        load_config(SegmentConfig, None, [f"data.root={phantoms}", "input.missing_mask=skip", PHANTOM_MASKS])
    )
    splits = task.splits()
    assert splits.notes["target_labels"] == ["pneumothorax", "pleural effusion"]
    # phantoms without either mask are left out and counted
    assert splits.notes["skipped_without_mask"] == {"train": 10, "val": 5, "test": 8}
    assert splits.counts() == {"train": 5, "val": 1, "test": 3}
    for role in ("train", "val", "test"):
        assert all(r.mask_paths for r in getattr(splits, role).records)
    # no validation phantom has a pneumothorax: an empty role is an error naming what to change
    lone = load_config(SegmentConfig, None, [f"data.root={phantoms}", "data.options={mask_labels: [pneumothorax]}"])
    with pytest.raises(DataError, match=r"val split has no image with a mask annotation.*data\.options\.mask_labels"):
        SegmentTask(lone).splits()


def test_the_mask_labels_error_suggests_only_labels_the_dataset_has(phantoms: Path) -> None:
    config = load_config(SegmentConfig, None, [f"data.root={phantoms}", "input.missing_mask=empty"])
    with pytest.raises(ConfigError) as err:
        SegmentTask(config).splits()
    message = str(err.value)
    carried = re.findall(r"([a-z][a-z ]*) \(\d+ images\)", message.split(". Name")[0].split(": ", 1)[1])
    assert "pneumothorax" in carried and "pleural effusion" in carried and "lungs" not in message
    suggested = re.findall(r"data\.options\.mask_labels=\[([^\]]*)\]", message)
    assert suggested == [carried[0], f"{carried[0]}, {carried[1]}"]  # the most frequent labels
    # the suggestion, as written, is accepted
    chosen = load_config(
        SegmentConfig,
        None,
        [f"data.root={phantoms}", "input.missing_mask=empty", f"data.options.mask_labels=[{suggested[1]}]"],
    )
    assert SegmentTask(chosen).splits().notes["target_labels"] == [s.strip() for s in suggested[1].split(",")]
    # a label no mask carries is refused, also where images without a mask count as empty
    absent = load_config(
        SegmentConfig, None, [f"data.root={phantoms}", "input.missing_mask=empty", "data.options.mask_labels=[lungs]"]
    )
    with pytest.raises(DataError, match=r"no training image has a mask labelled lungs \(data\.options\.mask_labels"):
        SegmentTask(absent).splits()


def test_train_items_letterbox_ignore_padding_and_flip_by_draw(phantoms: Path) -> None:
    base = build_dataset("manifest", phantoms, mask_labels=["pneumothorax", "pleural effusion"])
    cfg = SegmentInput(image_size=32, flip_p=0.5, missing_mask="empty")
    # a 64 x 64 phantom fits exactly; crop one to 64 x 40 to force padding
    wide = _TrainItems(_Cropped(base), cfg, seed=3)
    item = wide[(0, 0)]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.uint8 and item["replaced"] == []
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
    strict = _TrainItems(_Cropped(base, drop_mask=True), SegmentInput(image_size=32, missing_mask="skip"), seed=3)
    with pytest.raises(DataError, match="missing_mask=empty"):
        strict[(0, 0)]


class _Cropped(torch.utils.data.Dataset):
    """The first phantom cut to 40 rows, with its mask, through the dataset contract."""

    def __init__(self, base: torch.utils.data.Dataset, drop_mask: bool = False) -> None:
        self.base, self.drop_mask = base, drop_mask

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> dict:
        sample = dict(self.base[index])
        sample["image"] = sample["image"][:, 12:52]
        if "mask" in sample:
            sample["mask"] = sample["mask"][12:52]
        if self.drop_mask:
            sample.pop("mask", None)
        return sample


# ------------------------------------------------------------------------------- geometry


def test_predictions_are_mapped_back_to_the_original_geometry() -> None:
    image = np.full((90, 150), 20, dtype=np.uint8)
    image[30:60, 40:100] = 230  # a bright rectangle: the fake model segments it
    mask = _fake_segmenter(64).predict(image)
    assert mask.shape == (1, 90, 150) and mask.dtype == np.uint8
    truth = (image > 100).astype(np.uint8)
    dice = 2 * (mask[0] & truth).sum() / (mask[0].sum() + truth.sum())
    assert dice > 0.9
    many = _fake_segmenter(64).predict([image, image[:, :100]])
    assert [m.shape for m in many] == [(1, 90, 150), (1, 90, 100)]


def test_evaluation_scores_in_original_geometry_with_named_figures(cxr_real_dir: Path) -> None:
    dataset = build_dataset("manifest", cxr_real_dir, split="val", mask_labels=["lungs"])
    dataset.records = [r for r in dataset.records if r.mask_paths][:2]
    task = SegmentTask(load_config(SegmentConfig, None, ["input.image_size=64"]))
    model = _fake_segmenter(64)
    items = task.eval_items(dataset, model, CPU_RUN, "test")
    items.keep_examples = 1
    with torch.inference_mode():
        records = task.predict(model, [items[0], items[1]], CPU_RUN)
    report = task.evaluate(records)
    assert set(METRIC_NAMES) <= set(report) and report["n_images"] == 2
    assert ["example" in r for r in records] == [True, False]
    first = dataset[0]
    assert records[0]["example"]["pred"].shape == first["mask"].shape == first["image"].shape[1:]
    assert records[0]["true_fg"] == int(first["mask"].sum()) > 0
    assert 0.0 <= report["dice_per_image_mean"] <= 1.0
    assert report["dice_per_image_mean"] == pytest.approx(np.mean([r["dice"] for r in records]))


# ------------------------------------------------------------------------------------- runs


def test_segment_trains_on_cxr_real_lungs(
    cxr_real_dir: Path, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="maco_cxr"):
        metrics = _run(
            "data.kind=manifest",
            f"data.root={cxr_real_dir}",
            "data.test_name=val",
            "data.options={mask_labels: [lungs]}",
            f"model.source={tiny_model_dir}",
            "optim.steps=3",
            "evaluation.every=2",
            f"runtime.out={tmp_path / 'run'}",
        )
    assert "validation every 2 steps and at the end (step 3), 2 in all" in caplog.text
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"] == metrics["test"]
    assert metrics["data"]["counts"] == {"train": 18, "val": 6, "test": 6}
    assert metrics["data"]["skipped_without_mask"] == {"train": 1, "val": 1, "test": 1}
    assert metrics["data"]["target_labels"] == ["lungs"] and metrics["target_labels"] == ["lungs"]
    assert metrics["model"]["loaded"] == len(load(tiny_model_dir).visual.state_dict())
    assert metrics["model"]["missing"] == [] and metrics["model"]["backbone_width"] == 32
    assert set(METRIC_NAMES) <= set(metrics["test"]) and metrics["test"]["n_images"] == 6
    assert metrics["best_step"] in (2, 3) and set(metrics["val_best"]) >= set(METRIC_NAMES)
    with (tmp_path / "run" / "per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and all(int(r["truth_pixels"]) > 0 for r in rows)
    assert len(list((tmp_path / "run" / "overlays").glob("*.png"))) == 2 == len(metrics["overlays"])
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    steps = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if "loss" in r] == [1, 2, 3]
    assert {"loss", "lr"} <= set(steps[0])


def test_cli_segment_on_phantoms(
    phantoms: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    code = main(
        [
            "segment",
            "--model",
            str(tiny_model_dir),
            "--dataset",
            "manifest",
            "--root",
            str(phantoms),
            "--out",
            str(out),
            *SMALL,
            "optim.steps=2",
            "evaluation.every=0",
            "input.missing_mask=empty",
            PHANTOM_MASKS,
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in METRIC_NAMES) and "pneumothorax, pleural effusion" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert not any(metrics["data"]["skipped_without_mask"].values())  # empty masks count, nothing left out
    assert metrics["test"]["n_images"] == metrics["data"]["counts"]["test"] > 0
    assert (out / "curves.png").is_file() and (out / "best" / "config.json").is_file()
    assert (out / "final" / "model.safetensors").is_file()
    assert main(["segment", "--model", "none", "--root", str(phantoms), "--out", str(out), "head.chanels=8"]) == 2
    assert "head.chanels" in capsys.readouterr().err


def test_a_frozen_backbone_stays_as_loaded_while_the_head_trains(
    phantoms: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    overrides = [
        "data.kind=manifest",
        f"data.root={phantoms}",
        f"model.source={tiny_model_dir}",
        "model.freeze_backbone=true",
        "optim.steps=2",
        "evaluation.every=0",
        "input.missing_mask=empty",
        PHANTOM_MASKS,
        "optim.lr=0.05",
        f"runtime.out={tmp_path / 'run'}",
    ]
    metrics = _run(*overrides)
    assert metrics["model"]["frozen_backbone"] is True
    loaded = load_backbone(tiny_model_dir, img_size=64)[0].state_dict()
    trained = load_finetuned(tmp_path / "run" / "final").net.state_dict()
    initial = _initial_model(*overrides).net.state_dict()
    for name, value in trained.items():
        if name.startswith("backbone."):
            assert torch.equal(value, loaded[name[len("backbone.") :]]), name
    changed = [name for name, value in trained.items() if not torch.equal(value, initial[name])]
    assert changed and not any(name.startswith("backbone.") for name in changed)
    assert "decode_head.classifier.weight" in changed


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
    metrics = _run(
        "data.kind=siim",
        f"data.root={root}",
        f"model.source={tiny_model_dir}",
        "optim.steps=2",
        "evaluation.every=0",
        f"runtime.out={tmp_path / 'run'}",
        *(f"data.{role}_split={tmp_path / role}.txt" for role in ("train", "val", "test")),
    )
    with (tmp_path / "run" / "per_image.csv").open() as handle:
        rows_out = list(csv.DictReader(handle))
    assert [r["truth_pixels"] for r in rows_out] == [str(200 * 100), "0"]  # test: an RLE mask, then " -1"
    assert metrics["data"]["counts"] == {"train": 3, "val": 1, "test": 2}
    assert metrics["data"]["skipped_without_mask"] == {"train": 0, "val": 0, "test": 0}
    assert metrics["test"]["n_empty_targets"] == 1 and metrics["target_labels"] == ["foreground"]


def test_segment_reads_covid_rural_folders(phantoms: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    # the COVID rural layout: images/<stem>.png with masks/<stem>.png, split files of image paths
    root = tmp_path / "covid"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(6):
        image = np.asarray(Image.open(phantoms / "images" / f"phantom_{i:06d}.png"))
        mask = np.zeros((48, 64), dtype=np.uint8)
        mask[10 + i : 30, 20:40] = 255
        Image.fromarray(image[8:56]).save(root / "images" / f"case{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"case{i}.png")
    for role, cases in (("train", [0, 1, 2]), ("val", [3]), ("test", [4, 5])):
        (tmp_path / f"{role}.txt").write_text("".join(f"images/case{i}.png\n" for i in cases))
    metrics = _run(
        "data.kind=covid-rural",
        f"data.root={root}",
        f"model.source={tiny_model_dir}",
        "optim.steps=2",
        "evaluation.every=0",
        f"runtime.out={tmp_path / 'run'}",
        *(f"data.{role}_split={tmp_path / role}.txt" for role in ("train", "val", "test")),
    )
    assert metrics["data"]["counts"] == {"train": 3, "val": 1, "test": 2}
    with (tmp_path / "run" / "per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["image"]).name for r in rows] == ["case4.png", "case5.png"]
    assert [r["truth_pixels"] for r in rows] == [str(16 * 20), str(15 * 20)]  # original 48 x 64 geometry
    masks = load_finetuned(tmp_path / "run" / "best").predict([root / "images" / "case4.png"])
    assert masks[0].shape == (1, 48, 64)
