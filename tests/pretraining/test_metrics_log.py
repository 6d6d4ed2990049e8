"""Metric rows in JSONL and CSV; a resumed run drops the rows it is about to redo."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from maco_cxr.runtime.metrics_log import FIELDS, MetricsLog


def _steps(folder: Path) -> tuple[list[int], list[int]]:
    jsonl = [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    with (folder / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return jsonl, [int(row["step"]) for row in rows]


def test_rows_are_written_to_both_files(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    log.write({"step": 1, "epoch": 0.5, "lr": 0.1, "rec": 1.0, "con": 2.0, "total": 1.1, "extra": "x"})
    log.write({"step": 2, "lr": 0.2, "total": float("nan")})
    log.close()
    first, second = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert first["extra"] == "x" and second["total"] is None
    with (tmp_path / "metrics.csv").open() as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == FIELDS
        rows = list(reader)
    assert rows[0]["rec"] == "1.0" and rows[1]["rec"] == "" and rows[1]["lr"] == "0.2"


def test_resume_drops_rows_after_the_checkpoint(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    for step in range(1, 6):
        log.write({"step": step, "total": float(step)})
    MetricsLog(tmp_path, resume_step=3).write({"step": 4, "total": 40.0})
    assert _steps(tmp_path) == ([1, 2, 3, 4], [1, 2, 3, 4])
    MetricsLog(tmp_path)  # a fresh run starts new files
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "metrics.csv").exists()
