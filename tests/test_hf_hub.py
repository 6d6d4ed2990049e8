"""The Hugging Face Hub: `hf-hub:ORG/NAME[@REV]` read offline from a cache laid out as the hub
client lays it out (refs/, snapshots/), for MaCo and fine-tuned folders; `push` tested up to the
commit it would make, the upload faked only at the network boundary (HfApi's two calls)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from maco_cxr.cli import main
from maco_cxr.errors import CheckpointError
from maco_cxr.hub import create_model, load, save_pretrained
from maco_cxr.inference import encode_images
from maco_cxr.models.config import preset
from maco_cxr.push import push_to_hub
from maco_cxr.tasks.finetune import load_finetuned
from tests.tiny_finetuned import save_tiny_segmenter

pytest.importorskip("huggingface_hub")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub-client cache, read offline (the test suite sets HF_HUB_OFFLINE=1)."""
    root = tmp_path / "hf-cache"
    root.mkdir()
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return root


def _publish(cache: Path, repo: str, folder: Path) -> None:
    """Lay ``folder`` out in ``cache`` as the hub client stores a downloaded snapshot of ``repo``."""
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(COMMIT)
    shutil.copytree(folder, base / "snapshots" / COMMIT)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model") / "tiny"
    save_pretrained(create_model(preset("tiny")), folder)
    return folder


def test_a_model_loads_offline_from_the_hub_cache_as_the_folder_itself(hub_cache, model_folder) -> None:
    _publish(hub_cache, "maco-org/tiny", model_folder)
    pixels = list(np.random.default_rng(0).integers(0, 256, (2, 96, 80), dtype=np.uint8))
    expected = encode_images(load(model_folder), pixels)
    for spec in ("hf-hub:maco-org/tiny", f"hf-hub:maco-org/tiny@{COMMIT}"):
        torch.testing.assert_close(encode_images(load(spec), pixels), expected, rtol=0, atol=0)


def test_a_name_missing_from_the_cache_is_a_clear_quick_error(hub_cache) -> None:
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"hf-hub:maco-org/absent: .*offline: only the hub client's cache"):
        load("hf-hub:maco-org/absent")
    assert time.perf_counter() - start < 5
    with pytest.raises(CheckpointError, match="expected hf-hub:ORG/NAME"):
        load("hf-hub:no-slash")


def test_a_fine_tuned_folder_loads_from_the_hub_cache(hub_cache, tmp_path) -> None:
    folder = tmp_path / "seg"
    save_tiny_segmenter(folder)
    _publish(hub_cache, "maco-org/seg", folder)
    image = np.random.default_rng(1).integers(0, 256, (70, 90), dtype=np.uint8)
    ours, theirs = load_finetuned(folder).predict([image]), load_finetuned("hf-hub:maco-org/seg").predict([image])
    assert np.array_equal(np.asarray(ours[0]), np.asarray(theirs[0]))


def test_push_dry_run_shows_the_files_and_the_card(model_folder, capsys) -> None:
    plan = push_to_hub(model_folder, "maco-org/tiny", dry_run=True)
    assert plan.files == ("README.md", "config.json", "model.safetensors", "tokenizer.json") and not plan.uploaded
    front = yaml.safe_load(plan.card.split("---\n")[1])
    assert front["library_name"] == "maco-cxr" and front["license"] == "other" and "chest-x-ray" in front["tags"]
    assert "not a medical device" in plan.card
    assert main(["push", str(model_folder), "maco-org/tiny", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "would upload 4 files to maco-org/tiny: README.md, config.json, model.safetensors" in printed
    assert "--- README.md (the model card) ---" in printed


def test_push_makes_one_commit_of_the_folder_and_its_card(model_folder, monkeypatch) -> None:
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("repo", repo_id, kw)))

    def commit(self, repo_id, operations, commit_message, revision=None):
        calls.append(("commit", repo_id, [(op.path_in_repo, op.path_or_fileobj) for op in operations]))

    monkeypatch.setattr(HfApi, "create_commit", commit)
    plan = push_to_hub(model_folder, "maco-org/tiny", private=True)
    assert plan.uploaded and calls[0] == ("repo", "maco-org/tiny", {"private": True, "exist_ok": True})
    kind, repo, operations = calls[1]
    names = [name for name, _ in operations]
    assert kind == "commit" and names == ["README.md", "config.json", "model.safetensors", "tokenizer.json"]
    assert operations[0][1] == plan.card.encode() and operations[2][1] == str(model_folder / "model.safetensors")
