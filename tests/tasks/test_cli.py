"""`maco-cxr zeroshot | ground | retrieve` end to end on a tiny saved model and cxr-real."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from maco_cxr.cli import main
from maco_cxr.data.io import read_image
from maco_cxr.hub import create_model, save_pretrained
from maco_cxr.models.config import DecoderConfig, MacoConfig, TextConfig, VisionConfig


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


def test_zeroshot_writes_scores_roc_and_summary(tiny_model_dir, cxr_real_dir, tmp_path, capsys):
    out = tmp_path / "zs"
    code = main(
        [
            "zeroshot",
            "--model",
            str(tiny_model_dir),
            "--dataset",
            "cxr-real",
            "--root",
            str(cxr_real_dir),
            "--classes",
            "Cardiomegaly",
            "covid-19",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 26 and summary["classes"] == ["Cardiomegaly", "covid-19"]
    assert summary["per_class"]["covid-19"]["n_pos"] == 16  # matched to "COVID-19" by name
    assert summary["prompt_texts"]["Cardiomegaly"]["pos"] == ["There is cardiomegaly. "]
    assert 0.0 <= summary["macro_auc"] <= 1.0
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 26 and {"score:Cardiomegaly", "label:covid-19"} <= set(rows[0])
    assert (out / "roc_curves.png").stat().st_size > 0
    assert "macro" in capsys.readouterr().out


def test_ground_one_image_writes_overlay_and_map_in_original_geometry(tiny_model_dir, cxr_real_dir, tmp_path):
    image = cxr_real_dir / "images" / "covid_ARDSSevere.png"
    out = tmp_path / "one"
    assert (
        main(["ground", str(image), "right pleural effusion", "--model", str(tiny_model_dir), "--out", str(out)]) == 0
    )
    heatmap = np.load(out / "covid_ARDSSevere_right-pleural-effusion.npy")
    assert heatmap.shape == read_image(image).shape == (409, 512)
    assert (out / "covid_ARDSSevere_right-pleural-effusion.png").is_file()


def test_ground_evaluates_a_manifest_with_boxes(tiny_model_dir, cxr_real_dir, tmp_path):
    out = tmp_path / "eval"
    assert (
        main(
            [
                "ground",
                "--model",
                str(tiny_model_dir),
                "--dataset",
                "manifest",
                "--root",
                str(cxr_real_dir),
                "--phrases",
                "left lung",
                "right lung",
                "--overlays",
                "3",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 48 and set(summary["per_category"]) == {"left lung", "right lung"}
    assert {"cnr", "miou", "pointing", "category_mean"} <= set(summary)
    rows = list(csv.DictReader((out / "items.csv").open()))
    assert len(rows) == 48 and rows[0]["query"] in ("left lung. ", "right lung. ")
    assert len(list((out / "overlays").glob("*.png"))) == 3


def test_retrieve_reports_recall_both_ways(tiny_model_dir, cxr_real_dir, tmp_path, capsys):
    assert (
        main(
            [
                "retrieve",
                "--model",
                str(tiny_model_dir),
                "--manifest",
                str(cxr_real_dir / "manifest.csv"),
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n"] == 24 and summary["n_without_report"] == 2
    assert summary["i2t_R@10"] >= summary["i2t_R@1"]
    assert "report -> image" in capsys.readouterr().out


def test_cli_errors_exit_with_code_2(tiny_model_dir, capsys):
    assert main(["ground", "--model", str(tiny_model_dir)]) == 2
    assert "give IMAGE and PHRASE" in capsys.readouterr().err
