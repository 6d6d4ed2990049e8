"""Detection fine-tuning: configs, large-scale jitter, box selection, weights arriving, geometry, runs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from maco_cxr.cli import main
from maco_cxr.models.config import DecoderConfig, MacoConfig, TextConfig, VisionConfig
from maco_cxr.data.datasets import build_dataset
from maco_cxr.data.datasets.base import ChestXrayDataset, Record
from maco_cxr.data.synthetic import write_synthetic_dataset
from maco_cxr.errors import DataError
from maco_cxr.hub import create_model, load, save_pretrained
from maco_cxr.models.maco import MacoModel
from maco_cxr.tasks.detect import (
    DetectConfig,
    DetectInputConfig,
    _selected,
    _usable,
    build_detector,
    detect,
    large_scale_jitter,
    predict_boxes,
)
from maco_cxr.tasks.finetune_common import build_optimizer, load_task_config
from maco_cxr.train.schedules import set_learning_rate

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "detect"
SMALL = ["input.image_size=64", "detector.out_channels=16", "detector.box_head_convs=1", "detector.box_head_fc=32",
         "detector.rpn_pre_nms_top_n_train=200", "detector.rpn_post_nms_top_n_train=50",
         "detector.rpn_pre_nms_top_n_test=200", "detector.rpn_post_nms_top_n_test=50",
         "detector.box_batch_size_per_image=32", "optim.batch_size=2", "optim.warmup_steps=1", "data.workers=0",
         "evaluation.overlays=2", "runtime.device=cpu", "runtime.log_every=1"]


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


def test_shipped_configs_hold_the_paper_recipe() -> None:
    for fraction, lr, split in ((1, 5e-4, "train_1"), (10, 5e-4, "train_10"), (100, 3e-4, "train")):
        config = load_task_config(DetectConfig, CONFIGS / f"rsna_{fraction}.yaml")
        optim = config.optim
        assert (optim.name, optim.lr, optim.weight_decay, optim.layer_decay) == ("adamw", lr, 0.05, 0.7)
        assert (optim.batch_size, optim.steps, optim.warmup_steps, optim.schedule) == (32, 5600, 250, "cosine")
        assert (optim.warmup_start, optim.final) == (0.01, 0.01)
        assert config.input.image_size == 1024 and config.input.scale_range == (0.8, 1.2)
        assert config.detector.num_classes == 2 and config.input.positives_only
        assert config.data.train_split == split and config.evaluation.select == "last"
        assert (config.data.test_split, config.data.options) == ("val", {"split": "train"})
        assert config.model.grad_checkpointing


def test_layerwise_lr_decay_07_and_no_decay_on_norms(tiny_model_dir: Path) -> None:
    config = load_task_config(DetectConfig, None, [f"model.source={tiny_model_dir}", *SMALL])
    model, _ = build_detector(config)
    optimizer = build_optimizer(model, config.optim, num_layers=2,
                                no_decay_names={f"backbone.{n}" for n in model.backbone.no_weight_decay()},
                                device=torch.device("cpu"))
    set_learning_rate(optimizer, 1.0)
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())

    def group(name: str) -> dict:
        return by_param[id(named[name])]

    # multiplier 0.7^(depth + 1 - layer id): embeddings 0, block i -> i + 1, heads depth + 1
    assert group("backbone.vit.patch_embed.proj.weight")["lr"] == pytest.approx(5e-4 * 0.7**3)
    assert group("backbone.vit.blocks.0.attn.qkv.weight")["lr"] == pytest.approx(5e-4 * 0.7**2)
    assert group("backbone.vit.blocks.1.attn.qkv.weight")["lr"] == pytest.approx(5e-4 * 0.7)
    assert group("backbone.pyramid.stages.0.0.weight")["lr"] == pytest.approx(5e-4)
    assert group("roi_heads.box_predictor.cls_score.weight")["lr"] == pytest.approx(5e-4)
    assert group("backbone.vit.blocks.0.attn.qkv.weight")["weight_decay"] == 0.05
    for name in ("backbone.vit.cls_token", "backbone.vit.blocks.0.norm1.weight", "backbone.pyramid.stages.0.1.weight",
                 "rpn.head.cls_logits.bias"):
        assert group(name)["weight_decay"] == 0.0, name
    assert not named["backbone.vit.pos_embed"].requires_grad


def test_maco_weights_arrive_in_the_detector_backbone(tiny_model_dir: Path) -> None:
    config = load_task_config(DetectConfig, None, [f"model.source={tiny_model_dir}", *SMALL])
    model, summary = build_detector(config)
    maco = load(tiny_model_dir)
    vit = model.backbone.vit
    assert summary["loaded"] == len(vit.state_dict()) and summary["missing"] == []
    for name, value in vit.state_dict().items():
        if name != "pos_embed":
            assert torch.equal(value, maco.visual.state_dict()[name]), name
    assert vit.pos_embed.shape == (1, 1 + 4 * 4, 32)  # 64 px / 16: resampled from 14 x 14
    random_init, summary = build_detector(load_task_config(DetectConfig, None, ["model.preset=tiny", *SMALL]))
    assert "loaded" not in summary and summary["source"] == "random init (tiny)"


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


def test_jitter_at_scale_one_without_flip_is_the_letterbox() -> None:
    image = np.arange(64 * 32, dtype=np.int64).reshape(64, 32).astype(np.uint8)
    out, valid, moved = large_scale_jitter(image, np.array([[4.0, 8.0, 12.0, 20.0]]), 64, (1.0, 1.0), 0.0,
                                           np.random.default_rng(0))
    left = int(np.argmax(valid[0]))
    assert valid.sum() == 64 * 32 and np.array_equal(out[:, left:left + 32], image)
    np.testing.assert_allclose(moved, [[4.0 + left, 8.0, 12.0 + left, 20.0]])


def test_box_selection_by_label_or_category_and_positives_only() -> None:
    records = [
        Record(image_path=Path("a.png"), boxes=np.array([[0, 0, 5, 5], [1, 1, 9, 9]], dtype=np.float32),
               box_labels=["small right nodule", "left lower lobe consolidation"],
               meta={"box_meta": [{"category": "nodule"}, {"category": "consolidation"}]}),
        Record(image_path=Path("b.png"), boxes=np.zeros((0, 4), dtype=np.float32)),
        Record(image_path=Path("c.png")),
        Record(image_path=Path("d.png"), boxes=np.array([[2, 2, 4, 4]], dtype=np.float32), box_labels=["left lung"]),
    ]
    assert len(_selected(records[0], ("nodule",))) == 1
    assert len(_selected(records[0], ("left lower lobe consolidation", "nodule"))) == 2
    assert _selected(records[2], None) is None
    dataset = ChestXrayDataset(records)
    kept, counts = _usable(dataset, DetectInputConfig(box_labels=("left lung", "nodule")), "train")
    assert [r.image_path.name for r in kept.records] == ["a.png", "d.png"]
    assert counts == {"without_box_annotation": 1, "without_selected_box": 1}
    kept, counts = _usable(dataset, DetectInputConfig(positives_only=False), "train")
    assert len(kept.records) == 3 and counts == {"without_box_annotation": 1, "without_selected_box": 0}
    with pytest.raises(DataError, match="no image with boxes"):
        _usable(dataset, DetectInputConfig(box_labels=("edema",)), "test")


class _BrightBox(nn.Module):
    """A fake detector: one box around the bright pixels of each (letterboxed) input."""

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
    (pred,) = predict_boxes(_BrightBox(), [image], DetectInputConfig(image_size=64))
    np.testing.assert_allclose(pred["boxes"], [[40.0, 20.0, 120.0, 60.0]], atol=2.5)
    assert pred["scores"].tolist() == [pytest.approx(0.9)]


@pytest.mark.slow
def test_detect_trains_on_cxr_real_lung_boxes(cxr_real_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    overrides = [*SMALL, "data.kind=manifest", f"data.root={cxr_real_dir}", "data.test_name=val",
                 "input.box_labels=[left lung, right lung]", f"model.source={tiny_model_dir}", "optim.steps=3",
                 "evaluation.every=2", f"runtime.out={tmp_path / 'run'}"]
    result = detect(load_task_config(DetectConfig, None, overrides))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["data"]["counts"] == {"train": 18, "val": 6, "test": 6}
    assert metrics["data"]["left_out"]["train"] == {"without_box_annotation": 1, "without_selected_box": 0}
    assert metrics["backbone"]["loaded"] == len(result.model.backbone.vit.state_dict())
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
    assert len(list((tmp_path / "run" / "overlays").glob("*.png"))) == 2
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


@pytest.mark.slow
def test_cli_detect_on_phantoms(phantoms: Path, tiny_model_dir: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    code = main(["detect", "--model", str(tiny_model_dir), "--dataset", "manifest", "--root", str(phantoms),
                 "--out", str(out), *SMALL, "optim.steps=2", "evaluation.every=0",
                 "input.box_labels=[consolidation, nodule]"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "AP50" in printed and "AP75" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n_images"] == metrics["data"]["counts"]["test"] > 0
    assert (out / "predictions.csv").is_file() and (out / "curves.png").is_file()


@pytest.mark.slow
def test_detect_reads_rsna_boxes_positives_only(cxr_real_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    # an RSNA tree: the real 1024 px DICOM under 7 patient ids, two with no box (Target 0)
    dicom = next((cxr_real_dir / "dicom").glob("1.2.276*.dcm"))
    root = tmp_path / "rsna"
    (root / "stage_2_train_images").mkdir(parents=True)
    lines = ["patientId,x,y,width,height,Target"]
    for i in range(7):
        shutil.copy(dicom, root / "stage_2_train_images" / f"p{i}.dcm")
        if i in (2, 6):
            lines.append(f"p{i},,,,,0")
        else:
            lines += [f"p{i},200,300,250,400,1", f"p{i},600,320,200,380,1"]
    (root / "stage_2_train_labels.csv").write_text("\n".join(lines) + "\n")
    for role, ids in (("train", [0, 1, 2]), ("val", [3]), ("test", [4, 5, 6])):
        (tmp_path / f"{role}.txt").write_text("".join(f"stage_2_train_images/p{i}.dcm {int(i not in (2, 6))}\n"
                                                      for i in ids))
    overrides = [*SMALL, "data.kind=rsna", f"data.root={root}", "data.options={split: train}",
                 f"model.source={tiny_model_dir}", "optim.steps=2",
                 "evaluation.every=0", f"runtime.out={tmp_path / 'run'}",
                 *(f"data.{role}_split={tmp_path / role}.txt" for role in ("train", "val", "test"))]
    result = detect(load_task_config(DetectConfig, None, overrides))
    data = result.metrics["data"]
    assert data["counts"] == {"train": 2, "val": 1, "test": 2}  # the Target 0 images are left out
    assert data["left_out"]["test"] == {"without_box_annotation": 0, "without_selected_box": 1}
    assert result.metrics["test"]["n_boxes"] == 4
    with (tmp_path / "run" / "predictions.csv").open() as handle:
        for row in csv.DictReader(handle):  # original 1024 px coordinates
            assert 0.0 <= float(row["x_min"]) <= float(row["x_max"]) <= 1024.0
