"""Fixtures of the web viewer tests: a tiny saved MaCo model, its backend and a test client."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "cxr-real"
DICOM_MONO2 = ASSETS / "dicom" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
DICOM_MONO1 = ASSETS / "dicom" / "Fake_MONOHR1.dcm"
PNG_SQUARE = ASSETS / "images" / "nih_00000001_000.png"
PNG_WIDE = ASSETS / "images" / "covid_ARDSSevere.png"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from maco_cxr.hub import create_model, save_pretrained
    from maco_cxr.models.config import preset

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model(preset("tiny"))
    directory = tmp_path_factory.mktemp("serve-model") / "tiny-maco"
    save_pretrained(model, directory)
    return directory


@pytest.fixture(scope="session")
def backend(tiny_model_dir):
    from maco_cxr.serve import load_backend

    return load_backend(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def model(tiny_model_dir):
    from maco_cxr.hub import load

    return load(tiny_model_dir)


@pytest.fixture
def client(backend):
    from fastapi.testclient import TestClient

    from maco_cxr.serve import create_app

    with TestClient(create_app(backend)) as test_client:
        yield test_client
