"""Detection fine-tuning: configs, head widths, lr scales, weights arriving, jitter, box selection,
geometry, the RSNA detection test set held out, runs."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from maco_cxr.cli import main
from maco_cxr.config import load_config, recipe_folder
from maco_cxr.data.datasets import build_dataset
from maco_cxr.data.datasets.base import ChestXrayDataset, Record
from maco_cxr.data.synthetic import write_synthetic_dataset
from maco_cxr.errors import DataError
from maco_cxr.hub import create_model, load, save_pretrained
from maco_cxr.models.config import IMAGE_MEAN, IMAGE_STD, DecoderConfig, MacoConfig, TextConfig, VisionConfig
from maco_cxr.models.vitdet import ViTDetConfig
from maco_cxr.runtime.rng import isolated_rng
from maco_cxr.runtime.schedules import set_learning_rate
from maco_cxr.tasks.finetune import DetectConfig, load_finetuned, train_detector
from maco_cxr.tasks.finetune import detection as detect_module
from maco_cxr.tasks.finetune.backbone import load_backbone
from maco_cxr.tasks.finetune.detection import DetectTask, FinetunedDetector, _selected, large_scale_jitter
from maco_cxr.tasks.finetune.engine import build_optimizer
from maco_cxr.tasks.finetune.splits import FinetuneSplits

CONFIGS = recipe_folder() / "detect"
SMALL = [
    "input.image_size=64",
    "detector.out_channels=16",
    "detector.box_head_convs=1",
    "detector.box_head_fc=32",
    "detector.rpn_pre_nms_top_n_train=200",
    "detector.rpn_post_nms_top_n_train=50",
    "detector.rpn_pre_nms_top_n_test=200",
    "detector.rpn_post_nms_top_n_test=50",
    "detector.box_batch_size_per_image=32",
    "optim.batch_size=2",
    "optim.warmup_steps=1",
    "data.workers=0",
    "evaluation.overlays=2",
    "runtime.device=cpu",
    "runtime.log_every=1",
]
MANIFEST = ["data.kind=manifest"]
# RSNA patient ids from the official lists: two positives and a negative of the train list, a
# positive of the val list, and three images of the paper's detection test set (two listed in
# the official train list, one in the official val list)
RSNA_TRAIN = ("0022073f-cec8-42ec-ab5f-bc2314649235", "002cb550-2e31-42f1-a29d-fbc279977e71")
RSNA_TRAIN_NEGATIVE = "0004cfab-14fd-4e49-80ba-63a80b6bddd6"
RSNA_VAL = "f31a958a-66bf-4ccc-9fd7-79bbb9d17e7a"
RSNA_TEST_IN_TRAIN = ("359355a8-5981-406a-a8c3-3dcfdde9169e", "a7caec7a-dd5a-48af-ab0e-817aa2617b9f")
RSNA_TEST_IN_VAL = "f92793eb-6396-4597-ad39-2cc6e8eff84b"


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


@pytest.fixture(scope="module")
def rsna_root(cxr_real_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An RSNA tree: the real 1024 px DICOM under the ids above, two boxes per positive."""
    dicom = next((cxr_real_dir / "dicom").glob("1.2.276*.dcm"))
    root = tmp_path_factory.mktemp("rsna")
    (root / "stage_2_train_images").mkdir()
    lines = ["patientId,x,y,width,height,Target"]
    for patient in (*RSNA_TRAIN, RSNA_TRAIN_NEGATIVE, RSNA_VAL, *RSNA_TEST_IN_TRAIN, RSNA_TEST_IN_VAL):
        shutil.copy(dicom, root / "stage_2_train_images" / f"{patient}.dcm")
        if patient == RSNA_TRAIN_NEGATIVE:
            lines.append(f"{patient},,,,,0")
        else:
            lines += [f"{patient},200,300,250,400,1", f"{patient},600,320,200,380,1"]
    (root / "stage_2_train_labels.csv").write_text("\n".join(lines) + "\n")
    return root


def _config(*overrides: str) -> DetectConfig:
    return load_config(DetectConfig, None, [*SMALL, *overrides])


def _run(*overrides: str) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return dict(train_detector(_config(*overrides)).summary)
    finally:
        torch.set_num_threads(threads)


def _engine_optimizer(task: DetectTask, model: FinetunedDetector) -> torch.optim.Optimizer:
    """The optimiser the fine-tuning loop builds (``build_optimizer``), lrs at multiplier 1."""
    optimizer = build_optimizer(task.config.optim, task, model, torch.device("cpu"))
    set_learning_rate(optimizer, 1.0)
    return optimizer


# ---------------------------------------------------------------------------------- configs


def test_shipped_configs_hold_the_paper_recipe() -> None:
    for fraction, lr, split in ((1, 5e-4, "train_1"), (10, 5e-4, "train_10"), (100, 3e-4, "train")):
        config = load_config(DetectConfig, CONFIGS / f"rsna_{fraction}.yaml")
        optim = config.optim
        assert (optim.name, optim.lr, optim.weight_decay, optim.layer_decay) == ("adamw", lr, 0.05, 0.7)
        assert (optim.batch_size, optim.steps, optim.warmup_steps, optim.schedule) == (32, 5600, 250, "cosine")
        assert (optim.warmup_start, optim.final, optim.clip_grad) == (0.01, 0.01, None)
        assert config.input.image_size == 1024 and config.input.scale_range == (0.8, 1.2)
        assert config.detector.num_classes == 2 and config.input.positives_only
        assert (config.detector.out_channels, config.detector.box_head_fc) == (256, 1024)
        assert config.detector.anchor_sizes == (32, 64, 128, 256, 512)
        assert config.data.train_split == split and config.data.val_split == "val"
        assert (config.evaluation.select, config.evaluation.every) == ("last", 0)
        assert (config.data.kind, config.data.test_split, config.data.options) == (
            "rsna",
            "detection_test",
            {"split": "train"},
        )
        assert config.model.grad_checkpointing and config.model.preset == "base"
    # the defaults are the same recipe: RSNA (the task reads stage_2_train and tests on the paper's
    # detection test set when the config names no other; see the hold-out tests below)
    default = DetectConfig()
    assert (default.data.kind, default.data.test_split, default.data.options) == ("rsna", None, {})


def test_head_widths_follow_the_backbone(tiny_model_dir: Path) -> None:
    _, summary = DetectTask(load_config(DetectConfig, None, ["model.preset=tiny", "input.image_size=64"])).build_model(
        None
    )
    assert summary["pyramid_channels"] == 48  # 128 / 3 rounded to 16
    model, summary = DetectTask(
        _config(f"model.source={tiny_model_dir}", "detector.out_channels=null", "detector.box_head_fc=null")
    ).build_model(None)
    assert summary["pyramid_channels"] == 16 and model.net.roi_heads.box_predictor.cls_score.in_features == 64
    # the shipped recipe on ViT-B keeps the paper's 256 / 1024, set or left to the default
    for extra in ([], ["detector.out_channels=null", "detector.box_head_fc=null"]):
        config = load_config(DetectConfig, CONFIGS / "rsna_100.yaml", ["input.image_size=64", *extra])
        model, summary = DetectTask(config).build_model(None)
        assert model.net.backbone.vit.embed_dim == 768 and summary["pyramid_channels"] == 256
        assert model.net.roi_heads.box_predictor.cls_score.in_features == 1024


def test_layerwise_lr_decay_07_and_no_decay_on_norms(tiny_model_dir: Path) -> None:
    task = DetectTask(_config(f"model.source={tiny_model_dir}"))
    model, _ = task.build_model(None)
    assert task.num_layers(model) == 2
    optimizer = _engine_optimizer(task, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())

    def group(name: str) -> dict:
        return by_param[id(named[name])]

    # multiplier 0.7^(depth + 1 - layer id): embeddings 0, block i -> i + 1, heads depth + 1
    assert group("net.backbone.vit.patch_embed.proj.weight")["lr"] == pytest.approx(5e-4 * 0.7**3)
    assert group("net.backbone.vit.blocks.0.attn.qkv.weight")["lr"] == pytest.approx(5e-4 * 0.7**2)
    assert group("net.backbone.vit.blocks.1.attn.qkv.weight")["lr"] == pytest.approx(5e-4 * 0.7)
    assert group("net.backbone.pyramid.stages.0.0.weight")["lr"] == pytest.approx(5e-4)
    assert group("net.roi_heads.box_predictor.cls_score.weight")["lr"] == pytest.approx(5e-4)
    assert group("net.backbone.vit.blocks.0.attn.qkv.weight")["weight_decay"] == 0.05
    assert group("net.rpn.head.cls_logits.weight")["weight_decay"] == 0.05
    for name in (
        "net.backbone.vit.cls_token",
        "net.backbone.vit.blocks.0.norm1.weight",
        "net.backbone.pyramid.stages.0.1.weight",
        "net.rpn.head.cls_logits.bias",
    ):
        assert group(name)["weight_decay"] == 0.0, name
    assert not named["net.backbone.vit.pos_embed"].requires_grad
    assert id(named["net.backbone.vit.pos_embed"]) not in by_param


def test_maco_weights_arrive_in_the_detector_backbone(tiny_model_dir: Path) -> None:
    model, summary = DetectTask(_config(f"model.source={tiny_model_dir}")).build_model(None)
    maco = load(tiny_model_dir)
    vit = model.net.backbone.vit
    assert summary["loaded"] == len(maco.visual.state_dict()) and summary["missing"] == []
    for name, value in vit.state_dict().items():
        if name != "pos_embed":
            assert torch.equal(value, maco.visual.state_dict()[name]), name
    assert vit.pos_embed.shape == (1, 1 + 4 * 4, 32)  # 64 px / 16: resampled from 14 x 14
    _, summary = DetectTask(_config("model.preset=tiny")).build_model(None)
    assert "loaded" not in summary and summary["source"] == "random init (tiny)"
    assert summary["anchor_sizes"] == [2.0, 4.0, 8.0, 16.0, 32.0]  # the paper's at 1024 px, scaled to 64


# ------------------------------------------------------------------------------- data


def test_large_scale_jitter_moves_boxes_with_the_pixels() -> None:
    image = np.full((80, 120), 10, dtype=np.uint8)
    image[20:50, 30:70] = 240
    boxes = np.array([[30.0, 20.0, 70.0, 50.0]])
    for seed in range(6):
        out, valid, moved = large_scale_jitter(image, boxes, 64, (0.6, 1.6), 0.5, np.random.default_rng(seed))
        assert out.shape == valid.shape == (64, 64)
        bright = np.argwhere(out > 128)
        if len(moved) == 0:  # cropped away entirely
            assert len(bright) == 0
            continue
        x0, y0, x1, y1 = moved[0]
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        assert bright[:, 1].min() == pytest.approx(x0, abs=1.0) and bright[:, 1].max() + 1 == pytest.approx(x1, abs=1.0)
        assert bright[:, 0].min() == pytest.approx(y0, abs=1.0) and bright[:, 0].max() + 1 == pytest.approx(y1, abs=1.0)
        assert valid[out > 128].all()  # bright pixels are content, never padding
    again = large_scale_jitter(image, boxes, 64, (0.6, 1.6), 0.5, np.random.default_rng(3))
    first = large_scale_jitter(image, boxes, 64, (0.6, 1.6), 0.5, np.random.default_rng(3))
    assert all(np.array_equal(a, b) for a, b in zip(again, first))  # a function of the generator


def test_jitter_at_scale_one_without_flip_is_the_letterbox() -> None:
    image = np.arange(64 * 32, dtype=np.int64).reshape(64, 32).astype(np.uint8)
    out, valid, moved = large_scale_jitter(
        image, np.array([[4.0, 8.0, 12.0, 20.0]]), 64, (1.0, 1.0), 0.0, np.random.default_rng(0)
    )
    left = int(np.argmax(valid[0]))
    assert valid.sum() == 64 * 32 and np.array_equal(out[:, left : left + 32], image)
    np.testing.assert_allclose(moved, [[4.0 + left, 8.0, 12.0 + left, 20.0]])
    flipped, _, flipped_boxes = large_scale_jitter(
        image, np.array([[4.0, 8.0, 12.0, 20.0]]), 64, (1.0, 1.0), 1.0, np.random.default_rng(0)
    )
    assert np.array_equal(flipped, out[:, ::-1])
    np.testing.assert_allclose(flipped_boxes, [[64 - 12.0 - left, 8.0, 64 - 4.0 - left, 20.0]])


def _splits_of(monkeypatch: pytest.MonkeyPatch, records: list[Record], *overrides: str) -> FinetuneSplits:
    """DetectTask.splits() over one in-memory dataset serving every role."""
    dataset = ChestXrayDataset(records)
    monkeypatch.setattr(
        detect_module,
        "build_splits",
        lambda data: FinetuneSplits(
            dataset, dataset, dataset, (), {"train": "memory", "val": "memory", "test": "memory"}
        ),
    )
    return DetectTask(load_config(DetectConfig, None, [*MANIFEST, "data.root=unused", *overrides])).splits()


def test_box_selection_by_label_or_category_and_positives_only(monkeypatch: pytest.MonkeyPatch) -> None:
    records = [
        Record(
            image_path=Path("a.png"),
            boxes=np.array([[0, 0, 5, 5], [1, 1, 9, 9]], dtype=np.float32),
            box_labels=["small right nodule", "left lower lobe consolidation"],
            meta={"box_meta": [{"category": "nodule"}, {"category": "consolidation"}]},
        ),
        Record(image_path=Path("b.png"), boxes=np.zeros((0, 4), dtype=np.float32)),
        Record(image_path=Path("c.png")),
        Record(image_path=Path("d.png"), boxes=np.array([[2, 2, 4, 4]], dtype=np.float32), box_labels=["left lung"]),
    ]
    assert len(_selected(records[0], ("nodule",))) == 1
    assert len(_selected(records[0], ("left lower lobe consolidation", "nodule"))) == 2
    assert _selected(records[2], None) is None and len(_selected(records[0], None)) == 2
    splits = _splits_of(monkeypatch, records, "input.box_labels=[left lung, nodule]")
    assert [r.image_path.name for r in splits.test.records] == ["a.png", "d.png"]
    assert splits.notes["left_out"]["train"] == {"without_box_annotation": 1, "without_selected_box": 1}
    assert "rsna_detection_test_held_out" not in splits.notes
    splits = _splits_of(monkeypatch, records, "input.positives_only=false")
    assert len(splits.train.records) == 3
    assert splits.notes["left_out"]["val"] == {"without_box_annotation": 1, "without_selected_box": 0}
    with pytest.raises(DataError, match=r"no image with boxes.*input\.box_labels"):
        _splits_of(monkeypatch, records, "input.box_labels=[edema]")


class _BrightBox(nn.Module):
    """A fake detector: one box around the bright pixels of each (letterboxed) input."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))  # gives the wrapping model a device

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in images:
            ys, xs = torch.nonzero(image[0] > 0.8, as_tuple=True)
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()[None]
            out.append({"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])})
        return out


def test_predicted_boxes_are_mapped_back_to_original_pixels() -> None:
    image = np.full((100, 160), 30, dtype=np.uint8)
    image[20:60, 40:120] = 250
    model = FinetunedDetector(
        _BrightBox(), ("finding",), {"image_size": 64, "mean": IMAGE_MEAN, "std": IMAGE_STD}, ViTDetConfig()
    ).eval()
    pred = model.predict(image)
    np.testing.assert_allclose(pred["boxes"], [[40.0, 20.0, 120.0, 60.0]], atol=2.5)
    assert pred["scores"].tolist() == [pytest.approx(0.9)] and pred["labels"].tolist() == [1]
    prepared = FinetunedDetector.prepare(image, model.preprocessing)["x"]
    assert prepared.shape == (1, 64, 64) and int(prepared[0, 0, 0]) == round(IMAGE_MEAN * 255)  # padding: mean grey


# ------------------------------------------------------------------------------------- runs


def test_detect_trains_on_cxr_real_lung_boxes(cxr_real_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    metrics = _run(
        *MANIFEST,
        f"data.root={cxr_real_dir}",
        "data.test_name=val",
        "input.box_labels=[left lung, right lung]",
        f"model.source={tiny_model_dir}",
        "optim.steps=3",
        "evaluation.every=2",
        f"runtime.out={tmp_path / 'run'}",
    )
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"] == metrics["test"]
    assert metrics["data"]["counts"] == {"train": 18, "val": 6, "test": 6}
    assert metrics["data"]["left_out"]["train"] == {"without_box_annotation": 1, "without_selected_box": 0}
    assert metrics["model"]["loaded"] == len(load(tiny_model_dir).visual.state_dict())
    assert metrics["best_step"] in (2, 3) and metrics["selection"] == "best validation AP"
    test_records = {str(r.image_path): r for r in build_dataset("manifest", cxr_real_dir, split="val").records}
    lung_boxes = sum(label in ("left lung", "right lung") for r in test_records.values() for label in r.box_labels)
    assert set(metrics["test"]) >= {"AP", "AP50", "AP75"} and metrics["test"]["n_boxes"] == lung_boxes > 0
    with (tmp_path / "run" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["image"] for r in rows} <= set(test_records)
    for row in rows:  # boxes are in original pixels, inside the image
        record = test_records[row["image"]]
        assert 0.0 <= float(row["x_min"]) <= float(row["x_max"]) <= float(record.meta["width"])
        assert 0.0 <= float(row["y_min"]) <= float(row["y_max"]) <= float(record.meta["height"])
    assert len(list((tmp_path / "run" / "overlays").glob("*.png"))) == 2 == len(metrics["overlays"])
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_cli_detect_on_phantoms(
    phantoms: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    code = main(
        [
            "detect",
            "--model",
            str(tiny_model_dir),
            "--dataset",
            "manifest",
            "--root",
            str(phantoms),
            "--out",
            str(out),
            *SMALL,
            *MANIFEST[1:],
            "optim.steps=2",
            "evaluation.every=0",
            "input.box_labels=[consolidation, nodule]",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "AP50" in printed and "AP75" in printed and "load_finetuned" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n_images"] == metrics["data"]["counts"]["test"] > 0
    assert (out / "predictions.csv").is_file() and (out / "curves.png").is_file()
    assert (out / "best" / "config.json").is_file() and (out / "final" / "model.safetensors").is_file()
    code = main(["detect", "--model", "none", "--root", str(phantoms), "--out", str(out), "detector.outchannels=8"])
    assert code == 2
    assert "detector.outchannels" in capsys.readouterr().err


def test_a_frozen_backbone_stays_as_loaded_while_the_heads_train(
    phantoms: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    overrides = [
        *MANIFEST,
        f"data.root={phantoms}",
        f"model.source={tiny_model_dir}",
        "model.freeze_backbone=true",
        "optim.steps=2",
        "evaluation.every=0",
        "optim.lr=0.01",
        f"runtime.out={tmp_path / 'run'}",
    ]
    metrics = _run(*overrides)
    assert metrics["model"]["frozen_backbone"] is True
    loaded = load_backbone(tiny_model_dir, img_size=64)[0].state_dict()
    trained = load_finetuned(tmp_path / "run" / "final").net.state_dict()
    config = _config(*overrides)
    with isolated_rng(config.runtime.seed, torch.device("cpu")):  # the model the run started from
        initial = DetectTask(config).build_model(None)[0].net.state_dict()
    for name, value in trained.items():
        if name.startswith("backbone.vit."):
            assert torch.equal(value, loaded[name[len("backbone.vit.") :]]), name
    changed = [name for name, value in trained.items() if not torch.equal(value, initial[name])]
    assert not any(name.startswith("backbone.vit.") for name in changed)
    assert any(name.startswith("backbone.pyramid.") for name in changed)
    assert any(name.startswith("roi_heads.") for name in changed)


def test_rsna_detection_test_set_is_held_out_and_positives_only(
    rsna_root: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # the default RSNA data: official train / val lists, the paper's detection test set as the test;
    # on_error=skip because this tree holds 8 of their images
    metrics = _run(
        f"data.root={rsna_root}",
        "data.on_error=skip",
        f"model.source={tiny_model_dir}",
        "optim.steps=2",
        "evaluation.every=0",
        f"runtime.out={tmp_path / 'run'}",
    )
    data = metrics["data"]
    assert data["sources"]["test"].startswith("official RSNA detection test set")
    assert data["rsna_detection_test_held_out"] == {"train": 2, "val": 1}
    assert data["counts"] == {"train": 2, "val": 1, "test": 3}  # the Target 0 image is left out too
    assert data["left_out"]["train"] == {"without_box_annotation": 0, "without_selected_box": 1}
    assert data["left_out"]["test"] == {"without_box_annotation": 0, "without_selected_box": 0}
    assert metrics["test"]["n_boxes"] == 6 and metrics["test"]["n_images"] == 3
    with (tmp_path / "run" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {Path(r["image"]).stem for r in rows} <= {*RSNA_TEST_IN_TRAIN, RSNA_TEST_IN_VAL}
    for row in rows:  # original 1024 px coordinates
        assert 0.0 <= float(row["x_min"]) <= float(row["x_max"]) <= 1024.0


def test_rsna_split_files_listing_detection_test_images_lose_them(
    rsna_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for role, ids in (
        ("train", [*RSNA_TRAIN, RSNA_TRAIN_NEGATIVE, RSNA_TEST_IN_TRAIN[0]]),
        ("val", [RSNA_VAL, RSNA_TEST_IN_VAL]),
    ):
        (tmp_path / f"{role}.txt").write_text("".join(f"stage_2_train_images/{i}.dcm\n" for i in ids))
    config = _config(
        f"data.root={rsna_root}",
        "data.on_error=skip",
        f"data.train_split={tmp_path / 'train.txt'}",
        f"data.val_split={tmp_path / 'val.txt'}",
    )
    with caplog.at_level(logging.WARNING, logger="maco_cxr.tasks.finetune.detection"):
        splits = DetectTask(config).splits()
    assert splits.notes["rsna_detection_test_held_out"] == {"train": 1, "val": 1}
    assert splits.counts() == {"train": 2, "val": 1, "test": 3}
    assert {r.image_path.stem for r in splits.train.records} == set(RSNA_TRAIN)
    assert "data.train_split lists 1 images of the paper's RSNA detection test set" in caplog.text
    assert "data.val_split lists 1 images" in caplog.text
    # another test split: nothing is held out
    (tmp_path / "test.txt").write_text(f"stage_2_train_images/{RSNA_VAL}.dcm\n")
    other = DetectTask(
        _config(
            f"data.root={rsna_root}",
            f"data.train_split={tmp_path / 'train.txt'}",
            f"data.val_split={tmp_path / 'val.txt'}",
            f"data.test_split={tmp_path / 'test.txt'}",
        )
    )
    splits = other.splits()
    assert "rsna_detection_test_held_out" not in splits.notes and splits.counts()["train"] == 3
