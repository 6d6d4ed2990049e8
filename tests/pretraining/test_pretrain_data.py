"""Pre-training data: sharded resumable sampling, reproducible text, bad samples replaced or named."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from maco_cxr.data.datasets import build_dataset
from maco_cxr.data.reports import negation_counterfactual, sample_report_sentences
from maco_cxr.data.tokenizer import ReportTokenizer
from maco_cxr.errors import ConfigError, DataError
from maco_cxr.pretraining.config import load_pretrain_config
from maco_cxr.pretraining.data import PairCollate, PairDataset, RecordSource, ResumableSampler, SkipLog

from .conftest import write_manifest


def _blocks(sampler: ResumableSampler) -> list[list[int]]:
    keys = list(sampler)
    indices = [index for _, index in keys]
    return [indices[i : i + sampler.batch_size] for i in range(0, len(indices), sampler.batch_size)]


def test_sampler_cuts_the_epoch_permutation_into_rank_blocks() -> None:
    ranks = [ResumableSampler(20, 2, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    one = ResumableSampler(20, 4, 4, seed=3)
    for sampler in (*ranks, one):
        sampler.set_position(epoch=1)
    perm = one.permutation(1)
    for k in range(4):
        assert _blocks(ranks[0])[k] + _blocks(ranks[1])[k] == perm[4 * k : 4 * k + 4].tolist()
        assert _blocks(one)[k] == perm[4 * k : 4 * k + 4].tolist()
    assert {epoch for epoch, _ in ranks[0]} == {1}
    assert len(ranks[0]) == 8
    assert not np.array_equal(one.permutation(0), one.permutation(1))
    assert np.array_equal(one.permutation(1), ResumableSampler(20, 4, 4, seed=3).permutation(1))


def test_sampler_resumes_mid_epoch() -> None:
    full = ResumableSampler(12, 3, 4, seed=0)
    full.set_position(2)
    resumed = ResumableSampler(12, 3, 4, seed=0)
    resumed.set_position(2, start=3)
    assert list(resumed) == list(full)[9:]
    assert len(resumed) == 3


def test_sampler_rejects_too_few_samples() -> None:
    with pytest.raises(ConfigError, match="need more than the 7 samples"):
        ResumableSampler(7, 2, 2, seed=0, world_size=2)


def _pairs(folder: Path, on_error: str = "raise", size: int = 64, text: str = "sentences") -> PairDataset:
    dataset = build_dataset("manifest", folder, on_error=on_error)
    return PairDataset(RecordSource(dataset, str(folder)), size, seed=11, on_error=on_error, text=text)


def test_samples_are_letterboxed_uint8_with_reproducible_text(tmp_path: Path) -> None:
    reports = ("One. Two. Three. Four.",) * 2
    pairs = _pairs(write_manifest(tmp_path, 2, reports))
    sample = pairs[(0, 1)]
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (1, 64, 64)
    assert sample["index"] == 1 and sample["skipped"] == []
    expected = sample_report_sentences(reports[0], random.Random("maco-text:11:0:1"))
    assert sample["text"] == expected == pairs[(0, 1)]["text"]
    texts = {pairs[(epoch, 1)]["text"] for epoch in range(12)}
    assert len(texts) > 3
    for text in texts:
        pieces = text.split(". ")
        assert pieces[-1] == "" and len(set(pieces[:-1])) == len(pieces) - 1
        assert set(pieces[:-1]) <= {"one", "two", "three", "four"}


def test_full_text_mode_gives_the_whole_report_every_epoch(tmp_path: Path) -> None:
    pairs = _pairs(write_manifest(tmp_path, 2, ("One. Two. None. Three.",) * 2), text="full")
    assert {pairs[(epoch, 1)]["text"] for epoch in range(5)} == {"one. two. three. "}


def test_unknown_text_mode_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"data\.text: 'paragraphs' is not one of 'sentences', 'full'"):
        load_pretrain_config(None, ["data.text=paragraphs"])


def test_collate_tokenizes_and_keeps_uint8(tmp_path: Path) -> None:
    pairs = _pairs(write_manifest(tmp_path, 3))
    batch = PairCollate(ReportTokenizer.from_file(None, 16))([pairs[(0, i)] for i in range(3)])
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (3, 1, 64, 64)
    ids = batch["tokens"]["input_ids"]
    assert ids.shape[0] == 3 and ids.shape[1] % 8 == 0 and ids.shape[1] <= 16  # trailing padding trimmed
    assert torch.equal(
        ids,
        PairCollate(ReportTokenizer.from_file(None, 16)).tokenizer([pairs[(0, i)]["text"] for i in range(3)])[
            "input_ids"
        ][:, : ids.shape[1]],
    )
    assert torch.equal(batch["index"], torch.tensor([0, 1, 2]))


def test_negation_negatives_flip_one_sentence_reproducibly_and_are_tokenized(tmp_path: Path) -> None:
    folder = write_manifest(tmp_path, 3, ("No pneumothorax. Mild cardiomegaly. The trachea is midline.",) * 3)
    dataset = build_dataset("manifest", folder)
    pairs = PairDataset(RecordSource(dataset, str(folder)), 64, seed=11, text="full", negation_negatives=True)
    sample = pairs[(2, 1)]
    assert sample["text"] == "no pneumothorax. mild cardiomegaly. the trachea is midline. "
    expected = negation_counterfactual(sample["text"], random.Random("maco-negation:11:2:1"))
    assert sample["negative_text"] == expected == pairs[(2, 1)]["negative_text"] != sample["text"]
    assert {pairs[(epoch, 1)]["negative_text"] for epoch in range(12)} == {
        "there is pneumothorax. mild cardiomegaly. the trachea is midline. ",
        "no pneumothorax. no mild cardiomegaly. the trachea is midline. ",
        "no pneumothorax. mild cardiomegaly. no the trachea is midline. ",
    }
    batch = PairCollate(ReportTokenizer.from_file(None, 16))([pairs[(0, i)] for i in range(3)])
    assert batch["negative_tokens"]["input_ids"].shape[0] == batch["tokens"]["input_ids"].shape[0] == 3
    assert "negative_text" not in _pairs(folder)[(0, 1)]


def test_missing_image_raises_naming_file_line_and_field(tmp_path: Path) -> None:
    folder = write_manifest(tmp_path, 4, missing=(2,))
    with pytest.raises(DataError, match=r"manifest\.csv, line 4: field 'image_path'.*img_002\.png"):
        build_dataset("manifest", folder, on_error="raise")
    dataset = build_dataset("manifest", folder, on_error="skip")
    assert len(dataset) == 3 and len(dataset.skips) == 1


def test_unreadable_image_and_empty_report_raise_or_are_replaced(tmp_path: Path) -> None:
    folder = write_manifest(tmp_path, 4, ("Effusion.", "Nodule.", "", "Edema."))
    (folder / "img_001.png").write_bytes(b"not a png at all")
    strict = _pairs(folder)
    with pytest.raises(DataError, match=r"img_001\.png.*set data\.on_error=skip"):
        strict[(0, 1)]
    with pytest.raises(DataError, match=r"img_002\.png .*field 'report' is empty"):
        strict[(0, 2)]

    lenient = _pairs(folder, on_error="skip")
    sample = lenient[(0, 1)]
    assert sample["index"] == 3 and sample["text"] == "edema. "
    assert [item["path"].split(" ")[0] for item in sample["skipped"]] == [
        str(folder / "img_001.png"),
        str(folder / "img_002.png"),
    ]
    assert "report" in sample["skipped"][1]["reason"]


def test_skip_log_counts_and_writes(tmp_path: Path) -> None:
    log = SkipLog(index_time=[{"where": "m.csv, line 3", "reason": "missing"}])
    log.add([{"path": "a.png", "reason": "corrupt"}, {"path": "b.png", "reason": "empty"}])
    log.add([{"path": "a.png", "reason": "corrupt"}])
    assert log.replaced_count == 3
    again = SkipLog()
    again.load_state(log.state())
    assert again == log
    log.write(tmp_path / "skipped.json")
    payload = json.loads((tmp_path / "skipped.json").read_text())
    assert payload["skipped_when_indexing"] == 1 and payload["replaced_during_training"] == 3
    assert {e["path"]: e["count"] for e in payload["training"]} == {"a.png": 2, "b.png": 1}
