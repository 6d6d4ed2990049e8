"""`maco-cxr demo --quick` end to end: every stage runs and the report files and keys exist."""

from __future__ import annotations

import json

import pytest
import yaml

from maco_cxr.cli import main
from maco_cxr.errors import ConfigError

SUMMARY_KEYS = {
    "zeroshot_macro_auc",
    "grounding_mean_cnr",
    "baseline_zeroshot_macro_auc",
    "baseline_grounding_mean_cnr",
    "zeroshot_per_class_auc",
    "grounding_mean_miou",
    "grounding_pointing_game",
    "grounding_mean_cnr_mismatched_phrase",
    "retrieval",
    "baseline_retrieval",
    "real_images",
    "pretraining",
    "data",
    "timings",
    "model_dir",
}


@pytest.mark.slow
def test_quick_demo_writes_the_report(tmp_path, cxr_real_dir, capsys, monkeypatch):
    import dataclasses

    import maco_cxr.tasks.demo as demo

    returned = []
    real_run = demo.run_demo
    monkeypatch.setattr(demo, "run_demo", lambda config: returned.append(real_run(config)) or returned[-1])
    out = tmp_path / "demo-report"
    assert main(["demo", "--quick", "--out", str(out), "--real-root", str(cxr_real_dir), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    (result,) = returned
    assert isinstance(result, demo.DemoResult) and result.quick and result.report == out.resolve() / "index.html"
    assert result.zeroshot_macro_auc == summary["zeroshot_macro_auc"] and result.summary_path.is_file()
    assert result.model_dir.is_dir() and dict(result.summary) == summary
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.quick = False
    assert SUMMARY_KEYS <= set(summary)
    assert set(summary["zeroshot_per_class_auc"]) == {
        "pleural effusion",
        "pneumothorax",
        "consolidation",
        "cardiomegaly",
        "nodule",
        "edema",
    }
    for key in ("zeroshot_macro_auc", "baseline_zeroshot_macro_auc"):
        assert summary[key] is None or 0.0 <= summary[key] <= 1.0
    assert summary["real_images"]["n_items"] > 0
    assert summary["data"]["n_train"] == 64 and summary["pretraining"]["steps"] == 6
    page = (out / "index.html").read_text()
    for figure in ("figures/loss_curves.png", "figures/roc_trained.png", "figures/roc_random.png"):
        assert figure in page and (out / figure).stat().st_size > 0
    overlays = sorted((out / "figures" / "grounding_trained").glob("*.png"))
    assert len(overlays) == 2 and all(f"figures/grounding_trained/{p.name}" in page for p in overlays)
    assert list((out / "figures" / "real").glob("*.png"))
    assert (out / "model" / "maco-tiny-phantoms" / "model.safetensors").is_file()
    printed = capsys.readouterr().out
    assert "zero-shot macro AUC" in printed and "grounding mean CNR" in printed
    assert summary["data"]["report_negations"] is False and summary["data"]["training_text"] == "full"
    assert "without negations" in page and "whole reports" in page
    assert "This is a <code>--quick</code> run" in page and summary["quick"] is True
    assert "frozen image embeddings of 64 training phantoms" in page  # the count used, not a fixed number
    assert summary["linear_probe_train_images"] == 64
    assert summary["machine"]["cpu"] and "Where the time went" in page
    assert "a --quick run: its numbers mean nothing" in printed
    config = yaml.safe_load((out / "run" / "pretrain_config.yaml").read_text())
    assert config["data"]["text"] == "full"
    phantom_config = json.loads((out / "data" / "train" / "phantom_config.json").read_text())
    assert phantom_config["negations"] is False


class _Captured(Exception):
    """Raised instead of running the demo once its configuration is known."""


def test_demo_options_reach_the_config(monkeypatch, tmp_path):
    import maco_cxr.tasks.demo as demo

    seen = {}

    def capture(config):
        seen["config"] = config
        raise _Captured

    monkeypatch.setattr(demo, "run_demo", capture)
    with pytest.raises(_Captured):
        main(["demo", "--out", str(tmp_path), "--negations", "--text", "sentences", "--real-root", "none"])
    assert seen["config"].negations is True and seen["config"].text == "sentences"
    assert seen["config"].real_root is None and seen["config"].quick is False
    with pytest.raises(ConfigError, match="text='lines'"):
        demo.DemoConfig(out_dir=tmp_path, text="lines")
