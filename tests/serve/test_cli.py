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
    assert (args.host, args.port, args.device, args.max_upload_mb, args.max_pixels, args.max_concurrent_uploads) == (
        "127.0.0.1",
        8000,
        "auto",
        50.0,
        25_000_000,
        4,
    )


_RANGE = "must be from 1 to 65535 (a TCP port), not "
_NUMBER = "must be a whole number from 1 to 65535, not "


@pytest.mark.parametrize(
    ("port", "message"),
    [
        ("99999", _RANGE + "99999"),
        ("65536", _RANGE + "65536"),
        ("0", _RANGE + "0"),
        ("-1", _RANGE + "-1"),
        ("http", _NUMBER + "'http'"),
        ("80.5", _NUMBER + "'80.5'"),
    ],
)
def test_a_port_outside_1_to_65535_is_a_usage_error_not_a_traceback(
    tiny_model_dir, fake_uvicorn, capsys, port, message
):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--model", str(tiny_model_dir), "--port", port])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith(f"maco-cxr serve: error: argument --port: {message}\n"), err
    assert "Traceback" not in err and not fake_uvicorn


@pytest.mark.parametrize("port", ["1", "8000", "65535"])
def test_ports_1_to_65535_are_accepted(tiny_model_dir, port):
    args = build_parser().parse_args(["serve", "--model", str(tiny_model_dir), "--port", port])
    assert args.port == int(port)


def test_the_cli_does_not_import_fastapi_until_serve_runs():
    code = (
        "import sys; from maco_cxr.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'maco_cxr.serve') if m in sys.modules))"
    )
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


def _host_status(app, base_url: str) -> int:
    from fastapi.testclient import TestClient

    return TestClient(app, base_url=base_url).get("/api/health").status_code


def test_default_binds_loopback_with_host_checks_and_no_warning(tiny_model_dir, fake_uvicorn, caplog):
    with caplog.at_level("WARNING"):
        assert (
            main(
                [
                    "serve",
                    "--model",
                    str(tiny_model_dir),
                    "--port",
                    "8123",
                    "--device",
                    "cpu",
                    "--max-upload-mb",
                    "2",
                    "--max-pixels",
                    "1000000",
                ]
            )
            == 0
        )
    app, kwargs = fake_uvicorn[0]
    assert (kwargs["host"], kwargs["port"], kwargs["access_log"]) == ("127.0.0.1", 8123, True)
    assert _host_status(app, "http://evil.example:8123") == 400  # DNS rebinding
    for base in ("http://127.0.0.1:8123", "http://localhost:8123", "http://[::1]:8123"):
        assert _host_status(app, base) == 200, base
    assert "reachable from the network" not in caplog.text
    from fastapi.testclient import TestClient

    limits = TestClient(app, base_url="http://127.0.0.1:8123").get("/api/health").json()["limits"]
    assert (limits["max_upload_bytes"], limits["max_pixels"], limits["max_concurrent_uploads"]) == (
        2 * 2**20,
        1_000_000,
        4,
    )


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_binding_ipv6_loopback_keeps_the_host_check(tiny_model_dir, fake_uvicorn, host):
    assert (
        main(
            [
                "serve",
                "--model",
                str(tiny_model_dir),
                "--host",
                host,
                "--device",
                "cpu",
                "--max-concurrent-uploads",
                "2",
            ]
        )
        == 0
    )
    app, kwargs = fake_uvicorn[0]
    assert kwargs["host"] == host
    assert _host_status(app, "http://[::1]:8000") == 200 and _host_status(app, "http://localhost:8000") == 200
    assert _host_status(app, "http://evil.example:8000") == 400
    assert _host_status(app, "http://[::2]:8000") == 400


def test_another_host_warns_that_patient_data_is_reachable(tiny_model_dir, fake_uvicorn, caplog):
    with caplog.at_level("WARNING"):
        assert main(["serve", "--model", str(tiny_model_dir), "--host", "0.0.0.0", "--device", "cpu"]) == 0
    assert "reachable from the network" in caplog.text and "0.0.0.0" in caplog.text
    app, kwargs = fake_uvicorn[0]
    assert kwargs["host"] == "0.0.0.0" and _host_status(app, "http://192.168.1.20:8000") == 200


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("127.0.1.1", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("192.168.1.20", False),
        ("::", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host, expected):
    assert serve_cli.is_loopback(host) is expected


@pytest.mark.parametrize(
    ("flag", "field"), [("--max-upload-mb", "max_upload_bytes"), ("--max-concurrent-uploads", "max_concurrent_uploads")]
)
def test_bad_limits_exit_with_code_2(tiny_model_dir, fake_uvicorn, capsys, flag, field):
    assert main(["serve", "--model", str(tiny_model_dir), flag, "0"]) == 2
    assert f"ServeLimits.{field}" in capsys.readouterr().err and not fake_uvicorn
