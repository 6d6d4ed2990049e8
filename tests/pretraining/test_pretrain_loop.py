"""The pre-training loop on CPU: exact resume, overfitting, bad data, outputs."""

from __future__ import annotations

import csv
import json
import math
import random
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from maco_cxr.data.io import read_image
from maco_cxr.data.letterbox import Letterbox
from maco_cxr.data.reports import sample_report_sentences
from maco_cxr.errors import CheckpointError, ConfigError, DataError
from maco_cxr.hub import load
from maco_cxr.pretraining.config import replace
from maco_cxr.pretraining.pretrain import plan_schedule, pretrain
from maco_cxr.runtime.checkpoint import list_checkpoints, load_trainer_state
from maco_cxr.runtime.schedules import lr_multiplier

from .conftest import REPORTS, micro_config, write_manifest


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def test_schedule_plan() -> None:
    config = micro_config(
        Path("d"),
        Path("o"),
        optim={
            "batch_size": 3,
            "accum_steps": 2,
            "max_steps": None,
            "epochs": 4,
            "warmup_steps": None,
            "warmup_epochs": 1.5,
        },
    )
    plan = plan_schedule(40, config.optim, world_size=2)
    assert (plan.global_batch, plan.steps_per_epoch, plan.total_steps) == (12, 3, 12)
    assert (plan.warmup_steps, plan.micro_batches_per_epoch) == (4, 6)
    with pytest.raises(ConfigError, match="one optimizer step takes 12 samples"):
        plan_schedule(11, config.optim, world_size=2)


def test_resumed_run_ends_with_identical_weights(manifest_dir: Path, tmp_path: Path) -> None:
    """Stop after the checkpoint at step 3 (mid-epoch), resume, and match an uninterrupted run
    bit for bit: weights, optimizer, lr schedule (defined by the total, 5 steps), data order,
    text sampling, augmentation, masks and dropout (text dropout 0.1 here)."""
    sections = {
        "optim": {"batch_size": 2, "accum_steps": 2, "max_steps": 5, "warmup_steps": 2},
        "runtime": {"save_every": 3},
        "model": {"text": {"dropout": 0.1}},
    }
    whole = pretrain(micro_config(manifest_dir, tmp_path / "whole", **sections)).model_dir
    split = micro_config(manifest_dir, tmp_path / "split", **sections)
    stopped = pretrain(replace(split, runtime={"stop_at_step": 3})).model_dir
    assert stopped == tmp_path / "split" / "checkpoints" / "step-00000003" / "model"
    assert not (tmp_path / "split" / "final").exists()
    state = load_trainer_state(stopped.parent)
    assert (state["step"], state["epoch"], state["sampler"]) == (3, 1, {"epoch": 1, "micro_batch": 2})
    resumed = pretrain(split).model_dir

    a, b = _weights(whole), _weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)
    rows_whole, rows_split = _rows(tmp_path / "whole"), _rows(tmp_path / "split")
    assert [r["step"] for r in rows_split] == [1, 2, 3, 4, 5]
    assert [r["lr"] for r in rows_split] == [r["lr"] for r in rows_whole]
    assert [r["lr"] for r in rows_whole] == pytest.approx([1e-3 * lr_multiplier(s, 5, 2) for s in range(5)])
    assert [r["total"] for r in rows_split] == [r["total"] for r in rows_whole]
    with (tmp_path / "split" / "metrics.csv").open() as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [1, 2, 3, 4, 5]


def test_resume_refuses_a_run_with_other_settings(manifest_dir: Path, tmp_path: Path) -> None:
    """Re-running into the same folder with changed settings must not silently continue (or
    "finish") the old run: one message names the differing keys and how to start afresh."""
    config = micro_config(manifest_dir, tmp_path / "run", optim={"max_steps": 2})
    pretrain(config)
    final = (tmp_path / "run" / "final" / "model.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match=r"optim\.batch_size: 4 -> 2.*runtime\.resume=never"):
        pretrain(replace(config, optim={"batch_size": 2}))
    with pytest.raises(CheckpointError, match=r"optim\.lr: 0\.001 -> 0\.002") as err:
        pretrain(replace(config, optim={"lr": 2e-3}))
    assert str(err.value).count("\n") == 0
    with pytest.raises(CheckpointError, match=r"model\.vision\.depth: 1 -> 2"):
        pretrain(replace(config, model={"vision": {"depth": 2}}))
    assert (tmp_path / "run" / "final" / "model.safetensors").read_bytes() == final
    # how the run is watched may change: this resumes the finished run and changes nothing
    pretrain(replace(config, runtime={"log_every": 5, "progress": False}))
    assert (tmp_path / "run" / "final" / "model.safetensors").read_bytes() == final
    pretrain(replace(config, optim={"lr": 2e-3}, runtime={"resume": "never"}))
    assert (tmp_path / "run" / "final" / "model.safetensors").read_bytes() != final


def test_outputs_and_final_model(manifest_dir: Path, tmp_path: Path) -> None:
    final = pretrain(
        micro_config(manifest_dir, tmp_path / "run", optim={"max_steps": 4}, runtime={"save_every": 1, "keep_last": 2})
    ).model_dir
    run = tmp_path / "run"
    assert final == run / "final"
    model = load(final)
    assert model.config.input_size == 128 and model.config.vision.depth == 1
    assert [step for step, _ in list_checkpoints(run)] == [3, 4]
    assert all(
        torch.equal(v, _weights(final)[k]) for k, v in _weights(run / "checkpoints" / "step-00000004" / "model").items()
    )
    rows = _rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"step", "epoch", "lr", "rec", "con", "total", "images_per_s", "max_mem_gb"} <= rows[0].keys()
    assert all(r["images_per_s"] > 0 and math.isfinite(r["total"]) for r in rows)
    assert json.loads((run / "skipped.json").read_text())["replaced_during_training"] == 0
    assert (run / "pretrain_config.yaml").is_file()
    assert json.loads((final / "config.json").read_text())["pretraining"]["steps"] == 4


def test_init_from_starts_at_the_given_weights(manifest_dir: Path, tmp_path: Path) -> None:
    first = pretrain(micro_config(manifest_dir, tmp_path / "a", optim={"max_steps": 2})).model_dir
    config = micro_config(
        manifest_dir,
        tmp_path / "b",
        optim={"max_steps": 1, "lr": 1e-12, "warmup_steps": 0},
        runtime={"init_from": str(first)},
    )
    second = _weights(pretrain(config).model_dir)
    for name, tensor in _weights(first).items():
        torch.testing.assert_close(second[name], tensor, atol=1e-8, rtol=0, msg=name)


def test_missing_image_raise_or_skip_and_count(tmp_path: Path) -> None:
    folder = write_manifest(tmp_path / "data", 9, missing=(4,))
    with pytest.raises(DataError, match=r"line 6: field 'image_path'.*img_004\.png does not exist"):
        pretrain(micro_config(folder, tmp_path / "strict", optim={"max_steps": 1}))
    pretrain(micro_config(folder, tmp_path / "lenient", data={"on_error": "skip"}, optim={"max_steps": 2}))
    payload = json.loads((tmp_path / "lenient" / "skipped.json").read_text())
    assert payload["skipped_when_indexing"] == 1
    assert "img_004.png" in payload["indexing"][0]["reason"]


def test_unreadable_images_are_replaced_counted_and_listed(tmp_path: Path) -> None:
    folder = write_manifest(tmp_path / "data", 8, REPORTS[:7] + ("  ",))
    (folder / "img_002.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"img_00[27]\.png .*field"):
        pretrain(micro_config(folder, tmp_path / "strict", optim={"batch_size": 8, "max_steps": 1}))
    pretrain(
        micro_config(folder, tmp_path / "lenient", data={"on_error": "skip"}, optim={"batch_size": 8, "max_steps": 2})
    )
    payload = json.loads((tmp_path / "lenient" / "skipped.json").read_text())
    counts = {entry["path"].split(" ")[0]: entry["count"] for entry in payload["training"]}
    assert counts == {str(folder / "img_002.png"): 2, str(folder / "img_007.png"): 2}
    assert payload["replaced_during_training"] == 4
    assert _rows(tmp_path / "lenient")[-1]["skipped"] == 4


def test_tensorboard_without_the_package_is_a_clear_error(
    manifest_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    with pytest.raises(ConfigError, match=r"pip install 'maco-cxr\[tensorboard\]'"):
        pretrain(micro_config(manifest_dir, tmp_path / "run", runtime={"tensorboard": True}))


@pytest.mark.slow
def test_overfits_eight_pairs_until_retrieval_is_perfect(manifest_dir: Path, tmp_path: Path) -> None:
    config = micro_config(
        manifest_dir,
        tmp_path / "run",
        optim={"batch_size": 8, "max_steps": 200, "warmup_steps": 5, "lr": 3e-3, "weight_decay": 0.0},
        augment={"enabled": False},
        runtime={"save_every": 1000},
    )
    final = pretrain(config).model_dir
    rows = _rows(tmp_path / "run")
    first, last = rows[:5], rows[-5:]
    for key in ("rec", "con"):
        before = sum(r[key] for r in first) / 5
        after = sum(r[key] for r in last) / 5
        assert after < 0.4 * before, (key, before, after)

    model = load(final)
    images = []
    for i in range(8):
        pixels = read_image(manifest_dir / f"img_{i:03d}.png")
        images.append(torch.from_numpy(Letterbox.fit(*pixels.shape, 128).apply_image(pixels)))
    texts = [sample_report_sentences(report, random.Random(0)) for report in REPORTS]
    with torch.no_grad():
        z = F.normalize(model.encode_images(torch.stack(images).unsqueeze(1)), dim=-1)
        t = F.normalize(model.encode_texts(texts), dim=-1)
    similarity = z @ t.T
    assert similarity.argmax(dim=1).tolist() == list(range(8))  # image -> text
    assert similarity.argmax(dim=0).tolist() == list(range(8))  # text -> image


def test_a_run_that_fails_before_writing_leaves_no_empty_folder(tmp_path: Path) -> None:
    config = micro_config(tmp_path / "no-data", tmp_path / "run")
    with pytest.raises(Exception, match="no-data"):
        pretrain(config)
    assert not (tmp_path / "run").exists()


def test_a_failing_compile_falls_back_to_eager_with_a_message(
    manifest_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """runtime.compile tries torch.compile once on a batch of the training shape; when it fails the
    run goes on eagerly and trains exactly what an eager run trains."""

    def broken_compile(self, *args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("no C compiler for the inductor backend")

        self._compiled_call_impl = fail

    monkeypatch.setattr(torch.nn.Module, "compile", broken_compile)
    with caplog.at_level("WARNING", logger="maco_cxr.pretraining.pretrain"):
        final = pretrain(
            micro_config(manifest_dir, tmp_path / "compiled", optim={"max_steps": 2}, runtime={"compile": True})
        ).model_dir
    assert "torch.compile failed (RuntimeError: no C compiler" in caplog.text
    eager = pretrain(
        micro_config(manifest_dir, tmp_path / "eager", optim={"max_steps": 2}, runtime={"compile": False})
    ).model_dir
    a, b = load(final).state_dict(), load(eager).state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
