"""`maco-cxr serve`: arguments, lazy imports, the install hint and the network warning."""

from __future__ import annotations

import subprocess
import sys

import pytest

from maco_cxr.cli import COMMANDS, build_parser, main
from maco_cxr.cli import serve as serve_cli


def test_serve_is_a_command_with_safe_defaults(tiny_model_dir):
    assert "serve" in COMMANDS
    args = build_parser().parse_args(["serve", "--model", str(tiny_model_dir)])
    assert (args.host, args.port, args.device, args.max_upload_mb, args.max_pixels) == (
        "127.0.0.1", 8000, "auto", 50.0, 25_000_000)


def test_the_cli_does_not_import_fastapi_until_serve_runs():
    code = ("import sys; from maco_cxr.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'maco_cxr.serve') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_missing_fastapi_gets_the_install_hint(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(SystemExit, match=r'pip install "maco-cxr\[serve\]"'):
        main(["serve", "--model", str(tiny_model_dir)])


@pytest.fixture
def fake_uvicorn(monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    return calls


def _middleware(app) -> list[str]:
    return [m.cls.__name__ for m in app.user_middleware]


def test_default_binds_loopback_with_host_checks_and_no_warning(tiny_model_dir, fake_uvicorn, caplog):
    with caplog.at_level("WARNING"):
        assert main(["serve", "--model", str(tiny_model_dir), "--port", "8123", "--device", "cpu",
                     "--max-upload-mb", "2", "--max-pixels", "1000000"]) == 0
    app, kwargs = fake_uvicorn[0]
    assert (kwargs["host"], kwargs["port"], kwargs["access_log"]) == ("127.0.0.1", 8123, True)
    assert "TrustedHostMiddleware" in _middleware(app)
    assert "reachable from the network" not in caplog.text
    from fastapi.testclient import TestClient

    limits = TestClient(app, base_url="http://127.0.0.1:8123").get("/api/health").json()["limits"]
    assert (limits["max_upload_bytes"], limits["max_pixels"]) == (2 * 2**20, 1_000_000)


def test_another_host_warns_that_patient_data_is_reachable(tiny_model_dir, fake_uvicorn, caplog):
    with caplog.at_level("WARNING"):
        assert main(["serve", "--model", str(tiny_model_dir), "--host", "0.0.0.0", "--device", "cpu"]) == 0
    assert "reachable from the network" in caplog.text and "0.0.0.0" in caplog.text
    app, kwargs = fake_uvicorn[0]
    assert kwargs["host"] == "0.0.0.0" and "TrustedHostMiddleware" not in _middleware(app)


@pytest.mark.parametrize(("host", "expected"), [
    ("127.0.0.1", True), ("localhost", True), ("127.0.1.1", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("192.168.1.20", False), ("::", False), ("example.org", False),
])
def test_is_loopback(host, expected):
    assert serve_cli.is_loopback(host) is expected


def test_bad_limits_exit_with_code_2(tiny_model_dir, fake_uvicorn, capsys):
    assert main(["serve", "--model", str(tiny_model_dir), "--max-upload-mb", "0"]) == 2
    assert "max_upload_bytes" in capsys.readouterr().err and not fake_uvicorn
