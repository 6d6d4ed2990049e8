"""Which images train, select and test a fine-tuned model.

The official split files (or the dataset's own splits), then a seeded patient-level label
fraction of the training images; a prepared store is seen through the same dataset contract.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from maco_cxr.data.datasets.base import ChestXrayDataset, OnError, Record, Sample
from maco_cxr.data.splits import (
    detection_split_entries,
    label_fraction,
    load_official_split,
    official_rsna_detection_test,
    read_split_file,
    subset_by_split_file,
)
from maco_cxr.errors import ConfigError, DataError
from maco_cxr.tasks.finetune.config import FinetuneData

__all__ = ["FinetuneSplits", "ROLES", "StoreDataset", "build_splits", "copy_with"]

logger = logging.getLogger(__name__)

Role = Literal["train", "val", "test"]
ROLES: tuple[Role, ...] = ("train", "val", "test")
OFFICIAL_KINDS = ("nih", "chexpert", "rsna", "siim")
OFFICIAL_NAMES = ("train", "train_1", "train_10", "train_100", "train_list", "val", "val_list", "test", "test_list")
RSNA_DETECTION_TEST = "detection_test"  # the paper's RSNA detection test set (official COCO file)
# Adapter arguments that hold the images each official list names (CheXpert's test list is its
# "valid" set and its lists include lateral views; RSNA's test list is stage_2_test_images).
_OFFICIAL_ADAPTER_ARGS: dict[str, dict[Role, dict[str, Any]]] = {
    "nih": {"train": {}, "val": {}, "test": {}},
    "chexpert": {
        "train": {"split": "train", "frontal_only": False},
        "val": {"split": "train", "frontal_only": False},
        "test": {"split": "valid", "frontal_only": False},
    },
    "rsna": {"train": {"split": "train"}, "val": {"split": "train"}, "test": {"split": "test"}},
    "siim": {"train": {"split": "train"}, "val": {"split": "train"}, "test": {"split": "train"}},
}


@dataclass
class FinetuneSplits:
    """The train / val / test datasets of a run (records already selected)."""

    train: ChestXrayDataset
    val: ChestXrayDataset
    test: ChestXrayDataset
    classes: tuple[str, ...]
    sources: dict[str, str]
    notes: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


class StoreDataset(ChestXrayDataset):
    """A prepared store seen through the dataset contract, so split files and label
    fractions select its images like any adapter's.

    Records keep the original image paths (what split files name); pixels come from the
    store's memory-mapped shards (letterboxed squares of the store's size).
    """

    def __init__(self, path: str | os.PathLike[str], on_error: OnError = "raise") -> None:
        from maco_cxr.data.store import PreparedStore

        self.store = PreparedStore(path)
        records = []
        for index, row in enumerate(self.store.rows):
            labels = None
            if row["labels"] is not None:
                labels = np.array([math.nan if v is None else v for v in row["labels"]], dtype=np.float32)
            meta = dict(row.get("meta") or {})
            meta["store_index"] = index
            records.append(
                Record(
                    image_path=Path(row["path"]),
                    report=row["report"],
                    labels=labels,
                    patient_id=row["patient_id"],
                    split=row["split"],
                    meta=meta,
                )
            )
        super().__init__(records, self.store.classes, on_error=on_error)

    def read_sample(self, index: int) -> Sample:
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


def _split_entries(cfg: FinetuneData, role: Role, value: str) -> tuple[list[Any], str]:
    if cfg.kind == "rsna" and value == RSNA_DETECTION_TEST:
        return (
            detection_split_entries(official_rsna_detection_test()),
            "official RSNA detection test set (1,218 stage_2_train images)",
        )
    if _is_official_name(cfg.kind, value):
        return load_official_split(cfg.kind, value, deduplicate=cfg.deduplicate), f"official {cfg.kind} {value}"
    path = Path(value)
    if not path.is_file():
        names = (*OFFICIAL_NAMES, RSNA_DETECTION_TEST) if cfg.kind == "rsna" else OFFICIAL_NAMES
        hint = f"; official names for {cfg.kind}: {', '.join(names)}" if cfg.kind in OFFICIAL_KINDS else ""
        raise ConfigError(
            f"{value!r} is neither a split file nor an official split name{hint}", key=f"data.{role}_split"
        )
    return read_split_file(path), str(path)


def build_splits(cfg: FinetuneData) -> FinetuneSplits:
    """Train, val and test datasets as ``cfg`` describes them (see :class:`FinetuneData`).

    Every role must end up with at least one image; the error names the data key to change.
    Counts are logged; rows an adapter skipped stay listed in each dataset's ``skips``.
    """
    from maco_cxr.data.datasets import build_dataset

    if cfg.root is None:
        raise ConfigError(f"the root of the {cfg.kind} dataset is required (--root DIR)", key="data.root")
    adapters: dict[str, ChestXrayDataset] = {}

    def adapter(role: Role) -> ChestXrayDataset:
        args = dict(_OFFICIAL_ADAPTER_ARGS.get(cfg.kind, {}).get(role, {}))
        args.update(cfg.options)
        key = json.dumps(args, sort_keys=True, default=str)
        if key not in adapters:
            if cfg.kind == "store":
                adapters[key] = StoreDataset(cfg.root, cfg.on_error)  # type: ignore[arg-type]
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
            chosen[role] = subset_by_split_file(base, entries, use_file_labels=with_labels, on_error=cfg.on_error)
            sources[role] = source
        else:
            name = getattr(cfg, f"{role}_name")
            subset = copy_with(base, [r for r in base.records if r.split == name])
            if not subset.records:
                found = sorted({str(r.split) for r in base.records})
                raise DataError(
                    f"{cfg.root}: no {cfg.kind} record has split {name!r} (found {found}); set "
                    f"data.{role}_name to one of them or give data.{role}_split (a split file)"
                )
            chosen[role] = subset
            sources[role] = f"{cfg.kind} split={name}"
    if cfg.fraction < 100.0:
        train = chosen["train"]
        keep = label_fraction(train.records, cfg.fraction / 100.0, cfg.fraction_seed)
        chosen["train"] = copy_with(train, [train.records[i] for i in keep])
        sources["train"] += f", {cfg.fraction:g} % (seed {cfg.fraction_seed})"
    for role in ROLES:
        if not chosen[role].records:
            raise DataError(f"the {role} split of {cfg.root} is empty ({sources[role]}); check data.{role}_split")
    splits = FinetuneSplits(chosen["train"], chosen["val"], chosen["test"], tuple(chosen["train"].classes), sources)
    logger.info("data: %s", ", ".join(f"{r} {len(chosen[r])} ({sources[r]})" for r in ROLES))
    return splits


def copy_with(dataset: ChestXrayDataset, records: list[Record]) -> ChestXrayDataset:
    subset = copy.copy(dataset)
    subset.records = records
    return subset
