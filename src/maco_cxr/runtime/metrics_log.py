"""Per-step training metrics of every loop: JSONL, optionally CSV, and TensorBoard if asked.

Files are appended to, one row per logged step, and flushed each row. On resume, rows of
steps after the checkpoint (written by the killed run, about to be redone) are dropped first,
so each step appears once. Pre-training writes ``metrics.jsonl`` + ``metrics.csv``
(:data:`FIELDS`), fine-tuning ``log.jsonl`` (its rows differ between training and
validation steps).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from maco_cxr._atomic import write_text
from maco_cxr.errors import ConfigError

FIELDS = ("step", "epoch", "lr", "rec", "con", "total", "inverse_temperature", "images_per_s", "max_mem_gb", "skipped")
JSONL_NAME = "metrics.jsonl"
CSV_NAME = "metrics.csv"


def _open_tensorboard(log_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ConfigError(
            "runtime.tensorboard=true needs the tensorboard package: "
            "pip install 'maco-cxr[tensorboard]' (or set runtime.tensorboard=false)"
        ) from err
    return SummaryWriter(log_dir=str(log_dir))


class MetricsLog:
    """Writer of metric rows (only rank 0 creates one); ``rows`` keeps what was written."""

    def __init__(
        self,
        output_dir: str | Path,
        *,
        tensorboard: bool = False,
        resume_step: int | None = None,
        jsonl_name: str = JSONL_NAME,
        csv_name: str | None = CSV_NAME,
        tag: str = "pretrain",
    ) -> None:
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.dir / jsonl_name
        self.csv = self.dir / csv_name if csv_name else None
        self.tag = tag
        if resume_step is None:
            for path in (self.jsonl, self.csv):
                if path is not None:
                    path.unlink(missing_ok=True)
        else:
            self._truncate_after(resume_step)
        self.rows: list[dict[str, Any]] = (
            [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]
            if self.jsonl.is_file()
            else []
        )
        self.tensorboard = _open_tensorboard(self.dir / "tensorboard") if tensorboard else None

    def _truncate_after(self, step: int) -> None:
        if self.jsonl.is_file():
            kept = [
                line
                for line in self.jsonl.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step
            ]
            _replace_text(self.jsonl, "".join(line + "\n" for line in kept))
        if self.csv is not None and self.csv.is_file():
            with self.csv.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
            rows = [row for row in rows if int(row["step"]) <= step]
            _replace_text(self.csv, _csv_text(rows, header=True))

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (keys outside :data:`FIELDS` go to the JSONL file only)."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self.rows.append(clean)
        with self.jsonl.open("a") as handle:
            handle.write(json.dumps(clean) + "\n")
        if self.csv is not None:
            new = not self.csv.is_file()
            with self.csv.open("a", newline="") as handle:
                handle.write(_csv_text([clean], header=new))
        if self.tensorboard is not None:
            for key, value in clean.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"{self.tag}/{key}", value, clean["step"])

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _csv_text(rows: list[dict[str, Any]], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in FIELDS})
    return buffer.getvalue()


def _replace_text(path: Path, text: str) -> None:
    write_text(path, text)
