"""Tables a fine-tuning run writes (atomically, like every output of the package)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from maco_cxr._atomic import atomic_file

__all__ = ["write_csv"]


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """``header`` then ``rows`` as CSV, published in one rename."""
    with atomic_file(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return Path(path)
