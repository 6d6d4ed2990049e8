"""Predict over files, folders or a list of files with any MaCo or fine-tuned model, resumably.

:func:`predict` runs one model over many images and writes one folder a hospital can join on:

- ``predictions.csv``: one row per predicted file, sorted by path: ``path`` (absolute),
  ``height``/``width`` (original pixels), the DICOM identifiers ``SOPInstanceUID``,
  ``StudyInstanceUID``, ``ViewPosition`` (empty for PNG/JPEG; ``PatientID`` only when
  ``patient_id=True``: patient data is never written unless asked), then per model:

  * a MaCo model (:func:`maco_cxr.hub.load`): ``score:<class>`` zero-shot probabilities
    (:func:`~maco_cxr.tasks.zeroshot.score_embeddings` of the official prototypes), with
    ``embeddings=True`` an ``embedding_row`` into ``embeddings.npy`` ``[N, D]`` (float32,
    row-aligned with ``embeddings_index.csv``), and per grounding phrase ``map:<phrase>``: the
    map ``maps/<id>_p<k>_<phrase>.npy`` (float32, the original pixel grid, as
    :func:`~maco_cxr.tasks.grounding.ground` computes it) beside its overlay ``.png``;
  * a fine-tuned model (:func:`maco_cxr.tasks.finetune.load_finetuned`): classifier
    ``score:<class>`` probabilities; segmenter ``mask`` (``masks/<id>.png``, 0/255 in the
    original grid) and ``mask_pixels``; detector ``n_boxes``, the boxes (xyxy, original pixels,
    every box the detector returns with its score) in ``detections.csv``.

  ``<id>`` is the first 16 hex digits of the SHA-256 of the file's absolute path: unique per
  file, stable between runs, and free of the (often patient-identifying) file name.
- ``failures.csv``: every file that could not be read, with the reason; ``skipped.csv`` (with
  ``frontal_only=True``): every DICOM whose ViewPosition is not PA or AP, with its identifiers
  and the reason. Files without a ViewPosition (PNG, JPEG, DICOMs lacking the tag) are KEPT
  and counted as ``without_view_position``. Nothing is dropped silently.
- ``summary.json`` (written last): counts, settings, model, classes and timings.

Inputs: files (any name: DICOM is recognised by its content too), folders (recursive; hidden
files and folders, whose names start with ``.``, are ignored and counted, and so is the output
folder when it lies inside an input folder) and list files (one path per line; blank lines
and lines starting with ``#`` are ignored; relative paths are relative to the list file's
folder; a listed file that does not exist is a failure).

Resume: the files are streamed (sorted) through a DataLoader whose workers read and
preprocess them; each finished chunk of ``chunk_size`` files is committed as one part folder
``parts/<n>/`` (its rows and embeddings, published in one atomic rename). A killed run,
rerun with the same arguments, skips every file a part holds as predicted or skipped (failed
files are retried) and processes the rest; the final files are then written atomically from
the parts, so they equal those of an uninterrupted run. The settings that change the results
(model weights by SHA-256, inputs, classes, prompt texts, phrases, embeddings, frontal filter,
patient ids, precision) are stored in ``settings.json``; a rerun with other settings is
refused with a message naming each difference. ``parts/`` is the resume journal: delete the
whole output folder to start over.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from maco_cxr._atomic import (
    atomic_directory,
    remove_stale_temporaries,
    write_csv,
    write_json,
    write_with,
)
from maco_cxr.data.io import is_dicom, read_image
from maco_cxr.data.letterbox import Letterbox, letterbox_image
from maco_cxr.errors import ConfigError, DataError, MacoError
from maco_cxr.inference import (
    encode_images,
    encode_texts,
    encoder_input,
    inference_mode,
    patch_embeddings,
)
from maco_cxr.tasks.grounding import (
    PATCH_WEIGHT_TEMPERATURE,
    grounding_map,
    phrase_query,
)
from maco_cxr.tasks.prompts import CLASS_SETS, PromptSpec, resolve_prompts
from maco_cxr.tasks.zeroshot import build_class_prototypes, score_embeddings

if TYPE_CHECKING:
    from maco_cxr.models.maco import MacoModel
    from maco_cxr.tasks.finetune.model_io import FinetunedModel

__all__ = ["DICOM_COLUMNS", "FRONTAL_VIEWS", "PredictResult", "predict"]

logger = logging.getLogger(__name__)

FRONTAL_VIEWS = ("PA", "AP")
DICOM_COLUMNS = ("SOPInstanceUID", "StudyInstanceUID", "ViewPosition")
SETTINGS_NAME = "settings.json"
PARTS_DIR = "parts"
_FORMAT_VERSION = 1
_ROWS_NAME = "rows.json"
_EMBEDDINGS_NAME = "embeddings.npy"
_FINETUNED_COLUMNS = {"classification": (), "segmentation": ("mask", "mask_pixels"), "detection": ("n_boxes",)}


@dataclass
class PredictResult:
    """What a :func:`predict` run did; ``summary`` is the content of ``summary.json``."""

    out: Path
    n_inputs: int
    n_predicted: int
    n_failed: int
    n_skipped: int
    n_done_before: int  # files a previous (killed) run had finished
    seconds: float  # processing time of this run (model loading excluded)
    images_per_second: float  # files handled per second by this run
    summary: dict[str, Any] = field(default_factory=dict)


def predict(
    model: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    list_file: str | os.PathLike[str] | None = None,
    classes: str | Sequence[str] | None = None,
    prompts: PromptSpec = None,
    embeddings: bool = False,
    phrases: Sequence[str] = (),
    frontal_only: bool = False,
    patient_id: bool = False,
    batch_size: int = 32,
    workers: int = 0,
    device: str | torch.device | None = None,
    chunk_size: int = 256,
    progress: bool = False,
    text_heads: int | None = None,
    vision_heads: int | None = None,
) -> PredictResult:
    """Run ``model`` over ``inputs`` (+ ``list_file``) into ``out``; see the module docstring.

    model: a MaCo model directory or official ``maco.pth`` (zero-shot ``classes``, ``embeddings``,
    grounding ``phrases``), or a fine-tuned model folder (its ``config.json`` names a ``task``;
    it predicts its own classes). classes: a set name of
    :data:`~maco_cxr.tasks.prompts.CLASS_SETS` (``nih``, ``chexpert``, ``rsna``, ``siim``) or
    class names; prompts: see :func:`~maco_cxr.tasks.prompts.resolve_prompts` (default: the
    official ``siim`` set for ``classes="siim"``, else ``default``). device: default CUDA when
    available (bf16 autocast), else the CPU. ``batch_size``, ``workers``, ``chunk_size`` and
    ``device`` of the same precision may change between a run and its resumption.
    """
    started = time.perf_counter()
    out = Path(os.path.abspath(out))
    if batch_size < 1 or chunk_size < 1 or workers < 0:
        raise ConfigError(f"batch_size ({batch_size}) and chunk_size ({chunk_size}) must be >= 1 and workers "
                          f"({workers}) >= 0")
    run_on = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    model_path = Path(os.path.abspath(model))
    task, model_classes = _model_task(model_path)
    class_names, table = _zero_shot_classes(task, classes, prompts)
    phrases = _checked_phrases(task, phrases, embeddings)
    if task == "zero-shot" and not (class_names or embeddings or phrases):
        raise ConfigError("nothing to predict: give classes (a set such as 'nih', or names), embeddings=True "
                          "or at least one grounding phrase")
    paths, hidden = _collect_inputs(inputs, list_file, exclude=out)
    settings = {  # what changes the results: compared when a run is resumed
        "format_version": _FORMAT_VERSION,
        "model": {"task": task, "sha256": _weights_sha256(model_path)},
        "inputs": sorted(os.path.abspath(p) for p in inputs),
        "list": os.path.abspath(list_file) if list_file is not None else None,
        "classes": list(class_names),
        "prompts": {c: {"pos": list(p.positive), "neg": list(p.negative)} for c, p in table.items()},
        "embeddings": bool(embeddings), "phrases": list(phrases), "frontal_only": bool(frontal_only),
        "patient_id": bool(patient_id), "precision": "bf16" if run_on.type == "cuda" else "fp32",
    }
    stored = _stored_settings(out, settings)
    latest = _read_parts(out / PARTS_DIR)
    done = {path for path, (_, record) in latest.items() if record["status"] != "failed"}
    todo = [p for p in paths if p not in done]
    load_seconds = seconds = 0.0
    if todo:
        tic = time.perf_counter()
        engine = _build_engine(task, model_path, run_on, out, class_names, table, phrases, embeddings,
                               text_heads, vision_heads)
        load_seconds = time.perf_counter() - tic
        if not stored:  # only once the model loaded: a typo in a model path is not stored
            write_json(out / SETTINGS_NAME, settings)
        tic = time.perf_counter()
        _run(engine, todo, out, frontal_only=frontal_only, patient_id=patient_id, batch_size=batch_size,
             workers=workers, chunk_size=chunk_size, progress=progress)
        seconds = time.perf_counter() - tic
        latest = _read_parts(out / PARTS_DIR)
    columns = _columns(task, model_classes, class_names, phrases, embeddings, patient_id)
    counts = _write_outputs(out, paths, latest, columns, settings)
    counts.update(inputs=len(paths), hidden_ignored=hidden, done_before=len(paths) - len(todo),
                  processed_now=len(todo))
    rate = len(todo) / seconds if seconds > 0 else 0.0
    summary = {
        "model": {"path": str(model_path), "task": task, "sha256": settings["model"]["sha256"]},
        "classes": list(class_names if task == "zero-shot" else model_classes),
        "phrases": list(phrases),
        "counts": counts,
        "settings": settings,
        "runtime": {"device": str(run_on), "batch_size": batch_size, "workers": workers, "chunk_size": chunk_size},
        "timings": {"load_seconds": round(load_seconds, 3), "predict_seconds": round(seconds, 3),
                    "images_per_second": round(rate, 3), "total_seconds": round(time.perf_counter() - started, 3)},
        "outputs": _output_names(task, embeddings, frontal_only),
    }
    write_json(out / "summary.json", summary)
    if counts["failed"]:
        logger.warning("predict: %d unreadable files listed in %s", counts["failed"], out / "failures.csv")
    return PredictResult(out, len(paths), counts["predicted"], counts["failed"], counts["skipped_views"],
                         len(paths) - len(todo), seconds, rate, summary)


# ------------------------------------------------------------------------------ settings and inputs


def _model_task(path: Path) -> tuple[str, tuple[str, ...]]:
    """``("zero-shot", ())`` for a MaCo model, else the fine-tuned folder's task and classes."""
    config = path / "config.json"
    if path.is_dir() and config.is_file():
        try:
            meta = json.loads(config.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"{config}: cannot read the model config ({err})") from err
        task = meta.get("task") if isinstance(meta, dict) else None
        if task is not None:
            if task not in _FINETUNED_COLUMNS:
                raise ConfigError(f"{config}: task {task!r} is not one of {sorted(_FINETUNED_COLUMNS)}")
            return str(task), tuple(str(c) for c in meta.get("classes", ()))
    if not path.exists():
        raise ConfigError(f"{path}: no such model file or folder")
    return "zero-shot", ()


def _weights_sha256(path: Path) -> str:
    from maco_cxr.hub import file_sha256

    weights = path / "model.safetensors" if path.is_dir() else path
    if not weights.is_file():
        raise ConfigError(f"{path}: no model weights (model.safetensors) there; give a model folder or a "
                          "maco.pth file")
    return file_sha256(weights)


def _zero_shot_classes(task: str, classes: str | Sequence[str] | None, prompts: PromptSpec
                       ) -> tuple[tuple[str, ...], dict[str, Any]]:
    if task != "zero-shot":
        if classes or prompts is not None:
            raise ConfigError(f"classes / prompts score a MaCo model zero-shot; this model is a fine-tuned "
                              f"{task} model that predicts its own classes: leave them out")
        return (), {}
    if classes is None or (not isinstance(classes, str) and not classes):
        return (), {}
    set_name = classes if isinstance(classes, str) else None
    if set_name is None and len(classes) == 1 and classes[0].lower() in CLASS_SETS:
        set_name = classes[0]
    if set_name is not None:
        if set_name.lower() not in CLASS_SETS:
            raise ConfigError(f"classes: {set_name!r} is not a class set ({', '.join(CLASS_SETS)}); give the set "
                              "name or a list of class names")
        names = CLASS_SETS[set_name.lower()]
        if prompts is None and set_name.lower() == "siim":
            prompts = "siim"
    else:
        names = tuple(classes)
    return tuple(names), resolve_prompts(names, prompts)


def _checked_phrases(task: str, phrases: Sequence[str], embeddings: bool) -> tuple[str, ...]:
    phrases = (phrases,) if isinstance(phrases, str) else tuple(phrases)
    if task != "zero-shot" and (phrases or embeddings):
        raise ConfigError(f"grounding phrases and embeddings need a MaCo model; this is a fine-tuned {task} model")
    for phrase in phrases:
        phrase_query(phrase)
    repeated = sorted({p for p in phrases if phrases.count(p) > 1})
    if repeated:
        raise ConfigError(f"phrases {repeated} are given more than once")
    return phrases


def _collect_inputs(inputs: Sequence[str | os.PathLike[str]], list_file: str | os.PathLike[str] | None, *,
                    exclude: Path) -> tuple[list[str], int]:
    """Sorted unique absolute paths of the input files, and the number of hidden entries ignored."""
    found: set[str] = set()
    hidden = 0
    entries = [(Path(p), False) for p in inputs]  # (path, listed in the list file)
    if list_file is not None:
        listing = Path(list_file)
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{listing}: cannot read the list file ({err})") from err
        for line in lines:
            text = line.strip()
            if text and not text.startswith("#"):
                entry = Path(text)
                entries.append((entry if entry.is_absolute() else listing.absolute().parent / entry, True))
    if not entries:
        raise DataError("no inputs: give image files, folders or a list file")
    for given, listed in entries:
        entry = Path(os.path.abspath(given))
        if entry.is_dir():
            n_hidden, files = _walk(entry, exclude)
            hidden += n_hidden
            found.update(files)
        elif entry.exists() or listed:
            found.add(str(entry))  # a listed file that is missing becomes a failure row
        else:
            raise DataError(f"{entry}: no such file or folder")
    if not found:
        raise DataError(f"no files found in {', '.join(str(e) for e, _ in entries[:3])}")
    return sorted(found), hidden


def _walk(folder: Path, exclude: Path) -> tuple[int, list[str]]:
    """Files under ``folder`` (symbolic links followed, each real folder once), hidden names and
    ``exclude`` left out; returns the number of hidden entries and the files."""
    hidden = 0
    files: list[str] = []
    seen: set[str] = set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link back up the tree: do not loop
            dirs[:] = []
            continue
        seen.add(real)
        keep = []
        for name in sorted(dirs):
            if name.startswith("."):
                hidden += 1
            elif Path(root, name) != exclude:
                keep.append(name)
        dirs[:] = keep
        for name in names:
            if name.startswith("."):
                hidden += 1
            else:
                files.append(os.path.join(root, name))
    return hidden, files


def _stored_settings(out: Path, settings: dict[str, Any]) -> bool:
    """True when ``out`` holds a run with these settings; raise when it holds another one."""
    stored_path = out / SETTINGS_NAME
    if not stored_path.is_file():
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(f"{out} exists and is not an empty folder nor a predict output folder (no "
                              f"{SETTINGS_NAME}); give a new or empty output folder")
        return False
    try:
        stored = json.loads(stored_path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{stored_path}: cannot read the stored settings ({err}); give a new output folder") \
            from err
    if stored != settings:
        differences = []
        for key in sorted(set(stored) | set(settings)):
            there, now = stored.get(key), settings.get(key)
            if key == "prompts" and isinstance(there, dict) and isinstance(now, dict):
                # prompts of added or removed classes: reported under "classes"
                there, now = ({k: v for k, v in a.items() if k in b} for a, b in ((there, now), (now, there)))
            if there != now:
                differences.append(_difference(key, there, now))
        raise ConfigError(f"{out} holds a predict run with other settings ({'; '.join(differences)}); rerun "
                          "with the settings it was started with to resume it, or give a new output folder "
                          "(or delete this one) to start over")
    return True


def _difference(key: str, there: Any, now: Any) -> str:
    """``key: <stored> there, <given> now``; for mappings only the entries that differ."""
    if isinstance(there, dict) and isinstance(now, dict):
        changed = sorted(k for k in set(there) | set(now) if there.get(k) != now.get(k))
        if any(isinstance(there.get(k), dict) or isinstance(now.get(k), dict) for k in changed):
            more = f" (+{len(changed) - 5} more)" if len(changed) > 5 else ""
            return f"{key} differ for {', '.join(changed[:5])}{more}"
        return f"{key}: " + ", ".join(f"{k} {_short(there.get(k))} there, {_short(now.get(k))} now" for k in changed)
    return f"{key}: {_short(there)} there, {_short(now)} now"


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------ reading in workers


def _dicom_tags(path: Path, patient_id: bool) -> dict[str, str]:
    """The identifiers of a DICOM file (header only); ``{}`` for other files."""
    if not is_dicom(path):
        return {}
    try:
        import pydicom
    except ImportError as exc:
        raise ImportError("reading DICOM headers needs pydicom: `pip install pydicom`") from exc
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as err:  # pydicom raises many types on a broken header
        raise DataError(f"{path}: cannot read the DICOM header ({type(err).__name__}: {err})") from err
    names = DICOM_COLUMNS + (("PatientID",) if patient_id else ())
    return {name: "" if dataset.get(name) is None else str(dataset.get(name)).strip() for name in names}


def _reason(err: BaseException) -> str:
    return str(err) if isinstance(err, MacoError) else f"{type(err).__name__}: {err}"


class _Files(Dataset):
    """Reads, filters and preprocesses one file per item (in the loader workers).

    Each item is ``{"path", "tags"}`` plus ``"failure"`` (why it cannot be read), ``"skipped"``
    (why the frontal filter left it out) or ``"inputs"`` (the model's prepared input) with
    ``"shape"`` (and ``"pixels"`` when ``keep_pixels``).
    """

    def __init__(self, paths: Sequence[str], prepare: Callable[[np.ndarray], dict[str, Any]], *,
                 frontal_only: bool, patient_id: bool, keep_pixels: bool) -> None:
        self.paths, self.prepare = list(paths), prepare
        self.frontal_only, self.patient_id, self.keep_pixels = frontal_only, patient_id, keep_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        item: dict[str, Any] = {"path": path, "tags": {}}
        # Any exception is this one file's failure: a run over a hospital's folder must not stop on it.
        try:
            item["tags"] = _dicom_tags(Path(path), self.patient_id)
        except Exception as err:  # noqa: BLE001 - one bad file must not stop the run
            return {**item, "failure": _reason(err)}
        view = item["tags"].get("ViewPosition", "")
        if self.frontal_only and view and view.upper() not in FRONTAL_VIEWS:
            return {**item, "skipped": f"ViewPosition {view!r} is not a frontal view ({'/'.join(FRONTAL_VIEWS)})"}
        try:
            pixels = read_image(path)
            item["inputs"] = self.prepare(pixels)
        except Exception as err:  # noqa: BLE001 - one bad file must not stop the run
            return {**item, "failure": _reason(err)}
        item["shape"] = tuple(int(s) for s in pixels.shape)
        if self.keep_pixels:
            item["pixels"] = pixels
        return item


def _maco_inputs(pixels: np.ndarray, *, size: int, mean: float, std: float, global_input: bool,
                 letterbox: bool) -> dict[str, Any]:
    """The encoder input (zero-shot geometry) and/or the letterboxed image (grounding)."""
    prepared: dict[str, Any] = {}
    if global_input:
        prepared["x"] = encoder_input(pixels, size, mean, std)
    if letterbox:
        prepared["boxed"], prepared["letterbox"] = letterbox_image(pixels, size)
    return prepared


def _finetuned_inputs(pixels: np.ndarray, *, prepare: Callable[..., dict[str, Any]],
                      preprocessing: dict[str, Any]) -> dict[str, Any]:
    return prepare(pixels, preprocessing)


def _keep_list(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


# ------------------------------------------------------------------------------ the models


def _file_id(path: str) -> str:
    return hashlib.sha256(path.encode("utf-8")).hexdigest()[:16]


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")[:40] or "x"


def _number(value: float, digits: int = 8) -> str:
    return f"{float(value):.{digits}f}"


@dataclass
class _BatchOutput:
    """Per predicted item: its CSV cells, its detections; and the batch's embeddings ``[B, D]``."""

    rows: list[dict[str, str]]
    detections: list[list[list[str]]]
    embeddings: np.ndarray | None = None


class _Writer:
    """Encodes maps, overlays and masks in background threads, so that the model does not wait
    for PNG encoding; at most ``limit`` jobs are in flight, and :meth:`drain` waits for all (a
    part is committed only once its files exist). A failed job raises in the caller.

    The files themselves are written one at a time (under a lock): the atomic writer reads the
    process umask by setting it, which two threads must not do at once.
    """

    def __init__(self, threads: int = 2, limit: int = 16) -> None:
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="maco-predict-writer")
        self.pending: deque[Future[None]] = deque()
        self.limit = limit
        self.lock = threading.Lock()

    def submit(self, encode: Callable[..., list[tuple[Path, bytes]]], *args: Any) -> None:
        self.pending.append(self.pool.submit(self._job, encode, *args))
        while len(self.pending) > self.limit:
            self.pending.popleft().result()

    def _job(self, encode: Callable[..., list[tuple[Path, bytes]]], *args: Any) -> None:
        files = encode(*args)
        with self.lock:
            for path, data in files:
                write_with(path, lambda tmp, data=data: tmp.write_bytes(data))

    def drain(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 grey ``[H, W]`` or RGB ``[H, W, 3]`` as PNG bytes (a fast zlib level: these files are many)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _map_files(stem: Path, pixels: np.ndarray, letterbox: Letterbox, heatmap: np.ndarray, phrase: str
               ) -> list[tuple[Path, bytes]]:
    """``<stem>.npy``: the letterboxed ``heatmap`` mapped to the original grid, and ``<stem>.png``:
    its :func:`~maco_cxr.plots.overlay_heatmap` on the image."""
    from maco_cxr.plots import overlay_heatmap

    heatmap = letterbox.map_to_original(heatmap)
    buffer = io.BytesIO()
    np.save(buffer, heatmap)
    overlay = _png_bytes(overlay_heatmap(pixels, heatmap, title=phrase))
    return [(stem.parent / f"{stem.name}.npy", buffer.getvalue()), (stem.parent / f"{stem.name}.png", overlay)]


def _mask_files(path: Path, mask: np.ndarray) -> list[tuple[Path, bytes]]:
    return [(path, _png_bytes(mask))]


class _Engine(ABC):
    """A loaded model with everything a batch needs (prompts and phrases encoded once)."""

    keep_pixels: bool = False
    model: torch.nn.Module
    writer: _Writer  # set by _run for the run

    @abstractmethod
    def prepare_function(self) -> Callable[[np.ndarray], dict[str, Any]]:
        """The per-image step for the loader workers (picklable)."""

    @abstractmethod
    def run(self, items: Sequence[dict[str, Any]]) -> _BatchOutput:
        """Predictions of a batch of prepared, readable items."""


class _MacoEngine(_Engine):
    def __init__(self, model: MacoModel, out: Path, classes: tuple[str, ...], table: dict[str, Any],
                 phrases: tuple[str, ...], embeddings: bool) -> None:
        self.model, self.out, self.classes, self.phrases = model, out, classes, phrases
        self.embeddings = embeddings
        self.keep_pixels = bool(phrases)
        self.prototypes = build_class_prototypes(model, classes, table) if classes else None
        if phrases:
            self.texts = encode_texts(model, [phrase_query(p) for p in phrases])
            with inference_mode(model):
                self.weights = model.patch_weights(PATCH_WEIGHT_TEMPERATURE).float().cpu()

    def prepare_function(self) -> Callable[[np.ndarray], dict[str, Any]]:
        config = self.model.config
        return partial(_maco_inputs, size=config.vision.img_size, mean=config.image_mean, std=config.image_std,
                       global_input=bool(self.classes) or self.embeddings, letterbox=bool(self.phrases))

    def run(self, items: Sequence[dict[str, Any]]) -> _BatchOutput:
        rows: list[dict[str, str]] = [{} for _ in items]
        z = None
        if self.classes or self.embeddings:
            x = torch.stack([item["inputs"]["x"] for item in items]).expand(-1, 3, -1, -1)
            z = encode_images(self.model, x, batch_size=len(items))
        if self.prototypes is not None:
            scores = score_embeddings(z, *self.prototypes).numpy()
            for row, values in zip(rows, scores):
                row.update({f"score:{c}": _number(v) for c, v in zip(self.classes, values)})
        if self.phrases:
            self._ground(items, rows)
        return _BatchOutput(rows, [[] for _ in items], z.numpy() if self.embeddings and z is not None else None)

    def _ground(self, items: Sequence[dict[str, Any]], rows: list[dict[str, str]]) -> None:
        """The steps of :func:`~maco_cxr.tasks.grounding.letterboxed_maps`, phrases encoded once."""
        size = self.model.config.vision.img_size
        boxed = torch.from_numpy(np.stack([item["inputs"]["boxed"] for item in items]))
        patches = patch_embeddings(self.model, boxed, batch_size=len(items))
        for i, (item, row) in enumerate(zip(items, rows)):
            for k, phrase in enumerate(self.phrases):
                heatmap = grounding_map(patches[i], self.weights, self.texts[k], size)
                name = f"maps/{_file_id(item['path'])}_p{k}_{_slug(phrase)}"
                self.writer.submit(_map_files, self.out / name, item["pixels"], item["inputs"]["letterbox"], heatmap,
                                   phrase)
                row[f"map:{phrase}"] = f"{name}.npy"


class _FinetunedEngine(_Engine):
    def __init__(self, model: FinetunedModel, out: Path) -> None:
        self.model, self.out, self.classes = model, out, tuple(model.classes)
        self.task = model.task

    def prepare_function(self) -> Callable[[np.ndarray], dict[str, Any]]:
        return partial(_finetuned_inputs, prepare=type(self.model).prepare, preprocessing=self.model.preprocessing)

    def run(self, items: Sequence[dict[str, Any]]) -> _BatchOutput:
        predictions = self.model.predict_prepared([item["inputs"] for item in items])
        rows: list[dict[str, str]] = []
        detections: list[list[list[str]]] = []
        for item, prediction in zip(items, predictions):
            boxes: list[list[str]] = []
            if self.task == "classification":
                row = {f"score:{c}": _number(v) for c, v in zip(self.classes, prediction)}
            elif self.task == "segmentation":
                row = self._masks(item["path"], prediction)
            else:
                boxes = [[self._label(label), _number(score), *(_number(v, 2) for v in box)]
                         for box, score, label in zip(prediction["boxes"], prediction["scores"],
                                                      prediction["labels"])]
                row = {"n_boxes": str(len(boxes))}
            rows.append(row)
            detections.append(boxes)
        return _BatchOutput(rows, detections)

    def _masks(self, path: str, masks: np.ndarray) -> dict[str, str]:
        """One 0/255 PNG per mask channel (one for the segmenters of this package)."""
        names, counts = [], []
        for k, mask in enumerate(masks):
            name = f"masks/{_file_id(path)}{'' if len(masks) == 1 else f'_c{k}'}.png"
            self.writer.submit(_mask_files, self.out / name, (mask > 0).astype(np.uint8) * np.uint8(255))
            names.append(name)
            counts.append(str(int((mask > 0).sum())))
        return {"mask": ";".join(names), "mask_pixels": ";".join(counts)}

    def _label(self, label: Any) -> str:
        index = int(label) - 1  # 1-based class ids (0 is the background)
        return self.classes[index] if 0 <= index < len(self.classes) else str(int(label))


def _build_engine(task: str, path: Path, device: torch.device, out: Path, classes: tuple[str, ...],
                  table: dict[str, Any], phrases: tuple[str, ...], embeddings: bool, text_heads: int | None,
                  vision_heads: int | None) -> _Engine:
    if task == "zero-shot":
        from maco_cxr.hub import load

        model = load(path, text_heads, vision_heads=vision_heads, map_location=device)
        return _MacoEngine(model, out, classes, table, phrases, embeddings)
    from maco_cxr.tasks.finetune import load_finetuned

    return _FinetunedEngine(load_finetuned(path, map_location=str(device)), out)


def _predict_batch(engine: _Engine, items: Sequence[dict[str, Any]]) -> _BatchOutput:
    """The model step of one batch of readable items (kept apart: tests count its calls)."""
    return engine.run(items)


# ------------------------------------------------------------------------------ the loop and its parts


def _run(engine: _Engine, todo: Sequence[str], out: Path, *, frontal_only: bool, patient_id: bool,
         batch_size: int, workers: int, chunk_size: int, progress: bool) -> None:
    parts = out / PARTS_DIR
    parts.mkdir(parents=True, exist_ok=True)
    for folder in (out, parts, out / "maps", out / "masks"):  # leftovers of a killed run's writes
        remove_stale_temporaries(folder)
    number = 1 + max((int(p.name) for p in parts.iterdir() if p.name.isdigit()), default=-1)
    loader = DataLoader(_Files(todo, engine.prepare_function(), frontal_only=frontal_only, patient_id=patient_id,
                               keep_pixels=engine.keep_pixels),
                        batch_size=batch_size, num_workers=workers, collate_fn=_keep_list,
                        pin_memory=torch.cuda.is_available())
    engine.writer = _Writer()
    try:
        _stream(engine, loader, parts, number, len(todo), chunk_size, progress)
    finally:
        engine.writer.close()


def _stream(engine: _Engine, loader: DataLoader, parts: Path, number: int, total: int, chunk_size: int,
            progress: bool) -> None:
    records: list[dict[str, Any]] = []
    vectors: list[np.ndarray] = []
    offset = 0  # embedding rows of the part so far
    with inference_mode(engine.model), tqdm(total=total, desc="predict", unit="img", disable=not progress) as bar:
        for items in loader:
            good = [item for item in items if "inputs" in item]
            output = _predict_batch(engine, good) if good else _BatchOutput([], [])
            results = iter(range(len(good)))
            for item in items:
                record: dict[str, Any] = {"path": item["path"], "tags": item["tags"]}
                if "failure" in item:
                    record.update(status="failed", reason=item["failure"])
                elif "skipped" in item:
                    record.update(status="skipped", reason=item["skipped"])
                else:
                    k = next(results)
                    height, width = item["shape"]
                    record.update(status="predicted", row={"height": str(height), "width": str(width),
                                                           **output.rows[k]},
                                  detections=output.detections[k])
                    if output.embeddings is not None:
                        record["embedding"] = offset + k
                records.append(record)
            if output.embeddings is not None:
                vectors.append(output.embeddings.astype(np.float32))
                offset += len(output.embeddings)
            bar.update(len(items))
            if len(records) >= chunk_size:
                engine.writer.drain()
                _write_part(parts / f"{number:06d}", records, vectors)
                number, records, vectors, offset = number + 1, [], [], 0
        if records:
            engine.writer.drain()
            _write_part(parts / f"{number:06d}", records, vectors)


def _write_part(folder: Path, records: list[dict[str, Any]], vectors: list[np.ndarray]) -> None:
    """One chunk's records (and embeddings), published in one rename."""
    with atomic_directory(folder, "predict-journal-part") as tmp:
        write_json(tmp / _ROWS_NAME, {"records": records})
        if vectors:
            stacked = np.concatenate(vectors)
            write_with(tmp / _EMBEDDINGS_NAME, lambda path: np.save(path, stacked))


def _read_parts(parts: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """The latest record of each path over the committed parts (higher part numbers win)."""
    latest: dict[str, tuple[Path, dict[str, Any]]] = {}
    if not parts.is_dir():
        return latest
    for folder in sorted((p for p in parts.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        try:
            records = json.loads((folder / _ROWS_NAME).read_text())["records"]
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"{folder}: the resume journal part cannot be read ({err}); delete that part folder "
                            "to recompute its files") from err
        for record in records:
            latest[record["path"]] = (folder, record)
    return latest


# ------------------------------------------------------------------------------ the final files


def _columns(task: str, model_classes: tuple[str, ...], classes: tuple[str, ...], phrases: tuple[str, ...],
             embeddings: bool, patient_id: bool) -> list[str]:
    identifiers = ["path", "height", "width", *DICOM_COLUMNS, *(("PatientID",) if patient_id else ())]
    if task == "zero-shot":
        return [*identifiers, *(f"score:{c}" for c in classes), *(("embedding_row",) if embeddings else ()),
                *(f"map:{p}" for p in phrases)]
    if task == "classification":
        return [*identifiers, *(f"score:{c}" for c in model_classes)]
    return [*identifiers, *_FINETUNED_COLUMNS[task]]


def _write_outputs(out: Path, paths: Sequence[str], latest: dict[str, tuple[Path, dict[str, Any]]],
                   columns: list[str], settings: dict[str, Any]) -> dict[str, int]:
    tag_columns = [*DICOM_COLUMNS, *(("PatientID",) if settings["patient_id"] else ())]
    predicted, failed, skipped, detections, index_rows = [], [], [], [], []
    vectors: list[np.ndarray] = []
    cache: dict[Path, np.ndarray] = {}
    without_view = 0
    for path in paths:  # sorted
        if path not in latest:
            continue
        folder, record = latest[path]
        tags = record.get("tags", {})
        if record["status"] == "failed":
            failed.append([path, record["reason"]])
            continue
        if record["status"] == "skipped":
            skipped.append([path, *(tags.get(c, "") for c in tag_columns), record["reason"]])
            continue
        without_view += not tags.get("ViewPosition")
        row = {"path": path, **{c: tags.get(c, "") for c in tag_columns}, **record["row"]}
        if "embedding" in record:
            if folder not in cache:
                cache[folder] = np.load(folder / _EMBEDDINGS_NAME)
            row["embedding_row"] = str(len(vectors))
            index_rows.append([len(vectors), path, tags.get("SOPInstanceUID", "")])
            vectors.append(cache[folder][record["embedding"]])
        predicted.append([row.get(c, "") for c in columns])
        detections += [[path, tags.get("SOPInstanceUID", ""), *box] for box in record.get("detections", [])]
    write_csv(out / "predictions.csv", columns, predicted)
    write_csv(out / "failures.csv", ["path", "reason"], failed)
    if settings["frontal_only"]:
        write_csv(out / "skipped.csv", ["path", *tag_columns, "reason"], skipped)
    if settings["embeddings"]:
        matrix = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, 0), np.float32)
        write_with(out / "embeddings.npy", lambda tmp: np.save(tmp, matrix))
        write_csv(out / "embeddings_index.csv", ["row", "path", "SOPInstanceUID"], index_rows)
    if settings["model"]["task"] == "detection":
        write_csv(out / "detections.csv", ["path", "SOPInstanceUID", "label", "score", "x_min", "y_min", "x_max",
                                           "y_max"], detections)
    return {"predicted": len(predicted), "failed": len(failed), "skipped_views": len(skipped),
            "without_view_position": without_view}


def _output_names(task: str, embeddings: bool, frontal_only: bool) -> list[str]:
    names = ["predictions.csv", "failures.csv", "summary.json", SETTINGS_NAME]
    names += ["skipped.csv"] if frontal_only else []
    names += ["embeddings.npy", "embeddings_index.csv"] if embeddings else []
    names += {"detection": ["detections.csv"], "segmentation": ["masks/"]}.get(task, [])
    return names
