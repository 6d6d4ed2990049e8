"""Classification fine-tuning: head, loss, transforms, optimiser groups, configs, splits, runs, CLI."""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maco_cxr.cli import main
from maco_cxr.config import load_config, recipe_folder
from maco_cxr.data.io import read_image
from maco_cxr.data.splits import official_split_path, read_split_file
from maco_cxr.data.synthetic import write_synthetic_dataset
from maco_cxr.errors import ConfigError, DataError
from maco_cxr.metrics import roc_auc_per_class
from maco_cxr.models.classifier import ClassifierModel
from maco_cxr.models.config import preset
from maco_cxr.models.vit import MaskedViT
from maco_cxr.runtime.rng import isolated_rng
from maco_cxr.runtime.schedules import set_learning_rate
from maco_cxr.tasks.finetune import ClassifyConfig, finetune_classifier, load_finetuned
from maco_cxr.tasks.finetune.classification import (
    ClassifyAugment,
    ClassifyTask,
    auc_classes_text,
    eval_transform,
    masked_bce_with_logits,
    random_resized_crop_params,
    train_transform,
)
from maco_cxr.tasks.finetune.config import FinetuneData
from maco_cxr.tasks.finetune.engine import build_optimizer
from maco_cxr.tasks.finetune.splits import build_splits

CONFIGS = recipe_folder() / "finetune"
PHANTOM_CLASSES = ("cardiomegaly", "consolidation", "edema", "nodule", "pleural effusion", "pneumothorax")
TINY_RUN = [
    "model.preset=tiny",
    "model.img_size=32",
    "data.workers=0",
    "optim.batch_size=8",
    "optim.warmup_steps=1",
    "optim.lr=0.05",
    "evaluation.batch_size=16",
    "evaluation.bootstrap=20",
    "runtime.device=cpu",
    "runtime.log_every=1",
]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    write_synthetic_dataset(out, 32, seed=0, size=64, split_fractions=(0.5, 0.25, 0.25))
    return out


def _config(root: Path, out: Path, *overrides: str) -> ClassifyConfig:
    return load_config(
        ClassifyConfig, None, [f"data.root={root}", f"runtime.out={out}", "model.source=none", *TINY_RUN, *overrides]
    )


def _run(config: ClassifyConfig) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # undefined AUCs of tiny validation sets
            return dict(finetune_classifier(config).summary)
    finally:
        torch.set_num_threads(threads)


def _classifier(depth: int = 2, num_classes: int = 3) -> ClassifierModel:
    vision = preset("tiny").vision
    vision.img_size, vision.depth = 32, depth
    return ClassifierModel(MaskedViT(vision), num_classes)


def _engine_optimizer(task, model) -> torch.optim.Optimizer:
    """The optimiser the fine-tuning loop builds for ``model`` (``build_optimizer``), lrs at multiplier 1."""
    optimizer = build_optimizer(task.config.optim, task, model, torch.device("cpu"))
    set_learning_rate(optimizer, 1.0)
    return optimizer


# ----------------------------------------------------------------------------- model and loss


def test_head_init_and_global_pool():
    torch.manual_seed(0)
    model = _classifier(num_classes=8)
    weight = model.head.weight.detach()
    assert weight.shape == (8, 128)
    assert 1.6e-5 < float(weight.std()) < 2.4e-5 and float(weight.abs().max()) < 2e-4
    assert torch.equal(model.head.bias, torch.zeros(8))
    assert model.fc_norm.eps == 1e-6 and torch.equal(model.fc_norm.weight, torch.ones(128))
    assert isinstance(model.backbone.norm, torch.nn.Identity)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        pooled = model.pool(x)
        maps = model.backbone.forward_intermediates(x, [-1])[0]
        torch.testing.assert_close(pooled, maps.flatten(2).mean(-1))
        expected = torch.nn.functional.layer_norm(pooled, (128,), eps=1e-6) @ weight.T
        torch.testing.assert_close(model(x), expected)
        torch.testing.assert_close(model(pooled), expected)  # pooled features take the same head
    with pytest.raises(ConfigError, match="at least one class"):
        ClassifierModel(MaskedViT(preset("tiny").vision), 0)


def test_masked_bce_matches_hand_computed_value():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.0]], requires_grad=True)
    labels = torch.tensor([[1.0, math.nan], [0.0, 1.0]])
    loss = masked_bce_with_logits(logits, labels)
    expected = (math.log(2) + math.log(1 + math.exp(-1)) + math.log(2)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[0, 0] == pytest.approx(-0.5 / 3)
    nothing_known = masked_bce_with_logits(torch.zeros(2, 2), torch.full((2, 2), math.nan))
    assert nothing_known.item() == 0.0
    # the global-batch normaliser: the local sum over the known labels of the whole batch
    total = masked_bce_with_logits(logits.detach(), labels, torch.tensor(6.0))
    assert total.item() == pytest.approx(expected * 3 / 6, rel=1e-6)


# --------------------------------------------------------------------------------- transforms


def test_random_resized_crop_params_follow_the_torchvision_rule():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_params(120, 90, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= top and top + h <= 120 and 0 <= left and left + w <= 90
        assert 0.08 * 0.8 <= h * w / (120 * 90) <= 1.0
    first = random_resized_crop_params(50, 60, (0.1, 0.9), (0.5, 2.0), np.random.default_rng(7))
    assert first == random_resized_crop_params(50, 60, (0.1, 0.9), (0.5, 2.0), np.random.default_rng(7))
    # no 10x20 crop of the whole area with ratio 1 fits: the central crop clamped to the ratio
    assert random_resized_crop_params(10, 20, (1.0, 1.0), (1.0, 1.0), np.random.default_rng(0)) == (0, 5, 10, 10)


def test_eval_transform_resizes_the_shorter_side_and_crops_the_centre():
    image = torch.zeros(1, 40, 60, dtype=torch.uint8)
    image[..., 20:40] = 255
    out = eval_transform(image, 20)
    assert out.shape == (1, 20, 20) and out.dtype == torch.uint8
    assert (out[..., 6:14] == 255).all() and (out[..., :4] == 0).all() and (out[..., -4:] == 0).all()
    same = torch.arange(400, dtype=torch.int64).reshape(1, 20, 20).remainder(256).to(torch.uint8)
    assert eval_transform(same, 20) is same  # already the input size: untouched


def test_train_transform_is_seeded_and_flips():
    image = torch.arange(64 * 48, dtype=torch.int64).reshape(1, 64, 48).remainder(256).to(torch.uint8)
    aug = ClassifyAugment(crop_scale=(1.0, 1.0), crop_ratio=(0.75, 0.75), flip_p=1.0)
    out = train_transform(image, 16, aug, np.random.default_rng(0))
    plain = train_transform(
        image, 16, ClassifyAugment(crop_scale=(1.0, 1.0), crop_ratio=(0.75, 0.75), flip_p=0.0), np.random.default_rng(0)
    )
    assert out.shape == (1, 16, 16) and out.dtype == torch.uint8 and torch.equal(out, plain.flip(-1))
    a = train_transform(image, 16, ClassifyAugment(), np.random.default_rng(5))
    assert torch.equal(a, train_transform(image, 16, ClassifyAugment(), np.random.default_rng(5)))


# ------------------------------------------------------------------------- optimiser groups


def test_layer_wise_lr_scales_and_decay_exclusions(phantoms):
    config = _config(
        phantoms, Path("unused"), "optim.name=adamw", "optim.lr=1.0", "optim.weight_decay=0.05", "optim.layer_decay=0.5"
    )
    task = ClassifyTask(config)
    model, summary = task.build_model(build_splits(config.data))
    assert summary["init"] == "random (tiny)" and model.classes == PHANTOM_CLASSES
    optimizer = _engine_optimizer(task, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert group_of[id(named["net.backbone.patch_embed.proj.weight"])]["lr"] == pytest.approx(0.5**5)
    assert group_of[id(named["net.backbone.cls_token"])]["lr"] == pytest.approx(0.5**5)
    for i in range(4):
        assert group_of[id(named[f"net.backbone.blocks.{i}.attn.qkv.weight"])]["lr"] == pytest.approx(0.5 ** (4 - i))
    assert group_of[id(named["net.head.weight"])]["lr"] == pytest.approx(1.0)
    assert group_of[id(named["net.fc_norm.weight"])]["lr"] == pytest.approx(1.0)
    assert group_of[id(named["net.head.weight"])]["weight_decay"] == 0.05
    assert group_of[id(named["net.backbone.blocks.0.attn.qkv.weight"])]["weight_decay"] == 0.05
    for name in ("net.backbone.cls_token", "net.head.bias", "net.fc_norm.weight", "net.backbone.blocks.0.norm1.weight"):
        assert group_of[id(named[name])]["weight_decay"] == 0.0, name
    assert id(named["net.backbone.pos_embed"]) not in group_of  # fixed sin-cos table, never trained
    assert not any("names" in g for g in optimizer.param_groups)


def test_sgd_is_the_default_recipe_and_a_linear_probe_trains_the_head_only(phantoms):
    config = _config(phantoms, Path("unused"))
    task = ClassifyTask(config)
    model, _ = task.build_model(build_splits(config.data))
    optimizer = _engine_optimizer(task, model)
    assert isinstance(optimizer, torch.optim.SGD)
    assert all(g["momentum"] == 0.9 and g["weight_decay"] == 0.0 for g in optimizer.param_groups)
    assert all(g["lr_scale"] == 1.0 for g in optimizer.param_groups)  # no layer decay by default
    probe = ClassifyTask(_config(phantoms, Path("unused"), "model.mode=linear_probe"))
    frozen, summary = probe.build_model(build_splits(config.data))
    assert summary["mode"] == "linear_probe"
    trained = {id(p) for g in _engine_optimizer(probe, frozen).param_groups for p in g["params"]}
    names = {name for name, p in frozen.named_parameters() if id(p) in trained}
    assert names == {"net.fc_norm.weight", "net.fc_norm.bias", "net.head.weight", "net.head.bias"}
    frozen.train()
    assert frozen.training and not frozen.net.backbone.training  # the frozen encoder stays in eval mode
    with pytest.raises(ConfigError, match=r"optim\.warmup_steps"):
        load_config(ClassifyConfig, None, ["optim.steps=10", "optim.warmup_steps=20"])


# ---------------------------------------------------------------------------------- configs


PROTOCOL = {  # docs/protocols.md section 4: lr / steps / warm-up
    ("chexpert", 1): (8e-4, 2000, 50),
    ("chexpert", 10): (1e-4, 60000, 1500),
    ("chexpert", 100): (1e-5, 200000, 15000),
    ("nih", 1): (8.5e-3, 2000, 50),
    ("nih", 10): (3e-3, 30000, 500),
    ("nih", 100): (3e-3, 200000, 5000),
    ("rsna", 1): (6.5e-3, 2000, 50),
    ("rsna", 10): (6e-4, 10000, 200),
    ("rsna", 100): (5e-4, 50000, 2000),
}


@pytest.mark.parametrize(("dataset", "fraction"), sorted(PROTOCOL))
def test_shipped_configs_hold_the_official_recipe(dataset, fraction):
    cfg = load_config(ClassifyConfig, CONFIGS / f"{dataset}_{fraction}.yaml")
    assert (cfg.optim.lr, cfg.optim.steps, cfg.optim.warmup_steps) == PROTOCOL[(dataset, fraction)]
    assert cfg.data.kind == dataset and cfg.data.fraction == 100.0
    assert cfg.data.train_split == (None if fraction == 100 else f"train_{fraction}")
    assert (cfg.data.val_split, cfg.data.test_split) == ("val", "test")
    assert (cfg.optim.name, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.clip_grad) == ("sgd", 0.9, 0.0, 1.0)
    assert (cfg.optim.batch_size, cfg.optim.accum_steps, cfg.optim.schedule) == (96, 1, "cosine")
    assert cfg.optim.layer_decay is None and cfg.model.drop_path_rate == 0.1
    assert (cfg.model.img_size, cfg.model.mode, cfg.evaluation.every) == (224, "finetune", None)
    assert cfg.augment.crop_scale == (0.08, 1.0) and cfg.augment.crop_ratio == pytest.approx((0.75, 4 / 3))


def test_adamw_config_and_typos_name_the_key(tmp_path):
    cfg = load_config(ClassifyConfig, CONFIGS / "adamw_lld.yaml", ["optim.lr=1e-4", "model.source=none"])
    assert (cfg.optim.name, cfg.optim.layer_decay, cfg.optim.weight_decay) == ("adamw", 0.65, 0.05)
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float) and cfg.model.source is None
    with pytest.raises(ConfigError, match=r"optim\.stepz.*did you mean optim\.steps"):
        load_config(ClassifyConfig, None, ["optim.stepz=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*optim\.learning_rate"):
        load_config(ClassifyConfig, bad)
    with pytest.raises(ConfigError, match=r"model\.mode"):
        load_config(ClassifyConfig, None, ["model.mode=probe"])
    with pytest.raises(ConfigError, match=r"augment\.crop_scale"):
        load_config(ClassifyConfig, None, ["augment.crop_scale=[0.5, 0.2]"])


# ----------------------------------------------------------------------------------- splits


def test_splits_from_records_fraction_and_split_file(phantoms, tmp_path):
    full = build_splits(FinetuneData(root=str(phantoms)))
    assert full.classes == PHANTOM_CLASSES
    assert sum(full.counts().values()) == 32 and min(full.counts().values()) > 0
    assert all(r.split == "val" for r in full.val.records)
    assert full.sources["val"] == "manifest split=val"
    small = build_splits(FinetuneData(root=str(phantoms), fraction=25, fraction_seed=1))
    assert len(small.train) == round(0.25 * len(full.train))
    assert {r.image_path for r in small.train.records} <= {r.image_path for r in full.train.records}
    again = build_splits(FinetuneData(root=str(phantoms), fraction=25, fraction_seed=1))
    assert [r.image_path for r in again.train.records] == [r.image_path for r in small.train.records]
    assert "25 % (seed 1)" in small.sources["train"]

    chosen = full.train.records[:3]
    split_file = tmp_path / "train.txt"
    split_file.write_text("".join(f"images/{r.image_path.name} 1 0 0 0 0 1\n" for r in chosen))
    listed = build_splits(FinetuneData(root=str(phantoms), train_split=str(split_file)))
    assert [r.image_path for r in listed.train.records] == [r.image_path for r in chosen]
    assert all(r.labels.tolist() == [1, 0, 0, 0, 0, 1] for r in listed.train.records)
    assert listed.sources["train"] == str(split_file)
    with pytest.raises(ConfigError, match=r"data\.train_split"):
        build_splits(FinetuneData(root=str(phantoms), train_split="train_1"))
    with pytest.raises(DataError, match=r"data\.test_name"):
        build_splits(FinetuneData(root=str(phantoms), test_name="holdout"))
    with pytest.raises(ConfigError, match=r"data\.root"):
        build_splits(FinetuneData())


def test_a_prepared_store_splits_like_its_source(phantoms, tmp_path):
    from maco_cxr.data.datasets import build_dataset
    from maco_cxr.data.prepare import prepare_dataset

    prepare_dataset(build_dataset("manifest", phantoms), tmp_path / "store", size=48)
    from_store = build_splits(FinetuneData(kind="store", root=str(tmp_path / "store")))
    from_files = build_splits(FinetuneData(root=str(phantoms)))
    assert from_store.counts() == from_files.counts() and from_store.classes == from_files.classes
    for stored, original in zip(from_store.test.records, from_files.test.records):
        assert stored.image_path == original.image_path
        np.testing.assert_array_equal(stored.labels, original.labels)
    sample = from_store.test[1]
    assert sample["image"].shape == (1, 48, 48) and sample["image"].dtype == torch.uint8
    np.testing.assert_array_equal(sample["labels"].numpy(), from_files.test.records[1].labels)
    split_file = tmp_path / "two.txt"
    split_file.write_text("".join(f"images/{r.image_path.name}\n" for r in from_files.val.records[:2]))
    listed = build_splits(FinetuneData(kind="store", root=str(tmp_path / "store"), train_split=str(split_file)))
    assert [r.image_path for r in listed.train.records] == [r.image_path for r in from_files.val.records[:2]]


def test_official_nih_lists_select_images_with_the_file_labels(tmp_path):
    entries = {role: read_split_file(official_split_path("nih", role))[:2] for role in ("train_1", "val", "test")}
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID"]
    for k, entry in enumerate(e for es in entries.values() for e in es):
        Image.fromarray(np.full((8, 8), 10 * k, dtype=np.uint8)).save(tmp_path / entry.path)
        rows.append(f"{entry.path},No Finding,0,{k}")
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    cfg = FinetuneData(
        kind="nih", root=str(tmp_path), train_split="train_1", on_error="skip", options={"bbox_list": None}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        splits = build_splits(cfg)
    assert splits.counts() == {"train": 2, "val": 2, "test": 2}
    assert splits.sources == {"train": "official nih train_1", "val": "official nih val", "test": "official nih test"}
    for role, name in (("train", "train_1"), ("val", "val"), ("test", "test")):
        dataset = getattr(splits, role)
        assert [r.image_path.name for r in dataset.records] == [e.path for e in entries[name]]
        for record, entry in zip(dataset.records, entries[name]):
            np.testing.assert_array_equal(record.labels, entry.labels)


# ------------------------------------------------------------------------------------- runs


def _initial_model(config: ClassifyConfig):
    """The model a run starts from: the loop builds it first under the run's seeded generator."""
    task = ClassifyTask(config)
    with isolated_rng(config.runtime.seed, torch.device("cpu")):
        splits = task.splits()
        return task.build_model(splits)[0]


@pytest.mark.parametrize("cache", [True, False])
def test_linear_probe_keeps_the_encoder_frozen(phantoms, tmp_path, cache):
    out = tmp_path / "probe"
    config = _config(
        phantoms,
        out,
        "model.mode=linear_probe",
        f"model.cache_features={str(cache).lower()}",
        "optim.steps=4",
        "evaluation.every=2",
    )
    metrics = _run(config)
    assert metrics["mode"] == "linear_probe" and metrics["model"]["mode"] == "linear_probe"
    initial = _initial_model(config).state_dict()
    for folder in ("best", "final"):
        trained = load_finetuned(out / folder)
        state = trained.state_dict()
        for name, value in state.items():
            if name.startswith("net.backbone."):
                assert torch.equal(value, initial[name]), (folder, name)
    final = load_finetuned(out / "final").state_dict()
    assert not torch.equal(final["net.head.weight"], initial["net.head.weight"])
    assert not torch.equal(final["net.fc_norm.bias"], initial["net.fc_norm.bias"])
    assert metrics["test"]["n_images"] == metrics["data"]["counts"]["test"]


def test_best_model_is_the_best_validation_step(phantoms, tmp_path):
    out = tmp_path / "run"
    config = _config(phantoms, out, "optim.steps=6", "evaluation.every=1", "optim.lr=0.5")
    metrics = _run(config)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    val = [(r["step"], r["val_mean_auc"]) for r in rows if "val_mean_auc" in r]
    assert [s for s, _ in val] == list(range(1, 7))
    best_step, best_auc = max(val, key=lambda item: (item[1], -item[0]))
    assert metrics["best_step"] == best_step and metrics["val_best"]["mean_auc"] == pytest.approx(best_auc)
    assert metrics["selection"] == "best validation mean_auc"
    saved = json.loads((out / "best" / "config.json").read_text())
    assert saved["training"]["step"] == best_step and saved["classes"] == list(PHANTOM_CLASSES)
    assert saved["task"] == "classification"
    # the saved model reproduces the validation AUC logged at its step
    model = load_finetuned(out / "best")
    val_set = build_splits(config.data).val
    labels = np.stack([r.labels for r in val_set.records])
    scores = model.predict([str(r.image_path) for r in val_set.records]).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        aucs = roc_auc_per_class(labels, scores)
    assert np.nanmean(aucs) == pytest.approx(best_auc, abs=1e-6)


def test_cxr_real_with_sparse_labels(cxr_real_dir, tmp_path):
    out = tmp_path / "real"
    config = _config(
        cxr_real_dir, out, "data.kind=cxr-real", "data.test_name=val", "optim.steps=2", "evaluation.every=2"
    )
    metrics = _run(config)
    assert metrics["data"]["counts"] == {"train": 19, "val": 7, "test": 7}
    test = metrics["test"]
    assert "COVID-19" in metrics["classes"] and list(test["per_class_auc"]) == metrics["classes"]
    written = json.loads((out / "metrics.json").read_text())
    for name, auc in test["per_class_auc"].items():
        assert (written["test"]["per_class_auc"][name] is None) == math.isnan(auc)
    assert written["test"]["per_class_auc"]["COVID-19"] is not None  # val holds COVID-19 positives and negatives
    assert written["best_step"] == 2 and written["test"]["bootstrap"]["replicates"] == 20


def test_cli_names_the_classes_left_out_of_the_mean_auc_without_raw_warnings(cxr_real_dir, tmp_path, capsys):
    """cxr-real's 7 validation images (the test split here) hold no Pneumocystis positive: its AUC is
    undefined, the mean is over the other 5 classes, and the output says so in words once, with no
    RuntimeWarning (and its source line) printed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(
            [
                "finetune",
                "--model",
                "none",
                "--dataset",
                "cxr-real",
                "--root",
                str(cxr_real_dir),
                "--out",
                str(tmp_path / "real"),
                "data.test_name=val",
                "optim.steps=2",
                "evaluation.every=2",
                *TINY_RUN,
            ]
        )
    assert code == 0
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]
    printed = capsys.readouterr().out
    assert "over 5 of 6 classes (7 test images)" in printed
    reason = "no positive among its 7 known labels"
    assert f"Pneumocystis                 n/a  ({reason} in the test split" in printed
    test = json.loads((tmp_path / "real" / "metrics.json").read_text())["test"]
    assert test["auc_undefined"] == {"Pneumocystis": reason} and test["n_classes_in_mean"] == 5
    assert auc_classes_text(test) == f"over 5 of 6 classes (Pneumocystis: {reason})"
    defined = [v for v in test["per_class_auc"].values() if v is not None]
    assert len(defined) == 5 and test["mean_auc"] == pytest.approx(np.mean(defined))


def test_cli_end_to_end(phantoms, tmp_path, capsys):
    out = tmp_path / "cli"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        code = main(
            [
                "finetune",
                "--model",
                "none",
                "--dataset",
                "manifest",
                "--root",
                str(phantoms),
                "--fraction",
                "50",
                "--out",
                str(out),
                "optim.steps=3",
                "evaluation.every=3",
                *TINY_RUN,
            ]
        )
    assert code == 0
    printed = capsys.readouterr().out
    assert "test mean AUC" in printed and "pneumothorax" in printed and "best validation AUC" in printed
    for name in (
        "metrics.json",
        "predictions.csv",
        "roc.png",
        "training_curves.png",
        "log.jsonl",
        "config.json",
        "best/model.safetensors",
        "best/config.json",
        "final/model.safetensors",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]["per_class_auc"]) == set(PHANTOM_CLASSES) and metrics["best_step"] == 3
    assert metrics["data"]["counts"]["train"] < build_splits(FinetuneData(root=str(phantoms))).counts()["train"]
    assert "50 %" in metrics["data"]["sources"]["train"]
    # best/ and final/ carry a model card in the Hub's format, made of what the run recorded
    import yaml

    card = (out / "best" / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "maco-cxr" and "classification" in front["tags"]
    figures = {m["name"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
    assert figures["test mean_auc"] == pytest.approx(metrics["test"]["mean_auc"], abs=1e-6)
    assert f"(step {metrics['best_step']} of {metrics['steps']})" in card and "not a medical device" in card
    assert "random initialisation" in card and "label fraction 50.0 %" in card
    assert (out / "final" / "README.md").read_text() == card
    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == metrics["data"]["counts"]["test"] == metrics["test"]["n_images"]
    model = load_finetuned(out / "best")
    scores = model.predict([read_image(r["path"]) for r in rows]).numpy()
    written = np.array([[float(r[f"score:{c}"]) for c in model.classes] for r in rows])
    np.testing.assert_allclose(scores, written, atol=2e-6)
    assert main(["finetune", "--model", "none", "--root", str(phantoms), "--out", str(out), "optim.stepz=1"]) == 2
    assert "optim.stepz" in capsys.readouterr().err
