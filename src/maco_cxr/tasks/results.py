"""What the evaluation task functions share: a figure with its interval, and the provenance of a run.

:func:`~maco_cxr.tasks.zeroshot.run_zeroshot`, :func:`~maco_cxr.tasks.grounding.run_grounding` and
:func:`~maco_cxr.tasks.retrieval.run_retrieval` each return a frozen result whose figures are
:class:`Estimate` values, so a caller reads a number and its bootstrap interval the same way for
every task (:class:`ReportResult` holds what they all have); :class:`RunSource` is what the
command line (or ``reproduce``) built the model and the data from, written into the report so a
report folder says where its numbers came from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Estimate", "ReportResult", "RunSource"]


@dataclass(frozen=True)
class ReportResult:
    """What every report-folder task returns: ``out`` (the folder), ``files`` (every file written,
    ``summary.json`` last) and, by keyword, ``n_skipped`` (rows and split entries the dataset left
    out, ``on_error="skip"``), ``n_unreadable`` (images that could not be read, listed in
    ``summary.json``) and ``summary`` (that file's content)."""

    out: Path
    files: tuple[Path, ...]
    n_skipped: int = field(kw_only=True)
    n_unreadable: int = field(kw_only=True)
    summary: Mapping[str, Any] = field(kw_only=True)

    @property
    def summary_path(self) -> Path:
        return self.out / "summary.json"


@dataclass(frozen=True)
class Estimate:
    """One figure and its bootstrap interval.

    ``value`` is NaN when the figure is undefined (e.g. an AUC without positives); ``low`` and
    ``high`` are None when no interval was computed (``n_bootstrap=0``) or none is defined.
    """

    value: float
    low: float | None = None
    high: float | None = None

    @classmethod
    def of(cls, value: float | None, interval: Mapping[str, Any] | None = None) -> Estimate:
        """From a point value (None = undefined) and a summary interval ``{"low", "high", ...}``."""
        point = float("nan") if value is None else float(value)
        if not interval:
            return cls(point)
        low, high = interval.get("low"), interval.get("high")
        defined = [v for v in (low, high) if v is not None and math.isfinite(float(v))]
        return cls(point, *(float(v) for v in defined)) if len(defined) == 2 else cls(point)


@dataclass(frozen=True)
class RunSource:
    """Where a report's model and data came from (recorded in ``summary.json``; provenance only:
    the numbers are computed from the model and dataset objects passed to the task function).

    ``model``: the model directory or checkpoint; ``dataset``: the adapter name; ``root``: its
    folder or manifest; ``split``: the adapter's split; ``official_split`` / ``split_file``: the
    list the images were restricted to; ``annotations``: an annotation file (MS-CXR).
    """

    model: str | None = None
    dataset: str | None = None
    root: str | None = None
    split: str | None = None
    official_split: str | None = None
    split_file: str | None = None
    annotations: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)

    def split_fields(self) -> dict[str, str | None]:
        """What tells a validation split from the evaluated one (same model, adapter and root)."""
        return {key: getattr(self, key) for key in ("split", "official_split", "split_file", "annotations")}
