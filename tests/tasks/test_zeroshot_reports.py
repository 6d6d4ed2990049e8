"""Zero-shot reports: validation-chosen thresholds next to 0.5, bootstrap intervals, calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maco_cxr.cli import main
from maco_cxr.hub import create_model, save_pretrained
from maco_cxr.metrics import classification_report
from maco_cxr.models.config import DecoderConfig, MacoConfig, TextConfig, VisionConfig
from maco_cxr.tasks.zeroshot import ZeroShotEvaluation, summarise_zero_shot


def _result(labels, scores, classes=("a",), patients=None) -> ZeroShotEvaluation:
    labels = np.asarray(labels, np.float32).reshape(len(labels), -1)
    scores = np.asarray(scores, np.float32).reshape(len(scores), -1)
    paths = [f"img{i}.png" for i in range(len(labels))]
    return ZeroShotEvaluation(tuple(classes), scores, labels, paths, [], list(patients or [None] * len(labels)))


def test_thresholds_chosen_on_validation_are_applied_next_to_the_fixed_one():
    # validation, by score: .8 (pos), .4 (neg), .35 (pos), .1 (neg). Youden's J is .5 at the
    # cuts above .8 and above .35; ties go to the higher cut: midway between .8 and .4 = .6.
    # F1 is best (.8) when .35 and up are positive: midway between .35 and .1 = .225.
    validation = _result([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    test = _result([1, 1, 0, 0, 1, 0], [0.9, 0.5, 0.3, 0.55, 0.2, 0.05])
    points = summarise_zero_shot(test, validation, n_bootstrap=0)["operating_points"]
    assert points["n_val_images"] == 4 and points["fixed_threshold"] == 0.5
    youden = points["youden"]["per_class"]["a"]
    max_f1 = points["max_f1"]["per_class"]["a"]
    assert youden["chosen"]["threshold"] == pytest.approx(0.6)
    assert max_f1["chosen"]["threshold"] == pytest.approx(0.225)
    # at .6 only .9 is positive: TP 1, FN 2, FP 0, TN 3
    assert youden["chosen"]["sensitivity"] == pytest.approx(1 / 3)
    assert youden["chosen"]["specificity"] == 1.0
    assert youden["chosen"]["f1_positive"] == pytest.approx(0.5)
    # at .225: .9 .5 .3 .55 positive: TP 2, FN 1, FP 2, TN 1
    assert max_f1["chosen"]["f1_positive"] == pytest.approx(4 / 7)
    assert max_f1["chosen"]["specificity"] == pytest.approx(1 / 3)
    # fixed .5 (score > .5): .9 and .55 positive: TP 1, FN 2, FP 1, TN 2
    assert youden["fixed"] == max_f1["fixed"]
    assert youden["fixed"]["f1_positive"] == pytest.approx(0.4) and youden["fixed"]["acc"] == pytest.approx(0.5)


def test_bootstrap_intervals_are_seeded_by_patient_and_cover_the_estimate():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=(40, 2)).astype(np.float32)
    scores = np.clip(labels * 0.3 + rng.random((40, 2)) * 0.7, 0, 1)
    labels[3, 1] = np.nan
    patients = [f"p{i // 2}" for i in range(40)]
    result = _result(labels, scores, ("a", "b"), patients)
    first = summarise_zero_shot(result, n_bootstrap=300, seed=11)["ci"]
    assert first == summarise_zero_shot(result, n_bootstrap=300, seed=11)["ci"]
    assert first != summarise_zero_shot(result, n_bootstrap=300, seed=12)["ci"]
    assert first["unit"] == "patient" and first["n_groups"] == 20 and first["n_resamples"] == 300
    report = classification_report(labels, scores, ("a", "b"))
    for name in ("a", "b"):
        for key in ("auc", "f1_weighted"):
            ci = first["per_class"][name][key]
            assert ci["estimate"] == pytest.approx(report["per_class"][name][key], abs=1e-12)
            assert ci["low"] <= ci["estimate"] <= ci["high"] and ci["n_valid"] == 300
    assert first["macro_auc"]["estimate"] == pytest.approx(report["mean_auc"], abs=1e-12)
    assert first["mean_f1_weighted"]["estimate"] == pytest.approx(report["mean_f1_weighted"], abs=1e-12)
    assert first["macro_auc"]["low"] <= report["mean_auc"] <= first["macro_auc"]["high"]
    by_image = summarise_zero_shot(_result(labels, scores, ("a", "b")), n_bootstrap=10)["ci"]
    assert by_image["unit"] == "image" and by_image["n_groups"] == 40
    assert summarise_zero_shot(result, n_bootstrap=0)["ci"] is None


def test_calibration_per_class_and_pooled():
    # a: each probability alone in its bin, 0.05 or 0.15 from its label: ECE .1.
    # b: .75 twice (bin (.7, .8], both positive: gap .25), .25 once (negative: gap .25),
    # one unknown label left out: ECE .25. Pooled over the 7 known pairs: (4 * .1 + 3 * .25) / 7.
    labels = [[0, 1], [0, 0], [1, np.nan], [1, 1]]
    scores = [[0.05, 0.75], [0.15, 0.25], [0.95, 0.5], [0.85, 0.75]]
    calibration = summarise_zero_shot(_result(labels, scores, ("a", "b")), n_bootstrap=0)["calibration"]
    assert calibration["n_bins"] == 10
    assert calibration["per_class"]["a"]["ece"] == pytest.approx(0.1)
    assert calibration["per_class"]["b"]["ece"] == pytest.approx(0.25) and calibration["per_class"]["b"]["n"] == 3
    assert calibration["pooled"]["ece"] == pytest.approx(1.15 / 7) and calibration["pooled"]["n"] == 7
    assert calibration["per_class"]["b"]["counts"][7] == 2


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = MacoConfig(
        vision=VisionConfig(embed_dim=32, depth=1, num_heads=2),
        decoder=DecoderConfig(embed_dim=32, depth=1, num_heads=2),
        text=TextConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
    )
    directory = tmp_path_factory.mktemp("model") / "tiny"
    save_pretrained(create_model(config), directory)
    return directory


@pytest.mark.filterwarnings("ignore:.*bootstrap replicates gave an undefined value:RuntimeWarning")
def test_cli_writes_operating_points_intervals_and_reliability(
    tiny_model_dir, cxr_real_dir, tmp_path, monkeypatch, capsys
):
    from maco_cxr.tasks import zeroshot

    calls = []
    original = zeroshot.build_class_prototypes

    def counting(*args, **kwargs):
        calls.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(zeroshot, "build_class_prototypes", counting)
    args = [
        "zeroshot",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        "manifest",
        "--root",
        str(cxr_real_dir),
        "--split",
        "val",
        "--val-split",
        "train",
        "--classes",
        "COVID-19",
        "ARDS",
        "--bootstrap",
        "100",
        "--seed",
        "4",
        "--no-progress",
    ]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert len(calls) == 1  # one prompt encoding for the validation and the test split
    printed = capsys.readouterr().out
    out = tmp_path / "a"
    for name in (
        "scores.csv",
        "val_scores.csv",
        "roc_curves.png",
        "reliability.png",
        "reliability/covid-19.png",
        "reliability/ards.png",
    ):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 7 and summary["validation"]["n_images"] == 19
    assert summary["validation"]["split"] == "train"
    points = summary["operating_points"]
    assert set(points) == {"n_val_images", "fixed_threshold", "youden", "max_f1"}
    assert points["youden"]["per_class"]["COVID-19"]["fixed"]["threshold"] == 0.5
    assert 0.0 < points["youden"]["per_class"]["COVID-19"]["chosen"]["threshold"] < 1.0
    ci = summary["ci"]
    assert ci["unit"] == "patient" and ci["seed"] == 4 and ci["n_resamples"] == 100
    covid = ci["per_class"]["COVID-19"]["auc"]
    assert covid["estimate"] == pytest.approx(summary["per_class"]["COVID-19"]["auc"], abs=1e-9)
    assert covid["low"] <= covid["estimate"] <= covid["high"]
    assert ci["macro_auc"]["estimate"] == pytest.approx(summary["macro_auc"], abs=1e-9)
    calibration = summary["calibration"]
    assert calibration["figures"][0] == "reliability.png" and calibration["pooled"]["n"] == 14
    assert 0.0 <= calibration["per_class"]["ARDS"]["ece"] <= 1.0
    assert "AUC 95% CI" in printed and "thresholds chosen on validation" in printed and "max-F1" in printed

    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["ci"] == ci
