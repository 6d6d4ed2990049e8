"""COVID-19 rural opacity segmentation: image and mask folders paired by file stem."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from maco_cxr.data.datasets.base import (
    ChestXrayDataset,
    OnError,
    Record,
    SkipReport,
    check_on_error,
    log_skips,
    row_guard,
)
from maco_cxr.errors import DataError

__all__ = ["COVID_RURAL_CLASSES", "CovidRural"]

logger = logging.getLogger(__name__)

COVID_RURAL_CLASSES: tuple[str, ...] = ("Opacity",)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_MASK_SUFFIXES = (".png",)


def _by_stem(folder: Path, suffixes: tuple[str, ...], on_error: OnError, skips: SkipReport) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; check the dataset root and split")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        with row_guard(str(path), on_error, skips):
            if path.stem in found:
                raise DataError(
                    f"the file stem {path.stem!r} also names {found[path.stem]}; "
                    "images and masks are paired by stem, so stems must be unique"
                )
            found[path.stem] = path
    return found


class CovidRural(ChestXrayDataset):
    """COVID-19 rural chest X-rays with opacity masks, one record per image.

    Size: 221 annotated radiographs (lung fields and opacity regions) from COVID-19 positive
    patients of a rural US population. Images: TCIA COVID-19-AR collection (Desai S. et al.,
    "Chest imaging representing a COVID-19 positive rural U.S. population", Scientific Data
    7, 414, 2020), CC BY 4.0 under the TCIA data usage policy. Masks: Tang H., Sun N., Li Y.,
    "Segmentation model of the opacity regions in the chest X-rays of the Covid-19 patients
    in the US rural areas", medRxiv 2020.10.19.20215483; follow the terms of their release.

    Layout (``split`` optional: ``<root>/<split>/images`` ... when given)::

        <root>/images/<stem>.png | .jpg | .jpeg
        <root>/masks/<stem>.png        binary (any non-zero value is foreground)

    An image without a mask, a mask without an image and two files with one stem are bad
    entries (raise, or skip and report). Masks must have the image's size (checked on read).
    Labels are not provided (the mask is the target); ``classes`` names the mask's class.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | None = None,
        *,
        on_error: OnError = "raise",
        images_dir: str = "images",
        masks_dir: str = "masks",
    ) -> None:
        on_error = check_on_error(on_error)
        self.root = Path(root)
        folder = self.root / split if split else self.root
        skips = SkipReport()
        images = _by_stem(folder / images_dir, _IMAGE_SUFFIXES, on_error, skips)
        masks = _by_stem(folder / masks_dir, _MASK_SUFFIXES, on_error, skips)
        records: list[Record] = []
        for stem, image in images.items():
            with row_guard(str(image), on_error, skips):
                if stem not in masks:
                    raise DataError(f"no mask {folder / masks_dir / stem}.png for this image")
                records.append(Record(image_path=image, mask_paths=[masks[stem]], split=split))
        for stem in sorted(set(masks) - set(images)):
            with row_guard(str(masks[stem]), on_error, skips):
                raise DataError(
                    f"no image named {stem!r} with suffix {_IMAGE_SUFFIXES} in {folder / images_dir} for this mask"
                )
        log_skips(logger, folder, skips, len(records))
        super().__init__(records, COVID_RURAL_CLASSES, skips=skips, on_error=on_error)
