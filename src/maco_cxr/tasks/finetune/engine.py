"""The one fine-tuning loop: classification, segmentation and detection differ only in a task spec.

:func:`fit` runs a :class:`FinetuneTask` on one CPU, one GPU or many GPUs under ``torchrun``:

- **steps**: per-iteration lr (linear warm-up, then cosine or poly, from
  :mod:`maco_cxr.train.schedules`), ``optim.accum_steps`` micro-steps (DDP's gradient
  all-reduce only on the last), bf16 autocast on CUDA, gradient clipping, SGD or AdamW with
  layer-wise lr decay;
- **data**: ``optim.batch_size`` is the global batch of a step. A seeded endless stream of
  ``(index, draw id)`` keys (:class:`GlobalBatchSampler`) is cut into global micro-batches and
  each rank takes its contiguous share; a sample's augmentation is seeded by its draw id, so
  a batch is a pure function of the seed and the step, whatever the number of processes or
  loader workers. BatchNorm layers use the statistics of the global batch
  (:class:`~maco_cxr.train.distributed.GlobalBatchNorm2d`). So N processes train what one
  process does (up to float rounding; dropout and drop-path draw per rank);
- **evaluation**: every split is predicted in shards (rank r takes items r, r + W, ...), the
  per-item predictions are gathered on every rank, sorted back into order and scored once on
  the WHOLE split, never averaged per rank. Unreadable images (``data.on_error=skip``) are
  left out and listed;
- **selection**: validation every ``eval_every`` steps and at the end; the best (or last)
  model by the task's selection metric is written to ``best/``, the last one to ``final/``;
- **exact resume**: every ``runtime.save_every`` steps a checkpoint holds the model, the
  optimizer, the step (the sampler position follows from it), every rank's RNG states and the
  best-so-far; ``runtime.resume=auto`` continues a killed run and ends with the weights and
  metrics an uninterrupted run has, and refuses a run whose settings differ;
- **outputs**: only rank 0 logs (tqdm, ``log.jsonl``, optional TensorBoard) and writes.

A task supplies what differs: its datasets' items, the model, the loss of a batch, the
predictions of prepared items, the metrics of a split and its output writers.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from tqdm.auto import tqdm

from maco_cxr._atomic import remove_stale_temporaries, write_json
from maco_cxr.config import config_to_dict
from maco_cxr.data.datasets.base import ChestXrayDataset, failure_of, is_failed
from maco_cxr.errors import ConfigError, DataError
from maco_cxr.inference import autocast
from maco_cxr.tasks.finetune.config import RESUMABLE_CHANGES
from maco_cxr.tasks.finetune.model_io import FinetunedModel, load_weights, read_finetuned, save_finetuned
from maco_cxr.tasks.finetune.splits import FinetuneSplits, build_splits
from maco_cxr.train import distributed as dist_utils
from maco_cxr.train.checkpoint import (
    check_same_run,
    load_model_weights,
    load_trainer_state,
    resolve_resume,
    save_checkpoint,
)
from maco_cxr.train.metrics_log import MetricsLog
from maco_cxr.train.optim import build_adamw, param_groups
from maco_cxr.train.rng import capture_rng_state, restore_rng_state
from maco_cxr.train.schedules import lr_multiplier, set_learning_rate

__all__ = ["EvalItems", "FinetuneTask", "GlobalBatchSampler", "Run", "fit", "read_training_sample"]

logger = logging.getLogger(__name__)

BEST_DIR = "best"
FINAL_DIR = "final"
LOG_NAME = "log.jsonl"


class GlobalBatchSampler(Sampler[tuple[int, int]]):
    """This rank's share of an endless, seeded stream of ``(dataset index, draw id)`` keys.

    Global position ``p`` is sample ``permutation(seed, epoch)[p % n]`` of epoch ``p // n``
    with draw id ``p``. The stream is cut into global micro-batches of ``micro_batch``
    positions; rank ``r`` of ``world`` yields positions ``r * b ... (r + 1) * b - 1`` of each
    (``b = micro_batch / world``), from global position ``start`` on (a resumed run starts
    at ``step * batch_size``).
    """

    def __init__(self, num_samples: int, seed: int, micro_batch: int, *, rank: int = 0, world: int = 1,
                 start: int = 0) -> None:
        if num_samples < 1:
            raise DataError("cannot sample from an empty training set")
        if micro_batch % world:
            raise ConfigError(f"a micro-batch of {micro_batch} does not split over {world} processes")
        self.num_samples, self.seed, self.micro_batch = num_samples, seed, micro_batch
        self.rank, self.world, self.start = rank, world, start
        self.local = micro_batch // world

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start
        epoch, order = position // self.num_samples, self._order(position // self.num_samples)
        while True:
            block = position // self.micro_batch
            offset = block * self.micro_batch + self.rank * self.local
            for p in range(offset, offset + self.local):
                if p // self.num_samples != epoch:
                    epoch, order = p // self.num_samples, self._order(p // self.num_samples)
                yield int(order[p % self.num_samples]), p
            position = (block + 1) * self.micro_batch


@dataclass
class Run:
    """What a task's hooks may use of the running loop."""

    device: torch.device
    info: dist_utils.DistInfo
    precision: str
    workers: int
    progress: bool

    def autocast(self) -> Any:
        return autocast(self.device, self.precision)

    def map_items(self, items: Dataset, predict: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
                  batch_size: int, desc: str) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """``predict`` over every item of ``items``, this rank on its shard (items r, r + W, ...),
        the records gathered on every rank and sorted by ``index``; unreadable items
        (``{"failure": ...}``) are returned apart."""
        shard = Subset(items, range(self.info.rank, len(items), self.info.world_size))
        workers = 0 if getattr(items, "in_memory", False) else self.workers
        loader = DataLoader(shard, batch_size=batch_size, num_workers=workers, collate_fn=_items,
                            generator=torch.Generator().manual_seed(0))
        records: list[dict[str, Any]] = []
        failures: list[dict[str, str]] = []
        with torch.inference_mode():
            for batch in tqdm(loader, desc=desc, leave=False, disable=not (self.progress and self.info.is_master)):
                good = [item for item in batch if "failure" not in item]
                failures += [item["failure"] for item in batch if "failure" in item]
                if good:
                    records += predict(good)
        gathered = dist_utils.all_gather_objects((records, failures))
        records = sorted((r for part, _ in gathered for r in part), key=lambda r: r["index"])
        failures = [f for _, part in gathered for f in part]
        if not records:
            raise DataError(f"no image of the {desc} split could be read ({len(failures)} failed; first: "
                            f"{failures[0] if failures else None})")
        return records, failures

    def global_sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (no gradient), for loss normalisers that must be global."""
        return dist_utils.all_reduce_sum(value)


class FinetuneTask(ABC):
    """What one fine-tuning task supplies; the loop does the rest (see the module docstring).

    ``config`` has the shared sections ``data``, ``optim``, ``runtime``, ``model`` plus the
    task's own. Items are plain dicts; anything returned by :meth:`predict` must be picklable
    (it is gathered across ranks) and carry the dataset ``index``.
    """

    name: ClassVar[str]

    def __init__(self, config: Any) -> None:
        self.config = config

    # data -----------------------------------------------------------------------------
    def splits(self) -> FinetuneSplits:
        """The run's train / val / test datasets (a task may filter them, counting what it drops)."""
        return build_splits(self.config.data)

    @abstractmethod
    def train_items(self, dataset: ChestXrayDataset, run: Run, model: FinetunedModel) -> Dataset:
        """Training items keyed by ``(index, draw id)``, augmentation seeded by the draw id."""

    def collate_train(self, items: list[dict[str, Any]]) -> Any:
        return items

    @abstractmethod
    def eval_items(self, dataset: ChestXrayDataset, model: FinetunedModel, run: Run, role: str) -> Dataset:
        """Evaluation items keyed by index: prepared inputs plus the truth to score against, or
        ``{"index", "failure"}`` for an unreadable image. ``role``: ``val`` or ``test``."""

    # model ----------------------------------------------------------------------------
    @abstractmethod
    def build_model(self, splits: FinetuneSplits) -> tuple[FinetunedModel, dict[str, Any]]:
        """The model to train (backbone loaded) and a summary of what loaded."""

    def num_layers(self, model: FinetunedModel) -> int:
        """Depth for layer-wise lr decay (the ViT's number of blocks)."""
        return len(model.net.backbone.blocks)

    def no_weight_decay(self, model: FinetunedModel) -> set[str]:
        return {f"net.{name}" for name in model.net.no_weight_decay()}

    # steps ----------------------------------------------------------------------------
    @abstractmethod
    def loss(self, model: nn.Module, batch: Any, run: Run) -> dict[str, torch.Tensor]:
        """``{"loss": tensor, part: tensor...}`` of one micro-batch; ``model`` may be DDP-wrapped."""

    @abstractmethod
    def predict(self, model: FinetunedModel, items: Sequence[dict[str, Any]], run: Run) -> list[dict[str, Any]]:
        """Per-item records of prepared items (with their ``index``), for :meth:`evaluate`."""

    @abstractmethod
    def evaluate(self, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Metrics of a whole split (records in dataset order); holds :attr:`selection_metric`."""

    @property
    @abstractmethod
    def selection_metric(self) -> str:
        """The validation metric that picks ``best/`` (higher is better)."""

    @property
    def select_last(self) -> bool:
        """Keep the last model instead of the best one (a fixed schedule, e.g. ViTDet)."""
        return False

    @abstractmethod
    def eval_every(self, n_train: int) -> int:
        """Validation cadence in steps (0: only at the end)."""

    @property
    def eval_batch_size(self) -> int:
        return 8

    uses_val_at_test: ClassVar[bool] = False
    """Whether :meth:`evaluate_test` needs the selected model's validation records (thresholds
    chosen on validation and applied to test)."""

    def evaluate_test(self, records: Sequence[dict[str, Any]],
                      val_records: Sequence[dict[str, Any]] | None) -> dict[str, Any]:
        """Test metrics; by default those of :meth:`evaluate`."""
        return self.evaluate(records)

    # outputs --------------------------------------------------------------------------
    @abstractmethod
    def write_outputs(self, out: Path, records: Sequence[dict[str, Any]], metrics: dict[str, Any],
                      model: FinetunedModel, log_rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Task files (predictions, plots, overlays); returns entries for ``metrics.json``."""

    def summary_line(self, metrics: dict[str, Any]) -> str:
        """One line for the log at the end of a run."""
        return f"test {self.selection_metric} {metrics.get(self.selection_metric)}"


class EvalItems(Dataset):
    """A dataset's items for evaluation, built in the loader workers: the model's prepared input
    (``prepare(pixels, preprocessing)``, the one predict path), what ``truth(sample, record)``
    takes to score against, and for the first ``keep_examples`` items the original pixels
    (overlays); ``{"index", "failure"}`` for an unreadable image."""

    def __init__(self, dataset: ChestXrayDataset, prepare: Callable[[np.ndarray, dict[str, Any]], dict[str, Any]],
                 preprocessing: dict[str, Any], truth: Callable[[dict[str, Any], Any], dict[str, Any]],
                 keep_examples: int = 0) -> None:
        self.dataset, self.prepare, self.preprocessing = dataset, prepare, preprocessing
        self.truth, self.keep_examples = truth, keep_examples

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        if is_failed(sample):
            return {"index": index, "failure": failure_of(sample)}
        pixels = sample["image"][0].numpy()
        item = {"index": index, "path": sample.get("path", str(index)),
                **self.truth(sample, self.dataset.records[index]), **self.prepare(pixels, self.preprocessing)}
        if index < self.keep_examples:
            item["original"] = pixels
        return item


def read_training_sample(dataset: ChestXrayDataset, index: int) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Sample ``index``, or when its file cannot be read (``on_error="skip"`` datasets) the next
    readable one; returns it with the replaced files and why (the loop counts and lists them).
    The replacement is deterministic, so a run stays a function of its seed."""
    replaced: list[dict[str, str]] = []
    for offset in range(len(dataset)):
        sample = dataset[(index + offset) % len(dataset)]
        if not is_failed(sample):
            return sample, replaced
        replaced.append(failure_of(sample))
    raise DataError(f"no training image could be read ({len(replaced)} tried); first: "
                    f"{replaced[0]['path']}: {replaced[0]['reason']}")


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


def _items(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def fit(task: FinetuneTask) -> dict[str, Any]:
    """Train, select, test; write the run folder ``runtime.out``; return the test metrics.

    Works as one process or under ``torchrun`` (gloo on CPU, NCCL on GPU). With
    ``runtime.stop_at_step`` the run stops early after a checkpoint and returns
    ``{"stopped_at_step": k}``; running it again continues.
    """
    runtime = task.config.runtime
    with dist_utils.training_run(runtime.device, runtime.seed, runtime.out) as (info, device):
        return _Fit(task, info, device).run()


class _Fit:
    """State of one run; :meth:`run` is the loop."""

    def __init__(self, task: FinetuneTask, info: dist_utils.DistInfo, device: torch.device) -> None:
        self.task, self.info, self.device = task, info, device
        cfg = task.config
        self.cfg, self.optim, self.runtime = cfg, cfg.optim, cfg.runtime
        self.run_info = Run(device, info, self.runtime.precision, cfg.data.workers, self.runtime.progress)
        self.out = Path(self.runtime.out)
        per_rank, remainder = divmod(self.optim.batch_size, self.optim.accum_steps * info.world_size)
        if remainder or per_rank < 1:
            raise ConfigError(f"{self.optim.batch_size} does not split into {self.optim.accum_steps} micro-steps x "
                              f"{info.world_size} processes; choose a multiple of {self.optim.accum_steps * info.world_size}",
                              key="optim.batch_size")
        self.per_rank = per_rank
        self.splits = task.splits()
        checkpoint = dist_utils.broadcast_object(
            resolve_resume(self.runtime.resume, self.out) if info.is_master else None)
        self.state = load_trainer_state(checkpoint) if checkpoint is not None else None
        if self.state is not None:
            check_same_run(self.state["config"], config_to_dict(cfg), checkpoint=checkpoint,
                           may_differ=RESUMABLE_CHANGES)
        self.model, self.model_summary = task.build_model(self.splits)
        self.model.to(device)
        if info.distributed:
            dist_utils.use_global_batch_norm(self.model)
        self.optimizer = self._optimizer()
        self.start_step = 0
        self.best: dict[str, Any] = {"step": None, "value": -math.inf, "val": None}
        self.replaced: list[dict[str, str]] = []
        if info.is_master:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.out)
        dist_utils.barrier()
        if checkpoint is not None:
            self._resume(checkpoint)
        torch.manual_seed(_seed_for(self.runtime.seed, info.rank, 2))  # dropout, drop-path: per rank
        if device.type == "cuda":
            torch.cuda.manual_seed(_seed_for(self.runtime.seed, info.rank, 3))
        if self.state is not None:
            restore_rng_state(self._own(self.state["rng"]), None, device)
        self.ddp: nn.Module = self.model
        if info.distributed:
            self.ddp = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.log = None
        if info.is_master:
            write_json(self.out / "config.json", config_to_dict(cfg))
            self.log = MetricsLog(self.out, tensorboard=self.runtime.tensorboard, jsonl_name=LOG_NAME, csv_name=None,
                                  resume_step=self.start_step if checkpoint is not None else None, tag=task.name)

    # ------------------------------------------------------------------ setup
    def _optimizer(self) -> torch.optim.Optimizer:
        optim = self.optim
        groups = param_groups(self.model, optim.weight_decay, no_decay_names=self.task.no_weight_decay(self.model),
                              layer_decay=optim.layer_decay, num_layers=self.task.num_layers(self.model))
        if not groups:
            raise ConfigError("the model has no trainable parameters")
        for group in groups:
            group.pop("names")
        if optim.name == "adamw":
            return build_adamw(groups, optim.lr, optim.betas, self.device)
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)

    def _own(self, per_rank: list[Any]) -> Any:
        if len(per_rank) != self.info.world_size:
            if self.info.is_master:
                logger.warning("the checkpoint was written by %d processes, this run has %d: random streams "
                               "restart from the checkpoint's rank 0 (the data order is unaffected)",
                               len(per_rank), self.info.world_size)
            return per_rank[0]
        return per_rank[self.info.rank]

    def _resume(self, checkpoint: Path) -> None:
        assert self.state is not None
        load_model_weights(self.model, checkpoint)
        self.optimizer.load_state_dict(self.state["optimizer"])
        for group in self.optimizer.param_groups:
            group["base_lr"] = self.optim.lr
        self.best = dict(self.state["best"])
        self.replaced = list(self.state["replaced"])
        self.start_step = int(self.state["step"])
        if self.info.is_master:
            logger.info("resumed from %s at step %d", checkpoint, self.start_step)

    def _loader(self) -> DataLoader:
        dataset = self.task.train_items(self.splits.train, self.run_info, self.model)
        sampler = GlobalBatchSampler(len(dataset), self.runtime.seed, self.optim.batch_size // self.optim.accum_steps,
                                     rank=self.info.rank, world=self.info.world_size,
                                     start=self.start_step * self.optim.batch_size)
        workers = self.cfg.data.workers if not getattr(dataset, "in_memory", False) else 0
        return DataLoader(dataset, batch_size=self.per_rank, sampler=sampler, num_workers=workers,
                          collate_fn=self.task.collate_train, pin_memory=self.device.type == "cuda",
                          persistent_workers=workers > 0, generator=torch.Generator().manual_seed(self.runtime.seed))

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict[str, Any]:
        steps = self.optim.steps
        end = steps if self.runtime.stop_at_step is None else min(steps, self.runtime.stop_at_step)
        end = max(end, self.start_step)
        eval_every = self.task.eval_every(len(self.splits.train))
        if self.info.is_master:
            logger.info("%s: %d steps of %d (%d per process x %d processes x %d micro-steps), validation every %s, "
                        "device %s; %s", self.task.name, steps, self.optim.batch_size, self.per_rank,
                        self.info.world_size, self.optim.accum_steps, eval_every or "end", self.device,
                        ", ".join(f"{r} {n}" for r, n in self.splits.counts().items()))
        bar = tqdm(total=end, initial=self.start_step, desc=self.task.name, unit="step",
                   disable=not (self.runtime.progress and self.info.is_master))
        batches = iter(self._loader()) if self.start_step < end else None
        window: list[dict[str, torch.Tensor]] = []
        started = time.perf_counter()
        for step in range(self.start_step, end):
            set_learning_rate(self.optimizer, lr_multiplier(step, steps, self.optim.warmup_steps, self.optim.schedule,
                                                            warmup_start=self.optim.warmup_start,
                                                            final=self.optim.final))
            window.append(self._step(batches))
            done = step + 1
            bar.update(1)
            if done % self.runtime.log_every == 0 or done == end:
                self._log_window(done, window, time.perf_counter() - started)
                window, started = [], time.perf_counter()
            if (eval_every and done % eval_every == 0) or done == steps:
                self._validate(done)
            if done % self.runtime.save_every == 0 or done == end:
                self._checkpoint(done)
        bar.close()
        if end < steps:
            if self.info.is_master:
                logger.info("stopped at step %d of %d (runtime.stop_at_step); run again to continue", end, steps)
            return {"stopped_at_step": end}
        return self._test()

    def _step(self, batches: Iterator[Any]) -> dict[str, torch.Tensor]:
        """One optimizer step; returns the mean of each loss part over the micro-steps (on the
        device: read only when logged, so a GPU step does not wait for the host)."""
        accum = self.optim.accum_steps
        sums: dict[str, torch.Tensor] = {}
        self.model.train()
        for micro in range(accum):
            batch = next(batches)
            self.replaced += batch["replaced"]
            sync = self.ddp.no_sync() if self.info.distributed and micro < accum - 1 else nullcontext()
            with sync:
                parts = self.task.loss(self.ddp, batch, self.run_info)
                (parts["loss"] / accum).backward()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value.detach().float() / accum
        if self.optim.clip_grad is not None:
            nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.optim.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sums

    def _log_window(self, done: int, window: list[dict[str, torch.Tensor]], elapsed: float) -> None:
        keys = sorted(window[0])
        stacked = torch.stack([torch.stack([row[k] for k in keys]) for row in window]).double().mean(0)
        means = dist_utils.all_reduce_mean(stacked).tolist()
        row = {"step": done, **dict(zip(keys, means)), "lr": self.optimizer.param_groups[-1]["lr"],
               "images_per_s": len(window) * self.optim.batch_size / max(elapsed, 1e-9)}
        if not math.isfinite(row["loss"]):
            raise DataError(f"the training loss became {row['loss']} by step {done}; lower optim.lr "
                            f"(now {self.optim.lr}) or raise optim.warmup_steps")
        if self.device.type == "cuda":
            row["max_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 1e9
        if self.log is not None:
            self.log.write(row)

    # ------------------------------------------------------------------ evaluation
    def predict_split(self, dataset: ChestXrayDataset, role: str) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """Records of every item of ``dataset`` (each rank predicts its shard; all gathered)."""
        self.model.eval()
        try:
            return self.run_info.map_items(self.task.eval_items(dataset, self.model, self.run_info, role),
                                           lambda batch: self.task.predict(self.model, batch, self.run_info),
                                           self.task.eval_batch_size, role)
        finally:
            self.model.train()

    def _validate(self, done: int) -> None:
        records, failures = self.predict_split(self.splits.val, "val")
        metrics = self.task.evaluate(records)
        value = metrics.get(self.task.selection_metric)
        score = float(value) if value is not None and math.isfinite(float(value)) else -math.inf
        if self.log is not None:
            self.log.write({"step": done, **{f"val_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))},
                            "val_unreadable": len(failures)})
        if self.task.select_last or self.best["step"] is None or score > self.best["value"]:
            self.best = {"step": done, "value": score, "val": _scalars(metrics)}
            if self.info.is_master:
                save_finetuned(self.model, self.out / BEST_DIR, {"training": {"step": done, "val": self.best["val"],
                                                                             "selection": self._selection()}})
        dist_utils.barrier()

    def _selection(self) -> str:
        return "last" if self.task.select_last else f"best validation {self.task.selection_metric}"

    def _checkpoint(self, done: int) -> None:
        rng = dist_utils.all_gather_objects(capture_rng_state(None, self.device))
        replaced = [r for part in dist_utils.all_gather_objects(self.replaced) for r in part]
        if self.info.is_master:
            state = {"step": done, "optimizer": self.optimizer.state_dict(), "rng": rng, "best": self.best,
                     "replaced": replaced, "world_size": self.info.world_size, "config": config_to_dict(self.cfg)}
            save_checkpoint(self.out, done, state, lambda folder: save_finetuned(self.model, folder),
                            keep_last=self.runtime.keep_last)
        dist_utils.barrier()

    def _test(self) -> dict[str, Any]:
        if self.info.is_master:
            save_finetuned(self.model, self.out / FINAL_DIR, {"training": {"step": self.optim.steps}})
        dist_utils.barrier()
        load_model_weights_from(self.model, self.out / BEST_DIR)
        records, failures = self.predict_split(self.splits.test, "test")
        val_records = self.predict_split(self.splits.val, "val")[0] if self.task.uses_val_at_test else None
        metrics = self.task.evaluate_test(records, val_records)
        if not self.info.is_master:
            return metrics
        assert self.log is not None
        extra = self.task.write_outputs(self.out, records, metrics, self.model, self.log.rows)
        replaced = self.replaced
        summary = {
            "task": self.task.name, "test": metrics, "selection": self._selection(),
            "best_step": self.best["step"], "val_best": self.best["val"], "steps": self.optim.steps,
            "data": {"counts": self.splits.counts(), "sources": self.splits.sources,
                     "unreadable_in_test": failures, "replaced_in_training": len(replaced),
                     "replaced": replaced[:100], **self.splits.notes},
            "model": self.model_summary, "device": str(self.device), "processes": self.info.world_size,
            **extra,
        }
        write_json(self.out / "metrics.json", summary)
        logger.info("%s; outputs in %s", self.task.summary_line(metrics), self.out)
        return summary


def load_model_weights_from(model: FinetunedModel, directory: Path) -> None:
    """Put the weights saved in a fine-tuned model directory (``best/``) into ``model``."""
    _, tensors = read_finetuned(directory)
    load_weights(model, tensors, str(directory))


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
