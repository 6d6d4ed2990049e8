"""`prepare`: decode a dataset once into a store of letterboxed uint8 shards.

Training reads the store, not the original files: every image is read once, letterboxed to
``size x size`` and written into ``shard_NNNNN.npy`` arrays ``[n, size, size]`` uint8, which
:class:`maco_cxr.data.store.PreparedStore` memory-maps, so decoding a sample is a memcpy.
Disk cost: ``size**2`` bytes per image (196 KiB at 448; MIMIC-CXR's 377k images take ~74 GB).

Layout of ``STORE/``:
- ``shard_NNNNN.npy`` images, ``shard_NNNNN_masks.npy`` masks (only if a record of the shard has
  a mask; zeros where a record has none) and ``shard_NNNNN.json`` (what the shard holds: the
  letterbox of each image, its unreadable files). Shard k covers records
  ``[k * shard_size, (k + 1) * shard_size)``.
- ``manifest.jsonl``: one row per stored image (see :func:`_manifest_row`).
- ``prepare_report.json``: ``{"n_ok", "n_failed", "failures": [{"path", "reason"}],
  "skipped_rows": [{"where", "reason"}], "n_excluded", "excluded", "n_colour_converted",
  "colour_converted": [{"path", "colour"}]}`` (``skipped_rows``: rows the dataset adapter
  skipped; ``excluded``: what ``exclude`` removed, see :class:`Exclusion`; ``colour_converted``:
  stored images that were colour, e.g. ``"DICOM YBR_FULL_422"``, and were reduced to grey).
- ``store.json``: size, count, classes, format version, source, the exclusion summary; written
  last, so its presence means the store is complete.

Exclusion (``exclude``, ``maco-cxr prepare --exclude FILE...``): images named by id lists
(one id or path per line, official split files, MS-CXR's annotations; see
:func:`maco_cxr.data.splits.read_id_list`) or given inline are left out before anything is
decoded, and counted. On MIMIC-CXR, MS-CXR images left in the data are counted and warned
about when MS-CXR's annotations are known (:func:`apply_exclusions`).

Resuming: every file is written atomically (temporary file + ``os.replace``) and a shard's JSON
is written after its arrays, so a rerun after a kill reuses each shard whose JSON, arrays and
inputs (image and mask paths, size) match, and prepares the rest.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import multiprocessing
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from maco_cxr._atomic import claim_output_folder, remove_stale_temporaries, write_json, write_text, write_with
from maco_cxr.data.datasets.base import ChestXrayDataset, OnError, Record
from maco_cxr.data.datasets.mimic import MimicCxrJpg
from maco_cxr.data.io import read_image_with_info
from maco_cxr.data.letterbox import Letterbox
from maco_cxr.data.splits import IdList, SplitEntry, find_listed, read_id_list
from maco_cxr.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

FORMAT_NAME = "maco-cxr-store"
FORMAT_VERSION = 1
STORE_FILE = "store.json"
MANIFEST_FILE = "manifest.jsonl"
REPORT_FILE = "prepare_report.json"


@dataclass
class PrepareReport:
    """What a :func:`prepare_dataset` run produced; ``failures`` lists every unreadable file."""

    store: Path
    n_ok: int
    n_failed: int
    failures: list[dict[str, str]] = field(default_factory=list)
    n_shards: int = 0
    n_reused_shards: int = 0
    skipped_rows: list[dict[str, str]] = field(default_factory=list)  # the adapter's skips
    exclusion: Exclusion | None = None  # what ``exclude`` removed (None: nothing asked)
    colour_converted: list[dict[str, str]] = field(default_factory=list)  # colour images made grey

    @property
    def n_excluded(self) -> int:
        return 0 if self.exclusion is None else self.exclusion.count


# --------------------------------------------------------------------------------- exclusion

# Suffixes that make an ``exclude`` item a file even when it does not exist (an error then,
# never silently an id that matches nothing).
_LIST_SUFFIXES = (".txt", ".csv", ".gz", ".json", ".tsv", ".lst")
MS_CXR_FILE = "MS-CXR's annotation CSV/JSON or a list of its dicom_ids"


@dataclass
class Exclusion:
    """What an exclusion removed from a set of images, and the MS-CXR check.

    ``sources``: one entry per list file (``{"source", "format", "entries", "unmatched",
    "images"}``, ``images`` = the images it named) and one for the inline ids;
    ``excluded``: the paths of the removed images; ``ms_cxr``: ``None`` when the check does
    not apply (not MIMIC-CXR), else ``{"checked", "annotations", "images", "remaining"}``
    (``images``: MS-CXR images among the data before exclusion, ``remaining``: after).
    """

    sources: list[dict[str, Any]] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    ms_cxr: dict[str, Any] | None = None

    @property
    def count(self) -> int:
        return len(self.excluded)

    def summary(self) -> dict[str, Any]:
        """Everything but the list of paths (what ``store.json`` and the run config keep)."""
        return {"n_excluded": self.count, "sources": [dict(s) for s in self.sources], "ms_cxr": self.ms_cxr}

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "excluded": list(self.excluded)}


def read_exclusions(items: Sequence[str], key: str = "exclude") -> tuple[list[IdList], list[str]]:
    """Split ``items`` into id-list files (read) and inline ids.

    An item naming an existing file is read with :func:`read_id_list`; an item ending like a
    list file (.txt, .csv, .gz, .json, .tsv, .lst) that does not exist raises
    :class:`ConfigError` naming ``key``; anything else is an inline id or path.
    """
    if isinstance(items, str):
        raise ConfigError(f"give a list of files or ids, not the string {items!r}", key=key)
    lists: list[IdList] = []
    inline: list[str] = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        path = Path(text).expanduser()
        if path.is_file():
            lists.append(read_id_list(path))
        elif text.lower().endswith(_LIST_SUFFIXES):
            raise ConfigError(f"{text!r} looks like a list file but does not exist", key=key)
        else:
            inline.append(text)
    return lists, inline


def apply_exclusions(
    records: Sequence[Record],
    exclude: Sequence[str] = (),
    *,
    ms_cxr: str | os.PathLike[str] | None = None,
    check_ms_cxr: bool = False,
    key: str = "data.exclude",
    log: bool = True,
) -> tuple[list[int], Exclusion]:
    """The indices of ``records`` to keep once ``exclude`` is applied, and what was removed.

    ``exclude``: id-list files and inline ids (:func:`read_exclusions`); an image is removed
    when any entry names it (:func:`maco_cxr.data.splits.find_listed`). With
    ``check_ms_cxr`` (the data is MIMIC-CXR, where MS-CXR's grounding images come from) the
    MS-CXR images still in the data are counted: their ids come from the ``ms_cxr`` file
    (annotations or a dicom_id list) and from any exclusion file that is MS-CXR's
    annotation file. A count above zero is a
    warning (the grounding evaluation would test on pre-training images); when no MS-CXR
    file is known, a one-line warning says so and how to exclude them. ``key`` names the
    setting in messages (``data.exclude`` or ``--exclude``); ``log=False`` stays quiet
    (ranks other than 0).
    """
    lists, inline = read_exclusions(exclude, key)
    removed: set[int] = set()
    exclusion = Exclusion()
    for id_list in lists:
        listed, unmatched = find_listed(records, id_list.entries)
        removed |= listed
        exclusion.sources.append(
            {
                "source": id_list.source,
                "format": id_list.format,
                "entries": len(id_list.entries),
                "unmatched": len(unmatched),
                "images": len(listed),
            }
        )
    if inline:
        entries = [SplitEntry(text, np.zeros(0, dtype=np.float32), k + 1) for k, text in enumerate(inline)]
        listed, unmatched = find_listed(records, entries)
        removed |= listed
        exclusion.sources.append(
            {
                "source": "inline",
                "format": "ids",
                "entries": len(entries),
                "unmatched": len(unmatched),
                "images": len(listed),
            }
        )
        if unmatched and log:
            logger.warning(
                "%s: %d of %d inline ids name no image (first: %r); if it was meant as a file, "
                "that file does not exist",
                key,
                len(unmatched),
                len(entries),
                unmatched[0].path,
            )
    kept = [i for i in range(len(records)) if i not in removed]
    exclusion.excluded = [str(records[i].image_path) for i in sorted(removed)]
    if log and (lists or inline):
        described = "; ".join(
            f"{s['source']}: {s['images']} images ({s['entries']} entries, {s['unmatched']} naming none)"
            for s in exclusion.sources
        )
        logger.info("%s: left out %d of %d images (%s)", key, len(removed), len(records), described)
    if check_ms_cxr:
        ms_lists = ([read_id_list(ms_cxr)] if ms_cxr else []) + [i for i in lists if i.is_ms_cxr]
        exclusion.ms_cxr = _check_ms_cxr(records, removed, ms_lists, key, log)
    return kept, exclusion


def _check_ms_cxr(
    records: Sequence[Record], removed: set[int], ms_lists: list[IdList], key: str, log: bool
) -> dict[str, Any]:
    """Count MS-CXR images among MIMIC-CXR records (before and after exclusion) and say so."""
    if not ms_lists:
        if log:
            setting = key.startswith("data.")
            logger.warning(
                "MS-CXR images may be among these MIMIC-CXR images (not checked: no MS-CXR file "
                "given), and MS-CXR grounding would then test on pre-training images; exclude them with "
                "%s, FILE being %s (only count them with %s)",
                f"{key}=[FILE]" if setting else f"{key} FILE",
                MS_CXR_FILE,
                "data.ms_cxr=FILE" if setting else "--ms-cxr FILE",
            )
        return {"checked": False, "annotations": [], "images": None, "remaining": None}
    entries = [entry for id_list in ms_lists for entry in id_list.entries]
    listed, _ = find_listed(records, entries)
    remaining = sorted(listed - removed)
    files = sorted({id_list.source for id_list in ms_lists})
    if log and remaining:
        logger.warning(
            "%d MS-CXR images (%s) are among these MIMIC-CXR images; MS-CXR grounding would test on "
            "images the model was pre-trained on: add %s to %s (first: %s)",
            len(remaining),
            ", ".join(files),
            files[0],
            key,
            records[remaining[0]].image_path,
        )
    elif log:
        logger.info(
            "MS-CXR check (%s): none of its images is left among these MIMIC-CXR images (%d were excluded)",
            ", ".join(files),
            len(listed),
        )
    return {"checked": True, "annotations": files, "images": len(listed), "remaining": len(remaining)}


@dataclass
class _Item:
    """One record after decoding: pixels and letterbox, or the reason it failed."""

    source_index: int
    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    letterbox: dict[str, Any] | None = None
    reason: str | None = None
    colour: str | None = None  # "FORMAT MODE" of a colour image reduced to grey


def shard_name(shard: int) -> str:
    """File stem of shard ``shard`` (``shard_00000``)."""
    return f"shard_{shard:05d}"


def _prepare_record(dataset: ChestXrayDataset, source_index: int, size: int) -> _Item:
    record = dataset.records[source_index]
    try:
        pixels, info = read_image_with_info(record.image_path)
        height, width = pixels.shape
        letterbox = Letterbox.fit(height, width, size)
        image = letterbox.apply_image(pixels)
        mask = dataset.read_mask(record, height, width)
    except DataError as err:
        return _Item(source_index, reason=str(err))
    return _Item(
        source_index,
        image=np.ascontiguousarray(image, dtype=np.uint8),
        mask=None if mask is None else np.asarray(letterbox.apply_mask(mask), dtype=np.uint8),
        letterbox=letterbox.to_dict(),
        colour=f"{info.format} {info.mode}" if info.converted_from_colour else None,
    )


# Set once per worker process by the pool initializer, so the dataset reaches each worker
# once rather than with every task.
_worker_job: tuple[ChestXrayDataset, int] | None = None


def _init_worker(dataset: ChestXrayDataset, size: int) -> None:
    global _worker_job
    _worker_job = (dataset, size)


def _prepare_in_worker(source_index: int) -> _Item:
    assert _worker_job is not None, "worker used without _init_worker"
    return _prepare_record(_worker_job[0], source_index, _worker_job[1])


def _prepare_items(dataset: ChestXrayDataset, indices: list[int], size: int, workers: int) -> Iterator[_Item]:
    """Decoded items in the order of ``indices``; in ``workers`` processes when > 0."""
    if workers == 0:
        for index in indices:
            yield _prepare_record(dataset, index, size)
        return
    # fork shares the dataset (up to hundreds of thousands of records) copy-on-write; spawn,
    # where fork is unsafe (macOS) or missing (Windows), pickles it once to each worker
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(dataset, size)) as pool:
        yield from pool.imap(_prepare_in_worker, indices, chunksize=4)


def _fingerprint(records: list[Record], size: int) -> str:
    """Hash of a shard's pixel inputs; a shard is reused only when this matches."""
    inputs = [size] + [[str(r.image_path), [str(p) for p in r.mask_paths]] for r in records]
    return hashlib.sha256(json.dumps(inputs).encode()).hexdigest()


def _array_ok(path: Path, shape: tuple[int, ...]) -> bool:
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return array.shape == shape and array.dtype == np.uint8


def _load_done_shard(out: Path, shard: int, fingerprint: str, size: int) -> dict | None:
    """The shard's JSON if the shard is complete and was made from the same inputs."""
    meta_path = out / f"{shard_name(shard)}.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        logger.warning("%s is not valid JSON (%s); preparing the shard again", meta_path, err)
        return None
    if meta.get("version") != FORMAT_VERSION or meta.get("fingerprint") != fingerprint:
        logger.info("%s was made from other inputs; preparing it again", meta_path)
        return None
    shape = (meta["count"], size, size)
    files = [meta["images"]] + ([meta["masks"]] if meta["masks"] else [])
    if not all(_array_ok(out / name, shape) for name in files):
        logger.info("%s: an array file is missing or incomplete; preparing it again", meta_path)
        return None
    return meta


class _ShardWriter:
    """Collects the items of one shard in order and writes its arrays, then its JSON."""

    def __init__(self, out: Path, shard: int, indices: range, size: int, fingerprint: str):
        self.out, self.shard, self.indices = out, shard, indices
        self.fingerprint = fingerprint
        self.images = np.empty((len(indices), size, size), dtype=np.uint8)
        self.masks: np.ndarray | None = None
        self.entries: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []

    def add(self, item: _Item, path: str) -> None:
        if item.reason is not None:
            self.failures.append({"source_index": item.source_index, "path": path, "reason": item.reason})
            return
        offset = len(self.entries)
        self.images[offset] = item.image
        if item.mask is not None:
            if self.masks is None:
                self.masks = np.zeros_like(self.images)
            self.masks[offset] = item.mask
        self.entries.append(
            {
                "source_index": item.source_index,
                "offset": offset,
                "letterbox": item.letterbox,
                "has_mask": item.mask is not None,
                "colour": item.colour,
            }
        )

    def write(self) -> dict[str, Any]:
        name = shard_name(self.shard)
        count = len(self.entries)
        write_with(self.out / f"{name}.npy", lambda tmp: np.save(tmp, self.images[:count]))
        masks_file = None
        if self.masks is not None:
            masks_file = f"{name}_masks.npy"
            write_with(self.out / masks_file, lambda tmp: np.save(tmp, self.masks[:count]))
        meta = {
            "version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "count": count,
            "images": f"{name}.npy",
            "masks": masks_file,
            "entries": self.entries,
            "failures": self.failures,
        }
        write_json(self.out / f"{name}.json", meta)
        return meta


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _manifest_row(index: int, shard: int, entry: dict[str, Any], record: Record) -> dict:
    """Everything known about one stored image; boxes are in letterboxed pixels."""
    boxes = None
    if record.boxes is not None:
        original = np.asarray(record.boxes, dtype=np.float32).reshape(-1, 4)
        letterbox = Letterbox.from_dict(entry["letterbox"])
        boxes = np.asarray(letterbox.boxes_to_letterbox(original), dtype=np.float64).tolist()
    labels = None
    if record.labels is not None:
        labels = [None if math.isnan(v) else float(v) for v in np.asarray(record.labels, dtype=np.float64).ravel()]
    return {
        "index": index,
        "shard": shard,
        "offset": entry["offset"],
        "source_index": entry["source_index"],
        "path": str(record.image_path),
        "report": record.report,
        "labels": labels,
        "boxes": boxes,
        "box_labels": list(record.box_labels),
        "patient_id": record.patient_id,
        "split": record.split,
        "letterbox": entry["letterbox"],
        "has_mask": entry["has_mask"],
        "meta": record.meta,
    }


def _check_arguments(dataset: ChestXrayDataset, size: int, workers: int, shard_size: int, on_error: str) -> None:
    if len(dataset.records) == 0:
        raise DataError(f"{type(dataset).__name__}: the dataset has no records; nothing to prepare")
    if size < 1:
        raise ConfigError(f"size must be >= 1, got {size}")
    if workers < 0:
        raise ConfigError(f"workers must be >= 0 (0 = in-process), got {workers}")
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def prepare_dataset(
    dataset: ChestXrayDataset,
    out: Path,
    size: int = 448,
    *,
    workers: int = 0,
    shard_size: int = 1024,
    on_error: OnError = "skip",
    progress: bool = False,
    source: str | None = None,
    exclude: Sequence[str] = (),
    ms_cxr: str | os.PathLike[str] | None = None,
) -> PrepareReport:
    """Decode, letterbox and store every record of ``dataset`` in ``out`` (see module doc).

    ``on_error="skip"`` records each unreadable file in ``prepare_report.json`` and goes on;
    ``"raise"`` stops at the first one with a :class:`DataError` naming it (shards finished
    before it are kept, so a rerun resumes). ``source`` names the dataset kind in
    ``store.json`` (default: the adapter's class name). ``exclude``: id-list files and inline
    ids of images to leave out (counted in both JSON files); ``ms_cxr``: an MS-CXR file used
    only to count MS-CXR images left in MIMIC-CXR data (see :func:`apply_exclusions`).
    """
    exclusion = None
    if exclude or ms_cxr or _is_mimic(dataset, source):
        kept, exclusion = apply_exclusions(
            dataset.records, exclude, ms_cxr=ms_cxr, check_ms_cxr=_is_mimic(dataset, source), key="--exclude"
        )
        if len(kept) < len(dataset.records):
            dataset = copy.copy(dataset)
            dataset.records = [dataset.records[i] for i in kept]
            if not dataset.records:
                raise DataError(f"--exclude left out all {exclusion.count} images; nothing to prepare")
    _check_arguments(dataset, size, workers, shard_size, on_error)
    out = claim_output_folder(out, "store")
    remove_stale_temporaries(out)  # what a killed run was writing
    (out / STORE_FILE).unlink(missing_ok=True)  # the store is incomplete until the end
    records = dataset.records
    n_shards = math.ceil(len(records) / shard_size)
    metas: dict[int, dict] = {}
    pending: list[tuple[int, range, str]] = []
    for shard in range(n_shards):
        indices = range(shard * shard_size, min(len(records), (shard + 1) * shard_size))
        fingerprint = _fingerprint([records[i] for i in indices], size)
        meta = _load_done_shard(out, shard, fingerprint, size)
        if meta is None:
            # a stale JSON must not vouch for arrays this run is about to replace
            (out / f"{shard_name(shard)}.json").unlink(missing_ok=True)
            pending.append((shard, indices, fingerprint))
        else:
            metas[shard] = meta
    if metas:
        logger.info("%s: reusing %d of %d finished shards", out, len(metas), n_shards)

    bar = tqdm(total=len(records), disable=not progress, unit="img", desc="prepare")
    bar.update(sum(len(m["entries"]) + len(m["failures"]) for m in metas.values()))
    todo = [i for _, indices, _ in pending for i in indices]
    writers = iter(pending)
    writer: _ShardWriter | None = None
    items = _prepare_items(dataset, todo, size, workers)
    with bar, contextlib.closing(items):  # closing stops the worker pool on an error
        for item in items:
            if writer is None:
                shard, indices, fingerprint = next(writers)
                writer = _ShardWriter(out, shard, indices, size, fingerprint)
            path = str(records[item.source_index].image_path)
            if item.reason is not None and on_error == "raise":
                raise DataError(
                    f"{path}: cannot prepare this image ({item.reason}); fix or "
                    f"remove it, or run without --strict to skip and report it"
                )
            writer.add(item, path)
            bar.update(1)
            if item.source_index == writer.indices[-1]:
                metas[writer.shard] = writer.write()
                writer = None
    report = _finish(dataset, out, size, shard_size, metas, source, exclusion)
    report.n_reused_shards = n_shards - len(pending)
    return report


def _is_mimic(dataset: ChestXrayDataset, source: str | None) -> bool:
    return isinstance(dataset, MimicCxrJpg) or source == "mimic-cxr"


def _finish(
    dataset: ChestXrayDataset,
    out: Path,
    size: int,
    shard_size: int,
    metas: dict[int, dict],
    source: str | None,
    exclusion: Exclusion | None = None,
) -> PrepareReport:
    """Write manifest, report and (last) store.json from the shards' JSON files."""
    rows: list[str] = []
    failures: list[dict[str, str]] = []
    converted: list[dict[str, str]] = []
    shards: list[dict[str, Any]] = []
    for shard in sorted(metas):
        meta = metas[shard]
        for entry in meta["entries"]:
            row = _manifest_row(len(rows), shard, entry, dataset.records[entry["source_index"]])
            rows.append(json.dumps(row, default=_json_value))
        failures.extend({"path": f["path"], "reason": f["reason"]} for f in meta["failures"])
        converted.extend(
            {"path": str(dataset.records[e["source_index"]].image_path), "colour": e["colour"]}
            for e in meta["entries"]
            if e.get("colour")
        )
        shards.append({"images": meta["images"], "masks": meta["masks"], "count": meta["count"]})
    write_text(out / MANIFEST_FILE, "".join(r + "\n" for r in rows))
    skipped_rows = list(dataset.skips.skipped)
    report = PrepareReport(
        store=out,
        n_ok=len(rows),
        n_failed=len(failures),
        failures=failures,
        n_shards=len(metas),
        skipped_rows=skipped_rows,
        exclusion=exclusion,
        colour_converted=converted,
    )
    write_json(
        out / REPORT_FILE,
        {
            "n_ok": report.n_ok,
            "n_failed": report.n_failed,
            "failures": failures,
            "skipped_rows": skipped_rows,
            "n_excluded": report.n_excluded,
            "excluded": None if exclusion is None else exclusion.to_dict(),
            "n_colour_converted": len(converted),
            "colour_converted": converted,
        },
    )
    write_json(
        out / STORE_FILE,
        {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "size": size,
            "count": len(rows),
            "dtype": "uint8",
            "classes": list(dataset.classes),
            "source": source or type(dataset).__name__,
            "shard_size": shard_size,
            "shards": shards,
            "n_failed": len(failures),
            "n_excluded": report.n_excluded,
            "exclusion": None if exclusion is None else exclusion.summary(),
        },
    )
    if failures:
        shown = "; ".join(f"{f['path']}: {f['reason']}" for f in failures[:5])
        logger.warning(
            "%d of %d images could not be read and are not in the store (listed in %s): %s%s",
            len(failures),
            len(rows) + len(failures),
            out / REPORT_FILE,
            shown,
            " ..." if len(failures) > 5 else "",
        )
    if converted:
        kinds = Counter(c["colour"] for c in converted)
        logger.info(
            "%d of %d images were colour (%s) and were converted to grey (ITU-R 601-2 luma, as "
            "read_image does); listed under colour_converted in %s",
            len(converted),
            len(rows),
            ", ".join(f"{kind}: {n}" for kind, n in kinds.most_common()),
            out / REPORT_FILE,
        )
    if skipped_rows:
        logger.warning(
            "the dataset adapter skipped %d rows before preparing (listed under skipped_rows in %s)",
            len(skipped_rows),
            out / REPORT_FILE,
        )
    if exclusion is not None and exclusion.count:
        logger.info(
            "%d images were left out by --exclude (listed under excluded in %s)", exclusion.count, out / REPORT_FILE
        )
    logger.info("prepared %d images at %dx%d into %s", len(rows), size, size, out)
    return report
