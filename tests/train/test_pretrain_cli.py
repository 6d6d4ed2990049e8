"""`maco-cxr pretrain` end to end on a few synthetic phantoms."""

from __future__ import annotations

from pathlib import Path

import pytest

from maco_cxr.cli import main
from maco_cxr.hub import load

MICRO = ["model.preset=tiny", "model.vision.img_size=64", "model.vision.embed_dim=32", "model.vision.depth=1",
         "model.vision.num_heads=2", "model.decoder.embed_dim=32", "model.decoder.num_heads=2",
         "model.text.hidden_size=32", "model.text.num_layers=1", "model.text.num_heads=2",
         "model.text.intermediate_size=64", "model.text.max_length=16"]
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "tiny-synthetic.yaml"


def test_pretrain_command_on_synthetic_phantoms(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    code = main(["pretrain", "--config", str(CONFIG), "--synthetic", "12", "--output-dir", str(out),
                 "--no-progress", "data.workers=0", "optim.batch_size=2", "optim.max_steps=3",
                 "optim.warmup_steps=1", "runtime.device=cpu", *MICRO])
    assert code == 0
    assert f"model written to {out / 'final'}" in capsys.readouterr().out
    model = load(out / "final")
    assert model.config.vision.embed_dim == 32 and model.config.input_size == 128
    assert (out / "synthetic" / "manifest.csv").is_file()
    assert len((out / "metrics.csv").read_text().splitlines()) == 4  # header + 3 steps

    # running it again resumes from the last checkpoint (step 3 = the end) and changes nothing
    again = main(["pretrain", "--config", str(CONFIG), "--synthetic", "12", "--output-dir", str(out),
                  "--no-progress", "data.workers=0", "optim.batch_size=2", "optim.max_steps=3",
                  "optim.warmup_steps=1", "runtime.device=cpu", *MICRO])
    assert again == 0
    assert len((out / "metrics.csv").read_text().splitlines()) == 4


def test_config_typo_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["pretrain", "--config", str(CONFIG), "optim.learning_rate=1e-3",
                 f"runtime.output_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "maco-cxr pretrain: error:" in err and "optim.learning_rate" in err
