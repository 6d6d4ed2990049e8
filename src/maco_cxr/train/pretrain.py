"""MaCo pre-training: one loop for CPU, one GPU and many GPUs (torchrun + DDP).

Per optimizer step: ``accum_steps`` micro-batches of ``batch_size`` per process (DDP's
gradient all-reduce only on the last one), each copied to the device as uint8, augmented and
normalised there with a seeded device generator, masked with noise from the same generator,
run under bf16 autocast on CUDA; then AdamW (fused on CUDA) with the per-iteration warm-up +
cosine learning rate of :mod:`maco_cxr.train.schedules`. The image and text embeddings and
the correlation-weight logits are all-gathered with gradient, so every rank computes the
loss of the global batch (see :func:`maco_cxr.train.distributed.gather_with_grad`).

A run is a pure function of its config: the data order, the text sampling, the augmentation
and the masks follow from ``runtime.seed``, and a checkpoint holds everything needed to
continue bit for bit (weights, optimizer, step, sampler position, every RNG state). The
augmentation and mask draws are made for the whole global micro-batch on every rank (each
keeps its slice), so W processes with batch B train what one process with batch W*B trains
(up to float rounding, and dropout, which draws per rank).

Output directory: ``pretrain_config.yaml``, ``metrics.jsonl``/``metrics.csv`` (and
``tensorboard/``), ``skipped.json``, ``excluded.json`` (the images ``data.exclude`` removed,
never drawn; their count is also in every ``metrics.jsonl`` row and in the final model's
config), ``checkpoints/step-N/`` and ``final/`` (the model, ``maco_cxr.hub.load(final)``).
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from maco_cxr.data.augment import AugmentConfig, AugmentParams, affine_normalize, normalize_batch, sample_params
from maco_cxr.errors import CheckpointError, ConfigError
from maco_cxr.hub import create_model, load as load_model, load_mae_weights, save_pretrained
from maco_cxr.models.maco import MacoModel
from maco_cxr.train import distributed as dist_utils
from maco_cxr._atomic import write_json
from maco_cxr.config import config_to_dict
from maco_cxr.train.checkpoint import (
    MODEL_DIR,
    check_same_run,
    load_model_weights,
    load_trainer_state,
    remove_stale_temporaries,
    resolve_resume,
    save_checkpoint,
)
from maco_cxr.train.config import (
    RESUMABLE_CHANGES,
    PretrainConfig,
    PretrainOptim,
    check_config,
    save_pretrain_config,
)
from maco_cxr.train.data import PairDataset, ResumableSampler, SkipLog, make_loader, open_source
from maco_cxr.train.distributed import DistInfo
from maco_cxr.train.metrics_log import MetricsLog
from maco_cxr.train.optim import build_adamw, param_groups
from maco_cxr.train.rng import capture_rng_state, restore_rng_state
from maco_cxr.train.schedules import lr_multiplier, set_learning_rate

logger = logging.getLogger(__name__)

FINAL_DIR = "final"
CONFIG_NAME = "pretrain_config.yaml"
SKIPPED_NAME = "skipped.json"
EXCLUDED_NAME = "excluded.json"


@dataclass(frozen=True)
class Schedule:
    """How many optimizer steps the run takes and how they map onto the data."""

    num_samples: int
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    micro_batches_per_epoch: int


def plan_schedule(num_samples: int, optim: PretrainOptim, world_size: int) -> Schedule:
    """Steps per epoch = samples // (batch_size x processes x accum_steps) (the tail is left out,
    a different one each epoch); total = ``max_steps`` or ``epochs`` x steps per epoch."""
    global_batch = optim.batch_size * world_size * optim.accum_steps
    steps_per_epoch = num_samples // global_batch
    if steps_per_epoch < 1:
        raise ConfigError(
            f"optim.batch_size: one optimizer step takes {global_batch} samples (batch_size "
            f"{optim.batch_size} x {world_size} processes x accum_steps {optim.accum_steps}) but the "
            f"dataset has {num_samples}; lower optim.batch_size or optim.accum_steps")
    total = optim.max_steps if optim.max_steps is not None else optim.epochs * steps_per_epoch
    warmup = optim.warmup_steps if optim.warmup_steps is not None else round(optim.warmup_epochs * steps_per_epoch)
    return Schedule(num_samples=num_samples, global_batch=global_batch, steps_per_epoch=steps_per_epoch,
                    total_steps=total, warmup_steps=min(warmup, total),
                    micro_batches_per_epoch=steps_per_epoch * optim.accum_steps)


def build_model(config: PretrainConfig, *, initialise: bool, is_master: bool) -> MacoModel:
    """The model of ``config.model``, started from ``runtime.init_from`` or ``runtime.init_mae``
    when ``initialise`` (a resumed run takes its weights from the checkpoint instead)."""
    runtime = config.runtime
    if runtime.init_from is not None and initialise:
        source = load_model(runtime.init_from)
        model = create_model(config.model, source.tokenizer)
        try:
            model.load_state_dict(source.state_dict(), strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"runtime.init_from={runtime.init_from}: its weights do not fit "
                                  f"model.* of this config: {err}") from err
        if is_master:
            logger.info("initialised every tensor from %s", runtime.init_from)
        return model.train()
    model = create_model(config.model)
    if runtime.init_mae is not None and initialise:
        report = load_mae_weights(model, runtime.init_mae)
        if is_master:
            logger.info("MAE initialisation from %s:\n%s", runtime.init_mae, report.summary())
    return model.train()


def max_memory_gb(device: torch.device) -> float | None:
    """Peak memory: CUDA allocator peak on a GPU, peak resident set size of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


def pretrain(config: PretrainConfig) -> Path:
    """Pre-train MaCo as ``config`` says; returns the final model directory.

    Works as one process or under ``torchrun`` (see :mod:`maco_cxr.train.distributed` for the
    command lines). With ``runtime.stop_at_step`` the run ends early and returns the model
    directory of that step's checkpoint; rerunning with ``resume=auto`` continues it.
    """
    check_config(config)
    runtime = config.runtime
    with dist_utils.training_run(runtime.device, runtime.seed, runtime.output_dir) as (info, device):
        return _Trainer(config, info, device).run()


class _Window:
    """Loss sums and timing between two log lines."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(3, device=self.device)
        self.steps = 0
        self.start = time.perf_counter()

    def add(self, losses: torch.Tensor) -> None:
        self.sums += losses
        self.steps += 1


class _Trainer:
    """State of one run; :meth:`run` is the loop."""

    def __init__(self, config: PretrainConfig, info: DistInfo, device: torch.device) -> None:
        self.config, self.info, self.device = config, info, device
        runtime = config.runtime
        self.output_dir = Path(runtime.output_dir)
        if info.is_master:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.output_dir)
        dist_utils.barrier()

        size = config.model.input_size
        source, index_skips, self.exclusion = open_source(config.data, size, self.output_dir,
                                                          is_master=info.is_master, barrier=dist_utils.barrier)
        if info.is_master:
            write_json(self.output_dir / EXCLUDED_NAME, self.exclusion.to_dict())
            if self.exclusion.count:
                logger.info("%d images named by data.exclude are left out of pre-training (listed in %s)",
                            self.exclusion.count, self.output_dir / EXCLUDED_NAME)
        self.dataset = PairDataset(source, size, runtime.seed, config.data.on_error, config.data.sections,
                                   config.data.text, config.data.negation_negatives)
        self.schedule = plan_schedule(len(self.dataset), config.optim, info.world_size)
        self.sampler = ResumableSampler(len(self.dataset), config.optim.batch_size,
                                        self.schedule.micro_batches_per_epoch, seed=runtime.seed,
                                        rank=info.rank, world_size=info.world_size)
        self.skips = SkipLog(index_time=index_skips)
        self.pending_skips: list[dict[str, str]] = []
        if index_skips and info.is_master:
            logger.warning("%d dataset rows were left out when indexing (data.on_error=skip); listed in %s",
                           len(index_skips), self.output_dir / SKIPPED_NAME)

        checkpoint = dist_utils.broadcast_object(
            resolve_resume(runtime.resume, self.output_dir) if info.is_master else None)
        self.model = build_model(config, initialise=checkpoint is None, is_master=info.is_master).to(device)
        groups = param_groups(self.model, config.optim.weight_decay, no_decay_names=self.model.no_weight_decay())
        self.optimizer = build_adamw(groups, config.optim.lr, config.optim.betas, device)
        self.generator = torch.Generator(device).manual_seed(_seed_for(runtime.seed, 1))
        torch.default_generator.manual_seed(_seed_for(runtime.seed, info.rank, 2))
        if device.type == "cuda":
            torch.cuda.manual_seed(_seed_for(runtime.seed, info.rank, 3))
        self.start_step = 0
        if checkpoint is not None:
            self._resume(checkpoint)

        self.augment = AugmentConfig(flip_p=config.augment.flip_p, degrees=config.augment.degrees,
                                     scale=config.augment.scale, mean=config.model.image_mean,
                                     std=config.model.image_std)
        if runtime.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        if runtime.compile is True or (runtime.compile == "auto" and device.type == "cuda"):
            self._compile()
        self.ddp: torch.nn.Module = self.model
        if info.distributed:
            self.ddp = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda"
                                               else None, gradient_as_bucket_view=True)
        self.gather = dist_utils.gather_with_grad if info.distributed else None
        self.loader = make_loader(self.dataset, self.sampler, self.model.tokenizer, workers=config.data.workers,
                                  pin_memory=device.type == "cuda", seed=_seed_for(runtime.seed, info.rank, 4))
        self.metrics = None
        if info.is_master:
            save_pretrain_config(config, self.output_dir / CONFIG_NAME)
            self.metrics = MetricsLog(self.output_dir, tensorboard=runtime.tensorboard,
                                      resume_step=self.start_step if checkpoint is not None else None)
            self._describe(checkpoint)

    # ------------------------------------------------------------------------------ setup
    def _compile(self) -> None:
        """``torch.compile`` the model, tried once on a batch of the training shape (random
        streams and gradients left as they were); a failure is reported and the run goes on
        eagerly."""
        self.model.compile()
        config = self.config
        size, length = config.model.input_size, config.model.text.max_length
        images = torch.zeros(config.optim.batch_size, 1, size, size, dtype=torch.uint8, device=self.device)
        ids = torch.zeros(images.shape[0], length, dtype=torch.long, device=self.device)
        ids[:, 0] = 2
        tokens = {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}
        gather = dist_utils.gather_with_grad if self.info.distributed else None
        generator_state = self.generator.get_state()
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                with torch.no_grad():
                    pixels, noise = self._randomise(images, config.model.vision.num_patches)
                with self._autocast():
                    negatives = tokens if self.config.data.negation_negatives else None
                    out = self.model(pixels, tokens, noise, gather, negatives)
                out["total"].backward()
        except Exception as err:  # torch.compile raises many error types; any of them means: run eagerly
            self.model._compiled_call_impl = None
            if self.info.is_master:
                first = str(err).splitlines()[0] if str(err) else ""
                logger.warning("torch.compile failed (%s: %s); training without it. Set runtime.compile=false to "
                               "skip the attempt.", type(err).__name__, first)
        else:
            if self.info.is_master:
                logger.info("model compiled with torch.compile (first step traced)")
        finally:
            self.generator.set_state(generator_state)
            self.model.zero_grad(set_to_none=True)

    def _describe(self, checkpoint: Path | None) -> None:
        s, optim = self.schedule, self.config.optim
        params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        logger.info(
            "pre-training %.1fM parameters on %d samples (%d excluded), %d process(es) on %s: %d steps (%d per "
            "epoch, warm-up %d), %d samples per step (batch %d x %d processes x accum %d), precision %s",
            params / 1e6, s.num_samples, self.exclusion.count, self.info.world_size, self.device, s.total_steps,
            s.steps_per_epoch, s.warmup_steps, s.global_batch, optim.batch_size, self.info.world_size,
            optim.accum_steps, self._precision())
        if checkpoint is not None:
            logger.info("resumed from %s at step %d", checkpoint, self.start_step)

    def _precision(self) -> str:
        return "bf16" if self.device.type == "cuda" and self.config.runtime.precision == "bf16" else "fp32"

    def _resume(self, checkpoint: Path) -> None:
        state = load_trainer_state(checkpoint)
        check_same_run(state["config"], config_to_dict(self.config), checkpoint=checkpoint,
                       may_differ=RESUMABLE_CHANGES)
        saved = state["schedule"]
        for key in ("num_samples", "global_batch"):
            if saved[key] != getattr(self.schedule, key):
                raise CheckpointError(
                    f"{checkpoint}: {key} was {saved[key]} and is now {getattr(self.schedule, key)}; "
                    "the data or the global batch (batch_size x processes x accum_steps) changed, so "
                    "the run cannot continue exactly. Use a new runtime.output_dir or runtime.resume=never")
        if saved["total_steps"] != self.schedule.total_steps and self.info.is_master:
            logger.warning("%s: the schedule had %d steps and now has %d; the learning rate follows the "
                           "new schedule from step %d", checkpoint, saved["total_steps"],
                           self.schedule.total_steps, state["step"])
        load_model_weights(self.model, checkpoint)
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            group["base_lr"] = self.config.optim.lr
        rng = state["rng"]
        if len(rng) != self.info.world_size and self.info.is_master:
            logger.warning("%s was written by %d processes, this run has %d: random streams restart "
                           "from the checkpoint's rank 0 (data order is unaffected)", checkpoint,
                           len(rng), self.info.world_size)
        own = rng[self.info.rank] if len(rng) == self.info.world_size else rng[0]
        restore_rng_state(own, self.generator, self.device)
        self.skips.load_state(state["skips"])
        self.start_step = int(state["step"])

    # ------------------------------------------------------------------------------ loop
    def run(self) -> Path:
        s, runtime = self.schedule, self.config.runtime
        end = s.total_steps if runtime.stop_at_step is None else min(s.total_steps, runtime.stop_at_step)
        end = max(end, self.start_step)
        bar = tqdm(total=end, initial=self.start_step, desc="pretrain", unit="step", dynamic_ncols=True,
                   disable=not (runtime.progress and self.info.is_master))
        window = _Window(self.device)
        data_iter = None
        for step in range(self.start_step, end):
            epoch, in_epoch = divmod(step, s.steps_per_epoch)
            if data_iter is None or in_epoch == 0:
                self.sampler.set_position(epoch, in_epoch * self.config.optim.accum_steps)
                data_iter = iter(self.loader)
            set_learning_rate(self.optimizer, lr_multiplier(step, s.total_steps, s.warmup_steps))
            window.add(self._optimizer_step(data_iter))
            done = step + 1
            bar.update(1)
            if done % runtime.log_every == 0 or done == end:
                self._log(done, window, bar)
                window.reset()
            if done % runtime.save_every == 0 or done == end:
                self._save(done)
        bar.close()
        result = self._finish(end)
        if self.metrics is not None:
            self.metrics.close()
        return result

    def _autocast(self) -> AbstractContextManager[Any]:
        if self._precision() == "bf16":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _randomise(self, images: torch.Tensor, num_patches: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented, normalised pixels ``[B, 3, S, S]`` and mask noise ``[B, L]``.

        Every rank draws the parameters of the whole global micro-batch from the same generator
        and keeps its own slice, so the run does not depend on how the batch is split: W
        processes with batch B compute what one process with batch W*B computes.
        """
        b, rank, world = images.shape[0], self.info.rank, self.info.world_size
        own = slice(rank * b, (rank + 1) * b)
        if self.config.augment.enabled:
            params = sample_params(b * world, self.augment, self.generator, self.device)
            params = AugmentParams(flip=params.flip[own], angle=params.angle[own], scale=params.scale[own])
            pixels = affine_normalize(images, params, self.augment.mean, self.augment.std)
        else:
            pixels = normalize_batch(images, self.augment.mean, self.augment.std)
        noise = torch.rand(b * world, num_patches, device=self.device, generator=self.generator)[own]
        return pixels, noise

    def _optimizer_step(self, data_iter: Any) -> torch.Tensor:
        """One optimizer step over ``accum_steps`` micro-batches; returns mean (rec, con, total)."""
        accum = self.config.optim.accum_steps
        num_patches = self.config.model.vision.num_patches
        sums = torch.zeros(3, device=self.device)
        for micro in range(accum):
            batch = next(data_iter)
            self.pending_skips.extend(batch["skipped"])
            images = batch["image"].to(self.device, non_blocking=True)
            tokens = {k: v.to(self.device, non_blocking=True) for k, v in batch["tokens"].items()}
            negatives = None
            if "negative_tokens" in batch:
                negatives = {k: v.to(self.device, non_blocking=True) for k, v in batch["negative_tokens"].items()}
            with torch.no_grad():
                pixels, noise = self._randomise(images, num_patches)
            last = micro == accum - 1
            sync = self.ddp.no_sync() if self.info.distributed and not last else nullcontext()
            with sync:
                with self._autocast():
                    out = self.ddp(pixels, tokens, noise, self.gather, negatives)
                (out["total"] / accum).backward()
            sums += torch.stack([out["rec"].detach(), out["con"].detach(), out["total"].detach()]).float()
        if self.config.optim.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sums / accum

    def _flush_skips(self) -> None:
        """Collect the replaced samples of every rank on rank 0 (a collective: all ranks call it)."""
        gathered = dist_utils.all_gather_objects(self.pending_skips)
        self.pending_skips = []
        new = sum(len(items) for items in gathered)
        if self.info.is_master:
            for items in gathered:
                self.skips.add(items)
            if new:
                logger.warning("replaced %d bad samples (%d in total so far); listed in %s", new,
                               self.skips.replaced_count, self.output_dir / SKIPPED_NAME)
                self.skips.write(self.output_dir / SKIPPED_NAME)

    def _log(self, done: int, window: _Window, bar: Any) -> None:
        means = dist_utils.all_reduce_mean(window.sums / max(1, window.steps)).tolist()
        elapsed = time.perf_counter() - window.start
        self._flush_skips()
        if not self.info.is_master:
            return
        rec, con, total = means
        row = {
            "step": done,
            "epoch": round(done / self.schedule.steps_per_epoch, 4),
            "lr": self.optimizer.param_groups[0]["lr"],
            "rec": rec, "con": con, "total": total,
            "inverse_temperature": float(self.model.inverse_temperature.detach()),
            "images_per_s": window.steps * self.schedule.global_batch / elapsed,
            "max_mem_gb": max_memory_gb(self.device),
            "skipped": self.skips.replaced_count,
            "excluded": self.exclusion.count,
        }
        assert self.metrics is not None
        self.metrics.write(row)
        if bar.disable:
            logger.info("step %d/%d  loss %.4f (rec %.4f, con %.4f)  lr %.3g  %.1f images/s  %.2f GB",
                        done, self.schedule.total_steps, total, rec, con, row["lr"], row["images_per_s"],
                        row["max_mem_gb"] or 0.0)
        else:
            bar.set_postfix(loss=f"{total:.4f}", rec=f"{rec:.4f}", con=f"{con:.4f}", lr=f"{row['lr']:.2e}",
                            img_s=f"{row['images_per_s']:.1f}", refresh=False)

    def _trainer_state(self, done: int, rng: list[dict[str, Any]]) -> dict[str, Any]:
        s = self.schedule
        return {
            "step": done,
            "epoch": done // s.steps_per_epoch,
            "sampler": {"epoch": done // s.steps_per_epoch,
                        "micro_batch": (done % s.steps_per_epoch) * self.config.optim.accum_steps},
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            "skips": self.skips.state(),
            "schedule": asdict(s),
            "world_size": self.info.world_size,
            "config": config_to_dict(self.config),
        }

    def _save(self, done: int) -> None:
        self._flush_skips()
        rng = dist_utils.all_gather_objects(capture_rng_state(self.generator, self.device))
        if self.info.is_master:
            path = save_checkpoint(self.output_dir, done, self._trainer_state(done, rng),
                                   lambda folder: save_pretrained(self.model, folder),
                                   keep_last=self.config.runtime.keep_last)
            self.skips.write(self.output_dir / SKIPPED_NAME)
            logger.info("saved checkpoint %s", path)
        dist_utils.barrier()

    def _finish(self, end: int) -> Path:
        if end < self.schedule.total_steps:
            path = self.output_dir / "checkpoints" / f"step-{end:08d}" / MODEL_DIR
            if self.info.is_master:
                logger.info("stopped at step %d of %d (runtime.stop_at_step); rerun with resume=auto to "
                            "continue", end, self.schedule.total_steps)
            return path
        final = self.output_dir / FINAL_DIR
        if self.info.is_master:
            save_pretrained(self.model, final, extra_config={
                "pretraining": {"steps": self.schedule.total_steps, "config": config_to_dict(self.config),
                                "excluded": self.exclusion.summary()}})
            self.skips.write(self.output_dir / SKIPPED_NAME)
            logger.info("final model: %s (%d samples replaced, %d rows left out when indexing)", final,
                        self.skips.replaced_count, len(self.skips.index_time))
        dist_utils.barrier()
        return final

