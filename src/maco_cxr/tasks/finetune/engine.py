"""The one fine-tuning loop: classification, segmentation and detection differ only in a task spec.

:func:`fit` runs a :class:`FinetuneTask` in the one run skeleton (:mod:`maco_cxr.runtime.loop`:
steps with accumulation, autocast, resume with every RNG, checkpoints, early stop, Ctrl-C,
rank-0 writing) on one CPU, one GPU or many GPUs under ``torchrun``. What fine-tuning adds:

- **steps**: per-iteration lr (linear warm-up, then cosine or poly, from
  :mod:`maco_cxr.runtime.schedules`), SGD or AdamW with layer-wise lr decay, gradient clipping;
- **data**: ``optim.batch_size`` is the global batch of a step. A seeded endless stream of
  ``(index, draw id)`` keys (:class:`GlobalBatchSampler`) is cut into global micro-batches and
  each rank takes its contiguous share; a sample's augmentation is seeded by its draw id, so
  a batch is a pure function of the seed and the step, whatever the number of processes or
  loader workers. BatchNorm layers use the statistics of the global batch
  (:class:`~maco_cxr.runtime.distributed.GlobalBatchNorm2d`). So N processes train what one
  process does (up to float rounding; dropout and drop-path draw per rank);
- **evaluation**: every split is predicted in shards (rank r takes items r, r + W, ...), the
  per-item predictions are gathered on every rank, sorted back into order and scored once on
  the WHOLE split, never averaged per rank. Unreadable images (``data.on_error=skip``) are
  left out and listed;
- **selection**: validation every ``eval_every`` steps and at the end; the best (or last)
  model by the task's selection metric is written to ``best/``, the last one to ``final/``;
- **exact resume**: a checkpoint also holds the best-so-far and the replaced training images;
  ``runtime.resume=auto`` continues a killed run and ends with the weights and metrics an
  uninterrupted run has, and refuses a run whose settings differ;
- **outputs**: ``log.jsonl`` (optional TensorBoard), ``config.json``, ``metrics.json`` and the
  task's files, written by rank 0; :func:`fit` returns the same :class:`FitResult` on every rank.

A task supplies what differs: its datasets' items, the model, the loss of a batch, the
predictions of prepared items, the metrics of a split and its output writers.
"""

from __future__ import annotations

import hashlib
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from maco_cxr._atomic import write_json, write_text
from maco_cxr.cards import CARD_NAME, finetuned_card
from maco_cxr.config import config_to_dict
from maco_cxr.data.datasets.base import ChestXrayDataset, failure_of, is_failed
from maco_cxr.errors import ConfigError, DataError
from maco_cxr.families import split_model_spec
from maco_cxr.runtime import distributed as dist_utils
from maco_cxr.runtime.loop import Run, RunEnd, RunHooks, RunSettings, run_training
from maco_cxr.runtime.optim import build_adamw, param_groups
from maco_cxr.runtime.schedules import lr_multiplier
from maco_cxr.tasks.finetune.config import RESUMABLE_CHANGES
from maco_cxr.tasks.finetune.model_io import FinetunedModel, load_weights, read_finetuned, save_finetuned
from maco_cxr.tasks.finetune.splits import FinetuneSplits, build_splits

__all__ = [
    "EvalItems",
    "FinetuneTask",
    "FitResult",
    "GlobalBatchSampler",
    "build_optimizer",
    "describe_validation",
    "fit",
    "read_training_sample",
]

logger = logging.getLogger(__name__)

BEST_DIR = "best"
FINAL_DIR = "final"
LOG_NAME = "log.jsonl"
METRICS_NAME = "metrics.json"


class GlobalBatchSampler(Sampler[tuple[int, int]]):
    """This rank's share of an endless, seeded stream of ``(dataset index, draw id)`` keys.

    Global position ``p`` is sample ``permutation(seed, epoch)[p % n]`` of epoch ``p // n``
    with draw id ``p``. The stream is cut into global micro-batches of ``micro_batch``
    positions; rank ``r`` of ``world`` yields positions ``r * b ... (r + 1) * b - 1`` of each
    (``b = micro_batch / world``), from global position ``start`` on (a resumed run starts
    at ``step * batch_size``).
    """

    def __init__(
        self, num_samples: int, seed: int, micro_batch: int, *, rank: int = 0, world: int = 1, start: int = 0
    ) -> None:
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

    def evaluate_test(
        self, records: Sequence[dict[str, Any]], val_records: Sequence[dict[str, Any]] | None
    ) -> dict[str, Any]:
        """Test metrics; by default those of :meth:`evaluate`."""
        return self.evaluate(records)

    # outputs --------------------------------------------------------------------------
    @abstractmethod
    def write_outputs(
        self,
        out: Path,
        records: Sequence[dict[str, Any]],
        metrics: dict[str, Any],
        model: FinetunedModel,
        log_rows: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """Task files (predictions, plots, overlays); returns entries for ``metrics.json``."""

    def summary_line(self, metrics: dict[str, Any]) -> str:
        """One line for the log at the end of a run."""
        return f"test {self.selection_metric} {metrics.get(self.selection_metric)}"


class EvalItems(Dataset):
    """A dataset's items for evaluation, built in the loader workers: the model's prepared input
    (``prepare(pixels, preprocessing)``, the one predict path), what ``truth(sample, record)``
    takes to score against, and for the first ``keep_examples`` items the original pixels
    (overlays); ``{"index", "failure"}`` for an unreadable image."""

    def __init__(
        self,
        dataset: ChestXrayDataset,
        prepare: Callable[[np.ndarray, dict[str, Any]], dict[str, Any]],
        preprocessing: dict[str, Any],
        truth: Callable[[dict[str, Any], Any], dict[str, Any]],
        keep_examples: int = 0,
    ) -> None:
        self.dataset, self.prepare, self.preprocessing = dataset, prepare, preprocessing
        self.truth, self.keep_examples = truth, keep_examples

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        if is_failed(sample):
            return {"index": index, "failure": failure_of(sample)}
        pixels = sample["image"][0].numpy()
        item = {
            "index": index,
            "path": sample.get("path", str(index)),
            **self.truth(sample, self.dataset.records[index]),
            **self.prepare(pixels, self.preprocessing),
        }
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
    raise DataError(
        f"no training image could be read ({len(replaced)} tried); first: "
        f"{replaced[0]['path']}: {replaced[0]['reason']}"
    )


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit` (``finetune_classifier``, ``segment``, ``detect``) returns, the same on
    every rank.

    ``summary``: what ``metrics.json`` holds (``test``, ``best_step``, ``val_best``, ``data``,
    ``model`` and the task's entries); empty when ``runtime.stop_at_step`` ended the run early
    (``stopped_at_step`` then says where; running it again continues).
    """

    task: str
    output_dir: Path
    step: int
    total_steps: int
    summary: Mapping[str, Any] = field(default_factory=dict)

    @property
    def stopped_at_step(self) -> int | None:
        """The step ``runtime.stop_at_step`` ended the run at (None for a finished run)."""
        return self.step if self.step < self.total_steps else None

    @property
    def test(self) -> Mapping[str, Any]:
        """The test metrics (empty for a run stopped early)."""
        return self.summary.get("test", {})

    @property
    def best_step(self) -> int | None:
        """The step of the model in ``best/`` (None for a run stopped early)."""
        return self.summary.get("best_step")

    @property
    def metrics_path(self) -> Path | None:
        """``metrics.json`` of a finished run."""
        return self.output_dir / METRICS_NAME if self.summary else None


def fit(task: FinetuneTask) -> FitResult:
    """Train, select, test; write the run folder ``runtime.out``; return a :class:`FitResult`.

    Works as one process or under ``torchrun`` (gloo on CPU, NCCL on GPU). With
    ``runtime.stop_at_step`` the run stops early after a checkpoint (``stopped_at_step`` set,
    no test); running it again continues. Ctrl-C raises
    :class:`~maco_cxr.errors.RunInterrupted`; the newest checkpoint is intact, so rerunning resumes.
    """
    cfg = task.config
    settings = RunSettings.from_config(
        task.name, cfg, cfg.runtime.out, RESUMABLE_CHANGES, jsonl_name=LOG_NAME, csv_name=None
    )
    return run_training(settings, _Finetuning(task))


def build_optimizer(
    optim: Any, task: FinetuneTask, model: FinetunedModel, device: torch.device
) -> torch.optim.Optimizer:
    """The optimizer of ``optim`` (a :class:`~maco_cxr.tasks.finetune.config.FinetuneOptim`) over
    the trainable parameters of ``model``: no weight decay on the task's ``no_weight_decay``
    names and 1-D tensors, layer-wise lr decay over the task's ``num_layers``."""
    groups = param_groups(
        model,
        optim.weight_decay,
        no_decay_names=task.no_weight_decay(model),
        layer_decay=optim.layer_decay,
        num_layers=task.num_layers(model),
    )
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    for group in groups:
        group.pop("names")
    if optim.name == "adamw":
        return build_adamw(groups, optim.lr, optim.betas, device)
    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)


def describe_validation(every: int, steps: int) -> str:
    """The validation schedule in words, as the loop runs it: at every multiple of ``every``
    (0: never) and after the last of ``steps`` steps."""
    if every <= 0:
        return f"validation at the end only (step {steps}; evaluation.every=0)"
    if every > steps:
        return f"validation at the end only (every {every} > {steps} steps)"
    if every == steps:
        return f"validation at the end only (step {steps})"
    times = steps // every + (steps % every != 0)
    end = "" if steps % every == 0 else f" and at the end (step {steps})"
    return f"validation every {every} steps{end}, {times} in all"


class _Finetuning(RunHooks[FitResult]):
    """What fine-tuning adds to the run skeleton: a task's data, model, loss, validation and test."""

    def __init__(self, task: FinetuneTask) -> None:
        self.task = task
        cfg = task.config
        self.cfg, self.optim, self.runtime = cfg, cfg.optim, cfg.runtime
        self.out = Path(self.runtime.out)
        self.best: dict[str, Any] = {"step": None, "value": -math.inf, "val": None}
        self.replaced: list[dict[str, str]] = []

    # ------------------------------------------------------------------ setup
    def prepare(self, run: Run) -> None:
        self.info = run.info
        optim, world = self.optim, run.info.world_size
        per_rank, remainder = divmod(optim.batch_size, optim.accum_steps * world)
        if remainder or per_rank < 1:
            raise ConfigError(
                f"{optim.batch_size} does not split into {optim.accum_steps} micro-steps x "
                f"{world} processes; choose a multiple of {optim.accum_steps * world}",
                key="optim.batch_size",
            )
        self.per_rank = per_rank
        self.total_steps, self.samples_per_step = optim.steps, optim.batch_size
        self.splits = self.task.splits()
        self.eval_every = self.task.eval_every(len(self.splits.train))

    def build(self, run: Run, *, initialise: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
        self.model, self.model_summary = self.task.build_model(self.splits)
        self.model.to(run.device)
        if run.info.distributed:
            dist_utils.use_global_batch_norm(self.model)
        return self.model, build_optimizer(self.optim, self.task, self.model, run.device)

    def resume(self, state: Mapping[str, Any], checkpoint: Path) -> None:
        self.best = dict(state["best"])
        # the checkpoint lists every rank's replaced images: rank 0 carries them on
        self.replaced = list(state["replaced"]) if self.info.is_master else []

    def describe(self, run: Run, start_step: int) -> None:
        write_json(self.out / "config.json", config_to_dict(self.cfg))
        optim = self.optim
        logger.info(
            "%s: %d steps of %d (%d per process x %d processes x %d micro-steps), %s, device %s; %s",
            self.task.name,
            optim.steps,
            optim.batch_size,
            self.per_rank,
            run.info.world_size,
            optim.accum_steps,
            describe_validation(self.eval_every, optim.steps),
            run.device,
            ", ".join(f"{r} {n}" for r, n in self.splits.counts().items()),
        )

    # ------------------------------------------------------------------ steps
    def lr_multiplier(self, step: int) -> float:
        optim = self.optim
        return lr_multiplier(
            step, optim.steps, optim.warmup_steps, optim.schedule, warmup_start=optim.warmup_start, final=optim.final
        )

    def batches(self, run: Run, start_step: int) -> Iterator[Any]:
        dataset = self.task.train_items(self.splits.train, run, self.model)
        micro_batch = self.optim.batch_size // self.optim.accum_steps
        sampler = GlobalBatchSampler(
            len(dataset),
            self.runtime.seed,
            micro_batch,
            rank=run.info.rank,
            world=run.info.world_size,
            start=start_step * self.optim.batch_size,
        )
        workers = self.cfg.data.workers if not getattr(dataset, "in_memory", False) else 0
        return iter(
            DataLoader(
                dataset,
                batch_size=self.per_rank,
                sampler=sampler,
                num_workers=workers,
                collate_fn=self.task.collate_train,
                pin_memory=run.device.type == "cuda",
                persistent_workers=workers > 0,
                generator=torch.Generator().manual_seed(self.runtime.seed),
            )
        )

    def loss(self, model: nn.Module, batch: Any, run: Run) -> dict[str, torch.Tensor]:
        self.replaced += batch["replaced"]
        return self.task.loss(model, batch, run)

    def after_step(self, done: int, run: Run) -> None:
        if (self.eval_every and done % self.eval_every == 0) or done == self.optim.steps:
            self._validate(done, run)

    # ------------------------------------------------------------------ evaluation
    def predict_split(
        self, dataset: ChestXrayDataset, role: str, run: Run
    ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """Records of every item of ``dataset`` (each rank predicts its shard; all gathered)."""
        self.model.eval()
        try:
            return run.map_items(
                self.task.eval_items(dataset, self.model, run, role),
                lambda batch: self.task.predict(self.model, batch, run),
                self.task.eval_batch_size,
                role,
            )
        finally:
            self.model.train()

    def _validate(self, done: int, run: Run) -> None:
        records, failures = self.predict_split(self.splits.val, "val", run)
        metrics = self.task.evaluate(records)
        value = metrics.get(self.task.selection_metric)
        score = float(value) if value is not None and math.isfinite(float(value)) else -math.inf
        numbers = {f"val_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
        run.write_metrics({"step": done, **numbers, "val_unreadable": len(failures)})
        if self.task.select_last or self.best["step"] is None or score > self.best["value"]:
            self.best = {"step": done, "value": score, "val": _scalars(metrics)}
            if self.info.is_master:
                training = {"step": done, "val": self.best["val"], "selection": self._selection()}
                save_finetuned(self.model, self.out / BEST_DIR, {"training": training})
        dist_utils.barrier()

    def _selection(self) -> str:
        return "last" if self.task.select_last else f"best validation {self.task.selection_metric}"

    def _all_replaced(self) -> list[dict[str, str]]:
        """The replaced training images of every rank (a collective)."""
        return [r for part in dist_utils.all_gather_objects(self.replaced) for r in part]

    # ------------------------------------------------------------------ saving
    def state(self, done: int) -> dict[str, Any]:
        return {"best": self.best, "replaced": self._all_replaced()}

    def write_model(self, folder: Path) -> None:
        save_finetuned(self.model, folder)

    def finish(self, run: Run, end: RunEnd) -> FitResult:
        if end.stopped_early:
            return FitResult(self.task.name, self.out, end.step, end.total_steps)
        if self.info.is_master:
            save_finetuned(self.model, self.out / FINAL_DIR, {"training": {"step": self.optim.steps}})
        dist_utils.barrier()
        load_model_weights_from(self.model, self.out / BEST_DIR)
        records, failures = self.predict_split(self.splits.test, "test", run)
        val_records = None
        if self.task.uses_val_at_test:
            val_records = self.predict_split(self.splits.val, "val", run)[0]
        metrics = self.task.evaluate_test(records, val_records)
        replaced = self._all_replaced()
        summary = None
        if self.info.is_master:
            extra = self.task.write_outputs(self.out, records, metrics, self.model, run.metric_rows)
            summary = {
                "task": self.task.name,
                "test": metrics,
                "selection": self._selection(),
                "best_step": self.best["step"],
                "val_best": self.best["val"],
                "steps": self.optim.steps,
                "data": {
                    "counts": self.splits.counts(),
                    "sources": self.splits.sources,
                    "unreadable_in_test": failures,
                    "replaced_in_training": len(replaced),
                    "replaced": replaced[:100],
                    **self.splits.notes,
                },
                "model": self.model_summary,
                "device": str(run.device),
                "processes": self.info.world_size,
                **extra,
            }
            write_json(self.out / METRICS_NAME, summary)
            self._write_cards(summary)
            logger.info("%s; outputs in %s", self.task.summary_line(metrics), self.out)
        summary = dist_utils.broadcast_object(summary)  # rank 0 wrote it: every rank returns the same
        return FitResult(self.task.name, self.out, end.step, end.total_steps, summary)

    def _write_cards(self, summary: Mapping[str, Any]) -> None:
        """The model card (``README.md``) of ``best/`` and ``final/``, from the recipe, the figures
        and the base model's provenance."""
        base = base_model_record(self.cfg.model.source)
        recipe = config_to_dict(self.cfg)
        for name in (BEST_DIR, FINAL_DIR):
            folder = self.out / name
            card = finetuned_card(read_finetuned(folder)[0], recipe, summary, base)
            write_text(folder / CARD_NAME, card)


def base_model_record(source: str | None) -> dict[str, Any]:
    """What a card says of a base model: its path, the SHA-256 of its weights, and for a named
    checkpoint its name and licence; ``{"path": None}`` for random initialisation."""
    from maco_cxr.cache import NAMED_CHECKPOINTS
    from maco_cxr.hub import WEIGHTS_NAME, file_sha256, resolve_model_path

    if source is None:
        return {"path": None, "sha256": "none: random initialisation"}
    family, family_path = split_model_spec(source)
    if family != "maco":
        return {"path": family_path, "family": family, "sha256": _tree_sha256(Path(family_path))}
    path = resolve_model_path(source)
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    record: dict[str, Any] = {"path": str(source), "sha256": file_sha256(weights)}
    if source in NAMED_CHECKPOINTS:
        record.update(name=source, licence=NAMED_CHECKPOINTS[source].licence)
    return record


def _tree_sha256(path: Path) -> str:
    """SHA-256 of a file; of a folder (a BioViL release), of its files' names and hashes in name order."""
    from maco_cxr.hub import file_sha256

    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for member in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{member.relative_to(path).as_posix()}\0{file_sha256(member)}\n".encode())
    return digest.hexdigest()


def load_model_weights_from(model: FinetunedModel, directory: Path) -> None:
    """Put the weights saved in a fine-tuned model directory (``best/``) into ``model``."""
    _, tensors = read_finetuned(directory)
    load_weights(model, tensors, str(directory))


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
