"""Named checkpoints through the download cache, against a real HTTP server on loopback: a clean
download, one broken off and resumed with a range request, corrupted bytes (refused, nothing left),
a 404, offline use, and load(NAME) giving the embeddings of the file itself."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from maco_cxr.cache import PART_SUFFIX, cache_dir
from maco_cxr.cli import main
from maco_cxr.errors import CheckpointError
from maco_cxr.hub import NAMED_CHECKPOINTS, checkpoint_file, load, load_official, named_model_dir
from maco_cxr.inference import encode_images

NAME = "official-maco-tiny"


class _Server:
    """Serves one payload at /maco.pth with range requests; ``cut_after`` bytes ends the first
    response early (the connection breaks); ``requests`` records each request's Range header."""

    def __init__(self, payload: bytes) -> None:
        self.payload, self.cut_after, self.requests = payload, None, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                server.requests.append(self.headers.get("Range"))
                if self.path != "/maco.pth":
                    self.send_error(404, "Not Found")
                    return
                start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
                body = server.payload[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                self.end_headers()
                if server.cut_after is not None:
                    body, server.cut_after = body[: server.cut_after], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/maco.pth"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def fixture_bytes(official_fixture_dir: Path) -> bytes:
    return (official_fixture_dir / "maco.pth").read_bytes()


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("MACO_CXR_CACHE", str(root))
    for name in ("MACO_CXR_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return root


@pytest.fixture()
def server(fixture_bytes: bytes) -> Iterator[_Server]:
    running = _Server(fixture_bytes)
    yield running
    running.close()


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_the_cache_folder_follows_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("MACO_CXR_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "maco-cxr"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "maco-cxr"
    monkeypatch.setenv("MACO_CXR_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_every_named_checkpoint_states_its_source_licence_and_check() -> None:
    assert set(NAMED_CHECKPOINTS) == {"maco-base", "mae-vit-base", NAME}
    assert NAMED_CHECKPOINTS["maco-base"].url == "https://drive.google.com/file/d/1B87JuLJnjh_CoQpjT7RWGTp6alfXV8_0"
    assert NAMED_CHECKPOINTS["mae-vit-base"].url == "https://drive.google.com/file/d/1LZwbPUKmQum5fYDWbJ7iVXdrYFNtff3X"
    for entry in NAMED_CHECKPOINTS.values():
        assert entry.source and entry.licence and entry.verified_by
    # no digest is published for the official files: they are checked by shape, never by an invented digest
    assert (
        NAMED_CHECKPOINTS["maco-base"].sha256 is None
        and "no digest published" in NAMED_CHECKPOINTS["maco-base"].verified_by
    )


def test_a_clean_download_is_verified_converted_once_and_loads_as_the_file(
    cache, server, official_fixture_dir, fixture_bytes
) -> None:
    path = checkpoint_file(NAME, url=server.url, progress=False)
    assert path == cache / NAME / "maco.pth" and path.read_bytes() == fixture_bytes
    assert server.requests == [None]
    model = load(NAME)
    assert _files(cache) == sorted(
        [
            f"{NAME}/maco.pth",
            f"{NAME}/model/.maco-cxr.json",
            f"{NAME}/model/config.json",
            f"{NAME}/model/model.safetensors",
            f"{NAME}/model/tokenizer.json",
        ]
    )
    reference, _ = load_official(official_fixture_dir / "maco.pth")
    pixels = np.random.default_rng(0).integers(0, 256, (2, 224, 224), dtype=np.uint8)
    torch.testing.assert_close(encode_images(model, list(pixels)), encode_images(reference, list(pixels)))
    assert named_model_dir(NAME) == cache / NAME / "model" and len(server.requests) == 1  # nothing fetched again


def test_a_broken_download_resumes_with_a_range_request(cache, server, fixture_bytes) -> None:
    server.cut_after = 1000
    with pytest.raises(CheckpointError, match="run the same command again to resume"):
        checkpoint_file(NAME, url=server.url, progress=False)
    part = cache / NAME / ("maco.pth" + PART_SUFFIX)
    assert part.stat().st_size == 1000 and not (cache / NAME / "maco.pth").exists()
    path = checkpoint_file(NAME, url=server.url, progress=False)
    assert server.requests == [None, "bytes=1000-"]
    assert path.read_bytes() == fixture_bytes and not part.exists()


def test_corrupted_bytes_are_refused_and_nothing_stays_in_the_cache(cache, server, fixture_bytes) -> None:
    damaged = bytearray(fixture_bytes)
    damaged[len(damaged) // 2] ^= 0xFF
    server.payload = bytes(damaged)
    with pytest.raises(CheckpointError, match=r"SHA-256 mismatch.*put it at .*official-maco-tiny/maco.pth"):
        checkpoint_file(NAME, url=server.url, progress=False)
    assert _files(cache) == []


def test_a_missing_file_names_the_status_and_what_to_do(cache, server) -> None:
    with pytest.raises(CheckpointError, match=r"HTTP 404 Not Found; to provide it by hand"):
        checkpoint_file(NAME, url=server.url.replace("maco.pth", "gone.pth"), progress=False)
    assert _files(cache) == []


def test_offline_a_name_missing_from_the_cache_is_a_quick_clear_error(cache, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"not in the cache and downloads are off .*download https://drive"):
        load("maco-base")
    assert time.perf_counter() - start < 5
    with pytest.raises(CheckpointError, match="did you mean maco-base"):
        checkpoint_file("maco-bsae")


def test_offline_a_cached_file_is_used_and_a_file_put_by_hand_is_checked(cache, monkeypatch, fixture_bytes) -> None:
    monkeypatch.setenv("MACO_CXR_OFFLINE", "1")
    target = cache / NAME / "maco.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(fixture_bytes[:-10])
    with pytest.raises(CheckpointError, match=r"SHA-256 mismatch.*remove .*maco.pth and download it again"):
        checkpoint_file(NAME)
    target.write_bytes(fixture_bytes)
    assert load(NAME).config.vision.embed_dim == 64


def test_the_mae_initialisation_is_not_a_model(cache) -> None:
    with pytest.raises(CheckpointError, match="not a MaCo model: pre-train from it with runtime.init_mae=mae-vit-base"):
        load("mae-vit-base")


def test_download_command_lists_and_fetches(cache, server, capsys) -> None:
    assert main(["download", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "maco-base:" in listed and "CC BY-NC 4.0" in listed and f"cache: {cache}" in listed
    assert main(["download", NAME, "--url", server.url, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"model: {cache / NAME / 'model'}" in printed and "verified" in printed


def test_commands_take_a_named_checkpoint_from_the_cache(
    cache, monkeypatch, fixture_bytes, cxr_real_dir, tmp_path, capsys
) -> None:
    import json

    monkeypatch.setenv("MACO_CXR_OFFLINE", "1")
    (cache / NAME).mkdir(parents=True)
    (cache / NAME / "maco.pth").write_bytes(fixture_bytes)
    image = sorted((cxr_real_dir / "images").glob("*.png"))[0]
    out = tmp_path / "preds"
    assert main(["predict", str(image), "--model", NAME, "--out", str(out), "--classes", "Edema", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["path"] == str(cache / NAME / "model")
    config = json.loads((cache / NAME / "model" / "config.json").read_text())
    assert (
        config["checkpoint"]["name"] == NAME and config["checkpoint"]["file_sha256"] == NAMED_CHECKPOINTS[NAME].sha256
    )
    with pytest.raises(SystemExit):
        main(["predict", str(image), "--model", "maco-bsae", "--out", str(tmp_path / "x")])
    assert "nor a named checkpoint: maco-base, mae-vit-base, official-maco-tiny" in capsys.readouterr().err
