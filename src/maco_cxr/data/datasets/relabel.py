"""Map any adapter's labels onto a target class list, and merge adapters on one class list.

The idea follows torchxrayvision's ``relabel_dataset`` and ``Merge_Dataset``: a target class
the source does not label becomes NaN (unknown), never 0, so that losses and metrics skip it.

Name matching (:func:`match_classes`): names are compared after lower-casing, turning "_"
into a space and collapsing spaces ("Pleural_Thickening" = "pleural thickening"). An exact
match wins; otherwise a name matches a member of its synonym group in :data:`SYNONYMS`:

- "Pleural Effusion" ~ "Effusion" (NIH and VinDr-CXR vs CheXpert and MIMIC);
- "Lung Opacity" ~ "Airspace Opacity" ~ "Air space opacity" ~ "Opacity" (CheXlocalize's
  spelling and CheXpert's; note that CheXpert's Lung Opacity is broader than RSNA's);
- "Infiltration" ~ "Infiltrate" ~ "Infiltrates" (NIH labels vs NIH boxes);
- "Pulmonary fibrosis" ~ "Fibrosis" (VinDr-CXR vs NIH);
- "Other diseases" ~ "Other disease" (the two VinDr-CXR files).

Deliberately not synonyms: one-to-many pairs such as VinDr's "Nodule/Mass" vs NIH's "Nodule"
and "Mass", "Lung Lesion" vs "Mass", "Enlarged Cardiomediastinum" vs "Cardiomegaly", and
"No Finding" vs anything. Pass ``synonyms=`` to use another table.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from maco_cxr.data.datasets.base import ChestXrayDataset, OnError, Record, SkipReport
from maco_cxr.errors import ConfigError, DataError

__all__ = [
    "SYNONYMS",
    "ClassMatch",
    "MergedDataset",
    "match_classes",
    "merge_datasets",
    "relabel_dataset",
]

logger = logging.getLogger(__name__)

SYNONYMS: tuple[frozenset[str], ...] = (
    frozenset({"pleural effusion", "effusion"}),
    frozenset({"lung opacity", "airspace opacity", "air space opacity", "opacity"}),
    frozenset({"infiltration", "infiltrate", "infiltrates"}),
    frozenset({"pulmonary fibrosis", "fibrosis"}),
    frozenset({"other diseases", "other disease"}),
)
MERGE_SOURCE = "merge_source"  # record meta key: which part of a MergedDataset it came from


@dataclass(frozen=True)
class ClassMatch:
    """How a source class list maps onto a target one.

    ``mapping``: target class -> the source class it takes its labels from (None: NaN);
    ``missing``: target classes without a source (in target order); ``dropped``: source
    classes no target uses.
    """

    target: tuple[str, ...]
    source: tuple[str, ...]
    mapping: dict[str, str | None]
    missing: tuple[str, ...]
    dropped: tuple[str, ...]


def _normalise(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def _group_of(name: str, synonyms: Sequence[frozenset[str]]) -> frozenset[str]:
    key = _normalise(name)
    for group in synonyms:
        if key in {_normalise(member) for member in group}:
            return frozenset(_normalise(member) for member in group)
    return frozenset({key})


def match_classes(
    source: Sequence[str], target: Sequence[str], *, synonyms: Sequence[frozenset[str]] = SYNONYMS
) -> ClassMatch:
    """Match ``target`` class names to ``source`` ones (see the module docstring).

    A source holding both "Effusion" and "Pleural Effusion" gives the target "effusion" its
    exact match; a target that matches two source classes only through synonyms is
    ambiguous. Raises :class:`ConfigError` for such a target and for a target name that
    occurs twice (after normalisation).
    """
    source, target = tuple(source), tuple(target)
    seen: dict[str, str] = {}
    for name in target:
        key = _normalise(name)
        if key in seen:
            raise ConfigError(f"target classes {list(target)} name {seen[key]!r} twice ({name!r})")
        seen[key] = name
    mapping: dict[str, str | None] = {}
    for name in target:
        exact = [s for s in source if _normalise(s) == _normalise(name)]
        group = _group_of(name, synonyms)
        candidates = exact or [s for s in source if _normalise(s) in group]
        if len(candidates) > 1:
            raise ConfigError(
                f"target class {name!r} matches several source classes "
                f"{candidates}; rename one or pass a narrower synonyms table"
            )
        mapping[name] = candidates[0] if candidates else None
    used = {s for s in mapping.values() if s is not None}
    return ClassMatch(
        target=target,
        source=source,
        mapping=mapping,
        missing=tuple(t for t, s in mapping.items() if s is None),
        dropped=tuple(s for s in source if s not in used),
    )


def _relabelled(record: Record, columns: list[int | None], size: int, where: str) -> Record:
    """A copy of ``record`` with labels in the target order (NaN where ``columns`` is None)."""
    labels = np.full(len(columns), np.nan, dtype=np.float32)
    if record.labels is not None:
        if len(record.labels) != size:
            raise DataError(
                f"{where}: record {record.image_path} has {len(record.labels)} "
                f"labels but its dataset has {size} classes"
            )
        for k, column in enumerate(columns):
            if column is not None:
                labels[k] = record.labels[column]
    return dataclasses.replace(
        record,
        labels=labels,
        boxes=None if record.boxes is None else record.boxes.copy(),
        box_labels=list(record.box_labels),
        mask_paths=list(record.mask_paths),
        meta=dict(record.meta),
    )


def relabel_dataset(
    dataset: ChestXrayDataset, target_classes: Sequence[str], *, synonyms: Sequence[frozenset[str]] = SYNONYMS
) -> ChestXrayDataset:
    """A copy of ``dataset`` whose labels follow ``target_classes`` (NaN where unknown).

    Records are copied (labels, boxes, box labels, mask paths and meta are new objects), so
    the source is untouched; the copy keeps the source's class, hence its pixel and mask
    reading. ``copy.relabel_report`` is the :class:`ClassMatch`; target classes without a
    source are logged as a warning and dropped source classes at info level.
    """
    match = match_classes(dataset.classes, target_classes, synonyms=synonyms)
    index = {name: k for k, name in enumerate(dataset.classes)}
    columns = [None if s is None else index[s] for s in match.mapping.values()]
    where = type(dataset).__name__
    result = copy.copy(dataset)
    result.records = [_relabelled(r, columns, len(dataset.classes), where) for r in dataset.records]
    result.classes = match.target
    result.skips = SkipReport(list(dataset.skips.skipped))
    result.relabel_report = match  # type: ignore[attr-defined]
    if match.missing:
        logger.warning("%s: no source labels for %s; they are NaN (unknown)", where, list(match.missing))
    if match.dropped:
        logger.info("%s: classes %s are not in the target and are dropped", where, list(match.dropped))
    return result


class MergedDataset(ChestXrayDataset):
    """Several adapters on one class list: their records (relabelled copies) one after another.

    Each record's ``meta["merge_source"]`` names its part; pixels are read as usual and
    masks by that part's ``read_mask`` (so SIIM's RLE and CheXlocalize's masks still work,
    also after subsetting the records). ``parts``: {name: relabelled dataset};
    ``relabel_reports``: {name: :class:`ClassMatch`}. Built by :func:`merge_datasets`.
    """

    def __init__(
        self,
        parts: Mapping[str, ChestXrayDataset],
        classes: tuple[str, ...],
        reports: Mapping[str, ClassMatch],
        *,
        on_error: OnError = "raise",
    ) -> None:
        records: list[Record] = []
        skips = SkipReport()
        for name, part in parts.items():
            for record in part.records:
                record.meta[MERGE_SOURCE] = name
                records.append(record)
            for item in part.skips.skipped:
                skips.add(f"{name}: {item['where']}", item["reason"])
        self.parts = dict(parts)
        self.relabel_reports = dict(reports)
        super().__init__(records, classes, skips=skips, on_error=on_error)

    def read_mask(self, record: Record, height: int, width: int) -> np.ndarray | None:
        name = record.meta.get(MERGE_SOURCE)
        if name not in self.parts:
            raise DataError(
                f"record {record.image_path} has meta[{MERGE_SOURCE!r}]={name!r}, "
                f"not one of the merged parts {sorted(self.parts)}"
            )
        return self.parts[name].read_mask(record, height, width)


def merge_datasets(
    datasets: Mapping[str, ChestXrayDataset] | Sequence[ChestXrayDataset],
    target_classes: Sequence[str] | None = None,
    *,
    synonyms: Sequence[frozenset[str]] = SYNONYMS,
    on_error: OnError = "raise",
) -> MergedDataset:
    """One dataset holding every record of ``datasets``, labelled on ``target_classes``.

    ``datasets``: {name: dataset}, or a sequence named by class (``NihChestXray14``,
    ``NihChestXray14_2`` for a second one). ``target_classes`` None: the union of the
    parts' classes in order of first appearance, synonyms counted once (the first spelling
    is kept). Each part is relabelled with :func:`relabel_dataset`; the sources are
    untouched. A merged part is flattened into its parts (names ``outer/inner``).
    """
    named = _named(datasets)
    if not named:
        raise ConfigError("merge_datasets needs at least one dataset")
    flat: dict[str, ChestXrayDataset] = {}
    for name, dataset in named.items():
        if isinstance(dataset, MergedDataset):
            for inner_name in dataset.parts:
                inner = copy.copy(dataset.parts[inner_name])
                inner.records = [r for r in dataset.records if r.meta.get(MERGE_SOURCE) == inner_name]
                flat[f"{name}/{inner_name}"] = inner
        else:
            flat[name] = dataset
    if target_classes is None:
        union: list[str] = []
        for dataset in flat.values():
            for name in dataset.classes:
                group = _group_of(name, synonyms)
                if not any(_normalise(u) in group for u in union):
                    union.append(name)
        target = tuple(union)
    else:
        target = tuple(target_classes)
    parts = {name: relabel_dataset(ds, target, synonyms=synonyms) for name, ds in flat.items()}
    reports = {name: match_classes(ds.classes, target, synonyms=synonyms) for name, ds in flat.items()}
    return MergedDataset(parts, target, reports, on_error=on_error)


def _named(datasets: Mapping[str, ChestXrayDataset] | Sequence[ChestXrayDataset]) -> dict[str, ChestXrayDataset]:
    if isinstance(datasets, Mapping):
        return dict(datasets)
    named: dict[str, ChestXrayDataset] = {}
    for dataset in datasets:
        base = type(dataset).__name__
        name, k = base, 1
        while name in named:
            k += 1
            name = f"{base}_{k}"
        named[name] = dataset
    return named
