"""Shared test fixtures. Tests run offline and on CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ASSETS = Path(__file__).parent / "assets"


@pytest.fixture(scope="session")
def assets() -> Path:
    return ASSETS


@pytest.fixture(scope="session")
def official_fixture_dir() -> Path:
    return ASSETS / "official-maco-tiny"


@pytest.fixture(scope="session")
def cxr_real_dir() -> Path:
    return ASSETS / "cxr-real"
