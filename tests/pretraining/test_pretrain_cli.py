"""`maco-cxr pretrain` end to end on a few synthetic phantoms."""

from __future__ import annotations

from pathlib import Path

import pytest

from maco_cxr.cli import main
from maco_cxr.hub import load

MICRO = [
    "model.preset=tiny",
    "model.vision.img_size=64",
    "model.vision.embed_dim=32",
    "model.vision.depth=1",
    "model.vision.num_heads=2",
    "model.decoder.embed_dim=32",
    "model.decoder.num_heads=2",
    "model.text.hidden_size=32",
    "model.text.num_layers=1",
    "model.text.num_heads=2",
    "model.text.intermediate_size=64",
    "model.text.max_length=16",
]
CONFIG = "tiny-synthetic"  # a shipped recipe, by name


def _micro_run(out: Path, phantoms: int, *overrides: str) -> list[str]:
    """`maco-cxr pretrain` of the shipped recipe on ``phantoms`` synthetic images, 3 steps of 2 on the CPU."""
    return [
        "pretrain",
        "--config",
        CONFIG,
        "--synthetic",
        str(phantoms),
        "--output-dir",
        str(out),
        "--no-progress",
        "data.workers=0",
        "optim.batch_size=2",
        "optim.max_steps=3",
        "optim.warmup_steps=1",
        "runtime.device=cpu",
        *overrides,
        *MICRO,
    ]


def test_pretrain_command_on_synthetic_phantoms(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    code = main(_micro_run(out, 12))
    assert code == 0
    assert f"model written to {out / 'final'}" in capsys.readouterr().out
    model = load(out / "final")
    assert model.config.vision.embed_dim == 32 and model.config.input_size == 128
    assert (out / "synthetic" / "manifest.csv").is_file()
    assert len((out / "metrics.csv").read_text().splitlines()) == 4  # header + 3 steps

    # running it again resumes from the last checkpoint (step 3 = the end) and changes nothing
    again = main(_micro_run(out, 12))
    assert again == 0
    assert len((out / "metrics.csv").read_text().splitlines()) == 4


def test_config_typo_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["pretrain", "--config", str(CONFIG), "optim.learning_rate=1e-3", f"runtime.output_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "maco-cxr pretrain: error:" in err and "optim.learning_rate" in err


def test_a_stopped_run_says_where_it_stopped_and_how_to_continue(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    code = main(_micro_run(out, 8, "runtime.stop_at_step=1"))
    assert code == 0
    printed = capsys.readouterr().out
    assert (
        f"stopped at step 1 of 3 (runtime.stop_at_step); run the same command again to continue from the "
        f"checkpoint in {out}" in printed
    )
    assert "model written" not in printed and not (out / "final").exists()


def test_ctrl_c_prints_one_line_naming_the_step_and_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from maco_cxr.runtime import loop

    real_step, calls = loop._Skeleton._optimizer_step, []

    def interrupted_on_the_second_step(self, batches):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_step(self, batches)

    monkeypatch.setattr(loop._Skeleton, "_optimizer_step", interrupted_on_the_second_step)
    code = main(_micro_run(tmp_path / "run", 8))
    assert code == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "maco-cxr pretrain: interrupted at step 1; rerun the same command to resume"
    assert "Traceback" not in err
