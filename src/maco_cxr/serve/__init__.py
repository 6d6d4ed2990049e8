"""``maco-cxr serve``: a local web viewer for zero-shot scores and phrase grounding.

Built on FastAPI + uvicorn rather than Gradio: no extra heavy dependency (Gradio pulls in
dozens of packages and fetches front-end assets and analytics from the network, which a
viewer of patient images must not do), a plain HTTP contract (``GET /api/health``,
``POST /api/analyze``) that scripts can call as well as the page, and one small page of our
own (``static/index.html``, inline JS and CSS, nothing loaded from elsewhere) that shows
exactly what the package computes.

The app calls the same functions as the Python API (:func:`maco_cxr.tasks.zeroshot.zero_shot`,
:func:`maco_cxr.tasks.grounding.ground`, :func:`maco_cxr.plots.overlay_heatmap`,
:func:`maco_cxr.data.io.read_image_bytes`) through a :class:`~maco_cxr.serve.backend.Backend`;
a new kind of model (a fine-tuned classifier) is one function returning a ``Backend``.
This package needs the ``serve`` extra (``pip install "maco-cxr[serve]"``); the CLI imports it
only when ``maco-cxr serve`` runs.
"""

from __future__ import annotations

from maco_cxr.serve.app import ServeLimits, create_app
from maco_cxr.serve.backend import (
    Backend,
    PredictFn,
    Prediction,
    classifier_backend,
    detector_backend,
    load_backend,
    maco_backend,
    resolve_device,
    segmenter_backend,
)

__all__ = [
    "Backend",
    "PredictFn",
    "Prediction",
    "ServeLimits",
    "classifier_backend",
    "create_app",
    "detector_backend",
    "load_backend",
    "maco_backend",
    "resolve_device",
    "segmenter_backend",
]
