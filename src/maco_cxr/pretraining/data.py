"""Pre-training data: uint8 images + sampled report text, sharded over ranks and resumable.

A sample is a pure function of ``(seed, epoch, dataset index)``: the sampler yields
``(epoch, index)`` keys and the report's sentences are drawn with a ``random.Random`` seeded
from them, so a resumed run sees exactly the samples and texts an uninterrupted run would,
whatever the number of loader workers. Images stay uint8 until the device (4x less to pin and
copy); augmentation and normalisation happen there (:mod:`maco_cxr.data.augment`).

Bad samples: with ``on_error="raise"`` a :class:`DataError` names the file, the record and the
field; with ``"skip"`` the sample is replaced by the next loadable one (deterministically) and
the replacement travels with the batch, so the loop counts and reports it (``skipped.json``).

Excluded images (``data.exclude``) are removed from the source before the sampler is built, so
no index the loop can draw names one; :func:`open_source` returns what was removed
(``excluded.json``).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from maco_cxr._atomic import write_json
from maco_cxr.data.datasets.base import Record
from maco_cxr.data.io import read_image
from maco_cxr.data.letterbox import Letterbox
from maco_cxr.data.prepare import Exclusion, apply_exclusions
from maco_cxr.data.reports import negation_counterfactual, report_text, sample_report_sentences, whole_report_text
from maco_cxr.data.tokenizer import ReportTokenizer
from maco_cxr.errors import ConfigError, DataError
from maco_cxr.models.text import trim_padding
from maco_cxr.pretraining.config import OnError, PretrainData, TextMode

logger = logging.getLogger(__name__)

SampleKey = tuple[int, int]


class PairSource(Protocol):
    """Random access to ``(uint8 image [H, W], report or None)`` with a description per index."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[np.ndarray, str | None]: ...

    def where(self, index: int) -> str: ...


class RecordSource:
    """A dataset adapter's records: images decoded with :func:`read_image` on access."""

    def __init__(self, dataset: Any, name: str) -> None:
        self.dataset = dataset
        self.name = name

    def __len__(self) -> int:
        return len(self.dataset.records)

    def load(self, index: int) -> tuple[np.ndarray, str | None]:
        record = self.dataset.records[index]
        return read_image(record.image_path), record.report

    def where(self, index: int) -> str:
        record = self.dataset.records[index]
        row = record.meta.get("where") if isinstance(record.meta, dict) else None
        return f"{record.image_path} ({row or f'record {index} of {self.name}'})"


class StoreSource:
    """A prepared store (already letterboxed uint8), optionally restricted to some rows."""

    def __init__(self, store: Any, rows: Sequence[int]) -> None:
        self.store = store
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int) -> tuple[np.ndarray, str | None]:
        sample = self.store[self.rows[index]]
        return sample["image"][0].numpy(), sample.get("report")

    def where(self, index: int) -> str:
        row = self.store.rows[self.rows[index]]
        return f"{row.get('path')} (row {self.rows[index] + 1} of {self.store.path / 'manifest.jsonl'})"


class PairDataset(Dataset):
    """``(epoch, index)`` -> ``{"image": uint8 [1, S, S], "text": str, "index": int,
    "skipped": [{"path", "reason"}]}`` with the official sentence sampling of the report
    (``text="full"``: the whole report instead); with ``negation_negatives`` also
    ``"negative_text"``, the text with one sentence's negation flipped (drawn from its own
    seeded generator, so resume sees the same counterfactuals)."""

    def __init__(
        self,
        source: PairSource,
        size: int,
        seed: int,
        on_error: OnError = "raise",
        sections: Sequence[str] | None = None,
        text: TextMode = "sentences",
        negation_negatives: bool = False,
    ) -> None:
        if len(source) == 0:
            raise DataError("the training dataset is empty; check data.path and data.split")
        self.source = source
        self.size = size
        self.seed = seed
        self.on_error = on_error
        self.sections = tuple(sections) if sections else None
        self.text = text
        self.negation_negatives = negation_negatives

    def __len__(self) -> int:
        return len(self.source)

    def text_rng(self, epoch: int, index: int) -> random.Random:
        """The generator of sample ``index``'s sentence draw in ``epoch``."""
        return random.Random(f"maco-text:{self.seed}:{epoch}:{index}")

    def _load(self, epoch: int, index: int) -> dict[str, Any]:
        try:
            pixels, report = self.source.load(index)
        except DataError as err:
            raise DataError(f"field 'image_path': {err}") from err
        if pixels.ndim != 2 or pixels.dtype != np.uint8:
            raise DataError(f"field 'image': expected uint8 [H, W] pixels, got {pixels.dtype} {list(pixels.shape)}")
        if pixels.shape != (self.size, self.size):
            pixels = Letterbox.fit(pixels.shape[0], pixels.shape[1], self.size).apply_image(pixels)
        if report is None or not report.strip():
            raise DataError("field 'report' is empty; every training image needs a report")
        source_text = report_text(report, self.sections) if self.sections else report
        text = (
            whole_report_text(source_text)
            if self.text == "full"
            else sample_report_sentences(source_text, self.text_rng(epoch, index))
        )
        if not text and self.sections and not source_text:
            raise DataError(f"field 'report' has no {' or '.join(self.sections).upper()} section")
        if not text:
            raise DataError("field 'report' has no sentence (only '.', 'none' or whitespace)")
        sample = {"image": torch.from_numpy(np.ascontiguousarray(pixels)).unsqueeze(0), "text": text, "index": index}
        if self.negation_negatives:
            flip_rng = random.Random(f"maco-negation:{self.seed}:{epoch}:{index}")
            sample["negative_text"] = negation_counterfactual(text, flip_rng)
        return sample

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        epoch, index = key
        skipped: list[dict[str, str]] = []
        for attempt in range(len(self.source)):
            candidate = (index + attempt) % len(self.source)
            try:
                sample = self._load(epoch, candidate)
            except DataError as err:
                where = self.source.where(candidate)
                if self.on_error == "raise":
                    raise DataError(
                        f"{where}: {err} (set data.on_error=skip to replace and count bad samples)"
                    ) from err
                skipped.append({"path": where, "reason": str(err)})
                continue
            sample["skipped"] = skipped
            return sample
        raise DataError(
            f"no sample of the dataset could be loaded ({len(skipped)} tried); first "
            f"failure: {skipped[0]['path']}: {skipped[0]['reason']}"
        )


class PairCollate:
    """Stack uint8 images ``[B, 1, S, S]`` and tokenize the texts, and the negation-flipped
    texts when the samples have them (runs in loader workers)."""

    def __init__(self, tokenizer: ReportTokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = {
            "image": torch.stack([s["image"] for s in samples]),
            "tokens": trim_padding(self.tokenizer([s["text"] for s in samples])),
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
            "skipped": [item for s in samples for item in s["skipped"]],
        }
        if "negative_text" in samples[0]:
            batch["negative_tokens"] = trim_padding(self.tokenizer([s["negative_text"] for s in samples]))
        return batch


class ResumableSampler(Sampler[SampleKey]):
    """Seeded permutation per epoch, cut into global micro-batches, sharded by rank.

    Global micro-batch k of an epoch is ``perm[k*B*W : (k+1)*B*W]`` (B per rank, W ranks); rank r
    takes its r-th block of B. So a global batch holds the same samples for any W with equal
    ``B*W``. ``batches_per_epoch`` micro-batches are drawn per epoch (the tail that does not fill a
    whole optimizer step is left out and differs every epoch). :meth:`set_position` starts an
    epoch after micro-batch ``start``, which is how a resumed run continues mid-epoch.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        batches_per_epoch: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batches_per_epoch * batch_size * world_size > num_samples:
            raise ConfigError(
                f"{batches_per_epoch} batches of {batch_size} x {world_size} ranks need "
                f"more than the {num_samples} samples"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.batches_per_epoch:
            raise ValueError(f"start {start} is outside 0..{self.batches_per_epoch}")
        self.epoch, self.start = epoch, start

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def __iter__(self) -> Iterator[SampleKey]:
        perm = self.permutation(self.epoch)
        span = self.batch_size * self.world_size
        for k in range(self.start, self.batches_per_epoch):
            begin = k * span + self.rank * self.batch_size
            for index in perm[begin : begin + self.batch_size]:
                yield self.epoch, int(index)

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start) * self.batch_size


def make_loader(
    dataset: PairDataset,
    sampler: ResumableSampler,
    tokenizer: ReportTokenizer,
    *,
    workers: int,
    pin_memory: bool,
    seed: int,
) -> DataLoader:
    """Loader of collated micro-batches; workers persist across epochs."""
    return DataLoader(
        dataset,
        batch_size=sampler.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=PairCollate(tokenizer),
        pin_memory=pin_memory,
        drop_last=False,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )


@dataclass
class SkipLog:
    """Every bad sample the run met: rows the adapter left out when indexing, and samples
    replaced while training (one entry per file, with how often it was met)."""

    index_time: list[dict[str, str]] = field(default_factory=list)
    replaced: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, items: Sequence[dict[str, str]]) -> None:
        for item in items:
            entry = self.replaced.setdefault(item["path"], {"path": item["path"], "reason": item["reason"], "count": 0})
            entry["count"] += 1

    @property
    def replaced_count(self) -> int:
        return sum(entry["count"] for entry in self.replaced.values())

    def state(self) -> dict[str, Any]:
        return {"index_time": [dict(i) for i in self.index_time], "replaced": [dict(e) for e in self.replaced.values()]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.index_time = [dict(i) for i in state.get("index_time", [])]
        self.replaced = {e["path"]: dict(e) for e in state.get("replaced", [])}

    def merge(self, other: dict[str, Any]) -> None:
        for entry in other.get("replaced", []):
            mine = self.replaced.setdefault(entry["path"], {**entry, "count": 0})
            mine["count"] += entry["count"]

    def write(self, path: Path) -> None:
        payload = {
            "skipped_when_indexing": len(self.index_time),
            "replaced_during_training": self.replaced_count,
            "indexing": self.index_time,
            "training": list(self.replaced.values()),
        }
        write_json(path, payload)


class OpenedSource(NamedTuple):
    """The pairs to train on, the rows the adapter left out when indexing (``on_error="skip"``)
    and what ``data.exclude`` removed."""

    source: PairSource
    index_skips: list[dict[str, str]]
    exclusion: Exclusion


_MIMIC_SOURCES = ("mimic-cxr", "MimicCxrJpg")


def open_source(cfg: PretrainData, size: int, output_dir: Path, *, is_master: bool, barrier: Any) -> OpenedSource:
    """The configured pairs without the excluded images (see :class:`OpenedSource`)."""
    if cfg.source == "store":
        from maco_cxr.data.store import PreparedStore

        store = PreparedStore(cfg.path)
        if store.size != size:
            raise ConfigError(
                f"data.path: the store {cfg.path} holds {store.size} px images but the "
                f"model trains on {size} px (model input_size); prepare it with --size {size}"
            )
        rows = list(range(len(store)))
        if cfg.split is not None:
            rows = [i for i, row in enumerate(store.rows) if row.get("split") == cfg.split]
            if not rows:
                found = sorted({str(row.get("split")) for row in store.rows})
                raise DataError(
                    f"{cfg.path}: no row has split {cfg.split!r} (splits found: {found}); "
                    "set data.split to one of them, or null for all rows"
                )
        records = [
            Record(image_path=Path(str(store.rows[i].get("path"))), meta=store.rows[i].get("meta") or {}) for i in rows
        ]
        mimic = store.info.get("source") in _MIMIC_SOURCES
        ms_cxr = cfg.ms_cxr or (_store_ms_cxr_file(store.info) if mimic else None)
        kept, exclusion = apply_exclusions(records, cfg.exclude, ms_cxr=ms_cxr, check_ms_cxr=mimic, log=is_master)
        _check_not_empty(kept, exclusion)
        return OpenedSource(StoreSource(store, [rows[k] for k in kept]), [], exclusion)
    from maco_cxr.data.datasets import build_dataset
    from maco_cxr.data.datasets.mimic import MimicCxrJpg

    kind, path = cfg.kind, cfg.path
    if cfg.source == "synthetic":
        kind = "manifest"
        path = cfg.path or str(output_dir / "synthetic")
        if is_master:
            write_synthetic(Path(path), cfg.synthetic_count, cfg.synthetic_seed, size, cfg.workers)
        barrier()
    options = dict(cfg.options)
    if cfg.split is not None:
        options.setdefault("split", cfg.split)
    dataset = build_dataset(kind, path, on_error=cfg.on_error, **options)
    kept, exclusion = apply_exclusions(
        dataset.records, cfg.exclude, ms_cxr=cfg.ms_cxr, check_ms_cxr=isinstance(dataset, MimicCxrJpg), log=is_master
    )
    _check_not_empty(kept, exclusion)
    if len(kept) < len(dataset.records):
        dataset.records = [dataset.records[i] for i in kept]
    return OpenedSource(RecordSource(dataset, str(path)), list(dataset.skips.skipped), exclusion)


def _store_ms_cxr_file(info: dict[str, Any]) -> str | None:
    """The MS-CXR file a MIMIC-CXR store was checked against when it was prepared, if it still exists."""
    check = (info.get("exclusion") or {}).get("ms_cxr") or {}
    files = [f for f in check.get("annotations") or [] if Path(f).is_file()]
    return files[0] if files else None


def _check_not_empty(kept: list[int], exclusion: Exclusion) -> None:
    if not kept and exclusion.count:
        raise DataError(
            f"data.exclude left out all {exclusion.count} images of the training data; check "
            "data.exclude and data.split"
        )


def write_synthetic(path: Path, count: int, seed: int, size: int, workers: int = 0) -> None:
    """Write ``count`` phantoms once; a complete folder written with the same settings is reused."""
    from maco_cxr.data.synthetic import write_synthetic_dataset

    stamp = path / ".maco-synthetic.json"
    settings = {"count": count, "seed": seed, "size": size}
    if stamp.is_file() and (path / "manifest.csv").is_file() and json.loads(stamp.read_text()) == settings:
        return
    stamp.unlink(missing_ok=True)
    logger.info("writing %d synthetic phantoms (%d px) to %s", count, size, path)
    write_synthetic_dataset(path, count, seed, size=size, workers=workers)
    write_json(stamp, settings)
