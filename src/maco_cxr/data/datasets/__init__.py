"""Dataset adapters: one class per public chest X-ray layout, all on the same contract.

Every adapter builds a list of :class:`Record` at construction (no pixels read) and reads
pixels in ``__getitem__`` (see :mod:`maco_cxr.data.datasets.base`). :func:`build_dataset`
creates one by its registry name, which is what the CLI's ``--dataset`` takes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from maco_cxr.config import coerce_arguments
from maco_cxr.data.datasets.base import ChestXrayDataset, Record, Sample, SkipReport
from maco_cxr.data.datasets.chexlocalize import CheXlocalize
from maco_cxr.data.datasets.chexpert import CheXpert
from maco_cxr.data.datasets.covid_rural import CovidRural
from maco_cxr.data.datasets.manifest import CxrReal, GenericManifest
from maco_cxr.data.datasets.mimic import MimicCxrJpg
from maco_cxr.data.datasets.mscxr import MsCxr
from maco_cxr.data.datasets.nih import NihChestXray14
from maco_cxr.data.datasets.rsna import RsnaPneumonia
from maco_cxr.data.datasets.siim import SiimAcr
from maco_cxr.data.datasets.vindr import VinDrCxr
from maco_cxr.errors import ConfigError

__all__ = [
    "DATASETS",
    "CheXlocalize",
    "CheXpert",
    "ChestXrayDataset",
    "CovidRural",
    "CxrReal",
    "GenericManifest",
    "MimicCxrJpg",
    "MsCxr",
    "NihChestXray14",
    "Record",
    "RsnaPneumonia",
    "Sample",
    "SiimAcr",
    "SkipReport",
    "VinDrCxr",
    "build_dataset",
]

DATASETS: dict[str, type[ChestXrayDataset]] = {
    "manifest": GenericManifest,
    "cxr-real": CxrReal,
    "mimic-cxr": MimicCxrJpg,
    "chexpert": CheXpert,
    "nih": NihChestXray14,
    "rsna": RsnaPneumonia,
    "siim": SiimAcr,
    "ms-cxr": MsCxr,
    "covid-rural": CovidRural,
    "vindr-cxr": VinDrCxr,
    "chexlocalize": CheXlocalize,
}


def build_dataset(kind: str, root: str | os.PathLike[str], **kwargs: Any) -> ChestXrayDataset:
    """Create the adapter registered as ``kind`` on ``root``; ``kwargs`` go to its constructor,
    read by the config grammar (:func:`maco_cxr.config.coerce_arguments`) whether they come from
    ``-o``, ``--dataset-arg`` or ``data.options``."""
    if kind not in DATASETS:
        raise ConfigError(f"unknown dataset kind {kind!r}; valid kinds: {sorted(DATASETS)}")
    factory: Callable[..., ChestXrayDataset] = DATASETS[kind]
    options = coerce_arguments(factory, kwargs, given=("root",), source=f"{kind} dataset option")
    return factory(root, **options)
