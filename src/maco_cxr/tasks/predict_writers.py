"""What a :func:`~maco_cxr.tasks.predict.predict` run writes: the per-image files (grounding maps,
overlays, masks) in background threads, and the final tables from the journal.

Every file goes through :mod:`maco_cxr._atomic` (never half written). :class:`FileWriter` keeps
PNG/NPY encoding off the model's path with a bounded queue, and a failed write raises in the
loop that submitted it: nothing is lost silently.
"""

from __future__ import annotations

import io
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from maco_cxr._atomic import write_csv, write_with
from maco_cxr.data.letterbox import Letterbox
from maco_cxr.tasks.predict_inputs import DICOM_COLUMNS
from maco_cxr.tasks.predict_journal import EMBEDDINGS_NAME, SETTINGS_NAME, Latest

__all__ = ["FINETUNED_COLUMNS", "FileWriter", "columns", "map_files", "mask_files", "output_names", "write_outputs"]

FINETUNED_COLUMNS = {"classification": (), "segmentation": ("mask", "mask_pixels"), "detection": ("n_boxes",)}

Encoded = list[tuple[Path, bytes]]  # files to publish, as (path, content)


class FileWriter:
    """Encodes maps, overlays and masks in background threads, so that the model does not wait
    for PNG encoding; at most ``limit`` jobs are in flight (the submitter waits beyond), and
    :meth:`drain` waits for all (a part is committed only once its files exist). A failed job
    raises in the caller of :meth:`submit` or :meth:`drain`.

    The files themselves are written one at a time (under a lock): the atomic writer reads the
    process umask by setting it, which two threads must not do at once.
    """

    def __init__(self, threads: int = 2, limit: int = 16) -> None:
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="maco-predict-writer")
        self.pending: deque[Future[None]] = deque()
        self.limit = limit
        self.lock = threading.Lock()

    def submit(self, encode: Callable[..., Encoded], *args: Any) -> None:
        self.pending.append(self.pool.submit(self._job, encode, *args))
        while len(self.pending) > self.limit:
            self.pending.popleft().result()

    def _job(self, encode: Callable[..., Encoded], *args: Any) -> None:
        files = encode(*args)
        with self.lock:
            for path, data in files:
                write_with(path, lambda tmp, data=data: tmp.write_bytes(data))

    def drain(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def close(self) -> None:
        """Stop the threads; jobs not started are dropped (after an error or Ctrl-C: their chunk was not
        committed, so a rerun writes them again)."""
        self.pool.shutdown(wait=True, cancel_futures=True)


def _png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 grey ``[H, W]`` or RGB ``[H, W, 3]`` as PNG bytes (a fast zlib level: these files are many)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def map_files(
    stem: Path, letterbox: Letterbox, heatmap: np.ndarray, overlay_on: np.ndarray | None, phrase: str
) -> Encoded:
    """``<stem>.npy``: the letterboxed ``heatmap`` mapped to the original grid, and with
    ``overlay_on`` (the image) ``<stem>.png``: its :func:`~maco_cxr.plots.overlay_heatmap`."""
    heatmap = letterbox.map_to_original(heatmap)
    buffer = io.BytesIO()
    np.save(buffer, heatmap)
    files = [(stem.parent / f"{stem.name}.npy", buffer.getvalue())]
    if overlay_on is not None:
        from maco_cxr.plots import overlay_heatmap

        overlay = overlay_heatmap(overlay_on, heatmap, title=phrase)
        files.append((stem.parent / f"{stem.name}.png", _png_bytes(overlay)))
    return files


def mask_files(path: Path, mask: np.ndarray) -> Encoded:
    return [(path, _png_bytes(mask))]


# ------------------------------------------------------------------------------ the final files


def columns(
    task: str,
    model_classes: tuple[str, ...],
    classes: tuple[str, ...],
    phrases: tuple[str, ...],
    embeddings: bool,
    patient_id: bool,
) -> list[str]:
    identifiers = ["path", "height", "width", "colour", *DICOM_COLUMNS, *(("PatientID",) if patient_id else ())]
    if task == "zero-shot":
        return [
            *identifiers,
            *(f"score:{c}" for c in classes),
            *(("embedding_row",) if embeddings else ()),
            *(f"map:{p}" for p in phrases),
        ]
    if task == "classification":
        return [*identifiers, *(f"score:{c}" for c in model_classes)]
    return [*identifiers, *FINETUNED_COLUMNS[task]]


def write_outputs(
    out: Path, paths: Sequence[str], latest: Latest, header: list[str], settings: dict[str, Any]
) -> dict[str, int]:
    """The tables of the files in ``paths`` (sorted) from their latest journal records; returns the counts."""
    tag_columns = [*DICOM_COLUMNS, *(("PatientID",) if settings["patient_id"] else ())]
    predicted, failed, skipped, not_images, detections, index_rows = [], [], [], [], [], []
    vectors: list[np.ndarray] = []
    cache: dict[Path, np.ndarray] = {}
    without_view = colour = 0
    for path in paths:
        if path not in latest:
            continue
        folder, record = latest[path]
        tags = record.get("tags", {})
        if record["status"] == "failed":
            failed.append([path, record["reason"]])
            continue
        if record["status"] == "not-image":
            not_images.append([path, record["reason"]])
            continue
        if record["status"] == "skipped":
            skipped.append([path, *(tags.get(c, "") for c in tag_columns), record["reason"]])
            continue
        without_view += not tags.get("ViewPosition")
        colour += bool(record["row"].get("colour"))
        row = {"path": path, **{c: tags.get(c, "") for c in tag_columns}, **record["row"]}
        if "embedding" in record:
            if folder not in cache:
                cache[folder] = np.load(folder / EMBEDDINGS_NAME)
            row["embedding_row"] = str(len(vectors))
            index_rows.append([len(vectors), path, tags.get("SOPInstanceUID", "")])
            vectors.append(cache[folder][record["embedding"]])
        predicted.append([row.get(c, "") for c in header])
        detections += [[path, tags.get("SOPInstanceUID", ""), *box] for box in record.get("detections", [])]
    write_csv(out / "predictions.csv", header, predicted)
    write_csv(out / "failures.csv", ["path", "reason"], failed)
    write_csv(out / "non_images.csv", ["path", "reason"], not_images)
    if settings["frontal_only"]:
        write_csv(out / "skipped.csv", ["path", *tag_columns, "reason"], skipped)
    if settings["embeddings"]:
        matrix = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, 0), np.float32)
        write_with(out / "embeddings.npy", lambda tmp: np.save(tmp, matrix))
        write_csv(out / "embeddings_index.csv", ["row", "path", "SOPInstanceUID"], index_rows)
    if settings["model"]["task"] == "detection":
        box_header = ["path", "SOPInstanceUID", "label", "score", "x_min", "y_min", "x_max", "y_max"]
        write_csv(out / "detections.csv", box_header, detections)
    return {
        "predicted": len(predicted),
        "failed": len(failed),
        "not_images": len(not_images),
        "skipped_views": len(skipped),
        "without_view_position": without_view,
        "colour_converted": colour,
    }


def output_names(task: str, embeddings: bool, frontal_only: bool, phrases: bool) -> list[str]:
    names = ["predictions.csv", "failures.csv", "non_images.csv", "summary.json", SETTINGS_NAME]
    names += ["skipped.csv"] if frontal_only else []
    names += ["embeddings.npy", "embeddings_index.csv"] if embeddings else []
    names += ["maps/"] if phrases else []
    names += {"detection": ["detections.csv"], "segmentation": ["masks/"]}.get(task, [])
    return names
