"""Official MaCo split files and seeded, patient-disjoint label fractions.

The split files shipped in ``maco_cxr/assets/splits/maco-official`` (MIT, from the official
MaCo repository) list one image per line: ``relative/path label1 ... labelK`` separated by
whitespace; SIIM lists hold SOPInstanceUIDs only. The SIIM train/val/test lists overlap in
the official release; :func:`load_official_split` warns and :func:`deduplicate_splits`
offers disjoint lists. The RSNA detection test set ships as the official COCO file
(:func:`official_rsna_detection_test`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from itertools import combinations
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np

from maco_cxr.data.datasets.base import (
    ChestXrayDataset,
    OnError,
    Record,
    SkipReport,
    check_on_error,
    csv_columns,
    iter_csv,
)
from maco_cxr.errors import ConfigError, DataError

__all__ = [
    "DetectionEntry",
    "IdList",
    "SplitEntry",
    "deduplicate_splits",
    "detection_split_entries",
    "detection_split_overlaps",
    "find_listed",
    "label_fraction",
    "load_official_split",
    "official_rsna_detection_test",
    "official_rsna_detection_test_path",
    "official_split_path",
    "read_coco_detection_split",
    "read_id_list",
    "read_split_file",
    "rsna_detection_test_overlaps",
    "split_overlaps",
    "subset_by_split_file",
]

logger = logging.getLogger(__name__)

OfficialDataset = Literal["nih", "chexpert", "rsna", "siim"]
_FOLDERS = {
    "nih": "NIH_ChestX-ray",
    "chexpert": "CheXpert",
    "rsna": "RSNA_Pneumonia",
    "siim": "SIIM-ACR_Pneumothorax",
}
_NAMES = {
    "train": "train_list",
    "train_100": "train_list",
    "train_list": "train_list",
    "val": "val_list",
    "val_list": "val_list",
    "test": "test_list",
    "test_list": "test_list",
    "train_1": "train_1",
    "train_10": "train_10",
}
_ROLES = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class SplitEntry:
    """One line of a split file: the image's relative path (or UID) and its labels."""

    path: str
    labels: np.ndarray  # float32 [K]; K = 0 for SIIM
    line: int = 0


def read_split_file(path: str | os.PathLike[str]) -> list[SplitEntry]:
    """Parse a split file; every line must have the same number of labels (0/1)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the split file ({err})") from err
    entries: list[SplitEntry] = []
    for number, text in enumerate(lines, start=1):
        tokens = text.split()
        if not tokens:
            continue
        try:
            labels = np.array([float(t) for t in tokens[1:]], dtype=np.float32)
        except ValueError:
            raise DataError(
                f"{path}, line {number}: labels {tokens[1:]} are not numbers; "
                "expected 'relative/path label1 ... labelK'"
            ) from None
        if entries and len(labels) != len(entries[0].labels):
            raise DataError(
                f"{path}, line {number}: {len(labels)} labels, but line {entries[0].line} has {len(entries[0].labels)}"
            )
        entries.append(SplitEntry(tokens[0], labels, number))
    return entries


def official_split_path(dataset: OfficialDataset, name: str) -> Path:
    """Path of a shipped official split: ``name`` in train/val/test, train_1, train_10.

    ("train_100"/"train_list", "val_list", "test_list" are accepted too.) CheXpert ships no
    100 % list: build it from ``CheXpert(root, "train", frontal_only=False)`` minus the
    val list with ``subset_by_split_file(..., exclude=True)``.
    """
    if dataset not in _FOLDERS:
        raise ConfigError(f"dataset={dataset!r} is not one of {tuple(_FOLDERS)}")
    if name not in _NAMES:
        raise ConfigError(f"split name {name!r} is not one of {tuple(_NAMES)}")
    resource = files("maco_cxr").joinpath("assets", "splits", "maco-official", _FOLDERS[dataset], f"{_NAMES[name]}.txt")
    if not resource.is_file():
        hint = (
            (" (the official release has no CheXpert 100 % list: take CheXpert train.csv minus the val list)")
            if dataset == "chexpert"
            else ""
        )
        raise ConfigError(f"no official split {name!r} for {dataset!r}{hint}")
    return Path(str(resource))


def split_overlaps(splits: Mapping[str, Sequence[SplitEntry]]) -> dict[tuple[str, str], int]:
    """Number of shared entries (by path/UID) for every pair of named splits."""
    ids = {name: {entry.path for entry in entries} for name, entries in splits.items()}
    return {(a, b): len(ids[a] & ids[b]) for a, b in combinations(ids, 2)}


def deduplicate_splits(
    splits: Mapping[str, Sequence[SplitEntry]],
    priority: Sequence[str] = ("test", "val", "train"),
) -> dict[str, list[SplitEntry]]:
    """Make splits disjoint: an id stays only in the first split of ``priority`` holding it.

    With the default, test ids win over val, and val over train. Every key of ``splits``
    must be in ``priority``.
    """
    unknown = [name for name in splits if name not in priority]
    if unknown:
        raise ConfigError(f"splits {unknown} are not in priority {list(priority)}")
    taken: set[str] = set()
    result: dict[str, list[SplitEntry]] = {}
    for name in priority:
        if name not in splits:
            continue
        result[name] = [entry for entry in splits[name] if entry.path not in taken]
        taken.update(entry.path for entry in splits[name])
    return {name: result[name] for name in splits}


def load_official_split(dataset: OfficialDataset, name: str, *, deduplicate: bool = False) -> list[SplitEntry]:
    """Entries of a shipped official split.

    SIIM: the official train/val/test lists overlap (a defect of the release). Loading a
    SIIM list warns with the overlap counts unless ``deduplicate=True``, which removes from
    the requested list every id of a split that wins over it (test > val > train; train_1
    and train_10 count as train).
    """
    entries = read_split_file(official_split_path(dataset, name))
    if dataset != "siim":
        return entries
    role = _NAMES[name].split("_")[0]
    lists = {r: read_split_file(official_split_path("siim", r)) for r in _ROLES}
    if deduplicate:
        return deduplicate_splits({**lists, role: entries})[role]
    counts = split_overlaps(lists)
    described = ", ".join(f"{a}/{b} {n}" for (a, b), n in counts.items())
    warnings.warn(
        f"the official SIIM-ACR split lists overlap (shared ids: {described}); metrics on "
        "them mix training and test images. Pass deduplicate=True for disjoint lists (test "
        "wins over val over train).",
        UserWarning,
        stacklevel=2,
    )
    return entries


def subset_by_split_file(
    dataset: ChestXrayDataset,
    split_file: str | os.PathLike[str] | Sequence[SplitEntry],
    *,
    use_file_labels: bool = False,
    exclude: bool = False,
    on_error: OnError = "raise",
) -> ChestXrayDataset:
    """A copy of ``dataset`` holding the records listed in a split file, in the file's order.

    An entry matches a record when its path equals the last components of the record's
    image path or of ``meta["relative_path"]`` (so bare NIH file names, RSNA
    ``stage_2_train_images/<id>.dcm`` and CheXpert ``CheXpert-v1.0-small/...`` paths all
    match), or, for one-component entries, the image's file stem (SIIM UIDs). An entry can
    match several records (MS-CXR has one per phrase). Entries matching nothing raise
    :class:`DataError` (``on_error="raise"``) or are added to the copy's ``skips`` and
    logged. ``use_file_labels`` replaces each record's labels with the file's (their count
    must equal ``len(dataset.classes)``); ``exclude`` keeps the records NOT listed instead.
    """
    on_error = check_on_error(on_error)
    if isinstance(split_file, (str, os.PathLike)):
        source, entries = str(split_file), read_split_file(split_file)
    else:
        source, entries = "split entries", list(split_file)
    if use_file_labels and entries and len(entries[0].labels) != len(dataset.classes):
        raise ConfigError(
            f"{source}: {len(entries[0].labels)} labels per entry but the "
            f"dataset has {len(dataset.classes)} classes {dataset.classes}"
        )
    index = _MatchIndex(dataset.records, {len(_parts(e.path)) for e in entries})
    selected: list[Record] = []
    listed: set[int] = set()
    skips = SkipReport(list(dataset.skips.skipped))
    missing: list[SplitEntry] = []
    for entry in entries:
        matches = index.find(entry.path)
        if not matches:
            missing.append(entry)
            skips.add(f"{source}, line {entry.line}", f"entry {entry.path!r} matches no record")
        listed.update(matches)
        for i in matches:
            record = dataset.records[i]
            if use_file_labels:
                record = dataclasses.replace(record, labels=entry.labels.copy())
            selected.append(record)
    if missing:
        message = (
            f"{source}: {len(missing)} of {len(entries)} entries match no record of the "
            f"dataset (first: line {missing[0].line} {missing[0].path!r}); check the "
            "root, the split and filters such as frontal_only"
        )
        if on_error == "raise":
            raise DataError(
                message + ", or skip and list them (--skip-bad on the command line, on_error='skip' in Python)"
            )
        logger.warning("%s; they are listed in the subset's .skips", message)
    if exclude:
        selected = [r for i, r in enumerate(dataset.records) if i not in listed]
    subset = copy.copy(dataset)
    subset.records = selected
    subset.skips = skips
    return subset


# --- lists of image ids (exclusion lists) -----------------------------------------------------

IdFormat = Literal["lines", "csv", "ms-cxr-csv", "json", "ms-cxr-json"]
# CSV columns that name an image, most specific first (MS-CXR and MIMIC: dicom_id; manifests:
# image_path; MS-CXR also: path; CheXpert: Path; NIH: Image Index; RSNA: patientId; SIIM: ImageId)
_ID_COLUMNS = ("dicom_id", "image_path", "path", "Path", "Image Index", "patientId", "ImageId")
_MS_CXR_COLUMNS = {"dicom_id", "label_text", "category_name"}


@dataclass(frozen=True, eq=False)
class IdList:
    """The images one file lists, as :class:`SplitEntry` (no labels) for :func:`find_listed`.

    ``format``: ``lines`` (one id or path per line, the first whitespace-separated token, so
    split files in the ``path label...`` format work as they are), ``csv`` (an id column),
    ``json`` (a COCO-style ``images`` list or a list of strings), and ``ms-cxr-csv`` /
    ``ms-cxr-json`` when the file is MS-CXR's annotation file (``dicom_id`` with
    ``label_text``/``category_name`` columns; or ``images`` with ``dicom_id`` plus
    ``annotations`` holding ``label_text``).
    """

    source: str
    entries: tuple[SplitEntry, ...]
    format: IdFormat

    @property
    def is_ms_cxr(self) -> bool:
        return self.format.startswith("ms-cxr")


def _entry(text: str, line: int) -> SplitEntry:
    return SplitEntry(text.strip(), np.zeros(0, dtype=np.float32), line)


def read_id_list(path: str | os.PathLike[str]) -> IdList:
    """The image ids or paths a file lists (see :class:`IdList` for the formats).

    Text lists: blank lines and lines starting with ``#`` are ignored. CSV (``.csv``,
    ``.csv.gz``): the first of the columns dicom_id, image_path, path, Path, Image Index,
    patientId, ImageId that the header has; a header with none of them raises
    :class:`DataError` naming the columns found. JSON (``.json``): ``images[i]`` gives its
    ``dicom_id``, else ``path``, else ``file_name``; a top-level list holds ids.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: no such file (an exclusion list: one image id or path per line, a split "
            "file, a CSV with an id column or MS-CXR's annotation file)"
        )
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return _csv_id_list(path)
    if name.endswith(".json"):
        return _json_id_list(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the id list ({err})") from err
    entries = [
        _entry(text.split()[0], number)
        for number, text in enumerate(lines, start=1)
        if text.strip() and not text.lstrip().startswith("#")
    ]
    return IdList(str(path), tuple(entries), "lines")


def _csv_id_list(path: Path) -> IdList:
    columns = csv_columns(path)
    column = next((c for c in _ID_COLUMNS if c in columns), None)
    if column is None:
        raise DataError(
            f"{path}: no column naming images; expected one of {list(_ID_COLUMNS)}, the columns are {columns}"
        )
    entries = [
        _entry(row.get(column) or "", line) for line, row in iter_csv(path, [column]) if (row.get(column) or "").strip()
    ]
    ms_cxr = column == "dicom_id" and len(_MS_CXR_COLUMNS & set(columns)) >= 2
    return IdList(str(path), tuple(entries), "ms-cxr-csv" if ms_cxr else "csv")


def _json_id_list(path: Path) -> IdList:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read the JSON id list ({err})") from err
    if isinstance(data, list):
        if not all(isinstance(item, str) for item in data):
            raise DataError(f"{path}: a top-level JSON list must hold image ids (strings)")
        return IdList(str(path), tuple(_entry(item, k + 1) for k, item in enumerate(data) if item.strip()), "json")
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(f"{path}: expected a COCO-style object with an 'images' list, or a list of ids")
    entries = []
    for k, image in enumerate(images):
        value = next(
            (
                image.get(key)
                for key in ("dicom_id", "path", "file_name")
                if isinstance(image, dict) and isinstance(image.get(key), str)
            ),
            None,
        )
        if value is None:
            raise DataError(f"{path}: images[{k}] has no 'dicom_id', 'path' or 'file_name'")
        entries.append(_entry(value, k + 1))
    annotations = data.get("annotations") or []
    ms_cxr = any(isinstance(i, dict) and "dicom_id" in i for i in images) and any(
        isinstance(a, dict) and "label_text" in a for a in annotations
    )
    return IdList(str(path), tuple(entries), "ms-cxr-json" if ms_cxr else "json")


def find_listed(records: Sequence[Record], entries: Sequence[SplitEntry]) -> tuple[set[int], list[SplitEntry]]:
    """Indices of the records some entry names, and the entries that name no record.

    The matching rule of :func:`subset_by_split_file`: an entry names a record when it equals
    the last components of the record's image path or ``meta["relative_path"]``, or, for a
    one-component entry, the image's file stem (a MIMIC/MS-CXR ``dicom_id``, an RSNA
    ``patientId``, a SIIM UID).
    """
    if not entries:
        return set(), []
    index = _MatchIndex(records, {len(_parts(e.path)) for e in entries})
    listed: set[int] = set()
    unmatched: list[SplitEntry] = []
    for entry in entries:
        found = index.find(entry.path)
        if found:
            listed.update(found)
        else:
            unmatched.append(entry)
    return listed, unmatched


def label_fraction(records: Sequence[Record], fraction: float, seed: int) -> list[int]:
    """Indices of a seeded ``fraction`` of the records, whole patients at a time.

    Rule: records are grouped by ``patient_id`` (a record without one is its own group);
    the groups, in order of first appearance, are shuffled with
    ``numpy.random.default_rng(seed)`` and taken whole until at least
    ``max(1, round(fraction * len(records)))`` images are selected. So no patient is split
    between the selected and the unselected images, the count exceeds the target by less
    than the largest patient's image count, and the same records and seed give the same
    indices (returned sorted). Draws for different fractions are independent, not nested.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"fraction={fraction!r} must be in (0, 1]")
    groups: dict[tuple[str, object], list[int]] = {}
    for i, record in enumerate(records):
        key = ("patient", record.patient_id) if record.patient_id is not None else ("image", i)
        groups.setdefault(key, []).append(i)
    if not groups:
        return []
    target = max(1, round(fraction * len(records)))
    ordered = list(groups.values())
    chosen: list[int] = []
    for g in np.random.default_rng(seed).permutation(len(ordered)):
        if len(chosen) >= target:
            break
        chosen.extend(ordered[g])
    return sorted(chosen)


# --- RSNA detection test set (official COCO file) --------------------------------------------

_RSNA_DETECTION_TEST = "detection_test_coco_format.json"


@dataclass(frozen=True, eq=False)
class DetectionEntry:
    """One image of a COCO detection split file.

    ``name`` is the stem of the image's file name (the RSNA ``patientId``): the official
    file holds absolute paths of the authors' machine, so only the base name is usable.
    ``boxes``: float32 ``[M, 4]`` xyxy pixels (from COCO ``[x, y, w, h]``), ``box_labels``
    their category names; ``line`` the image's 1-based position in the file's ``images``.
    """

    name: str
    boxes: np.ndarray
    box_labels: tuple[str, ...]
    file_name: str
    image_id: int
    width: int
    height: int
    line: int = 0


def _json_int(value: object, where: str, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where} field {field_name!r}: {value!r} is not an integer")
    return value


def _coco_box(value: object, where: str) -> list[float]:
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise DataError(f"{where} field 'bbox': {value!r} is not [x, y, w, h] (4 finite numbers)")
    x, y, w, h = (float(v) for v in value)
    if w <= 0 or h <= 0:
        raise DataError(f"{where} field 'bbox': box size {w}x{h} (w x h) is not positive")
    return [x, y, x + w, y + h]


def read_coco_detection_split(path: str | os.PathLike[str]) -> list[DetectionEntry]:
    """The images of a COCO detection file with their boxes, in the file's ``images`` order.

    Images are matched on the stem of ``file_name`` (any folder, ``/`` or ``\\\\``); two
    images with the same stem, two with the same id, or an annotation of an unknown image
    raise :class:`DataError` naming the file, the entry (``images[i]``,
    ``annotations[j]``) and the field. Images without annotations get an empty ``[0, 4]``
    box array.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read the COCO file ({err})") from err
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a COCO object with 'images' and 'annotations'")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: field {key!r} is missing or not a list")
    categories: dict[int, str] = {}
    for k, category in enumerate(data.get("categories") or []):
        where = f"{path}: categories[{k}]"
        if not isinstance(category, dict):
            raise DataError(f"{where} is not an object")
        categories[_json_int(category.get("id"), where, "id")] = str(category.get("name", ""))
    entries: dict[int, DetectionEntry] = {}
    boxes: dict[int, list[list[float]]] = {}
    labels: dict[int, list[str]] = {}
    stems: dict[str, int] = {}
    for k, image in enumerate(data["images"]):
        where = f"{path}: images[{k}]"
        if not isinstance(image, dict):
            raise DataError(f"{where} is not an object")
        image_id = _json_int(image.get("id"), where, "id")
        file_name = image.get("file_name")
        if not isinstance(file_name, str) or not file_name.strip():
            raise DataError(f"{where} field 'file_name': {file_name!r} is not a file name")
        stem = PurePosixPath(file_name.replace("\\", "/")).stem
        if image_id in entries:
            raise DataError(f"{where} field 'id': {image_id} is the id of images[{entries[image_id].line - 1}] too")
        if stem in stems:
            raise DataError(
                f"{where} field 'file_name': the base name {stem!r} is the one of images[{stems[stem]}] too"
            )
        stems[stem] = k
        entries[image_id] = DetectionEntry(
            name=stem,
            boxes=np.zeros((0, 4), dtype=np.float32),
            box_labels=(),
            file_name=file_name,
            image_id=image_id,
            width=_json_int(image.get("width"), where, "width"),
            height=_json_int(image.get("height"), where, "height"),
            line=k + 1,
        )
        boxes[image_id], labels[image_id] = [], []
    for k, annotation in enumerate(data["annotations"]):
        where = f"{path}: annotations[{k}]"
        if not isinstance(annotation, dict):
            raise DataError(f"{where} is not an object")
        image_id = _json_int(annotation.get("image_id"), where, "image_id")
        if image_id not in entries:
            raise DataError(f"{where} field 'image_id': no image has id {image_id}")
        category = _json_int(annotation.get("category_id"), where, "category_id")
        boxes[image_id].append(_coco_box(annotation.get("bbox"), where))
        labels[image_id].append(categories.get(category, str(category)))
    return [
        dataclasses.replace(
            entry, boxes=np.array(boxes[i], dtype=np.float32).reshape(-1, 4), box_labels=tuple(labels[i])
        )
        for i, entry in entries.items()
    ]


def official_rsna_detection_test_path() -> Path:
    """Path of the shipped official RSNA detection test file (COCO, MIT, MaCo authors)."""
    resource = files("maco_cxr").joinpath("assets", "splits", "maco-official", _FOLDERS["rsna"], _RSNA_DETECTION_TEST)
    if not resource.is_file():
        raise ConfigError(f"the package has no {_RSNA_DETECTION_TEST}; reinstall maco-cxr")
    return Path(str(resource))


def official_rsna_detection_test() -> list[DetectionEntry]:
    """The official RSNA detection test set: 1,218 positive stage-2 train images, 1,947 boxes.

    ``name`` is the patientId. All of its images come from ``stage_2_train_images``, and they
    overlap the official classification lists (:func:`rsna_detection_test_overlaps`).
    Apply it to ``RsnaPneumonia(root, positives_only=True)`` with
    ``subset_by_split_file(dataset, detection_split_entries(entries))``.
    """
    return read_coco_detection_split(official_rsna_detection_test_path())


def detection_split_entries(entries: Sequence[DetectionEntry]) -> list[SplitEntry]:
    """The entries as bare-name :class:`SplitEntry` (no labels), for
    :func:`subset_by_split_file`."""
    return [SplitEntry(e.name, np.zeros(0, dtype=np.float32), e.line) for e in entries]


def detection_split_overlaps(
    entries: Sequence[DetectionEntry], splits: Mapping[str, Sequence[SplitEntry]]
) -> dict[str, int]:
    """For each named split, how many of ``entries`` it lists (matched on the file stem)."""
    names = {e.name for e in entries}
    return {
        split: len(names & {PurePosixPath(s.path.replace("\\", "/")).stem for s in listed})
        for split, listed in splits.items()
    }


def rsna_detection_test_overlaps(
    names: Sequence[str] = ("train", "val", "test", "train_1", "train_10"),
) -> dict[str, int]:
    """How many images of the official RSNA detection test set each official RSNA
    classification list holds (1,173 in train, 45 in val: the detection test images were
    drawn from ``stage_2_train``, not from the classification test list)."""
    lists = {name: read_split_file(official_split_path("rsna", name)) for name in names}
    return detection_split_overlaps(official_rsna_detection_test(), lists)


def _parts(path: str) -> tuple[str, ...]:
    return PurePosixPath(path.replace("\\", "/")).parts


class _MatchIndex:
    """Records indexed by the trailing components of their paths, and by file stem."""

    def __init__(self, records: Sequence[Record], lengths: set[int]) -> None:
        self._by_suffix: dict[tuple[str, ...], list[int]] = {}
        self._by_stem: dict[str, list[int]] = {}
        for i, record in enumerate(records):
            paths = {_parts(record.image_path.as_posix())}
            if record.meta.get("relative_path"):
                paths.add(_parts(str(record.meta["relative_path"])))
            suffixes = {parts[-n:] for parts in paths for n in lengths if 0 < n <= len(parts)}
            for suffix in suffixes:
                self._by_suffix.setdefault(suffix, []).append(i)
            self._by_stem.setdefault(record.image_path.stem, []).append(i)

    def find(self, path: str) -> list[int]:
        parts = _parts(path)
        found = self._by_suffix.get(parts, [])
        if not found and len(parts) == 1:
            found = self._by_stem.get(parts[0], [])
        return found
