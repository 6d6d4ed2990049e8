"""Checkpoints: atomic writes, discovery of the newest complete one, pruning, RNG round trips."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from maco_cxr.config import from_dict
from maco_cxr.errors import CheckpointError
from maco_cxr.hub import create_model, load, save_pretrained
from maco_cxr.models.maco import MacoModel
from maco_cxr.pretraining.config import PretrainConfig
from maco_cxr.runtime import checkpoint as ckpt
from maco_cxr.runtime.rng import capture_rng_state, isolated_rng, restore_rng_state

from .conftest import MICRO_MODEL


@pytest.fixture(scope="module")
def model() -> MacoModel:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return create_model(from_dict(PretrainConfig, {"model": MICRO_MODEL}).model)


def _writer(model: MacoModel):
    return lambda folder: save_pretrained(model, folder)


def _state(step: int) -> dict:
    return {"step": step, "values": torch.arange(3) + step, "names": ["a", "b"], "nested": {"x": 1.5}}


def test_save_list_and_load(tmp_path: Path, model: MacoModel) -> None:
    path = ckpt.save_checkpoint(tmp_path, 5, _state(5), _writer(model))
    assert path == tmp_path / "checkpoints" / "step-00000005"
    assert ckpt.list_checkpoints(tmp_path) == [(5, path)]
    state = ckpt.load_trainer_state(path)
    assert state["step"] == 5 and torch.equal(state["values"], torch.tensor([5, 6, 7]))
    assert state["names"] == ["a", "b"] and state["nested"] == {"x": 1.5}
    loaded = load(path / "model")
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_keep_last_prunes_the_oldest(tmp_path: Path, model: MacoModel) -> None:
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, _state(step), _writer(model), keep_last=2)
    assert [step for step, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000004"


def test_an_interrupted_prune_leaves_only_a_hidden_temporary(
    tmp_path: Path, model: MacoModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while an old checkpoint is deleted: no half-deleted folder keeps a checkpoint's name."""
    for step in (1, 2):
        ckpt.save_checkpoint(tmp_path, step, _state(step), _writer(model))
    real_rmtree = ckpt.shutil.rmtree

    def interrupted(path: Path, ignore_errors: bool = False) -> None:
        if not ignore_errors:
            (Path(path) / "trainer_state.pt").unlink()
            raise KeyboardInterrupt
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(ckpt.shutil, "rmtree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 3, _state(3), _writer(model), keep_last=2)
    monkeypatch.undo()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == [".tmp-old.step-00000001", "step-00000002", "step-00000003"]
    assert [step for step, _ in ckpt.list_checkpoints(tmp_path)] == [2, 3]
    ckpt.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]


def test_failure_mid_write_keeps_the_previous_checkpoint(
    tmp_path: Path, model: MacoModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = ckpt.save_checkpoint(tmp_path, 10, _state(10), _writer(model))

    def broken_save(obj: object, path: Path) -> None:
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 20, _state(20), _writer(model))
    assert ckpt.latest_checkpoint(tmp_path) == first
    assert ckpt.load_trainer_state(first)["step"] == 10
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000010"]


def test_a_killed_write_leaves_only_an_ignored_temporary(tmp_path: Path, model: MacoModel) -> None:
    """A SIGKILL skips the clean-up: the half-written temporary must not count as a checkpoint."""
    first = ckpt.save_checkpoint(tmp_path, 10, _state(10), _writer(model))
    stale = tmp_path / "checkpoints" / ".tmp-step-00000020.abc"
    (stale / "model").mkdir(parents=True)
    (stale / "trainer_state.pt").write_bytes(b"half")
    incomplete = tmp_path / "checkpoints" / "step-00000030"
    incomplete.mkdir()
    assert ckpt.latest_checkpoint(tmp_path) == first
    assert ckpt.remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists()


def test_rewriting_a_step_replaces_it(tmp_path: Path, model: MacoModel) -> None:
    ckpt.save_checkpoint(tmp_path, 3, _state(3), _writer(model))
    path = ckpt.save_checkpoint(tmp_path, 3, {**_state(3), "values": torch.zeros(1)}, _writer(model))
    assert torch.equal(ckpt.load_trainer_state(path)["values"], torch.zeros(1))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000003"]


def test_resolve_resume(tmp_path: Path, model: MacoModel) -> None:
    assert ckpt.resolve_resume("never", tmp_path) is None
    assert ckpt.resolve_resume("auto", tmp_path) is None
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        ckpt.resolve_resume(str(tmp_path / "nowhere"), tmp_path)
    path = ckpt.save_checkpoint(tmp_path, 2, _state(2), _writer(model))
    assert ckpt.resolve_resume("auto", tmp_path) == path
    assert ckpt.resolve_resume(str(path), tmp_path / "other") == path
    assert ckpt.resolve_resume(str(tmp_path), tmp_path / "other") == path


def test_trainer_state_must_be_readable(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="missing"):
        ckpt.load_trainer_state(tmp_path)
    (tmp_path / "trainer_state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="weights_only"):
        ckpt.load_trainer_state(tmp_path)


def test_weights_of_another_model_are_rejected(tmp_path: Path, model: MacoModel) -> None:
    path = ckpt.save_checkpoint(tmp_path, 1, _state(1), _writer(model))
    other = create_model(
        from_dict(PretrainConfig, {"model": {**MICRO_MODEL, "vision": {**MICRO_MODEL["vision"], "depth": 2}}}).model
    )
    with pytest.raises(CheckpointError, match=r"missing \['visual\.blocks\.1"):
        ckpt.load_model_weights(other, path)


def test_rng_state_round_trips_through_weights_only(tmp_path: Path) -> None:
    device = torch.device("cpu")
    generator = torch.Generator().manual_seed(3)
    with isolated_rng(7, device):
        state = capture_rng_state(generator, device)
        torch.save(state, tmp_path / "rng.pt")
        expected = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=generator))
        restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), generator, device)
        again = (random.random(), np.random.rand(), torch.rand(2), torch.rand(2, generator=generator))
    assert expected[:2] == again[:2]
    assert torch.equal(expected[2], again[2]) and torch.equal(expected[3], again[3])


def test_isolated_rng_restores_the_callers_generators() -> None:
    device = torch.device("cpu")
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    with isolated_rng(0, device):
        inside = torch.rand(1)
        random.random()
        np.random.rand()
    with isolated_rng(0, device):
        assert torch.equal(torch.rand(1), inside)
    assert random.getstate() == before[0]
    assert np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.get_rng_state(), before[2])
