"""Files on disk -> uint8 images, report text, labels, boxes and masks.

``read_image`` is the one reader for PNG/JPEG/DICOM; ``Letterbox`` records the resize so boxes
and heatmaps map both ways; ``build_dataset`` opens any supported public layout.
"""

from __future__ import annotations

from typing import Any

from maco_cxr.data.io import is_dicom, read_image, read_mask
from maco_cxr.data.letterbox import Letterbox, letterbox_image

__all__ = ["Letterbox", "build_dataset", "is_dicom", "letterbox_image", "read_image", "read_mask"]


def build_dataset(kind: str, root: Any, **kwargs: Any) -> Any:
    """Open dataset ``kind`` at ``root``; see :data:`maco_cxr.data.datasets.DATASETS`."""
    from maco_cxr.data.datasets import build_dataset as _build

    return _build(kind, root, **kwargs)
