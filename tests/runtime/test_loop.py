"""The one run skeleton on a tiny regression (no task, no data files): Ctrl-C names the step and
keeps the newest checkpoint, so a rerun resumes and ends with the weights of an uninterrupted
run; stop_at_step hands the kind of training where the loop ended; a non-finite loss stops the
run naming the step."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from maco_cxr._atomic import MARKER_NAME
from maco_cxr.errors import DataError, RunInterrupted
from maco_cxr.runtime.checkpoint import list_checkpoints
from maco_cxr.runtime.loop import Run, RunEnd, RunHooks, RunSettings, run_training

STEPS = 6


class _Regression(RunHooks[dict]):
    """A two-layer net with dropout on seeded batches: each batch is a function of its step, the
    dropout draws come from the per-rank generator the skeleton seeds and restores."""

    def __init__(
        self,
        *,
        interrupt_in_step: int | None = None,
        interrupt_in_save: int | None = None,
        nan_at: int | None = None,
        interrupt_at_start: bool = False,
    ) -> None:
        self.interrupt_in_step, self.interrupt_in_save = interrupt_in_step, interrupt_in_save
        self.nan_at, self.interrupt_at_start = nan_at, interrupt_at_start
        self.resumed_from: int | None = None
        self.current = -1

    def prepare(self, run: Run) -> None:
        if self.interrupt_at_start:
            raise KeyboardInterrupt
        self.total_steps, self.samples_per_step = STEPS, 4

    def build(self, run: Run, *, initialise: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
        self.model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 1))
        return self.model, torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)

    def resume(self, state: Mapping[str, Any], checkpoint: Path) -> None:
        self.resumed_from = int(state["step"])
        assert state["seen"] == state["step"] * 4  # the kind's own part of the state came back

    def lr_multiplier(self, step: int) -> float:
        self.current = step
        return 1.0 - step / STEPS

    def batches(self, run: Run, start_step: int) -> Iterator[Any]:
        step = start_step
        while True:
            x = torch.randn(4, 3, generator=torch.Generator().manual_seed(step))
            yield x, x.sum(1, keepdim=True)
            step += 1

    def loss(self, model: nn.Module, batch: Any, run: Run) -> dict[str, torch.Tensor]:
        if self.current == self.interrupt_in_step:
            raise KeyboardInterrupt
        x, y = batch
        prediction = model(x)
        loss = F.mse_loss(prediction, y) * (float("nan") if self.current == self.nan_at else 1.0)
        return {"loss": loss, "abs": (prediction - y).abs().mean()}

    def state(self, done: int) -> dict[str, Any]:
        return {"seen": done * 4}

    def write_model(self, folder: Path) -> None:
        folder.mkdir(parents=True)
        tensors = {k: v.contiguous() for k, v in self.model.state_dict().items()}
        save_file(tensors, str(folder / "model.safetensors"))
        if self.current + 1 == self.interrupt_in_save:
            raise KeyboardInterrupt

    def finish(self, run: Run, end: RunEnd) -> dict:
        return {"end": end, "weights": {k: v.clone() for k, v in self.model.state_dict().items()}}


def _settings(out: Path, **changes: Any) -> RunSettings:
    settings = RunSettings(
        name="regression",
        output_dir=out,
        config={"lr": 0.1},
        may_differ=("stop_at_step",),
        device="cpu",
        precision="fp32",
        seed=3,
        resume="auto",
        lr=0.1,
        accum_steps=1,
        clip_grad=1.0,
        log_every=1,
        save_every=2,
        keep_last=2,
        stop_at_step=None,
        workers=0,
        progress=False,
        tensorboard=False,
    )
    return replace(settings, **changes)


def _logged_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _leftovers(out: Path) -> list[str]:
    """Hidden temporaries left in the run folder (the folder's own marker is not one)."""
    folders = (out, out / "checkpoints")
    return sorted(
        p.name for folder in folders for p in folder.iterdir() if p.name.startswith(".") and p.name != MARKER_NAME
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run_training(_settings(tmp_path_factory.mktemp("whole")), _Regression())


def test_ctrl_c_in_a_step_names_it_and_a_rerun_resumes_exactly(tmp_path: Path, uninterrupted: dict) -> None:
    out = tmp_path / "run"
    with pytest.raises(RunInterrupted, match="^step 3$") as err:
        run_training(_settings(out), _Regression(interrupt_in_step=3))
    assert isinstance(err.value, KeyboardInterrupt) and err.value.where == "step 3"
    assert [step for step, _ in list_checkpoints(out)] == [2] and _leftovers(out) == []
    again = _Regression()
    resumed = run_training(_settings(out), again)
    assert again.resumed_from == 2 and resumed["end"] == RunEnd(out, STEPS, STEPS)
    assert _same(resumed["weights"], uninterrupted["weights"])
    assert _logged_steps(out) == list(range(1, STEPS + 1))


def test_ctrl_c_while_saving_keeps_the_previous_checkpoint(tmp_path: Path, uninterrupted: dict) -> None:
    out = tmp_path / "run"
    with pytest.raises(RunInterrupted, match="^step 4$"):
        run_training(_settings(out), _Regression(interrupt_in_save=4))
    assert [step for step, _ in list_checkpoints(out)] == [2] and _leftovers(out) == []
    resumed = run_training(_settings(out), _Regression())
    assert _same(resumed["weights"], uninterrupted["weights"])


def test_ctrl_c_before_the_first_step_says_so_and_leaves_no_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(RunInterrupted, match="^start-up$"):
        run_training(_settings(tmp_path / "run"), _Regression(interrupt_at_start=True))
    assert not (tmp_path / "run").exists()


def test_stop_at_step_hands_the_end_to_the_kind_and_the_rerun_continues(tmp_path: Path, uninterrupted: dict) -> None:
    out = tmp_path / "run"
    stopped = run_training(_settings(out, stop_at_step=4), _Regression())
    assert stopped["end"] == RunEnd(out, 4, STEPS) and stopped["end"].stopped_early
    assert [step for step, _ in list_checkpoints(out)] == [2, 4]
    finished = run_training(_settings(out), _Regression())
    assert not finished["end"].stopped_early and _same(finished["weights"], uninterrupted["weights"])


def test_a_non_finite_loss_stops_the_run_naming_the_step(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"training loss became nan by step 3; lower optim\.lr \(now 0\.1\)"):
        run_training(_settings(tmp_path / "run"), _Regression(nan_at=2))
