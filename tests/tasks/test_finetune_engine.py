"""The one fine-tuning loop, for each task on phantoms: 2 processes equal 1, a stopped and
resumed run equals an uninterrupted one, and a reloaded model reproduces the test metrics."""

from __future__ import annotations

import json
import os
import socket
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from maco_cxr._atomic import json_ready
from maco_cxr.config import load_config
from maco_cxr.data.io import read_image
from maco_cxr.data.synthetic import write_synthetic_dataset
from maco_cxr.errors import CheckpointError, ConfigError
from maco_cxr.metrics import coco_detection_ap, roc_auc_per_class
from maco_cxr.metrics.segmentation import segmentation_report
from maco_cxr.tasks.finetune import (
    ClassifyConfig,
    DetectConfig,
    SegmentConfig,
    finetune_classifier,
    load_finetuned,
    train_detector,
    train_segmenter,
)
from maco_cxr.tasks.finetune.engine import FitResult, GlobalBatchSampler, describe_validation
from maco_cxr.tasks.finetune.splits import build_splits

# SGD everywhere: AdamW turns float noise in near-zero gradients into lr-sized steps, which would
# hide real differences between 1 and 2 processes behind a loose tolerance.
COMMON = [
    "data.workers=0",
    "model.preset=tiny",
    "model.source=none",
    "runtime.device=cpu",
    "runtime.log_every=1",
    "model.drop_path_rate=0",
    "optim.warmup_steps=1",
    "runtime.save_every=2",
    "optim.name=sgd",
    "optim.weight_decay=0",
]
TASKS = {
    "classify": (
        ClassifyConfig,
        finetune_classifier,
        [
            "model.img_size=32",
            "optim.batch_size=8",
            "optim.lr=0.05",
            "optim.steps=4",
            "evaluation.every=2",
            "evaluation.bootstrap=20",
        ],
    ),
    "segment": (
        SegmentConfig,
        train_segmenter,
        [
            "input.image_size=64",
            "optim.batch_size=4",
            "optim.steps=4",
            "optim.lr=0.05",
            "evaluation.every=2",
            "evaluation.bootstrap=20",
            "evaluation.overlays=2",
            "input.missing_mask=empty",
            "head.dropout=0",
            "data.options.mask_labels=[pneumothorax, pleural effusion]",
        ],
    ),
    "detect": (
        DetectConfig,
        train_detector,
        [
            "data.kind=manifest",
            "input.image_size=64",
            "optim.batch_size=4",
            "optim.steps=4",
            "optim.lr=0.02",
            "evaluation.every=2",
            "evaluation.overlays=2",
        ],
    ),
}


def _config(task: str, root: Path, out: Path, *extra: str):
    kind, _, overrides = TASKS[task]
    return load_config(kind, None, [f"data.root={root}", f"runtime.out={out}", *COMMON, *overrides, *extra])


def _run(task: str, root: Path, out: Path, *extra: str) -> FitResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # undefined AUCs of tiny validation sets
        return TASKS[task][1](_config(task, root, out, *extra))


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    write_synthetic_dataset(out, 48, seed=3, size=64, split_fractions=(0.5, 0.25, 0.25))
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    """Every task in one pair of processes (starting them is the slow part)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from maco_cxr.runtime.distributed import cleanup_distributed, init_distributed

    init_distributed("gloo")
    try:
        results = {task: asdict(_run(task, Path(root), Path(out) / task)) for task in TASKS}
        (Path(out) / f"results-rank{rank}.json").write_text(json.dumps(json_ready(results)))
    finally:
        cleanup_distributed()


@pytest.fixture(scope="module")
def two_processes(phantoms: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(phantoms), str(out)), nprocs=2)
    return out


@pytest.fixture(scope="module")
def one_process(phantoms: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for task in TASKS:
            _run(task, phantoms, out / task)
    finally:
        torch.set_num_threads(threads)
    return out


def _val_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if any(k.startswith("val_") for k in r)]


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_two_processes_train_what_one_process_trains(task: str, one_process: Path, two_processes: Path) -> None:
    one, two = one_process / task, two_processes / task
    a, b = load_file(one / "final" / "model.safetensors"), load_file(two / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-5, msg=name)
    val_one, val_two = _val_rows(one), _val_rows(two)
    assert [r["step"] for r in val_one] == [r["step"] for r in val_two] == [2, 4]
    for x, y in zip(val_one, val_two):
        for key, value in x.items():
            if key.startswith("val_") and isinstance(value, float):
                assert y[key] == pytest.approx(value, abs=1e-5), key
    m1, m2 = (json.loads((run / "metrics.json").read_text()) for run in (one, two))
    assert m2["processes"] == 2 and m1["processes"] == 1
    assert m2["data"]["counts"] == m1["data"]["counts"]
    # test metrics come from the WHOLE test split gathered over the ranks, not from one shard
    assert m2["test"]["n_images"] == m1["test"]["n_images"] == m1["data"]["counts"]["test"]
    # only rank 0 wrote: one log line per step and validation, no stray files
    assert len((two / "log.jsonl").read_text().splitlines()) == len((one / "log.jsonl").read_text().splitlines())


@pytest.mark.slow
def test_every_rank_returns_the_same_result(two_processes: Path) -> None:
    rank0, rank1 = (json.loads((two_processes / f"results-rank{rank}.json").read_text()) for rank in range(2))
    assert rank0 == rank1
    for task in TASKS:
        written = json.loads((two_processes / task / "metrics.json").read_text())
        assert rank0[task]["summary"] == written and rank0[task]["step"] == rank0[task]["total_steps"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_stopped_and_resumed_run_ends_equal_to_an_uninterrupted_one(
    task: str, phantoms: Path, one_process: Path, tmp_path: Path
) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        stopped = _run(task, phantoms, tmp_path / "run", "runtime.stop_at_step=2", "runtime.resume=auto")
        assert stopped.stopped_at_step == 2 and stopped.summary == {} and stopped.metrics_path is None
        assert not (tmp_path / "run" / "metrics.json").exists()
        _run(task, phantoms, tmp_path / "run", "runtime.resume=auto")
    finally:
        torch.set_num_threads(threads)
    resumed = load_file(tmp_path / "run" / "final" / "model.safetensors")
    whole = load_file(one_process / task / "final" / "model.safetensors")
    for name in whole:
        assert torch.equal(resumed[name], whole[name]), name
    a = json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    b = json.loads((one_process / task / "metrics.json").read_text())["test"]
    assert a == b
    log = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log == [json.loads(line)["step"] for line in (one_process / task / "log.jsonl").read_text().splitlines()]
    # a changed setting is refused, with the key named
    with pytest.raises(CheckpointError, match=r"optim\.lr"):
        _run(task, phantoms, tmp_path / "run", "runtime.resume=auto", "optim.lr=0.123")


@pytest.mark.slow
def test_reloaded_classifier_reproduces_the_test_metrics(phantoms: Path, one_process: Path) -> None:
    run = one_process / "classify"
    metrics = json.loads((run / "metrics.json").read_text())
    model = load_finetuned(run / "best")
    assert not model.training and model.task == "classification" and model.preprocessing["input_size"] == 32
    test = build_splits(_config("classify", phantoms, run).data).test
    paths = [str(r.image_path) for r in test.records]
    probabilities = model.predict(paths)
    assert probabilities.shape == (len(paths), len(model.classes))
    one = model.predict(read_image(paths[0]))
    torch.testing.assert_close(one[0], probabilities[0])
    labels = np.stack([r.labels for r in test.records])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        aucs = roc_auc_per_class(labels, probabilities.numpy(), model.classes)
    for name, auc in zip(model.classes, aucs):
        expected = metrics["test"]["per_class_auc"][name]
        assert (expected is None and np.isnan(auc)) or auc == pytest.approx(expected, abs=1e-6), name
    ci = metrics["test"]["mean_auc_ci95"]
    assert ci["low"] <= metrics["test"]["mean_auc"] <= ci["high"] and ci["n_resamples"] == 20
    assert "at_val_youden_threshold" in metrics["test"] and "report_at_0.5" in metrics["test"]


@pytest.mark.slow
def test_reloaded_segmenter_reproduces_the_test_metrics(phantoms: Path, one_process: Path) -> None:
    run = one_process / "segment"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["target_labels"] == ["pneumothorax", "pleural effusion"]
    model = load_finetuned(run / "best")
    test = build_splits(_config("segment", phantoms, run).data).test
    masks = model.predict([str(r.image_path) for r in test.records])
    truths = [(test[i]["mask"].numpy() if "mask" in test[i] else np.zeros_like(masks[i][0])) for i in range(len(test))]
    assert all(m.shape == (1, *t.shape) and m.dtype == np.uint8 for m, t in zip(masks, truths))
    report = segmentation_report([m[0] for m in masks], truths, ignore_index=None)
    for key in ("dice_per_image_mean", "dice_foreground_dataset", "dice_mean_over_classes"):
        assert report[key] == pytest.approx(metrics["test"][key], abs=1e-9), key
    assert len(list((run / "overlays").glob("*.png"))) == 2


@pytest.mark.slow
def test_reloaded_detector_reproduces_the_test_metrics(phantoms: Path, one_process: Path) -> None:
    run = one_process / "detect"
    metrics = json.loads((run / "metrics.json").read_text())
    model = load_finetuned(run / "best")
    config = _config("detect", phantoms, run)
    test = build_splits(config.data).test
    records = [r for r in test.records if r.boxes is not None and len(r.boxes)]
    predictions = model.predict([str(r.image_path) for r in records])
    assert all(p["boxes"].shape[1:] == (4,) for p in predictions)
    scores = coco_detection_ap(predictions, [{"boxes": r.boxes} for r in records])
    for key in ("AP", "AP50", "AP75"):
        assert scores[key] == pytest.approx(metrics["test"][key], abs=1e-9), key


def test_the_validation_schedule_is_described_as_it_runs() -> None:
    assert describe_validation(1000, 12) == "validation at the end only (every 1000 > 12 steps)"
    assert describe_validation(0, 12) == "validation at the end only (step 12; evaluation.every=0)"
    assert describe_validation(12, 12) == "validation at the end only (step 12)"
    assert describe_validation(4, 12) == "validation every 4 steps, 3 in all"
    assert describe_validation(5, 12) == "validation every 5 steps and at the end (step 12), 3 in all"


def test_global_batch_sampler_shards_every_micro_batch_and_resumes() -> None:
    whole = GlobalBatchSampler(10, seed=4, micro_batch=4)
    stream = iter(whole)
    first = [next(stream) for _ in range(12)]
    shards = [iter(GlobalBatchSampler(10, seed=4, micro_batch=4, rank=r, world=2)) for r in range(2)]
    interleaved = []
    for _ in range(3):
        for shard in shards:
            interleaved += [next(shard) for _ in range(2)]
    assert interleaved == first
    assert [d for _, d in first] == list(range(12))  # draw ids are global positions
    assert sorted(i for i, _ in first[:10]) == list(range(10))  # one epoch is a permutation
    later = iter(GlobalBatchSampler(10, seed=4, micro_batch=4, start=8))
    assert [next(later) for _ in range(4)] == first[8:12]
    with pytest.raises(ConfigError, match="does not split"):
        GlobalBatchSampler(10, seed=0, micro_batch=3, world=2)


def test_the_global_batch_must_split_over_processes_and_micro_steps(phantoms: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"optim\.batch_size: 8 does not split into 3 micro-steps"):
        _run("classify", phantoms, tmp_path / "bad", "optim.accum_steps=3")
    assert not (tmp_path / "bad").exists()  # a run that fails before writing leaves no folder


def test_gradient_accumulation_gives_the_gradient_of_the_whole_batch(phantoms: Path, tmp_path: Path) -> None:
    """Two micro-steps of 4 train what one step of 8 trains (the loss is a mean over known labels)."""
    whole = _run(
        "classify", phantoms, tmp_path / "whole", "optim.steps=2", "evaluation.every=2", "evaluation.bootstrap=0"
    )
    split = _run(
        "classify",
        phantoms,
        tmp_path / "split",
        "optim.steps=2",
        "evaluation.every=2",
        "evaluation.bootstrap=0",
        "optim.accum_steps=2",
    )
    assert whole.test["n_images"] == split.test["n_images"]
    a = load_file(tmp_path / "whole" / "final" / "model.safetensors")
    b = load_file(tmp_path / "split" / "final" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)
