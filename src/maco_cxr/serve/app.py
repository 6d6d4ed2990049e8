"""The FastAPI app: the page at ``/``, ``GET /api/health`` and ``POST /api/analyze``.

``POST /api/analyze`` takes ``multipart/form-data`` with ``file`` (PNG, JPEG or DICOM;
required), ``phrase`` (optional: ground it) and ``classes`` (optional, one per line or
comma-separated; left out: the backend's, CheXpert-5 for MaCo). A ``phrase`` or ``classes``
field that is sent but blank (empty, whitespace, only commas) is refused rather than read as
"left out": the caller asked for something, and silently scoring the defaults would show
results for a question nobody asked. It answers 200 with JSON::

    width, height          the decoded image's size (its original pixel grid)
    scores                 {class: probability}, in the order asked
    image_png              base64 grey PNG of the decoded pixels (what the model saw)
    phrase, query          the phrase and the model's reading of it (null without a phrase)
    heatmap_png            with a phrase: base64 RGB PNG of plots.overlay_heatmap at alpha 1,
                           i.e. the colour map, width x height; blend it over image_png with
                           opacity a to get overlay_heatmap(..., alpha=a)
    heatmap_range, peak    the raw map's [min, max] and its argmax {x, y}
    preprocessing          format, size, the grounding letterbox, the classifier geometry and,
                           for DICOM, modality, photometric and the LUT/window applied
    model, timings_ms

Errors are JSON ``{"error": message}`` (unknown paths and methods too): 400 when the upload
cannot be used (empty, not an image, corrupt or truncated, unsupported DICOM), the phrase or
class list is blank or unusable, or the Host header is not this server's; 413 when the file is
over ``--max-upload-mb`` or the image over ``--max-pixels``; 422 when the request is not a
well-formed multipart form with a ``file`` field; 503 (with ``Retry-After``) when
``--max-concurrent-uploads`` uploads are already in progress; 500 for a bug.

Uploads stay in memory and are never logged (:mod:`maco_cxr.serve.uploads`). Memory is what
bounds a server that holds uploads in memory, so at most ``max_concurrent_uploads`` requests
hold one (from the first body byte to the answer) and the rest are refused at once, before
their body is read; each body is counted as it streams in and refused as soon as it passes
the limit. Model calls hold one lock, so requests from several tabs are served one model call
at a time.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from io import BytesIO
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from maco_cxr.errors import ConfigError, MacoError
from maco_cxr.serve.backend import Backend, Prediction
from maco_cxr.serve.uploads import UploadError, UploadForm, body_limit, decode_upload, read_form

__all__ = ["ServeLimits", "create_app"]

logger = logging.getLogger(__name__)

_MAX_CLASS_CHARS = 120
_RETRY_AFTER_S = 2  # a busy viewer frees a slot within an analysis or two
_CLASS_SEPARATORS = re.compile(r"[,\r\n]")


@dataclass(frozen=True)
class ServeLimits:
    """What one request may hold (file bytes, decoded pixels, classes, phrase length) and how
    many uploads may be in memory at once."""

    max_upload_bytes: int = 50 * 2**20
    max_pixels: int = 25_000_000
    max_classes: int = 64
    max_phrase_chars: int = 300
    max_concurrent_uploads: int = 4

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_pixels", "max_classes", "max_phrase_chars", "max_concurrent_uploads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}", key=f"ServeLimits.{name}")


def create_app(
    backend: Backend, limits: ServeLimits | None = None, *, allowed_hosts: Sequence[str] | None = None
) -> FastAPI:
    """The viewer app for ``backend``.

    ``allowed_hosts``: host names accepted in the Host header, port aside (``None``: any; IPv6
    literals with or without brackets). The CLI passes the loopback names when it binds to
    loopback, so a web page elsewhere cannot reach the viewer through DNS rebinding.
    """
    limits = limits or ServeLimits()
    page = resources.files("maco_cxr.serve").joinpath("static/index.html").read_text("utf-8")
    security_headers = _security_headers(page)
    model_lock = threading.Lock()
    # threads, not asyncio: TestClient and uvicorn may run requests on different event loops
    upload_slots = threading.BoundedSemaphore(limits.max_concurrent_uploads)
    hosts = None if allowed_hosts is None else {_host_name(h) for h in allowed_hosts}

    app = FastAPI(title="maco-cxr viewer", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")

    @app.middleware("http")
    async def check_host_and_add_security_headers(request: Request, call_next: Any) -> Any:
        # Starlette's TrustedHostMiddleware cuts "[::1]:8000" at its first colon, so it cannot
        # accept an IPv6 literal; this check parses the bracketed form
        if hosts is not None and _host_name(request.headers.get("host", "")) not in hosts:
            response: Any = JSONResponse(
                {
                    "error": "invalid Host header: this viewer answers only to "
                    f"{sorted(hosts)} (a page on another site cannot use it)"
                },
                status_code=400,
            )
        else:
            response = await call_next(request)
        response.headers.update(security_headers)
        return response

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        """Model, device, tasks, classes and limits; 200 while the server is up."""
        return {
            "status": "ok",
            "model": {"name": backend.name, "kind": backend.kind, **backend.summary},
            "device": backend.device,
            "tasks": {
                "classification": backend.classification,
                "zero_shot": backend.classes_editable,
                "grounding": backend.grounding,
                "segmentation": backend.segmentation,
                "detection": backend.detection,
                "maps": backend.maps,
            },
            "classes": {
                "default": list(backend.default_classes),
                "editable": backend.classes_editable,
                "sets": {k: list(v) for k, v in backend.class_sets.items()},
            },
            "scores": backend.scores_meaning,
            "limits": {
                "max_upload_bytes": limits.max_upload_bytes,
                "max_pixels": limits.max_pixels,
                "max_classes": limits.max_classes,
                "max_phrase_chars": limits.max_phrase_chars,
                "max_concurrent_uploads": limits.max_concurrent_uploads,
            },
        }

    def analyze_form(form: UploadForm) -> dict[str, Any]:
        started = time.perf_counter()
        classes = _parse_classes(form.classes, limits.max_classes)
        phrase = form.phrase
        if phrase == "":
            raise UploadError(
                400,
                "the 'phrase' field is empty (or only whitespace): type a phrase to "
                "ground, or leave the field out for scores without a heatmap",
            )
        if phrase is not None and len(phrase) > limits.max_phrase_chars:
            raise UploadError(400, f"the phrase is longer than {limits.max_phrase_chars} characters")
        if phrase is not None and not backend.grounding:
            raise UploadError(400, f"model {backend.name!r} has no phrase grounding; leave 'phrase' out")
        image = decode_upload(form.data, form.suffix, max_pixels=limits.max_pixels)
        decoded = time.perf_counter()
        try:
            with model_lock:
                prediction = backend.predict(image.pixels, phrase, classes)
        except MacoError as exc:
            raise UploadError(400, str(exc)) from None
        predicted = time.perf_counter()
        out = _response(backend, image.pixels, image.format, image.dicom, phrase, prediction)
        out["timings_ms"] = {
            "decode": _ms(decoded - started),
            "predict": _ms(predicted - decoded),
            "encode": _ms(time.perf_counter() - predicted),
        }
        return out

    @app.post("/api/analyze", openapi_extra=_ANALYZE_OPENAPI)
    async def analyze(request: Request) -> JSONResponse:
        """Scores (and, with a phrase, its heatmap) of one uploaded image; see the module docstring."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > body_limit(limits.max_upload_bytes):
            raise UploadError(
                413,
                f"the request is larger than the upload limit of "
                f"{limits.max_upload_bytes / 2**20:g} MiB (maco-cxr serve --max-upload-mb)",
            )
        if not upload_slots.acquire(blocking=False):
            return JSONResponse(
                {
                    "error": f"the viewer is busy: {limits.max_concurrent_uploads} uploads are already in "
                    f"progress (maco-cxr serve --max-concurrent-uploads); send this one again in "
                    f"{_RETRY_AFTER_S} s"
                },
                status_code=503,
                headers={"Retry-After": str(_RETRY_AFTER_S)},
            )
        try:
            form = await read_form(
                request.headers.get("content-type"), request.stream(), max_file_bytes=limits.max_upload_bytes
            )
            return JSONResponse(await run_in_threadpool(analyze_form, form))
        except UploadError:
            raise
        except Exception:
            # the traceback names no file (uploads are "upload.<suffix>") and holds no pixels
            logger.exception("analysis failed")
            return JSONResponse(
                {"error": "internal error while analysing the image; the server log has the traceback"}, status_code=500
            )
        finally:
            upload_slots.release()

    return app


def _parse_classes(text: str | None, limit: int) -> list[str] | None:
    """``"A, B\nC,,a"`` -> ``["A", "B", "C"]``: one per line or comma-separated, order kept,
    repeats dropped; None when the field was left out. A blank list is an error, not the defaults."""
    if text is None:
        return None
    names: list[str] = []
    for raw in _CLASS_SEPARATORS.split(text):
        name = " ".join(raw.split())
        if name and name.lower() not in (n.lower() for n in names):
            names.append(name)
    if not names:
        raise UploadError(
            400,
            f"the 'classes' field holds no class name ({text[:40]!r}): give at least "
            "one, one per line or comma-separated, or leave the field out to score the "
            "model's default classes",
        )
    if len(names) > limit:
        raise UploadError(400, f"{len(names)} classes given; at most {limit} per request")
    too_long = [n for n in names if len(n) > _MAX_CLASS_CHARS]
    if too_long:
        raise UploadError(
            400,
            f"class name {too_long[0][:40]!r}... is longer than {_MAX_CLASS_CHARS} "
            "characters; put one class per line or separate them with commas",
        )
    return names


def _host_name(host: str) -> str:
    """The host of a Host header or bind address, port dropped, IPv6 literals bracketed:
    ``"[::1]:8000"`` and ``"::1"`` -> ``"[::1]"``, ``"LocalHost:80"`` -> ``"localhost"``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    if host.count(":") > 1:  # a bare IPv6 address (a bind address; no port can follow it)
        return f"[{host}]"
    return host.partition(":")[0]


def _response(
    backend: Backend,
    pixels: np.ndarray,
    image_format: str,
    dicom: dict[str, Any] | None,
    phrase: str | None,
    prediction: Prediction,
) -> dict[str, Any]:
    from maco_cxr.data.letterbox import Letterbox

    height, width = pixels.shape
    preprocessing: dict[str, Any] = {
        "format": image_format,
        "width": width,
        "height": height,
        "grey": (
            "uint8 grey after the DICOM steps below"
            if dicom is not None
            else "uint8 grey (colour to luminance, EXIF orientation applied)"
        ),
        "classifier_input": backend.classify_geometry,
        "letterbox": Letterbox.fit(height, width, backend.input_size).to_dict() if backend.grounding else None,
        "dicom": dicom,
    }
    out: dict[str, Any] = {
        "width": width,
        "height": height,
        "scores": prediction.scores,
        "phrase": phrase,
        "query": prediction.query,
        "model": backend.name,
        "image_png": _png_base64(pixels),
        "preprocessing": preprocessing,
    }
    if prediction.heatmap is not None:
        from maco_cxr.plots import overlay_heatmap

        heat = prediction.heatmap
        finite = heat[np.isfinite(heat)]
        row, col = np.unravel_index(int(np.nanargmax(heat)), heat.shape)
        out["heatmap_png"] = _png_base64(overlay_heatmap(pixels, heat, alpha=1.0))
        out["heatmap_range"] = [float(finite.min()), float(finite.max())]
        out["peak"] = {"x": int(col), "y": int(row)}
        out["map"] = prediction.map_name
    if prediction.boxes:
        out["boxes"] = list(prediction.boxes)
    return out


def _png_base64(array: np.ndarray) -> str:
    buffer = BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


def _security_headers(page: str) -> dict[str, str]:
    """No caching of patient data, and a page that can reach nothing but this server."""
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)
    digests = [base64.b64encode(hashlib.sha256(s.encode("utf-8")).digest()).decode() for s in scripts]
    script_src = " ".join(f"'sha256-{d}'" for d in digests) or "'none'"
    return {
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": (
            f"default-src 'none'; script-src {script_src}; "
            "style-src 'unsafe-inline'; img-src data:; connect-src 'self'; "
            "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
        ),
    }


_ANALYZE_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "PNG, JPEG or DICOM"},
                        "phrase": {"type": "string", "description": "phrase to ground (optional)"},
                        "classes": {
                            "type": "string",
                            "description": "class names, one per line or comma-separated (optional)",
                        },
                    },
                }
            }
        },
    },
    "responses": {
        "400": {"description": "unusable upload, blank or unusable phrase or classes"},
        "413": {"description": "file over the upload limit or image over the pixel limit"},
        "422": {"description": "not a multipart form with a 'file' field"},
        "503": {"description": "too many uploads in progress; retry after Retry-After seconds"},
    },
}
