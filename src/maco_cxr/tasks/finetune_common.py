"""What every fine-tuning task shares: data splits, optimiser, device, checkpoints and logs.

Classification, segmentation and detection differ in their heads, transforms and metrics but
not in how they pick the images (official split files or the dataset's own splits, then a
seeded patient-level label fraction), build the optimiser (SGD or AdamW, optional layer-wise
lr decay), run in bf16 on CUDA, keep the best checkpoint atomically and write their logs.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Sampler

from maco_cxr.config import config_to_dict, load_config, require
from maco_cxr.data.datasets.base import ChestXrayDataset, Record, Sample
from maco_cxr.errors import CheckpointError, ConfigError, DataError
from maco_cxr.train.optim import build_adamw, param_groups

__all__ = [
    "DataConfig",
    "FinetuneSplits",
    "JsonlLog",
    "OptimConfig",
    "RuntimeConfig",
    "StepSampler",
    "StoreDataset",
    "autocast",
    "build_optimizer",
    "build_splits",
    "config_dict",
    "load_checkpoint",
    "load_task_config",
    "resolve_device",
    "save_checkpoint",
    "write_csv",
    "write_json",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Role = Literal["train", "val", "test"]
ROLES: tuple[Role, ...] = ("train", "val", "test")
OFFICIAL_KINDS = ("nih", "chexpert", "rsna", "siim")
OFFICIAL_NAMES = ("train", "train_1", "train_10", "train_100", "train_list", "val", "val_list",
                  "test", "test_list")
# Adapter arguments that hold the images each official list names (CheXpert's test list is its
# "valid" set and its lists include lateral views; RSNA's test list is stage_2_test_images).
_OFFICIAL_ADAPTER_ARGS: dict[str, dict[Role, dict[str, Any]]] = {
    "nih": {"train": {}, "val": {}, "test": {}},
    "chexpert": {"train": {"split": "train", "frontal_only": False},
                 "val": {"split": "train", "frontal_only": False},
                 "test": {"split": "valid", "frontal_only": False}},
    "rsna": {"train": {"split": "train"}, "val": {"split": "train"}, "test": {"split": "test"}},
    "siim": {"train": {"split": "train"}, "val": {"split": "train"}, "test": {"split": "train"}},
}
CHECKPOINT_WEIGHTS = "model.safetensors"
CHECKPOINT_META = "checkpoint.json"



def load_task_config(kind: type[T], path: str | Path | None = None,
                     overrides: Sequence[str] | dict[str, Any] = ()) -> T:
    """Config dataclass ``kind`` from a YAML file plus overrides (see :func:`maco_cxr.config.load_config`)."""
    return load_config(kind, path, overrides)


def config_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples as lists), as written to JSON and YAML."""
    return config_to_dict(config)


# ------------------------------------------------------------------------------------ data


@dataclass
class DataConfig:
    """Which images train, select and test a model.

    ``kind``/``root``: a :func:`maco_cxr.data.datasets.build_dataset` adapter and its root, or
    ``store`` and a folder written by ``maco-cxr prepare`` (decoded once, read by memory map).
    ``train_split``/``val_split``/``test_split``: a split file (``path label...`` per line;
    labels in it replace the dataset's) or, for nih/chexpert/rsna/siim, an official list name
    (train_1, train_10, train, val, test). When None: official kinds use their official
    lists (CheXpert train: train.csv minus the val list), other kinds the records whose
    ``split`` equals ``train_name``/``val_name``/``test_name``.
    ``fraction``: percentage of the training images kept, drawn whole patients at a time with
    ``fraction_seed`` (:func:`maco_cxr.data.splits.label_fraction`). ``options``: extra adapter
    arguments. ``deduplicate``: make the overlapping official SIIM lists disjoint.
    """

    kind: str = "manifest"
    root: str | None = None
    train_split: str | None = None
    val_split: str | None = None
    test_split: str | None = None
    train_name: str = "train"
    val_name: str = "val"
    test_name: str = "test"
    fraction: float = 100.0
    fraction_seed: int = 0
    deduplicate: bool = False
    on_error: Literal["raise", "skip"] = "raise"
    workers: int = 2
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(0.0 < self.fraction <= 100.0, "fraction",
                 f"{self.fraction} must be a percentage in (0, 100]")
        require(self.workers >= 0, "workers", "must be >= 0")


@dataclass
class FinetuneSplits:
    """The train / val / test datasets of a run (records already selected)."""

    train: ChestXrayDataset
    val: ChestXrayDataset
    test: ChestXrayDataset
    classes: tuple[str, ...]
    sources: dict[str, str]

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


class StoreDataset(ChestXrayDataset):
    """A prepared store seen through the dataset contract, so split files and label
    fractions select its images like any adapter's.

    Records keep the original image paths (what split files name); pixels come from the
    store's memory-mapped shards (letterboxed squares of the store's size).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from maco_cxr.data.store import PreparedStore

        self.store = PreparedStore(path)
        records = []
        for index, row in enumerate(self.store.rows):
            labels = None
            if row["labels"] is not None:
                labels = np.array([math.nan if v is None else v for v in row["labels"]], dtype=np.float32)
            meta = dict(row.get("meta") or {})
            meta["store_index"] = index
            records.append(Record(image_path=Path(row["path"]), report=row["report"], labels=labels,
                                  patient_id=row["patient_id"], split=row["split"], meta=meta))
        super().__init__(records, self.store.classes)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        stored = self.store[record.meta["store_index"]]
        sample: Sample = {"image": stored["image"], "index": index, "path": str(record.image_path)}
        if record.labels is not None:
            sample["labels"] = torch.as_tensor(record.labels, dtype=torch.float32)
        if "mask" in stored:
            sample["mask"] = stored["mask"]
        if "boxes" in stored:
            sample["boxes"] = stored["boxes"]
            sample["box_labels"] = stored["box_labels"]
        return sample


def _is_official_name(kind: str, value: str) -> bool:
    return kind in OFFICIAL_KINDS and value in OFFICIAL_NAMES


def _split_entries(cfg: DataConfig, role: Role, value: str) -> tuple[list[Any], str]:
    from maco_cxr.data.splits import load_official_split, read_split_file

    if _is_official_name(cfg.kind, value):
        return load_official_split(cfg.kind, value, deduplicate=cfg.deduplicate), f"official {cfg.kind} {value}"
    path = Path(value)
    if not path.is_file():
        hint = (f"; official names for {cfg.kind}: {', '.join(OFFICIAL_NAMES)}" if cfg.kind in OFFICIAL_KINDS
                else "")
        raise ConfigError(f"data.{role}_split: {value!r} is neither a split file nor an official "
                          f"split name{hint}")
    return read_split_file(path), str(path)


def build_splits(cfg: DataConfig) -> FinetuneSplits:
    """Train, val and test datasets as ``cfg`` describes them (see :class:`DataConfig`).

    Every role must end up with at least one image; the error names the data key to change.
    Counts are logged; rows an adapter skipped stay listed in each dataset's ``skips``.
    """
    from maco_cxr.data.datasets import build_dataset
    from maco_cxr.data.splits import label_fraction, subset_by_split_file

    if cfg.root is None:
        raise ConfigError(f"data.root: the root of the {cfg.kind} dataset is required (--root DIR)")
    adapters: dict[str, ChestXrayDataset] = {}

    def adapter(role: Role) -> ChestXrayDataset:
        args = dict(_OFFICIAL_ADAPTER_ARGS.get(cfg.kind, {}).get(role, {}))
        args.update(cfg.options)
        key = json.dumps(args, sort_keys=True, default=str)
        if key not in adapters:
            if cfg.kind == "store":
                adapters[key] = StoreDataset(cfg.root)  # type: ignore[arg-type]
            else:
                adapters[key] = build_dataset(cfg.kind, cfg.root, on_error=cfg.on_error, **args)
        return adapters[key]

    chosen: dict[str, ChestXrayDataset] = {}
    sources: dict[str, str] = {}
    for role in ROLES:
        value: str | None = getattr(cfg, f"{role}_split")
        base = adapter(role)
        if value is None and cfg.kind in OFFICIAL_KINDS:
            if cfg.kind == "chexpert" and role == "train":
                entries, source = _split_entries(cfg, "val", cfg.val_split or "val")
                chosen[role] = subset_by_split_file(base, entries, exclude=True)
                sources[role] = f"{cfg.kind} train.csv minus {source}"
                continue
            value = role
        if value is not None:
            entries, source = _split_entries(cfg, role, value)
            with_labels = bool(entries) and len(entries[0].labels) > 0
            chosen[role] = subset_by_split_file(base, entries, use_file_labels=with_labels,
                                                on_error=cfg.on_error)
            sources[role] = source
        else:
            name = getattr(cfg, f"{role}_name")
            subset = _copy_with(base, [r for r in base.records if r.split == name])
            if not subset.records:
                found = sorted({str(r.split) for r in base.records})
                raise DataError(f"{cfg.root}: no {cfg.kind} record has split {name!r} (found {found}); set "
                                f"data.{role}_name to one of them or give data.{role}_split (a split file)")
            chosen[role] = subset
            sources[role] = f"{cfg.kind} split={name}"
    if cfg.fraction < 100.0:
        train = chosen["train"]
        keep = label_fraction(train.records, cfg.fraction / 100.0, cfg.fraction_seed)
        chosen["train"] = _copy_with(train, [train.records[i] for i in keep])
        sources["train"] += f", {cfg.fraction:g} % (seed {cfg.fraction_seed})"
    for role in ROLES:
        if not chosen[role].records:
            raise DataError(f"the {role} split of {cfg.root} is empty ({sources[role]}); check data.{role}_split")
    splits = FinetuneSplits(chosen["train"], chosen["val"], chosen["test"],
                            tuple(chosen["train"].classes), sources)
    logger.info("data: %s", ", ".join(f"{r} {len(chosen[r])} ({sources[r]})" for r in ROLES))
    return splits


def _copy_with(dataset: ChestXrayDataset, records: list[Record]) -> ChestXrayDataset:
    subset = copy.copy(dataset)
    subset.records = records
    return subset


class StepSampler(Sampler[tuple[int, int]]):
    """An endless stream of ``(dataset index, draw id)`` keys for step-based training.

    Epoch ``e`` visits ``numpy.random.default_rng([seed, e]).permutation(n)``; the draw id
    ``e * n + position`` seeds the sample's random augmentation, so a batch is a pure
    function of ``seed`` and the step, whatever the number of loader workers.
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        if num_samples < 1:
            raise DataError("cannot sample from an empty training set")
        self.num_samples = num_samples
        self.seed = seed

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = 0
        while True:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            for position, index in enumerate(order):
                yield int(index), epoch * self.num_samples + position
            epoch += 1


# --------------------------------------------------------------------------------- optimiser


@dataclass
class OptimConfig:
    """Optimiser and per-step schedule (linear warm-up, then cosine or poly decay).

    ``name``: ``sgd`` (momentum, the classification recipe) or ``adamw`` (fused on CUDA).
    ``layer_decay``: ViT layer-wise lr decay (lr x decay^(depth + 1 - layer id)); None = off.
    Weight decay never applies to biases, norms, the CLS token or position embeddings.
    ``warmup_start``/``final``: lr multipliers at the first step and at the end.
    """

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    layer_decay: float | None = None
    clip_grad: float | None = 1.0
    batch_size: int = 96
    steps: int = 2000
    warmup_steps: int = 50
    schedule: Literal["cosine", "poly"] = "cosine"
    warmup_start: float = 0.0
    final: float = 0.0

    def __post_init__(self) -> None:
        require(self.lr > 0, "lr", "must be > 0")
        require(0.0 <= self.momentum < 1.0, "momentum", "must be in [0, 1)")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas",
                 f"{list(self.betas)} must be two numbers in [0, 1)")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(self.layer_decay is None or 0 < self.layer_decay <= 1, "layer_decay",
                 "must be in (0, 1] or null")
        require(self.clip_grad is None or self.clip_grad > 0, "clip_grad", "must be > 0 or null")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.steps >= 1, "steps", "must be >= 1")
        require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")


def build_optimizer(model: nn.Module, cfg: OptimConfig, *, num_layers: int, no_decay_names: Iterable[str],
                    device: torch.device) -> torch.optim.Optimizer:
    """SGD or AdamW over ``model``'s trainable parameters, grouped by
    :func:`maco_cxr.train.optim.param_groups` (each group's ``lr_scale`` is applied by
    :func:`maco_cxr.train.schedules.set_learning_rate`). Checks the keys that depend on each
    other here, once every override is applied."""
    require(cfg.warmup_steps <= cfg.steps, "optim.warmup_steps",
             f"{cfg.warmup_steps} is longer than the run (optim.steps={cfg.steps})")
    groups = param_groups(model, cfg.weight_decay, no_decay_names=no_decay_names,
                          layer_decay=cfg.layer_decay, num_layers=num_layers)
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    for group in groups:
        group.pop("names")
    if cfg.name == "adamw":
        return build_adamw(groups, cfg.lr, cfg.betas, device)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


# ----------------------------------------------------------------------------------- runtime


@dataclass
class RuntimeConfig:
    """Where and how a fine-tuning run executes.

    ``device``: auto (CUDA when available), cpu, cuda or cuda:N. ``precision``: bf16 autocast
    on CUDA (CPU always runs fp32). ``out``: output folder. ``log_every`` counts steps.
    """

    device: str = "auto"
    precision: Literal["bf16", "fp32"] = "bf16"
    seed: int = 0
    out: str = "runs/finetune"
    log_every: int = 10
    progress: bool = False

    def __post_init__(self) -> None:
        require(self.log_every >= 1, "log_every", "must be >= 1")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; CUDA asked for but absent is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device={name!r} but CUDA is not available; use auto or cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``precision == "bf16"``; otherwise a no-op (fp32)."""
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------- checkpoints, logs


def save_checkpoint(directory: str | Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` + ``checkpoint.json`` into ``directory`` atomically: a
    temporary sibling is renamed into place, so a kill leaves the old or the new checkpoint."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / CHECKPOINT_WEIGHTS), metadata={"format": "pt"})
        (tmp / CHECKPOINT_META).write_text(json.dumps(meta, indent=2, default=_json_default))
        if directory.exists():
            backup = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(directory, backup)
            os.replace(tmp, directory)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata written by :func:`save_checkpoint`."""
    directory = Path(directory)
    weights, meta = directory / CHECKPOINT_WEIGHTS, directory / CHECKPOINT_META
    if not weights.is_file() or not meta.is_file():
        raise CheckpointError(f"{directory}: not a fine-tuning checkpoint (needs {CHECKPOINT_WEIGHTS} and "
                              f"{CHECKPOINT_META})")
    try:
        return load_file(str(weights)), json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{directory}: cannot read the checkpoint: {err}") from err


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN: undefined metrics are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def write_json(path: str | Path, payload: Any) -> Path:
    """Atomic JSON write; non-finite floats (undefined AUCs) become null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_finite_or_none(payload), indent=2, default=_json_default))
    os.replace(tmp, path)
    return path


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Atomic CSV write of ``header`` then ``rows``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


class JsonlLog:
    """Per-step metric rows appended to ``log.jsonl`` (flushed each row) and kept for plots."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self.rows: list[dict[str, Any]] = []

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with self.path.open("a") as handle:
            handle.write(json.dumps(_finite_or_none(row), default=_json_default) + "\n")
