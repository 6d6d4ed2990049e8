"""Read a store written by :func:`maco_cxr.data.prepare.prepare_dataset`.

Images come from memory-mapped ``uint8 [n, S, S]`` shards, so a sample costs one memcpy; the
batch stays uint8 up to the device, where :mod:`maco_cxr.data.augment` normalises it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from maco_cxr.data.prepare import FORMAT_NAME, FORMAT_VERSION, MANIFEST_FILE, STORE_FILE
from maco_cxr.errors import ConfigError, DataError


class PreparedStore(Dataset):
    """A prepared store as a map-style dataset of sample dicts.

    Keys: ``image`` uint8 ``[1, S, S]``, ``index``, ``path`` (the original file), ``report``,
    ``labels`` float32 ``[K]`` (NaN unknown; absent if the record had none), ``boxes`` float32
    ``[M, 4]`` xyxy in letterboxed pixels, ``box_labels``, ``mask`` uint8 ``[S, S]`` (if the
    image has one), ``letterbox`` (the :class:`~maco_cxr.data.letterbox.Letterbox` dict that maps
    boxes and maps back to the original image), ``patient_id``, ``split``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        info_path = self.path / STORE_FILE
        if not info_path.is_file():
            raise DataError(
                f"{self.path}: no {STORE_FILE}; this is not a finished prepared store (run or "
                f"rerun `maco-cxr prepare ... --out {self.path}`, which resumes)"
            )
        self.info: dict[str, Any] = json.loads(info_path.read_text())
        if self.info.get("format") != FORMAT_NAME or self.info.get("version") != FORMAT_VERSION:
            raise DataError(
                f"{info_path}: format {self.info.get('format')!r} version "
                f"{self.info.get('version')!r}, expected {FORMAT_NAME!r} version {FORMAT_VERSION}; "
                "prepare the dataset again with this version of maco-cxr"
            )
        self.size: int = int(self.info["size"])
        self.classes: tuple[str, ...] = tuple(self.info["classes"])
        self.rows = [json.loads(line) for line in (self.path / MANIFEST_FILE).read_text().splitlines() if line]
        if len(self.rows) != self.info["count"]:
            raise DataError(
                f"{self.path / MANIFEST_FILE}: {len(self.rows)} rows but {STORE_FILE} says "
                f"{self.info['count']}; the store is damaged, prepare it again"
            )
        self._arrays: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        # memory maps are reopened in each DataLoader worker instead of being pickled (copied)
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state

    def _array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = np.load(self.path / name, mmap_mode="r")
        return self._arrays[name]

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        shard = self.info["shards"][row["shard"]]
        offset = row["offset"]
        image = torch.from_numpy(np.array(self._array(shard["images"])[offset]))
        sample: dict[str, Any] = {
            "image": image.unsqueeze(0),
            "index": index,
            "path": row["path"],
            "report": row["report"],
            "box_labels": row["box_labels"],
            "letterbox": row["letterbox"],
            "patient_id": row["patient_id"],
            "split": row["split"],
        }
        if row["labels"] is not None:
            sample["labels"] = torch.tensor([math.nan if v is None else v for v in row["labels"]], dtype=torch.float32)
        if row["boxes"] is not None:
            sample["boxes"] = torch.tensor(row["boxes"], dtype=torch.float32).reshape(-1, 4)
        if row["has_mask"]:
            sample["mask"] = torch.from_numpy(np.array(self._array(shard["masks"])[offset]))
        return sample


def collate_uint8(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples: ``image`` uint8 ``[B, 1, S, S]``; ``labels`` float32 ``[B, K]`` when every
    sample has labels; every other key a list (None where a sample lacks it).

    Images stay uint8 (4x less to pin and copy than float); normalise on the device. Stacking
    goes through numpy (``torch.stack`` on uint8 was 5-15x slower on the CPU), and labels are
    stacked because DataLoader workers send every tensor through its own shared-memory handle:
    64 label tensors per batch cut a 2-worker loader from ~48k to ~2k img/s.
    """
    keys = {key for sample in batch for key in sample} - {"image"}
    images = np.stack([sample["image"].numpy() for sample in batch])
    out: dict[str, Any] = {"image": torch.from_numpy(images)}
    for key in sorted(keys):
        out[key] = [sample.get(key) for sample in batch]
    labels = out.get("labels")
    if labels is not None and all(x is not None for x in labels):
        if len({x.shape for x in labels}) == 1:
            out["labels"] = torch.from_numpy(np.stack([x.numpy() for x in labels]))
    return out


def make_loader(
    store: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    workers: int,
    drop_last: bool,
    sampler: Sampler | None = None,
) -> DataLoader:
    """A DataLoader over ``store`` with :func:`collate_uint8`.

    Shuffling draws from a generator seeded with ``seed`` (same seed, same order); pass a
    ``sampler`` (e.g. DistributedSampler) instead of ``shuffle`` when sharding across ranks.
    Workers persist across epochs; memory is pinned when CUDA is available.
    """
    if sampler is not None and shuffle:
        raise ConfigError("make_loader: give either shuffle=True or a sampler (which shuffles itself), not both")
    if batch_size < 1 or workers < 0:
        raise ConfigError(f"make_loader: batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    return DataLoader(
        store,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_uint8,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
