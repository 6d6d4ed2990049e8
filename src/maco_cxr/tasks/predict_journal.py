"""The resume journal of a :func:`~maco_cxr.tasks.predict.predict` run: its settings and its parts.

- ``settings.json``: what changes the results; a rerun with other settings is refused with each
  difference named (:func:`check_settings`).
- ``parts/<n>/``: one folder per committed chunk, published in one atomic rename, holding one
  record per file (``rows.json``) and the chunk's embeddings. A record's ``status`` is
  ``predicted`` (with its CSV cells and the ``files`` it wrote under ``maps/``/``masks/``),
  ``failed``, ``skipped`` (the frontal filter), ``not-image``, or ``removed`` (the input is gone
  and the files its record listed were deleted). The highest part number holding a path wins.

Because every part is complete or absent, a run killed at any moment leaves a journal that a
rerun resumes: :func:`finished_paths` says what is done (failed files only unless they are to be
retried; a record whose files went missing is redone).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maco_cxr._atomic import atomic_directory, claim_output_folder, write_json, write_with
from maco_cxr.errors import ConfigError, DataError

__all__ = [
    "FORMAT_VERSION",
    "PARTS_DIR",
    "SETTINGS_NAME",
    "Closed",
    "check_settings",
    "close_gone_inputs",
    "finished_paths",
    "next_part_number",
    "read_parts",
    "write_part",
]

SETTINGS_NAME = "settings.json"
PARTS_DIR = "parts"
FORMAT_VERSION = 2  # 2: records list the files they wrote; overlays are a setting
ROWS_NAME = "rows.json"
EMBEDDINGS_NAME = "embeddings.npy"
FILE_FOLDERS = ("maps", "masks")  # where records list the files they wrote; nothing else is ever removed

Latest = dict[str, tuple[Path, dict[str, Any]]]  # path -> (its part folder, its latest record)


def check_settings(out: Path, settings: dict[str, Any]) -> bool:
    """True when ``out`` holds a run with these settings; raise when it holds another one, or is a
    folder this package's ``predict`` did not write (the one output-folder rule of :mod:`maco_cxr._atomic`)."""
    stored_path = out / SETTINGS_NAME
    if not stored_path.is_file():
        claim_output_folder(out, "predict")
        return False
    try:
        stored = json.loads(stored_path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{stored_path}: cannot read the stored settings ({err}); give a new output folder") from err
    if stored != settings:
        differences = []
        for key in sorted(set(stored) | set(settings)):
            there, now = stored.get(key), settings.get(key)
            if key == "prompts" and isinstance(there, dict) and isinstance(now, dict):
                # prompts of added or removed classes: reported under "classes"
                there, now = ({k: v for k, v in a.items() if k in b} for a, b in ((there, now), (now, there)))
            if there != now:
                differences.append(_difference(key, there, now))
        raise ConfigError(
            f"{out} holds a predict run with other settings ({'; '.join(differences)}); rerun "
            "with the settings it was started with to resume it, or give a new output folder "
            "(or delete this one) to start over"
        )
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


# ------------------------------------------------------------------------------ parts


def next_part_number(parts: Path) -> int:
    if not parts.is_dir():
        return 0
    return 1 + max((int(p.name) for p in parts.iterdir() if p.name.isdigit()), default=-1)


def write_part(parts: Path, records: list[dict[str, Any]], vectors: Sequence[np.ndarray]) -> Path:
    """One chunk's records (and embeddings) as the next part, published in one rename."""
    folder = parts / f"{next_part_number(parts):06d}"
    with atomic_directory(folder, "predict-journal-part") as tmp:
        write_json(tmp / ROWS_NAME, {"records": records})
        if vectors:
            stacked = np.concatenate(vectors)
            write_with(tmp / EMBEDDINGS_NAME, lambda path: np.save(path, stacked))
    return folder


def read_parts(parts: Path) -> Latest:
    """The latest record of each path over the committed parts (higher part numbers win)."""
    latest: Latest = {}
    if not parts.is_dir():
        return latest
    for folder in sorted((p for p in parts.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        try:
            records = json.loads((folder / ROWS_NAME).read_text())["records"]
        except (OSError, ValueError, KeyError) as err:
            raise DataError(
                f"{folder}: the resume journal part cannot be read ({err}); delete that part "
                "folder to recompute its files"
            ) from err
        for record in records:
            latest[record["path"]] = (folder, record)
    return latest


def finished_paths(out: Path, latest: Latest, *, retry_failed: bool) -> set[str]:
    """Paths a rerun does not process again: every recorded one except removed inputs, failed files
    when ``retry_failed``, and predictions whose written files are no longer all there."""
    done = set()
    for path, (_, record) in latest.items():
        status = record["status"]
        if status == "removed" or (status == "failed" and retry_failed):
            continue
        if any(not (out / name).is_file() for name in record.get("files", ())):
            continue
        done.add(path)
    return done


@dataclass(frozen=True)
class Closed:
    """What :func:`close_gone_inputs` did: the inputs it closed, the files it removed (under ``out``)."""

    inputs: list[str]
    files: list[str]


def _own_file(out: Path, name: str) -> Path:
    """``out / name`` for a file a record lists, checked to lie in ``maps/`` or ``masks/`` of ``out``."""
    relative = Path(name)
    parts = relative.parts
    if relative.is_absolute() or ".." in parts or len(parts) < 2 or parts[0] not in FILE_FOLDERS:
        raise DataError(
            f"{out / PARTS_DIR}: a journal record lists {name!r}, not a file under "
            f"{' or '.join(f + '/' for f in FILE_FOLDERS)}; the journal is corrupt: delete the "
            "output folder to start over"
        )
    return out / relative


def close_gone_inputs(out: Path, latest: Latest, inputs: Sequence[str]) -> Closed:
    """For every journal path that is not among ``inputs`` and no longer exists: delete the files ITS
    record lists (those only, never anything else), then commit a ``removed`` record for it.

    Files first, then the record: a kill in between leaves the old record, and the next rerun
    removes what is left and commits it; a removed input that comes back is predicted again.
    """
    current = set(inputs)
    gone = sorted(
        path
        for path, (_, record) in latest.items()
        if record["status"] != "removed" and path not in current and not os.path.lexists(path)
    )
    targets = [(name, _own_file(out, name)) for path in gone for name in latest[path][1].get("files", ())]
    removed: list[str] = []
    for name, target in targets:
        if target.is_file():
            target.unlink()
            removed.append(name)
    if gone:
        write_part(out / PARTS_DIR, [{"path": path, "status": "removed", "tags": {}} for path in gone], [])
    return Closed(gone, removed)
