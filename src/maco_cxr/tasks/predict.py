"""Predict over files, folders or a list of files with any MaCo or fine-tuned model, resumably.

:func:`predict` runs one model over many images and writes one folder a hospital can join on:

- ``predictions.csv``: one row per predicted file, sorted by path: ``path`` (absolute),
  ``height``/``width`` (original pixels), ``colour`` (the stored colour mode, e.g. ``RGB`` or
  ``YBR_FULL_422``, when a colour file was reduced to grey with the PNG luma; empty for grey
  files), the DICOM identifiers ``SOPInstanceUID``,
  ``StudyInstanceUID``, ``ViewPosition`` (empty for PNG/JPEG; ``PatientID`` only when
  ``patient_id=True``: patient data is never written unless asked), then per model:

  * a MaCo model (:func:`maco_cxr.hub.load`): ``score:<class>`` zero-shot probabilities
    (:func:`~maco_cxr.tasks.zeroshot.score_embeddings` of the official prototypes), with
    ``embeddings=True`` an ``embedding_row`` into ``embeddings.npy`` ``[N, D]`` (float32,
    row-aligned with ``embeddings_index.csv``), and per grounding phrase ``map:<phrase>``: the
    map ``maps/<id>_p<k>_<phrase>.npy`` (float32, the original pixel grid, as
    :func:`~maco_cxr.tasks.grounding.ground` computes it), with ``overlays=True`` beside its
    overlay ``.png`` (drawing and encoding an overlay costs several times the map itself);
  * a fine-tuned model (:func:`maco_cxr.tasks.finetune.load_finetuned`): classifier
    ``score:<class>`` probabilities; segmenter ``mask`` (``masks/<id>.png``, 0/255 in the
    original grid) and ``mask_pixels``; detector ``n_boxes``, the boxes (xyxy, original pixels,
    every box the detector returns with its score) in ``detections.csv``.

  ``<id>`` is the first 16 hex digits of the SHA-256 of the file's absolute path: unique per
  file, stable between runs, and free of the (often patient-identifying) file name.
- ``failures.csv``: every file that should have been an image and could not be read, with the
  reason (an empty file is called empty); ``non_images.csv``: every file that is no image at
  all (by extension and signature bytes, e.g. a ``README.txt``; see
  :func:`~maco_cxr.tasks.predict_inputs.file_kind`), skipped; ``skipped.csv`` (with
  ``frontal_only=True``): every DICOM whose ViewPosition is not PA or AP, with its identifiers
  and the reason. Files without a ViewPosition (PNG, JPEG, DICOMs lacking the tag) are KEPT
  and counted as ``without_view_position``. Nothing is dropped silently.
- ``summary.json`` (written last): counts, settings, model, classes and timings.

Inputs (:mod:`~maco_cxr.tasks.predict_inputs`): one path or many; files (any name: DICOM is
recognised by its content too), folders (recursive; hidden files and folders, whose names start
with ``.``, are ignored and counted, and so is the output folder when it lies inside an input
folder) and list files (one path per line; blank lines and lines starting with ``#`` are
ignored; relative paths are relative to the list file's folder; a listed file that does not
exist is a failure).

Resume (:mod:`~maco_cxr.tasks.predict_journal`): the files are streamed (sorted) through a
DataLoader whose workers read and preprocess them; each finished chunk of ``chunk_size`` files
is committed as one part folder ``parts/<n>/`` (its records and embeddings, published in one
atomic rename). A run stopped at any point (Ctrl-C raises
:class:`~maco_cxr.errors.RunInterrupted` naming the chunk), rerun with the same arguments,
skips every file a part holds (failed files too, unless ``retry_failed=True``) and processes the
rest; the final files are then written atomically from the parts, so they equal those of an
uninterrupted run. Inputs that were deleted since have their maps and masks (exactly the files
their records list) removed, and the summary says so. The settings that change the results
(model weights by SHA-256, inputs, classes, prompt texts, phrases, overlays, embeddings, frontal
filter, patient ids, precision) are stored in ``settings.json``; a rerun with other settings is
refused with a message naming each difference. ``parts/`` is the resume journal: delete the
whole output folder to start over.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from maco_cxr._atomic import remove_stale_temporaries, write_json
from maco_cxr.data.inputs import PathsInput, as_path_list
from maco_cxr.data.letterbox import letterbox_image
from maco_cxr.errors import ConfigError, RunInterrupted
from maco_cxr.families import split_model_spec
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
from maco_cxr.tasks.predict_inputs import DICOM_COLUMNS, FRONTAL_VIEWS, PredictFiles, collect_inputs
from maco_cxr.tasks.predict_journal import (
    FORMAT_VERSION,
    PARTS_DIR,
    SETTINGS_NAME,
    check_settings,
    close_gone_inputs,
    finished_paths,
    read_parts,
    write_part,
)
from maco_cxr.tasks.predict_writers import (
    FINETUNED_COLUMNS,
    FileWriter,
    columns,
    map_files,
    mask_files,
    output_names,
    write_outputs,
)
from maco_cxr.tasks.prompts import CLASS_SETS, PromptSpec, resolve_prompts
from maco_cxr.tasks.zeroshot import build_class_prototypes, score_embeddings

if TYPE_CHECKING:
    from maco_cxr.models.maco import MacoModel
    from maco_cxr.tasks.finetune.model_io import FinetunedModel

__all__ = ["DICOM_COLUMNS", "FRONTAL_VIEWS", "PARTS_DIR", "SETTINGS_NAME", "PredictResult", "predict", "predict_folder"]

logger = logging.getLogger(__name__)

_Function = TypeVar("_Function", bound=Callable[..., Any])


@dataclass(frozen=True)
class PredictResult:
    """What a :func:`predict` run did; ``summary`` is the content of ``summary.json``."""

    out: Path
    n_inputs: int
    n_predicted: int
    n_failed: int  # failures.csv: files that should have been images (all runs)
    n_skipped: int  # skipped.csv: other views (frontal_only)
    n_done_before: int  # files a previous (killed) run had finished
    seconds: float  # processing time of this run (model loading excluded)
    images_per_second: float  # files handled per second by this run
    n_not_images: int = 0  # non_images.csv: files that are no image at all
    n_failed_not_retried: int = 0  # failures of an earlier run kept as they were (retry_failed=False)
    n_colour_converted: int = 0  # predicted files stored in colour, reduced to grey (the ``colour`` column)
    removed: list[str] = field(default_factory=list)  # map/mask files of deleted inputs removed by this run
    summary: dict[str, Any] = field(default_factory=dict)


def _name_unknown_keywords(function: _Function) -> _Function:
    """Make an unknown keyword argument a TypeError that names the parameter meant (``phrase=`` ->
    ``phrases=``): Python's own message names only the wrong one."""
    parameters = inspect.signature(function).parameters
    names = [name for name, p in parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    @functools.wraps(function)
    def checked(*args: Any, **kwargs: Any) -> Any:
        for given in kwargs:
            if given not in parameters:
                close = difflib.get_close_matches(given, names, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]}=?" if close else f"; its arguments are {', '.join(names)}"
                raise TypeError(f"predict_folder() got an unexpected keyword argument {given!r}{hint}")
        return function(*args, **kwargs)

    return checked  # type: ignore[return-value]


@_name_unknown_keywords
def predict(
    model: str | os.PathLike[str],
    inputs: PathsInput,
    out: str | os.PathLike[str],
    *,
    list_file: str | os.PathLike[str] | None = None,
    classes: str | Sequence[str] | None = None,
    prompts: PromptSpec = None,
    embeddings: bool = False,
    phrases: str | Sequence[str] = (),
    overlays: bool = False,
    frontal_only: bool = False,
    patient_id: bool = False,
    retry_failed: bool = False,
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
    grounding ``phrases``, one or many; ``overlays`` also draws each map over its image), or a
    fine-tuned model folder (its ``config.json`` names a ``task``; it predicts its own classes).
    inputs: one path (a ``str``/``os.PathLike``) or many. classes: a set name of
    :data:`~maco_cxr.tasks.prompts.CLASS_SETS` (``nih``, ``chexpert``, ``rsna``, ``siim``) or
    class names; prompts: see :func:`~maco_cxr.tasks.prompts.resolve_prompts` (default: the
    official ``siim`` set for ``classes="siim"``, else ``default``). retry_failed: process again
    the files an earlier run of this folder could not read. device: default CUDA when available
    (bf16 autocast), else the CPU. ``batch_size``, ``workers``, ``chunk_size``, ``retry_failed``
    and ``device`` of the same precision may change between a run and its resumption.
    """
    started = time.perf_counter()
    out = Path(os.path.abspath(out))
    if batch_size < 1 or chunk_size < 1 or workers < 0:
        raise ConfigError(
            f"batch_size ({batch_size}) and chunk_size ({chunk_size}) must be >= 1 and workers ({workers}) >= 0"
        )
    run_on = (
        torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    from maco_cxr.hub import resolve_model_path

    family, _ = split_model_spec(str(model))
    if family != "maco":
        raise ConfigError(
            f"{model}: predict takes MaCo and fine-tuned models; a {family} model is not supported by predict "
            "yet: use maco-cxr zeroshot, or maco_cxr.zero_shot / encode_images, with it"
        )
    model_path = Path(os.path.abspath(resolve_model_path(model)))
    task, model_classes = _model_task(model_path)
    class_names, table = _zero_shot_classes(task, classes, prompts)
    phrases = _checked_phrases(task, phrases, embeddings)
    if overlays and not phrases:
        raise ConfigError(
            "overlays draw grounding maps over the images: give at least one phrase, or leave overlays off"
        )
    if task == "zero-shot" and not (class_names or embeddings or phrases):
        raise ConfigError(
            "nothing to predict: give classes (a set such as 'nih', or names), embeddings=True "
            "or at least one grounding phrase"
        )
    roots = as_path_list(inputs, "inputs")
    paths, hidden = collect_inputs(roots, list_file, exclude=out)
    settings = {  # what changes the results: compared when a run is resumed
        "format_version": FORMAT_VERSION,
        "model": {"task": task, "sha256": _weights_sha256(model_path)},
        "inputs": sorted(os.path.abspath(p) for p in roots),
        "list": os.path.abspath(list_file) if list_file is not None else None,
        "classes": list(class_names),
        "prompts": {c: {"pos": list(p.positive), "neg": list(p.negative)} for c, p in table.items()},
        "embeddings": bool(embeddings),
        "phrases": list(phrases),
        "overlays": bool(overlays),
        "frontal_only": bool(frontal_only),
        "patient_id": bool(patient_id),
        "precision": "bf16" if run_on.type == "cuda" else "fp32",
    }
    stored = check_settings(out, settings)
    latest = read_parts(out / PARTS_DIR)
    closed = close_gone_inputs(out, latest, paths)
    if closed.inputs:
        logger.info(
            "predict: removed %d map/mask files of %d inputs that no longer exist",
            len(closed.files),
            len(closed.inputs),
        )
        latest = read_parts(out / PARTS_DIR)
    done = finished_paths(out, latest, retry_failed=retry_failed)
    todo = [p for p in paths if p not in done]
    kept_failures = sum(1 for p in paths if p in done and latest[p][1]["status"] == "failed")
    load_seconds = seconds = 0.0
    if todo:
        # a part closes after the first batch that brings it to chunk_size files
        per_part = math.ceil(chunk_size / batch_size) * batch_size
        tic = time.perf_counter()
        try:
            engine = _build_engine(
                task,
                model_path,
                run_on,
                out,
                class_names,
                table,
                phrases,
                overlays,
                embeddings,
                text_heads,
                vision_heads,
            )
        except KeyboardInterrupt as interrupt:
            raise RunInterrupted(f"chunk 1 of {math.ceil(len(todo) / per_part)} (loading the model)") from interrupt
        load_seconds = time.perf_counter() - tic
        if not stored:  # only once the model loaded: a typo in a model path is not stored
            write_json(out / SETTINGS_NAME, settings)
        tic = time.perf_counter()
        _run(
            engine,
            todo,
            out,
            frontal_only=frontal_only,
            patient_id=patient_id,
            batch_size=batch_size,
            workers=workers,
            per_part=per_part,
            progress=progress,
        )
        seconds = time.perf_counter() - tic
        latest = read_parts(out / PARTS_DIR)
    header = columns(task, model_classes, class_names, phrases, embeddings, patient_id)
    counts = write_outputs(out, paths, latest, header, settings)
    counts.update(
        inputs=len(paths),
        hidden_ignored=hidden,
        done_before=len(paths) - len(todo),
        processed_now=len(todo),
        failed_not_retried=kept_failures,
        removed_inputs=len(closed.inputs),
        removed_files=len(closed.files),
    )
    rate = len(todo) / seconds if seconds > 0 else 0.0
    summary = {
        "model": {"path": str(model_path), "task": task, "sha256": settings["model"]["sha256"]},
        "classes": list(class_names if task == "zero-shot" else model_classes),
        "phrases": list(phrases),
        "counts": counts,
        "removed_files": closed.files,
        "settings": settings,
        "runtime": {
            "device": str(run_on),
            "batch_size": batch_size,
            "workers": workers,
            "chunk_size": chunk_size,
            "retry_failed": bool(retry_failed),
        },
        "timings": {
            "load_seconds": round(load_seconds, 3),
            "predict_seconds": round(seconds, 3),
            "images_per_second": round(rate, 3),
            "total_seconds": round(time.perf_counter() - started, 3),
        },
        "outputs": output_names(task, embeddings, frontal_only, bool(phrases)),
    }
    write_json(out / "summary.json", summary)
    if counts["failed"]:
        logger.warning("predict: %d unreadable files listed in %s", counts["failed"], out / "failures.csv")
    return PredictResult(
        out,
        len(paths),
        counts["predicted"],
        counts["failed"],
        counts["skipped_views"],
        len(paths) - len(todo),
        seconds,
        rate,
        counts["not_images"],
        kept_failures,
        counts["colour_converted"],
        closed.files,
        summary,
    )


#: The name the package exports (``maco_cxr.predict_folder``): a fine-tuned model has its own ``predict``.
predict_folder = predict


# ------------------------------------------------------------------------------ settings


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
            if task not in FINETUNED_COLUMNS:
                raise ConfigError(f"{config}: task {task!r} is not one of {sorted(FINETUNED_COLUMNS)}")
            return str(task), tuple(str(c) for c in meta.get("classes", ()))
    if not path.exists():
        raise ConfigError(f"{path}: no such model file or folder")
    return "zero-shot", ()


def _weights_sha256(path: Path) -> str:
    from maco_cxr.hub import file_sha256

    weights = path / "model.safetensors" if path.is_dir() else path
    if not weights.is_file():
        raise ConfigError(f"{path}: no model weights (model.safetensors) there; give a model folder or a maco.pth file")
    return file_sha256(weights)


def _zero_shot_classes(
    task: str, classes: str | Sequence[str] | None, prompts: PromptSpec
) -> tuple[tuple[str, ...], dict[str, Any]]:
    if task != "zero-shot":
        if classes or prompts is not None:
            raise ConfigError(
                f"classes / prompts score a MaCo model zero-shot; this model is a fine-tuned "
                f"{task} model that predicts its own classes: leave them out"
            )
        return (), {}
    if classes is None or (not isinstance(classes, str) and not classes):
        return (), {}
    set_name = classes if isinstance(classes, str) else None
    if set_name is None and len(classes) == 1 and classes[0].lower() in CLASS_SETS:
        set_name = classes[0]
    if set_name is not None:
        if set_name.lower() not in CLASS_SETS:
            raise ConfigError(
                f"classes: {set_name!r} is not a class set ({', '.join(CLASS_SETS)}); give the "
                "set name or a list of class names"
            )
        names = CLASS_SETS[set_name.lower()]
        if prompts is None and set_name.lower() == "siim":
            prompts = "siim"
    else:
        names = tuple(classes)
    return tuple(names), resolve_prompts(names, prompts)


def _checked_phrases(task: str, phrases: str | Sequence[str], embeddings: bool) -> tuple[str, ...]:
    phrases = (phrases,) if isinstance(phrases, str) else tuple(phrases)
    if task != "zero-shot" and (phrases or embeddings):
        raise ConfigError(f"grounding phrases and embeddings need a MaCo model; this is a fine-tuned {task} model")
    for phrase in phrases:
        phrase_query(phrase)
    repeated = sorted({p for p in phrases if phrases.count(p) > 1})
    if repeated:
        raise ConfigError(f"phrases {repeated} are given more than once")
    return phrases


# ------------------------------------------------------------------------------ the models


def _maco_inputs(
    pixels: np.ndarray, *, size: int, mean: float, std: float, global_input: bool, letterbox: bool
) -> dict[str, Any]:
    """The encoder input (zero-shot geometry) and/or the letterboxed one (grounding), normalised here in
    the loader workers as :func:`~maco_cxr.inference.patch_embeddings` normalises uint8 pixels."""
    prepared: dict[str, Any] = {}
    if global_input:
        prepared["x"] = encoder_input(pixels, size, mean, std)
    if letterbox:
        boxed, prepared["letterbox"] = letterbox_image(pixels, size)
        prepared["boxed_x"] = encoder_input(boxed, size, mean, std)
    return prepared


def _finetuned_inputs(
    pixels: np.ndarray, *, prepare: Callable[..., dict[str, Any]], preprocessing: dict[str, Any]
) -> dict[str, Any]:
    return prepare(pixels, preprocessing)


def _keep_list(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


def _file_id(path: str) -> str:
    return hashlib.sha256(path.encode("utf-8")).hexdigest()[:16]


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")[:40] or "x"


def _number(value: float, digits: int = 8) -> str:
    return f"{float(value):.{digits}f}"


@dataclass
class _BatchOutput:
    """Per predicted item: its CSV cells, its detections and the files it writes (relative to the
    output folder); and the batch's embeddings ``[B, D]``."""

    rows: list[dict[str, str]]
    detections: list[list[list[str]]]
    files: list[list[str]]
    embeddings: np.ndarray | None = None


class _Engine(ABC):
    """A loaded model with everything a batch needs (prompts and phrases encoded once)."""

    keep_pixels: bool = False
    model: torch.nn.Module
    writer: FileWriter  # set by _run for the run

    @abstractmethod
    def prepare_function(self) -> Callable[[np.ndarray], dict[str, Any]]:
        """The per-image step for the loader workers (picklable)."""

    @abstractmethod
    def run(self, items: Sequence[dict[str, Any]]) -> _BatchOutput:
        """Predictions of a batch of prepared, readable items."""


class _MacoEngine(_Engine):
    def __init__(
        self,
        model: MacoModel,
        out: Path,
        classes: tuple[str, ...],
        table: dict[str, Any],
        phrases: tuple[str, ...],
        overlays: bool,
        embeddings: bool,
    ) -> None:
        self.model, self.out, self.classes, self.phrases = model, out, classes, phrases
        self.embeddings, self.overlays = embeddings, overlays
        self.keep_pixels = overlays  # the map itself needs only the letterbox geometry
        self.prototypes = build_class_prototypes(model, classes, table) if classes else None
        if phrases:
            self.texts = encode_texts(model, [phrase_query(p) for p in phrases])
            with inference_mode(model):
                self.weights = model.patch_weights(PATCH_WEIGHT_TEMPERATURE).float().cpu()

    def prepare_function(self) -> Callable[[np.ndarray], dict[str, Any]]:
        config = self.model.config
        return partial(
            _maco_inputs,
            size=config.vision.img_size,
            mean=config.image_mean,
            std=config.image_std,
            global_input=bool(self.classes) or self.embeddings,
            letterbox=bool(self.phrases),
        )

    def run(self, items: Sequence[dict[str, Any]]) -> _BatchOutput:
        rows: list[dict[str, str]] = [{} for _ in items]
        files: list[list[str]] = [[] for _ in items]
        z = None
        if self.classes or self.embeddings:
            x = torch.stack([item["inputs"]["x"] for item in items]).expand(-1, 3, -1, -1)
            z = encode_images(self.model, x, batch_size=len(items))
        if self.prototypes is not None:
            scores = score_embeddings(z, *self.prototypes).numpy()
            for row, values in zip(rows, scores):
                row.update({f"score:{c}": _number(v) for c, v in zip(self.classes, values)})
        if self.phrases:
            self._ground(items, rows, files)
        return _BatchOutput(rows, [[] for _ in items], files, z.numpy() if self.embeddings and z is not None else None)

    def _ground(self, items: Sequence[dict[str, Any]], rows: list[dict[str, str]], files: list[list[str]]) -> None:
        """The steps of :func:`~maco_cxr.tasks.grounding.letterboxed_maps`, phrases encoded once."""
        size = self.model.config.vision.img_size
        boxed = torch.stack([item["inputs"]["boxed_x"] for item in items]).expand(-1, 3, -1, -1)
        patches = patch_embeddings(self.model, boxed, batch_size=len(items))
        for i, (item, row) in enumerate(zip(items, rows)):
            for k, phrase in enumerate(self.phrases):
                heatmap = grounding_map(patches[i], self.weights, self.texts[k], size)
                name = f"maps/{_file_id(item['path'])}_p{k}_{_slug(phrase)}"
                self.writer.submit(
                    map_files,
                    self.out / name,
                    item["inputs"]["letterbox"],
                    heatmap,
                    item["pixels"] if self.overlays else None,
                    phrase,
                )
                row[f"map:{phrase}"] = f"{name}.npy"
                files[i] += [f"{name}.npy", *((f"{name}.png",) if self.overlays else ())]


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
        files: list[list[str]] = []
        for item, prediction in zip(items, predictions):
            boxes: list[list[str]] = []
            written: list[str] = []
            if self.task == "classification":
                row = {f"score:{c}": _number(v) for c, v in zip(self.classes, prediction)}
            elif self.task == "segmentation":
                row, written = self._masks(item["path"], prediction)
            else:
                boxes = [
                    [self._label(label), _number(score), *(_number(v, 2) for v in box)]
                    for box, score, label in zip(prediction["boxes"], prediction["scores"], prediction["labels"])
                ]
                row = {"n_boxes": str(len(boxes))}
            rows.append(row)
            detections.append(boxes)
            files.append(written)
        return _BatchOutput(rows, detections, files)

    def _masks(self, path: str, masks: np.ndarray) -> tuple[dict[str, str], list[str]]:
        """One 0/255 PNG per mask channel (one for the segmenters of this package)."""
        names, counts = [], []
        for k, mask in enumerate(masks):
            name = f"masks/{_file_id(path)}{'' if len(masks) == 1 else f'_c{k}'}.png"
            self.writer.submit(mask_files, self.out / name, (mask > 0).astype(np.uint8) * np.uint8(255))
            names.append(name)
            counts.append(str(int((mask > 0).sum())))
        return {"mask": ";".join(names), "mask_pixels": ";".join(counts)}, names

    def _label(self, label: Any) -> str:
        index = int(label) - 1  # 1-based class ids (0 is the background)
        return self.classes[index] if 0 <= index < len(self.classes) else str(int(label))


def _build_engine(
    task: str,
    path: Path,
    device: torch.device,
    out: Path,
    classes: tuple[str, ...],
    table: dict[str, Any],
    phrases: tuple[str, ...],
    overlays: bool,
    embeddings: bool,
    text_heads: int | None,
    vision_heads: int | None,
) -> _Engine:
    if task == "zero-shot":
        from maco_cxr.hub import load

        model = load(path, text_heads, vision_heads=vision_heads, map_location=device)
        return _MacoEngine(model, out, classes, table, phrases, overlays, embeddings)
    from maco_cxr.tasks.finetune import load_finetuned

    return _FinetunedEngine(load_finetuned(path, map_location=str(device)), out)


def _predict_batch(engine: _Engine, items: Sequence[dict[str, Any]]) -> _BatchOutput:
    """The model step of one batch of readable items (kept apart: tests count its calls)."""
    return engine.run(items)


# ------------------------------------------------------------------------------ the loop


def _run(
    engine: _Engine,
    todo: Sequence[str],
    out: Path,
    *,
    frontal_only: bool,
    patient_id: bool,
    batch_size: int,
    workers: int,
    per_part: int,
    progress: bool,
) -> None:
    parts = out / PARTS_DIR
    parts.mkdir(parents=True, exist_ok=True)
    for folder in (out, parts, out / "maps", out / "masks"):  # leftovers of a killed run's writes
        remove_stale_temporaries(folder)
    loader = DataLoader(
        PredictFiles(
            todo,
            engine.prepare_function(),
            frontal_only=frontal_only,
            patient_id=patient_id,
            keep_pixels=engine.keep_pixels,
        ),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_keep_list,
        pin_memory=torch.cuda.is_available(),
    )
    engine.writer = FileWriter()
    try:
        _stream(engine, loader, parts, len(todo), per_part, progress)
    finally:
        engine.writer.close()


def _stream(engine: _Engine, loader: DataLoader, parts: Path, total: int, per_part: int, progress: bool) -> None:
    """Predict batch by batch and commit a part every ``per_part`` files; Ctrl-C raises
    :class:`RunInterrupted` naming the chunk (every earlier chunk is committed, the current one is not)."""
    records: list[dict[str, Any]] = []
    vectors: list[np.ndarray] = []
    offset = 0  # embedding rows of the part so far
    chunk, chunks = 1, math.ceil(total / per_part)
    try:
        with inference_mode(engine.model), tqdm(total=total, desc="predict", unit="img", disable=not progress) as bar:
            for items in loader:
                good = [item for item in items if "inputs" in item]
                output = _predict_batch(engine, good) if good else _BatchOutput([], [], [])
                results = iter(range(len(good)))
                for item in items:
                    records.append(_record(item, output, results, offset))
                if output.embeddings is not None:
                    vectors.append(output.embeddings.astype(np.float32))
                    offset += len(output.embeddings)
                bar.update(len(items))
                if len(records) >= per_part:
                    engine.writer.drain()
                    write_part(parts, records, vectors)
                    chunk, records, vectors, offset = chunk + 1, [], [], 0
            if records:
                engine.writer.drain()
                write_part(parts, records, vectors)
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, RunInterrupted):
            raise
        raise RunInterrupted(f"chunk {chunk} of {chunks}") from interrupt


def _record(item: dict[str, Any], output: _BatchOutput, results: Any, offset: int) -> dict[str, Any]:
    """The journal record of one loader item (``results`` yields the item's index in ``output``)."""
    record: dict[str, Any] = {"path": item["path"], "tags": item["tags"]}
    if "not_image" in item:
        record.update(status="not-image", reason=item["not_image"])
    elif "failure" in item:
        record.update(status="failed", reason=item["failure"])
    elif "skipped" in item:
        record.update(status="skipped", reason=item["skipped"])
    else:
        k = next(results)
        height, width = item["shape"]
        record.update(
            status="predicted",
            row={"height": str(height), "width": str(width), "colour": item["colour"], **output.rows[k]},
            detections=output.detections[k],
            files=output.files[k],
        )
        if output.embeddings is not None:
            record["embedding"] = offset + k
    return record
