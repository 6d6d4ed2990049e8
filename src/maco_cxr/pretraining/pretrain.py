"""MaCo pre-training: what it adds to the one run skeleton (:mod:`maco_cxr.runtime.loop`).

Per optimizer step: ``accum_steps`` micro-batches of ``batch_size`` per process (DDP's
gradient all-reduce only on the last one), each copied to the device as uint8, augmented and
normalised there with a seeded device generator, masked with noise from the same generator,
run under bf16 autocast on CUDA; then AdamW (fused on CUDA) with the per-iteration warm-up +
cosine learning rate of :mod:`maco_cxr.runtime.schedules`. The image and text embeddings and
the correlation-weight logits are all-gathered with gradient, so every rank computes the
loss of the global batch (see :func:`maco_cxr.runtime.distributed.gather_with_grad`).

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
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maco_cxr._atomic import write_json
from maco_cxr.config import config_to_dict
from maco_cxr.data.augment import AugmentConfig, AugmentParams, affine_normalize, normalize_batch, sample_params
from maco_cxr.errors import CheckpointError, ConfigError
from maco_cxr.hub import create_model, load_mae_weights, save_pretrained
from maco_cxr.hub import load as load_model
from maco_cxr.models.maco import MacoModel
from maco_cxr.pretraining.config import (
    RESUMABLE_CHANGES,
    PretrainConfig,
    PretrainOptim,
    check_config,
    save_pretrain_config,
)
from maco_cxr.pretraining.data import PairDataset, ResumableSampler, SkipLog, make_loader, open_source
from maco_cxr.runtime import distributed as dist_utils
from maco_cxr.runtime.checkpoint import MODEL_DIR, checkpoint_root
from maco_cxr.runtime.loop import Run, RunEnd, RunHooks, RunSettings, run_training
from maco_cxr.runtime.optim import build_adamw, param_groups
from maco_cxr.runtime.rng import seed_for
from maco_cxr.runtime.schedules import lr_multiplier

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


@dataclass(frozen=True)
class PretrainResult:
    """What :func:`pretrain` returns, the same on every rank.

    ``model_dir``: ``final/`` (load it with :func:`maco_cxr.hub.load`), or, when
    ``runtime.stop_at_step`` ended the run early, the model of that step's checkpoint.
    ``samples_replaced``: unreadable samples replaced during training; ``rows_skipped``: dataset
    rows left out when indexing (``data.on_error=skip``, listed in ``skipped.json``);
    ``excluded``: images ``data.exclude`` removed (listed in ``excluded.json``).
    """

    model_dir: Path
    output_dir: Path
    step: int
    total_steps: int
    samples_replaced: int
    rows_skipped: int
    excluded: int

    @property
    def stopped_at_step(self) -> int | None:
        """The step ``runtime.stop_at_step`` ended the run at (None for a finished run)."""
        return self.step if self.step < self.total_steps else None


def plan_schedule(num_samples: int, optim: PretrainOptim, world_size: int) -> Schedule:
    """Steps per epoch = samples // (batch_size x processes x accum_steps) (the tail is left out,
    a different one each epoch); total = ``max_steps`` or ``epochs`` x steps per epoch."""
    global_batch = optim.batch_size * world_size * optim.accum_steps
    steps_per_epoch = num_samples // global_batch
    if steps_per_epoch < 1:
        raise ConfigError(
            f"optim.batch_size: one optimizer step takes {global_batch} samples (batch_size "
            f"{optim.batch_size} x {world_size} processes x accum_steps {optim.accum_steps}) but the "
            f"dataset has {num_samples}; lower optim.batch_size or optim.accum_steps"
        )
    total = optim.max_steps if optim.max_steps is not None else optim.epochs * steps_per_epoch
    warmup = optim.warmup_steps if optim.warmup_steps is not None else round(optim.warmup_epochs * steps_per_epoch)
    return Schedule(
        num_samples=num_samples,
        global_batch=global_batch,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=min(warmup, total),
        micro_batches_per_epoch=steps_per_epoch * optim.accum_steps,
    )


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
            raise CheckpointError(
                f"runtime.init_from={runtime.init_from}: its weights do not fit model.* of this config: {err}"
            ) from err
        if is_master:
            logger.info("initialised every tensor from %s", runtime.init_from)
        return model.train()
    model = create_model(config.model)
    if runtime.init_mae is not None and initialise:
        report = load_mae_weights(model, runtime.init_mae)
        if is_master:
            logger.info("MAE initialisation from %s:\n%s", runtime.init_mae, report.summary())
    return model.train()


def pretrain(config: PretrainConfig) -> PretrainResult:
    """Pre-train MaCo as ``config`` says; returns where the model is and how the run ended.

    Works as one process or under ``torchrun`` (see :mod:`maco_cxr.runtime.distributed` for the
    command lines). With ``runtime.stop_at_step`` the run ends early and its ``model_dir`` is
    that step's checkpoint; rerunning with ``resume=auto`` continues it. Ctrl-C raises
    :class:`~maco_cxr.errors.RunInterrupted`; the newest checkpoint is intact, so rerunning resumes.
    """
    check_config(config)
    settings = RunSettings.from_config("pretrain", config, config.runtime.output_dir, RESUMABLE_CHANGES)
    return run_training(settings, _Pretraining(config))


class _Pretraining(RunHooks[PretrainResult]):
    """What pre-training adds to the run skeleton: pairs, MaCo, its augmentation and masks."""

    def __init__(self, config: PretrainConfig) -> None:
        self.config = config
        self.output_dir = Path(config.runtime.output_dir)

    # ------------------------------------------------------------------------------ setup
    def prepare(self, run: Run) -> None:
        config, info = self.config, run.info
        self.info = info
        size = config.model.input_size
        source, index_skips, self.exclusion = open_source(
            config.data, size, self.output_dir, is_master=info.is_master, barrier=dist_utils.barrier
        )
        if info.is_master:
            write_json(self.output_dir / EXCLUDED_NAME, self.exclusion.to_dict())
            if self.exclusion.count:
                logger.info(
                    "%d images named by data.exclude are left out of pre-training (listed in %s)",
                    self.exclusion.count,
                    self.output_dir / EXCLUDED_NAME,
                )
        self.dataset = PairDataset(
            source,
            size,
            config.runtime.seed,
            config.data.on_error,
            config.data.sections,
            config.data.text,
            config.data.negation_negatives,
        )
        self.schedule = plan_schedule(len(self.dataset), config.optim, info.world_size)
        self.total_steps, self.samples_per_step = self.schedule.total_steps, self.schedule.global_batch
        self.sampler = ResumableSampler(
            len(self.dataset),
            config.optim.batch_size,
            self.schedule.micro_batches_per_epoch,
            seed=config.runtime.seed,
            rank=info.rank,
            world_size=info.world_size,
        )
        self.skips = SkipLog(index_time=index_skips)
        self.pending_skips: list[dict[str, str]] = []
        if index_skips and info.is_master:
            logger.warning(
                "%d dataset rows were left out when indexing (data.on_error=skip); listed in %s",
                len(index_skips),
                self.output_dir / SKIPPED_NAME,
            )

    def build(self, run: Run, *, initialise: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
        config, device = self.config, run.device
        self.device = device
        self.model = build_model(config, initialise=initialise, is_master=run.info.is_master).to(device)
        groups = param_groups(self.model, config.optim.weight_decay, no_decay_names=self.model.no_weight_decay())
        optimizer = build_adamw(groups, config.optim.lr, config.optim.betas, device)
        self.generator = torch.Generator(device).manual_seed(seed_for(config.runtime.seed, 1))
        self.augment = AugmentConfig(
            flip_p=config.augment.flip_p,
            degrees=config.augment.degrees,
            scale=config.augment.scale,
            mean=config.model.image_mean,
            std=config.model.image_std,
        )
        self.gather = dist_utils.gather_with_grad if run.info.distributed else None
        if config.runtime.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        if config.runtime.compile is True or (config.runtime.compile == "auto" and device.type == "cuda"):
            self._compile(run)
        return self.model, optimizer

    def _compile(self, run: Run) -> None:
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
        generator_state = self.generator.get_state()
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                with torch.no_grad():
                    pixels, noise = self._randomise(images, config.model.vision.num_patches)
                with run.autocast():
                    negatives = tokens if self.config.data.negation_negatives else None
                    out = self.model(pixels, tokens, noise, self.gather, negatives)
                out["total"].backward()
        except Exception as err:  # torch.compile raises many error types; any of them means: run eagerly
            self.model._compiled_call_impl = None
            if self.info.is_master:
                first = str(err).splitlines()[0] if str(err) else ""
                logger.warning(
                    "torch.compile failed (%s: %s); training without it. Set runtime.compile=false to "
                    "skip the attempt.",
                    type(err).__name__,
                    first,
                )
        else:
            if self.info.is_master:
                logger.info("model compiled with torch.compile (first step traced)")
        finally:
            self.generator.set_state(generator_state)
            self.model.zero_grad(set_to_none=True)

    def resume(self, state: Mapping[str, Any], checkpoint: Path) -> None:
        saved = state["schedule"]
        for key in ("num_samples", "global_batch"):
            if saved[key] != getattr(self.schedule, key):
                raise CheckpointError(
                    f"{checkpoint}: {key} was {saved[key]} and is now {getattr(self.schedule, key)}; "
                    "the data or the global batch (batch_size x processes x accum_steps) changed, so "
                    "the run cannot continue exactly. Use a new runtime.output_dir or runtime.resume=never"
                )
        if saved["total_steps"] != self.schedule.total_steps and self.info.is_master:
            logger.warning(
                "%s: the schedule had %d steps and now has %d; the learning rate follows the new schedule from step %d",
                checkpoint,
                saved["total_steps"],
                self.schedule.total_steps,
                state["step"],
            )
        self.skips.load_state(state["skips"])

    def describe(self, run: Run, start_step: int) -> None:
        save_pretrain_config(self.config, self.output_dir / CONFIG_NAME)
        s, optim = self.schedule, self.config.optim
        params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        precision = "bf16" if run.device.type == "cuda" and run.precision == "bf16" else "fp32"
        logger.info(
            "pre-training %.1fM parameters on %d samples (%d excluded), %d process(es) on %s: %d steps (%d per "
            "epoch, warm-up %d), %d samples per step (batch %d x %d processes x accum %d), precision %s",
            params / 1e6,
            s.num_samples,
            self.exclusion.count,
            run.info.world_size,
            run.device,
            s.total_steps,
            s.steps_per_epoch,
            s.warmup_steps,
            s.global_batch,
            optim.batch_size,
            run.info.world_size,
            optim.accum_steps,
            precision,
        )

    # ------------------------------------------------------------------------------ steps
    def lr_multiplier(self, step: int) -> float:
        return lr_multiplier(step, self.schedule.total_steps, self.schedule.warmup_steps)

    def batches(self, run: Run, start_step: int) -> Iterator[Any]:
        loader = make_loader(
            self.dataset,
            self.sampler,
            self.model.tokenizer,
            workers=self.config.data.workers,
            pin_memory=run.device.type == "cuda",
            seed=seed_for(self.config.runtime.seed, run.info.rank, 4),
        )
        epoch, in_epoch = divmod(start_step, self.schedule.steps_per_epoch)
        while True:
            self.sampler.set_position(epoch, in_epoch * self.config.optim.accum_steps)
            yield from loader
            epoch, in_epoch = epoch + 1, 0

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

    def loss(self, model: nn.Module, batch: Any, run: Run) -> dict[str, torch.Tensor]:
        self.pending_skips.extend(batch["skipped"])
        images = batch["image"].to(self.device, non_blocking=True)
        tokens = {k: v.to(self.device, non_blocking=True) for k, v in batch["tokens"].items()}
        negatives = None
        if "negative_tokens" in batch:
            negatives = {k: v.to(self.device, non_blocking=True) for k, v in batch["negative_tokens"].items()}
        with torch.no_grad():
            pixels, noise = self._randomise(images, self.config.model.vision.num_patches)
        with run.autocast():
            out = model(pixels, tokens, noise, self.gather, negatives)
        return {"loss": out["total"], "rec": out["rec"], "con": out["con"]}

    def _flush_skips(self) -> None:
        """Collect the replaced samples of every rank on rank 0 (a collective: all ranks call it)."""
        gathered = dist_utils.all_gather_objects(self.pending_skips)
        self.pending_skips = []
        new = sum(len(items) for items in gathered)
        if self.info.is_master:
            for items in gathered:
                self.skips.add(items)
            if new:
                logger.warning(
                    "replaced %d bad samples (%d in total so far); listed in %s",
                    new,
                    self.skips.replaced_count,
                    self.output_dir / SKIPPED_NAME,
                )
                self.skips.write(self.output_dir / SKIPPED_NAME)

    def log_row(self, row: dict[str, Any]) -> dict[str, Any]:
        self._flush_skips()
        return {
            "step": row["step"],
            "epoch": round(row["step"] / self.schedule.steps_per_epoch, 4),
            "lr": row["lr"],
            "rec": row["rec"],
            "con": row["con"],
            "total": row["loss"],
            "inverse_temperature": float(self.model.inverse_temperature.detach()),
            "images_per_s": row["images_per_s"],
            "max_mem_gb": row["max_memory_gb"],
            "skipped": self.skips.replaced_count,
            "excluded": self.exclusion.count,
        }

    # ------------------------------------------------------------------------------ saving
    def state(self, done: int) -> dict[str, Any]:
        self._flush_skips()
        if self.info.is_master:
            self.skips.write(self.output_dir / SKIPPED_NAME)
        s = self.schedule
        return {
            "epoch": done // s.steps_per_epoch,
            "sampler": {
                "epoch": done // s.steps_per_epoch,
                "micro_batch": (done % s.steps_per_epoch) * self.config.optim.accum_steps,
            },
            "skips": self.skips.state(),
            "schedule": asdict(s),
        }

    def write_model(self, folder: Path) -> None:
        save_pretrained(self.model, folder)

    def finish(self, run: Run, end: RunEnd) -> PretrainResult:
        if end.stopped_early:
            model_dir = checkpoint_root(self.output_dir) / f"step-{end.step:08d}" / MODEL_DIR
        else:
            model_dir = self.output_dir / FINAL_DIR
            if self.info.is_master:
                save_pretrained(
                    self.model,
                    model_dir,
                    extra_config={
                        "pretraining": {
                            "steps": self.schedule.total_steps,
                            "config": config_to_dict(self.config),
                            "excluded": self.exclusion.summary(),
                        }
                    },
                )
                self.skips.write(self.output_dir / SKIPPED_NAME)
                logger.info(
                    "final model: %s (%d samples replaced, %d rows left out when indexing)",
                    model_dir,
                    self.skips.replaced_count,
                    len(self.skips.index_time),
                )
            dist_utils.barrier()
        counts = (self.skips.replaced_count, len(self.skips.index_time))
        replaced, skipped = dist_utils.broadcast_object(counts)  # rank 0 holds every rank's
        return PretrainResult(
            model_dir=model_dir,
            output_dir=self.output_dir,
            step=end.step,
            total_steps=end.total_steps,
            samples_replaced=replaced,
            rows_skipped=skipped,
            excluded=self.exclusion.count,
        )
