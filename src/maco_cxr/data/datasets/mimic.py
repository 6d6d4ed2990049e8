"""MIMIC-CXR-JPG 2.0 with its free-text reports: the pre-training corpus of MaCo."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from maco_cxr.data.datasets.base import (
    ChestXrayDataset,
    OnError,
    Record,
    SkipReport,
    cell,
    check_on_error,
    find_file,
    iter_csv,
    log_skips,
    row_guard,
)
from maco_cxr.data.datasets.chexpert import (
    CHEXPERT_OBSERVATIONS,
    BlankPolicy,
    UncertainPolicy,
    check_classes,
    check_label_policy,
    chexpert_labels,
)
from maco_cxr.errors import ConfigError, DataError

__all__ = ["MimicCxrJpg"]

logger = logging.getLogger(__name__)

MimicSplit = Literal["train", "validate", "test"]
_SPLITS = ("train", "validate", "test")
_PREFIX = "mimic-cxr-2.0.0-"


def _table(root: Path, name: str) -> Path:
    return find_file(root, [f"{_PREFIX}{name}.csv.gz", f"{_PREFIX}{name}.csv"])


def _digits(row: dict[str, str | None], column: str) -> str:
    value = cell(row, column)
    if not value.isdigit():
        raise DataError(f"field {column!r}: {value!r} is not a numeric id")
    return value


class MimicCxrJpg(ChestXrayDataset):
    """MIMIC-CXR-JPG 2.0.0 images with MIMIC-CXR reports and CheXpert/NegBio labels.

    Size: 377,110 JPEG images of 227,835 studies (65,379 patients); official split
    train / validate / test. Licence: PhysioNet Credentialed Health Data License 1.5.0
    (credentialed access, data use agreement, no redistribution).
    Citation: Johnson A. et al., "MIMIC-CXR-JPG, a large publicly available database of
    labeled chest radiographs", arXiv:1901.07042 (2019); Johnson A. et al., "MIMIC-CXR, a
    de-identified publicly available database of chest radiographs with free-text reports",
    Scientific Data 6, 317 (2019).

    Layout (``.csv`` or ``.csv.gz``)::

        <root>/mimic-cxr-2.0.0-metadata.csv.gz   dicom_id, subject_id, study_id, ViewPosition, ...
        <root>/mimic-cxr-2.0.0-split.csv.gz      dicom_id, study_id, subject_id, split
        <root>/mimic-cxr-2.0.0-chexpert.csv.gz   subject_id, study_id, 14 observations
        <root>/mimic-cxr-2.0.0-negbio.csv.gz     (same columns; ``labeler="negbio"``)
        <root>/files/p10/p10000032/s50414267/<dicom_id>.jpg
        <reports_root>/files/p10/p10000032/s50414267.txt   (mimic-cxr-reports.zip)

    ``reports_root`` defaults to ``root``. The report text is the FINDINGS and IMPRESSION
    sections (``report_sections``) via :func:`maco_cxr.data.reports.report_text`; with
    ``require_report`` a missing or empty report is a bad row (raise or skip), otherwise the
    record's report is None. ``views`` keeps rows whose ViewPosition is listed (frontal PA/AP
    by default; None keeps all). Labels follow ``uncertain`` / ``blank`` as in
    :class:`~maco_cxr.data.datasets.chexpert.CheXpert`; a study absent from the label file
    has all-NaN labels (unknown).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: MimicSplit | None = None,
        *,
        on_error: OnError = "raise",
        reports_root: str | os.PathLike[str] | None = None,
        views: Sequence[str] | None = ("PA", "AP"),
        classes: Sequence[str] = CHEXPERT_OBSERVATIONS,
        labeler: Literal["chexpert", "negbio"] = "chexpert",
        uncertain: UncertainPolicy = "ignore",
        blank: BlankPolicy = "zeros",
        require_report: bool = True,
        report_sections: Sequence[str] = ("findings", "impression"),
    ) -> None:
        from maco_cxr.data.reports import report_text

        on_error = check_on_error(on_error)
        check_label_policy(uncertain, blank)
        if split is not None and split not in _SPLITS:
            raise ConfigError(f"split={split!r} is not one of {_SPLITS} or None")
        if labeler not in ("chexpert", "negbio"):
            raise ConfigError(f"labeler={labeler!r} is not one of ('chexpert', 'negbio')")
        self.root = Path(root)
        self.reports_root = Path(reports_root) if reports_root is not None else self.root
        chosen = check_classes(classes, CHEXPERT_OBSERVATIONS, "MIMIC-CXR CheXpert")
        reports = _ReportReader(report_text, tuple(report_sections), require_report)
        skips = SkipReport()
        views_kept = None if views is None else {v.upper() for v in views}

        metadata_path = _table(self.root, "metadata")
        metadata: dict[str, dict[str, str | None]] = {}
        for _, row in iter_csv(metadata_path, ["dicom_id", "ViewPosition"]):
            metadata[row["dicom_id"] or ""] = {
                key: row.get(key) for key in ("ViewPosition", "Rows", "Columns", "StudyDate")
            }

        labels_path = _table(self.root, labeler)
        labels: dict[tuple[str, str], np.ndarray | str] = {}
        for line, row in iter_csv(labels_path, ["subject_id", "study_id", *chosen]):
            where = f"{labels_path}, line {line}"
            parsed = None
            with row_guard(where, on_error, skips):
                parsed = chexpert_labels(row, chosen, uncertain, blank)
            key = (row.get("subject_id") or "", row.get("study_id") or "")
            labels[key] = parsed if parsed is not None else where

        split_path = _table(self.root, "split")
        records: list[Record] = []
        other_view = 0
        for line, row in iter_csv(split_path, ["dicom_id", "study_id", "subject_id", "split"]):
            if split is not None and row.get("split") != split:
                continue
            with row_guard(f"{split_path}, line {line}", on_error, skips):
                dicom_id = cell(row, "dicom_id")
                meta = metadata.get(dicom_id)
                if meta is None:
                    raise DataError(f"field 'dicom_id': {dicom_id!r} is not in {metadata_path}")
                view = (meta["ViewPosition"] or "").upper()
                if views_kept is not None and view not in views_kept:
                    other_view += 1
                    continue
                records.append(self._record(row, meta, chosen, labels, reports))
        logger.info(
            "%s: %d records, %d rows of other views left out (views=%s)", split_path, len(records), other_view, views
        )
        log_skips(logger, split_path, skips, len(records))
        super().__init__(records, chosen, skips=skips, on_error=on_error)

    def _record(
        self,
        row: dict[str, str | None],
        meta: dict[str, str | None],
        classes: tuple[str, ...],
        labels: dict[tuple[str, str], np.ndarray | str],
        reports: _ReportReader,
    ) -> Record:
        dicom_id = cell(row, "dicom_id")
        subject = _digits(row, "subject_id")
        study = _digits(row, "study_id")
        study_dir = Path("files", f"p{subject[:2]}", f"p{subject}", f"s{study}")
        image_path = self.root / study_dir / f"{dicom_id}.jpg"
        if not image_path.is_file():
            raise DataError(f"image file {image_path} does not exist")
        study_labels = labels.get((subject, study))
        if isinstance(study_labels, str):
            raise DataError(f"the study's label row ({study_labels}) is invalid")
        if study_labels is None:
            study_labels = np.full(len(classes), np.nan, dtype=np.float32)
        report = reports(self.reports_root / study_dir.with_suffix(".txt"))
        record_meta = {"dicom_id": dicom_id, "study_id": study, "subject_id": subject}
        record_meta.update({k: v for k, v in meta.items() if v is not None})
        return Record(
            image_path=image_path,
            report=report,
            labels=study_labels.copy(),
            patient_id=subject,
            split=row.get("split"),
            meta=record_meta,
        )


class _ReportReader:
    """Report text per study, read once (a study's images share one report file).

    A failure is cached as its message, so every image of the study reports it.
    """

    def __init__(self, report_text: Callable[..., str], sections: tuple[str, ...], require_report: bool) -> None:
        self._report_text = report_text
        self._sections = sections
        self._require = require_report
        self._cache: dict[Path, tuple[str | None, str | None]] = {}

    def __call__(self, path: Path) -> str | None:
        if path not in self._cache:
            self._cache[path] = self._read(path)
        text, problem = self._cache[path]
        if problem is not None:
            raise DataError(problem)
        return text

    def _read(self, path: Path) -> tuple[str | None, str | None]:
        if not path.is_file():
            if self._require:
                return None, (f"report file {path} does not exist (check reports_root, or pass require_report=False)")
            return None, None
        try:
            raw = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            return None, f"cannot read report file {path}: {err}"
        text = self._report_text(raw, sections=self._sections)
        if text:
            return text, None
        if self._require:
            return None, (
                f"report file {path} has no text in sections {self._sections} "
                "(pass require_report=False to keep such images)"
            )
        return None, None
