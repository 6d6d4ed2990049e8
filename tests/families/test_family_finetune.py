"""Another family's image encoder through the one fine-tuning engine: linear probe and fine-tuning, saved,
reloaded and predicting what the run's test predictions hold."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from maco_cxr.config import load_config
from maco_cxr.data.synthetic import write_synthetic_dataset
from maco_cxr.errors import ConfigError
from maco_cxr.families import load_family, split_model_spec
from maco_cxr.tasks.finetune import ClassifyConfig, finetune_classifier, load_finetuned
from maco_cxr.tasks.finetune.backbone import load_backbone

RUN = [
    "data.workers=0",
    "optim.batch_size=8",
    "optim.steps=3",
    "optim.warmup_steps=1",
    "optim.lr=0.05",
    "evaluation.batch_size=16",
    "evaluation.bootstrap=20",
    "runtime.device=cpu",
]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    write_synthetic_dataset(out, 24, seed=0, size=64, split_fractions=(0.5, 0.25, 0.25))
    return out


def _run(root: Path, out: Path, source: str, *overrides: str) -> dict:
    config = load_config(ClassifyConfig, None, [f"data.root={root}", f"runtime.out={out}", *RUN, *overrides])
    config.model.source = source  # a FAMILY:PATH spec holds a ':' the override grammar would read
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # undefined AUCs of tiny validation sets
        return dict(finetune_classifier(config).summary)


def _predictions(out: Path) -> tuple[list[str], np.ndarray]:
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [k for k in rows[0] if k.startswith("score:")]
    return [r["path"] for r in rows], np.array([[float(r[c]) for c in columns] for r in rows])


def _encoder_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_linear_probe_of_mrm_trains_the_head_on_its_frozen_features(phantoms: Path, tmp_path: Path, mrm_spec: str):
    summary = _run(phantoms, tmp_path, mrm_spec, "model.mode=linear_probe")
    assert np.isfinite(summary["test"]["mean_auc"])
    tuned = load_finetuned(tmp_path / "best")
    assert tuned.net.encoder.family == "mrm"
    original = load_family(split_model_spec(mrm_spec)[1], "mrm")
    for key, value in original.state_dict().items():  # frozen: the encoder is the authors' file
        torch.testing.assert_close(tuned.net.encoder.state_dict()[key], value, atol=0, rtol=0)
    paths, scores = _predictions(tmp_path)
    np.testing.assert_allclose(tuned.predict(paths).numpy(), scores, atol=2e-6)
    card = (tmp_path / "best" / "README.md").read_text()
    assert "`mrm`-family image encoder" in card
    config = json.loads((tmp_path / "best" / "config.json").read_text())
    assert config["architecture"]["family"] == "mrm" and config["preprocessing"]["input_size"] == 224


def test_fine_tuning_chexzero_moves_its_encoder_and_reloads(phantoms: Path, tmp_path: Path, chexzero_file: Path):
    before = _encoder_state(load_family(chexzero_file, "chexzero"))
    _run(phantoms, tmp_path, f"chexzero:{chexzero_file}", "model.mode=finetune", "runtime.save_every=100")
    tuned = load_finetuned(tmp_path / "final")
    after = tuned.net.encoder.state_dict()
    moved = [k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])]
    assert any(k.startswith("clip.visual.") for k in moved)
    paths, scores = _predictions(tmp_path)
    best = load_finetuned(tmp_path / "best")
    np.testing.assert_allclose(best.predict(paths).numpy(), scores, atol=2e-6)


def test_layer_decay_is_refused_for_a_family_encoder(phantoms: Path, tmp_path: Path, mrm_spec: str) -> None:
    with pytest.raises(ConfigError, match="layer_decay.*mrm"):
        _run(phantoms, tmp_path, mrm_spec, "optim.name=adamw", "optim.layer_decay=0.65")


def test_dense_tasks_refuse_a_family_encoder_by_name(mrm_spec: str) -> None:
    with pytest.raises(ConfigError, match="segmentation and detection build on MaCo's ViT.*mrm encoder"):
        load_backbone(mrm_spec)
