"""The one training-run skeleton of pre-training and fine-tuning.

:func:`run_training` does what every run does, whatever it trains:

- **frame**: joins the ``torchrun`` process group, picks the device and seeds the global
  generators for the run (:func:`~maco_cxr.runtime.distributed.training_run`);
- **resume**: ``resume=auto`` takes the newest complete checkpoint of the output folder,
  refuses one whose config differs (:func:`~maco_cxr.runtime.checkpoint.check_same_run`) and
  restores weights, optimizer, step and every RNG stream of every rank;
- **per-rank seeding**: torch CPU/CUDA generators (dropout, drop-path) seeded per rank;
- **steps**: per-step learning rate, ``accum_steps`` micro-batches (DDP's gradient all-reduce
  only on the last), gradient clipping, the optimizer step;
- **metrics log, checkpoints**: every ``log_every`` / ``save_every`` steps and at the end;
  only rank 0 writes (the metrics log, checkpoints with rotation to ``keep_last``);
- **early stop and Ctrl-C**: ``stop_at_step`` ends the run after its checkpoint; Ctrl-C raises
  :class:`~maco_cxr.errors.RunInterrupted` naming the steps done (``"step 120"``, or
  ``"start-up"`` before the first), and because checkpoints are written and rotated atomically
  the newest complete one is intact, so the same command resumes from it.

A kind of training supplies only what differs, as :class:`RunHooks`: its data, model and
optimizer, the loss of a micro-batch, the fields of a log row, what happens after a step
(validation), its part of the trainer state, how its model is saved and what the end of the
run writes and returns. Every hook but :meth:`~RunHooks.describe` and
:meth:`~RunHooks.write_model` (rank 0 only) is called on every rank, so hooks may use
collectives; they write files on rank 0 only.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from maco_cxr._atomic import claim_output_folder, run_folder_kind
from maco_cxr._atomic import remove_stale_temporaries as remove_temporaries_in
from maco_cxr.config import config_to_dict
from maco_cxr.errors import DataError, RunInterrupted
from maco_cxr.inference import autocast
from maco_cxr.runtime import distributed as dist_utils
from maco_cxr.runtime.checkpoint import (
    check_same_run,
    load_model_weights,
    load_trainer_state,
    remove_stale_temporaries,
    resolve_resume,
    save_checkpoint,
)
from maco_cxr.runtime.metrics_log import CSV_NAME, JSONL_NAME, MetricsLog
from maco_cxr.runtime.rng import capture_rng_state, restore_rng_state, seed_for
from maco_cxr.runtime.schedules import set_learning_rate

__all__ = ["Run", "RunEnd", "RunHooks", "RunSettings", "max_memory_gb", "run_training"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RunSettings:
    """What the skeleton reads of a run's config (pre-training and fine-tuning name them apart).

    ``config``: the whole config as plain types, saved in every checkpoint and compared on
    resume; ``may_differ``: its keys that may change between a run and its resumption (how the
    run is watched or where it runs). ``name`` labels the progress bar, log lines and
    TensorBoard tags.
    """

    name: str
    output_dir: Path
    config: Mapping[str, Any]
    may_differ: tuple[str, ...]
    device: str
    precision: str
    seed: int
    resume: str
    lr: float
    accum_steps: int
    clip_grad: float | None
    log_every: int
    save_every: int
    keep_last: int | None
    stop_at_step: int | None
    workers: int
    progress: bool
    tensorboard: bool
    jsonl_name: str = JSONL_NAME
    csv_name: str | None = CSV_NAME

    @classmethod
    def from_config(
        cls, name: str, config: Any, output_dir: str | Path, may_differ: tuple[str, ...], **files: Any
    ) -> RunSettings:
        """The settings of a config with ``runtime``, ``optim`` and ``data`` sections (pre-training's
        and fine-tuning's share these keys); ``files``: ``jsonl_name`` / ``csv_name``."""
        runtime, optim = config.runtime, config.optim
        return cls(
            name=name,
            output_dir=Path(output_dir),
            config=config_to_dict(config),
            may_differ=may_differ,
            device=runtime.device,
            precision=runtime.precision,
            seed=runtime.seed,
            resume=runtime.resume,
            lr=optim.lr,
            accum_steps=optim.accum_steps,
            clip_grad=optim.clip_grad,
            log_every=runtime.log_every,
            save_every=runtime.save_every,
            keep_last=runtime.keep_last,
            stop_at_step=runtime.stop_at_step,
            workers=config.data.workers,
            progress=runtime.progress,
            tensorboard=runtime.tensorboard,
            **files,
        )


@dataclass(frozen=True)
class RunEnd:
    """Where the loop ended: ``step`` optimizer steps of ``total_steps`` are done."""

    output_dir: Path
    step: int
    total_steps: int

    @property
    def stopped_early(self) -> bool:
        """True when ``stop_at_step`` ended the run before its schedule did."""
        return self.step < self.total_steps


@dataclass
class Run:
    """What hooks may use of the running loop: where it runs, autocast, sharded prediction over
    the ranks and (on rank 0, once the loop has started) the metrics log."""

    device: torch.device
    info: dist_utils.DistInfo
    precision: str
    workers: int
    progress: bool
    log: MetricsLog | None = None

    def autocast(self) -> AbstractContextManager[Any]:
        return autocast(self.device, self.precision)

    def write_metrics(self, row: dict[str, Any]) -> None:
        """Append ``row`` to the metrics log (rank 0; a no-op on the others)."""
        if self.log is not None:
            self.log.write(row)

    @property
    def metric_rows(self) -> list[dict[str, Any]]:
        """The rows of the metrics log so far (rank 0; empty on the others)."""
        return self.log.rows if self.log is not None else []

    def map_items(
        self,
        items: Dataset,
        predict: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
        batch_size: int,
        desc: str,
    ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """``predict`` over every item of ``items``, this rank on its shard (items r, r + W, ...),
        the records gathered on every rank and sorted by ``index``; unreadable items
        (``{"failure": ...}``) are returned apart."""
        shard = Subset(items, range(self.info.rank, len(items), self.info.world_size))
        workers = 0 if getattr(items, "in_memory", False) else self.workers
        loader = DataLoader(
            shard,
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=_as_list,
            generator=torch.Generator().manual_seed(0),
        )
        records: list[dict[str, Any]] = []
        failures: list[dict[str, str]] = []
        with torch.inference_mode():
            quiet = not (self.progress and self.info.is_master)
            for batch in tqdm(loader, desc=desc, leave=False, disable=quiet):
                good = [item for item in batch if "failure" not in item]
                failures += [item["failure"] for item in batch if "failure" in item]
                if good:
                    records += predict(good)
        gathered = dist_utils.all_gather_objects((records, failures))
        records = sorted((r for part, _ in gathered for r in part), key=lambda r: r["index"])
        failures = [f for _, part in gathered for f in part]
        if not records:
            raise DataError(
                f"no image of the {desc} split could be read ({len(failures)} failed; first: "
                f"{failures[0] if failures else None})"
            )
        return records, failures

    def global_sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (no gradient), for loss normalisers that must be global."""
        return dist_utils.all_reduce_sum(value)


def _as_list(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


class RunHooks(ABC, Generic[T]):
    """What one kind of training supplies to :func:`run_training`, in the order it is called."""

    generator: torch.Generator | None = None
    """A generator of the kind's own (pre-training's augmentation and masks), saved in every
    checkpoint and restored on resume with the global RNG states."""

    total_steps: int
    """Optimizer steps of the whole schedule (set by :meth:`prepare`)."""

    samples_per_step: int
    """The global batch of an optimizer step, for the log's images/s (set by :meth:`prepare`)."""

    @abstractmethod
    def prepare(self, run: Run) -> None:
        """Open the data, check what depends on it and set :attr:`total_steps` and
        :attr:`samples_per_step` (the output folder exists by now)."""

    @abstractmethod
    def build(self, run: Run, *, initialise: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The model on ``run.device`` and its optimizer. ``initialise`` is False when a
        checkpoint's weights are loaded into the model next."""

    def resume(self, state: Mapping[str, Any], checkpoint: Path) -> None:
        """Take the kind's own part of a checkpoint's trainer state (see :meth:`state`)."""

    def describe(self, run: Run, start_step: int) -> None:
        """Rank 0, before the first step: write the run's config file, log what it trains."""

    @abstractmethod
    def lr_multiplier(self, step: int) -> float:
        """The learning-rate multiplier of optimizer step ``step`` (0-based)."""

    @abstractmethod
    def batches(self, run: Run, start_step: int) -> Iterator[Any]:
        """This rank's micro-batches from optimizer step ``start_step`` on (``accum_steps`` a step)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any, run: Run) -> dict[str, torch.Tensor]:
        """``{"loss": tensor, part: tensor...}`` of one micro-batch. ``model`` may be DDP-wrapped;
        the hook runs the forward under ``run.autocast()``."""

    def log_row(self, row: dict[str, Any]) -> dict[str, Any]:
        """The metrics row of a logged step, from the skeleton's (``step``, the window means of
        each loss part, ``lr``, ``images_per_s``, ``max_memory_gb``)."""
        return row

    def after_step(self, done: int, run: Run) -> None:
        """After step ``done`` is logged and before it is saved (fine-tuning validates here)."""

    def state(self, done: int) -> dict[str, Any]:
        """The kind's own part of the trainer state after step ``done`` (plain types and
        tensors; rank 0's is saved)."""
        return {}

    @abstractmethod
    def write_model(self, folder: Path) -> None:
        """Save the model into a checkpoint's model folder (called on rank 0)."""

    @abstractmethod
    def finish(self, run: Run, end: RunEnd) -> T:
        """After the last step (or the ``stop_at_step`` one): write the final outputs of a
        finished run and return its result, the same on every rank."""


def run_training(settings: RunSettings, hooks: RunHooks[T]) -> T:
    """Run ``hooks`` as the module docstring says; returns what :meth:`RunHooks.finish` returns.

    Works as one process or under ``torchrun`` (gloo on CPU, NCCL on GPU).
    """
    with dist_utils.training_run(settings.device, settings.seed, settings.output_dir) as (info, device):
        try:
            skeleton = _Skeleton(settings, hooks, info, device)
        except RunInterrupted:
            raise
        except KeyboardInterrupt as err:
            raise RunInterrupted("start-up") from err
        return skeleton.run()


def max_memory_gb(device: torch.device) -> float | None:
    """Peak memory: CUDA allocator peak on a GPU, peak resident set size of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


class _Skeleton:
    """State of one run; :meth:`run` is the loop."""

    def __init__(
        self, settings: RunSettings, hooks: RunHooks[Any], info: dist_utils.DistInfo, device: torch.device
    ) -> None:
        self.settings, self.hooks, self.info, self.device = settings, hooks, info, device
        self.run_info = Run(device, info, settings.precision, settings.workers, settings.progress)
        out = settings.output_dir
        if info.is_master:
            claim_output_folder(out, run_folder_kind(settings.name))
            remove_temporaries_in(out)
            remove_stale_temporaries(out)
        dist_utils.barrier()
        hooks.prepare(self.run_info)
        self.checkpoint: Path | None = dist_utils.broadcast_object(
            resolve_resume(settings.resume, out) if info.is_master else None
        )
        state = load_trainer_state(self.checkpoint) if self.checkpoint is not None else None
        if state is not None:
            check_same_run(state["config"], settings.config, checkpoint=self.checkpoint, may_differ=settings.may_differ)
        self.model, self.optimizer = hooks.build(self.run_info, initialise=state is None)
        # dropout and drop-path draw per rank
        torch.default_generator.manual_seed(seed_for(settings.seed, info.rank, 2))
        if device.type == "cuda":
            torch.cuda.manual_seed(seed_for(settings.seed, info.rank, 3))
        self.start_step = 0
        if state is not None:
            self._resume(state)
        self.ddp: nn.Module = self.model
        if info.distributed:
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True
            )
        self.step = self.start_step  # optimizer steps done (what a Ctrl-C reports)

    def _resume(self, state: Mapping[str, Any]) -> None:
        checkpoint = self.checkpoint
        assert checkpoint is not None
        self.hooks.resume(state, checkpoint)
        load_model_weights(self.model, checkpoint)
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            group["base_lr"] = self.settings.lr
        rng = state["rng"]
        if len(rng) != self.info.world_size and self.info.is_master:
            logger.warning(
                "%s was written by %d processes, this run has %d: random streams restart from the "
                "checkpoint's rank 0 (the data order is unaffected)",
                checkpoint,
                len(rng),
                self.info.world_size,
            )
        own = rng[self.info.rank] if len(rng) == self.info.world_size else rng[0]
        restore_rng_state(own, self.hooks.generator, self.device)
        self.start_step = int(state["step"])

    # ------------------------------------------------------------------------------ the loop
    def run(self) -> Any:
        s, hooks, run = self.settings, self.hooks, self.run_info
        total = hooks.total_steps
        end = total if s.stop_at_step is None else min(total, s.stop_at_step)
        end = max(end, self.start_step)
        try:
            if self.info.is_master:
                run.log = MetricsLog(
                    s.output_dir,
                    tensorboard=s.tensorboard,
                    jsonl_name=s.jsonl_name,
                    csv_name=s.csv_name,
                    tag=s.name,
                    resume_step=self.start_step if self.checkpoint is not None else None,
                )
                hooks.describe(run, self.start_step)
                if self.checkpoint is not None:
                    logger.info("resumed from %s at step %d", self.checkpoint, self.start_step)
            self._steps(end, total)
            result = hooks.finish(run, RunEnd(s.output_dir, end, total))
        except RunInterrupted:
            raise
        except KeyboardInterrupt as err:
            raise RunInterrupted(f"step {self.step}") from err
        finally:
            if run.log is not None:
                run.log.close()
        if end < total and self.info.is_master:
            logger.info(
                "stopped at step %d of %d (runtime.stop_at_step); run it again with the same "
                "settings to continue from the checkpoint",
                end,
                total,
            )
        return result

    def _steps(self, end: int, total: int) -> None:
        s, hooks = self.settings, self.hooks
        bar = tqdm(
            total=end,
            initial=self.start_step,
            desc=s.name,
            unit="step",
            dynamic_ncols=True,
            disable=not (s.progress and self.info.is_master),
        )
        batches = hooks.batches(self.run_info, self.start_step) if self.start_step < end else iter(())
        window: list[dict[str, torch.Tensor]] = []
        started = time.perf_counter()
        for step in range(self.start_step, end):
            set_learning_rate(self.optimizer, hooks.lr_multiplier(step))
            window.append(self._optimizer_step(batches))
            done = self.step = step + 1
            bar.update(1)
            if done % s.log_every == 0 or done == end:
                self._log(done, total, window, time.perf_counter() - started, bar)
                window, started = [], time.perf_counter()
            hooks.after_step(done, self.run_info)
            if done % s.save_every == 0 or done == end:
                self._save(done)
        bar.close()

    def _optimizer_step(self, batches: Iterator[Any]) -> dict[str, torch.Tensor]:
        """One optimizer step; returns the mean of each loss part over the micro-batches (on the
        device: read only when logged, so a GPU step does not wait for the host)."""
        accum = self.settings.accum_steps
        sums: dict[str, torch.Tensor] = {}
        self.model.train()
        for micro in range(accum):
            batch = next(batches)
            sync = self.ddp.no_sync() if self.info.distributed and micro < accum - 1 else nullcontext()
            with sync:
                parts = self.hooks.loss(self.ddp, batch, self.run_info)
                (parts["loss"] / accum).backward()
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value.detach().float() / accum
        if self.settings.clip_grad is not None:
            trained = [p for p in self.model.parameters() if p.requires_grad]
            nn.utils.clip_grad_norm_(trained, self.settings.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sums

    def _log(self, done: int, total: int, window: list[dict[str, torch.Tensor]], elapsed: float, bar: Any) -> None:
        keys = sorted(window[0])
        stacked = torch.stack([torch.stack([row[k] for k in keys]) for row in window]).double().mean(0)
        means = dict(zip(keys, dist_utils.all_reduce_mean(stacked).tolist()))
        if not math.isfinite(means["loss"]):
            raise DataError(
                f"the training loss became {means['loss']} by step {done}; lower optim.lr "
                f"(now {self.settings.lr}) or raise optim.warmup_steps"
            )
        lr = self.optimizer.param_groups[-1]["lr"]
        images_per_s = len(window) * self.hooks.samples_per_step / max(elapsed, 1e-9)
        row = self.hooks.log_row(
            {"step": done, **means, "lr": lr, "images_per_s": images_per_s, "max_memory_gb": max_memory_gb(self.device)}
        )
        if not self.info.is_master:
            return
        self.run_info.write_metrics(row)
        parts = ", ".join(f"{k} {means[k]:.4f}" for k in keys if k != "loss")
        if bar.disable:
            logger.info(
                "%s step %d/%d  loss %.4f%s  lr %.3g  %.1f images/s",
                self.settings.name,
                done,
                total,
                means["loss"],
                f" ({parts})" if parts else "",
                lr,
                images_per_s,
            )
        else:
            bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}", refresh=False)

    def _save(self, done: int) -> None:
        own = self.hooks.state(done)
        rng = dist_utils.all_gather_objects(capture_rng_state(self.hooks.generator, self.device))
        if self.info.is_master:
            state = {
                "step": done,
                "optimizer": self.optimizer.state_dict(),
                "rng": rng,
                "world_size": self.info.world_size,
                "config": dict(self.settings.config),
                **own,
            }
            path = save_checkpoint(
                self.settings.output_dir, done, state, self.hooks.write_model, keep_last=self.settings.keep_last
            )
            logger.info("saved checkpoint %s", path)
        dist_utils.barrier()
