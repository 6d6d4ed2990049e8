"""The families' fixture files as ``FAMILY:PATH`` specs, for the tests that run peers through the tasks."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "families"


@pytest.fixture(scope="session")
def chexzero_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CheXzero checkpoint (shipped gzipped), unpacked once."""
    pytest.importorskip("open_clip")
    path = tmp_path_factory.mktemp("chexzero") / "chexzero_tiny.pt"
    path.write_bytes(gzip.decompress((ASSETS / "chexzero" / "chexzero_tiny.pt.gz").read_bytes()))
    return path


@pytest.fixture(scope="session")
def mrm_spec() -> str:
    pytest.importorskip("timm")
    return f"mrm:{ASSETS / 'mrm' / 'MRM.pth'}"


@pytest.fixture(scope="session")
def biovil_spec() -> tuple[str, Path]:
    """(spec, tokenizer folder) of the tiny BioViL release."""
    pytest.importorskip("transformers")
    return f"biovil:{ASSETS / 'biovil' / 'biovil'}", ASSETS / "biovil" / "tokenizer"
