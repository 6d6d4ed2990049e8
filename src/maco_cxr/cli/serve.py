"""`maco-cxr serve`: the local web viewer (zero-shot scores and phrase grounding in a browser)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
from importlib.util import find_spec
from typing import Any

from maco_cxr.cli._paths import model_path

logger = logging.getLogger(__name__)

_INSTALL_HINT = 'the web viewer needs FastAPI and uvicorn: pip install "maco-cxr[serve]"'
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="local web viewer: drop an X-ray, see zero-shot scores and a phrase's heatmap",
        description="Serve a web page (and a JSON API: GET /api/health, POST /api/analyze) where you drop a "
        "PNG, JPEG or DICOM chest X-ray, type a phrase to see its grounding heatmap over the image, and edit a "
        "class list to see zero-shot scores. Uploads are processed in memory and never written or logged. "
        "Binds to 127.0.0.1 (this computer only) unless --host is given.",
    )
    parser.add_argument(
        "--model",
        required=True,
        type=model_path,
        metavar="M",
        help="model directory (config.json + model.safetensors), official maco.pth, or a named checkpoint "
        "(maco-base: see maco-cxr download)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; anything else makes the viewer, and the "
        "patient images sent to it, reachable from the network)",
    )
    parser.add_argument("--port", type=port_number, default=8000, help="TCP port, 1-65535 (default 8000)")
    parser.add_argument("--device", default="auto", help="torch device: auto (cuda if available), cpu, cuda:0, ...")
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=50.0,
        metavar="MB",
        help="largest accepted file, in MiB (default 50); larger uploads get HTTP 413",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=25_000_000,
        metavar="N",
        help="largest accepted image, in pixels (default 25,000,000, e.g. 5000 x 5000); "
        "checked from the header before decoding; larger images get HTTP 413",
    )
    parser.add_argument(
        "--max-concurrent-uploads",
        type=int,
        default=4,
        metavar="N",
        help="uploads held in memory at once (default 4: at most N x --max-upload-mb of "
        "uploads); more get HTTP 503 with Retry-After",
    )
    parser.set_defaults(func=run)


def port_number(text: str) -> int:
    """argparse type of ``--port``: a whole number 1-65535 (the socket layer raises a bare
    OverflowError for anything larger)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 65535, not {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 1 to 65535 (a TCP port), not {port}")
    return port


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build_app(args: argparse.Namespace) -> Any:
    """The app for the parsed arguments (loads the model); a missing FastAPI gets the install hint."""
    _require_serve_extra()
    from maco_cxr.serve import ServeLimits, create_app, load_backend

    limits = ServeLimits(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
        max_concurrent_uploads=args.max_concurrent_uploads,
    )
    backend = load_backend(args.model, device=args.device)
    loopback = is_loopback(args.host)
    if not loopback:
        logger.warning(
            "binding to %s: the viewer, and every patient image uploaded to it, is reachable from "
            "the network (no authentication, no TLS); use the default 127.0.0.1 unless you mean "
            "it",
            args.host,
        )
    # Host header check against DNS rebinding: on loopback, only loopback names reach the viewer
    hosts = [*_LOOPBACK_NAMES, args.host] if loopback else None
    return create_app(backend, limits, allowed_hosts=hosts)


def _require_serve_extra() -> None:
    """Exit with the install hint unless FastAPI, uvicorn and python-multipart are importable."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"maco-cxr serve: {_INSTALL_HINT} ({exc})") from exc
    if find_spec("python_multipart") is None and find_spec("multipart") is None:
        raise SystemExit(f"maco-cxr serve: {_INSTALL_HINT} (python-multipart is missing)")


def run(args: argparse.Namespace) -> int:
    app = build_app(args)
    import uvicorn

    # uvicorn's access log writes only the request line and status (no bodies, no file names)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=True, server_header=False)
    return 0
