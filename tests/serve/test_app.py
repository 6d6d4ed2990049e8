"""The HTTP contract of the viewer: every endpoint, every error, limits, privacy and concurrency."""

from __future__ import annotations

import base64
import hashlib
import io
import re
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pydicom
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from maco_cxr.data.io import read_image
from maco_cxr.data.letterbox import Letterbox, letterbox_image
from maco_cxr.plots import overlay_heatmap
from maco_cxr.serve import ServeLimits, create_app
from maco_cxr.tasks.grounding import ground, phrase_query
from maco_cxr.tasks.prompts import CLASS_SETS
from maco_cxr.tasks.zeroshot import zero_shot
from tests.serve.conftest import DICOM_MONO1, DICOM_MONO2, PNG_SQUARE, PNG_WIDE
from tests.tiny_finetuned import save_tiny_detector, save_tiny_segmenter

# truncated DICOMs make pydicom warn (naming "upload.dcm"); that is expected here
pytestmark = pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning")


def _post(client, path, name=None, **data):
    payload = path.read_bytes() if hasattr(path, "read_bytes") else path
    return client.post("/api/analyze", files={"file": (name or getattr(path, "name", "x"), payload)}, data=data)


def _png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def _app_client(backend, **limits) -> TestClient:
    return TestClient(create_app(backend, ServeLimits(**limits)))


# ----------------------------------------------------------------------------- GET endpoints


def test_health_reports_model_device_tasks_classes_and_limits(client):
    response = client.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["model"]["name"] == "tiny-maco" and body["model"]["kind"] == "maco"
    assert body["model"]["parameters"] > 0 and "ViT" in body["model"]["vision"]
    assert body["device"] == "cpu"
    assert body["tasks"] == {
        "classification": True,
        "zero_shot": True,
        "grounding": True,
        "segmentation": False,
        "detection": False,
        "maps": False,
    }
    assert body["classes"]["default"] == list(CLASS_SETS["chexpert"])
    assert body["classes"]["editable"] is True and body["classes"]["sets"]["nih"] == list(CLASS_SETS["nih"])
    assert body["scores"].startswith("zero-shot probability")
    assert body["limits"]["max_upload_bytes"] == 50 * 2**20
    assert body["limits"]["max_concurrent_uploads"] == 4


def test_page_is_one_self_contained_file_locked_down_by_its_headers(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    # nothing is loaded from elsewhere: no external URL but the SVG namespace name
    assert set(re.findall(r"https?://[^\s\"'`]+", page)) <= {"http://www.w3.org/2000/svg"}
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", page)
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "img-src data:" in csp
    (script,) = re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp  # the inline script may run, nothing else
    assert response.headers["cache-control"] == "no-store"
    for element in ("file-input", "phrase", "classes", "analyze", "overlay", "opacity", "scores", "prep"):
        assert f'id="{element}"' in page


def test_docs_ui_is_off_and_the_openapi_schema_describes_analyze(client):
    assert client.get("/docs").status_code == 404  # swagger UI would load assets from a CDN
    schema = client.get("/api/openapi.json").json()
    form = schema["paths"]["/api/analyze"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert form["schema"]["required"] == ["file"]
    assert set(form["schema"]["properties"]) == {"file", "phrase", "classes"}


def test_unknown_paths_and_methods_answer_json(client):
    assert client.get("/api/nothing").status_code == 404
    response = client.get("/api/analyze")
    assert response.status_code == 405 and "error" in response.json()


# ----------------------------------------------------------------------------- analyze: results


def test_png_scores_are_zero_shot_of_the_decoded_image(client, model):
    response = _post(client, PNG_WIDE)
    assert response.status_code == 200
    body = response.json()
    image = read_image(PNG_WIDE)
    assert (body["width"], body["height"]) == (image.shape[1], image.shape[0]) == (512, 409)
    classes = list(CLASS_SETS["chexpert"])
    assert list(body["scores"]) == classes
    expected = zero_shot(model, image, classes)[0].numpy()
    np.testing.assert_allclose([body["scores"][c] for c in classes], expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(_png(body["image_png"]), image)  # what the model saw, lossless
    assert "heatmap_png" not in body and body["phrase"] is None and body["query"] is None
    prep = body["preprocessing"]
    assert prep["format"] == "PNG" and prep["dicom"] is None
    assert prep["classifier_input"] == "shorter side to 224 (bilinear), centre crop 224 x 224"
    assert set(body["timings_ms"]) == {"decode", "predict", "encode"}


def test_dicom_heatmap_is_the_overlay_of_ground_in_the_original_geometry(client, model):
    phrase = "right pleural effusion"
    response = _post(client, DICOM_MONO2, phrase=phrase)
    assert response.status_code == 200
    body = response.json()
    image = read_image(DICOM_MONO2)
    heatmap = ground(model, image, phrase)
    colours = _png(body["heatmap_png"])
    assert colours.shape == (body["height"], body["width"], 3) == (1024, 1024, 3)
    np.testing.assert_array_equal(colours, overlay_heatmap(image, heatmap, alpha=1.0))
    assert body["phrase"] == phrase and body["query"] == phrase_query(phrase)
    row, col = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    assert body["peak"] == {"x": int(col), "y": int(row)}
    assert body["heatmap_range"] == pytest.approx([float(heatmap.min()), float(heatmap.max())])


def test_blending_the_heatmap_png_client_side_is_overlay_heatmap_at_that_opacity(client, model):
    """What the page's opacity slider shows is the library's overlay at that alpha (to rounding)."""
    body = _post(client, PNG_WIDE, phrase="left lung opacity").json()
    grey = _png(body["image_png"]).astype(np.float64)[..., None]
    colours = _png(body["heatmap_png"]).astype(np.float64)
    image = read_image(PNG_WIDE)
    heatmap = ground(model, image, "left lung opacity")
    for alpha in (0.0, 0.3, 0.45, 1.0):
        blended = (1 - alpha) * grey + alpha * colours
        expected = overlay_heatmap(image, heatmap, alpha=alpha).astype(np.float64)
        assert np.abs(blended - expected).max() <= 0.5 * alpha + 0.5 + 1e-9


def test_monochrome1_is_inverted_and_reported(client):
    mono1 = _post(client, DICOM_MONO1).json()
    mono2 = _post(client, DICOM_MONO2).json()
    d1, d2 = mono1["preprocessing"]["dicom"], mono2["preprocessing"]["dicom"]
    assert (d1["photometric"], d1["inverted"]) == ("MONOCHROME1", True)
    assert (d2["photometric"], d2["inverted"]) == ("MONOCHROME2", False)
    assert d1["modality"] == "CR" and d1["bits_stored"] == 8 and d1["window"] is None
    assert d1["voi"].startswith("none") and d1["modality_lut"].startswith("none")
    pixels1, pixels2 = _png(mono1["image_png"]), _png(mono2["image_png"])
    np.testing.assert_array_equal(pixels1, read_image(DICOM_MONO1))
    np.testing.assert_array_equal(pixels1, 255 - pixels2)  # same stored pixels, header says MONOCHROME1


def test_dicom_window_is_reported_as_read_image_applies_it(client):
    dataset = pydicom.dcmread(DICOM_MONO2)
    dataset.WindowCenter, dataset.WindowWidth = [100, 50], [120, 60]
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    body = _post(client, buffer.getvalue(), name="windowed").json()  # no suffix: found by DICM magic
    dicom = body["preprocessing"]["dicom"]
    assert dicom["window"] == {"center": 100.0, "width": 120.0}
    assert dicom["voi"] == "window center 100, width 120"


def test_dicom_tags_beyond_size_modality_photometric_are_not_echoed(client):
    header = pydicom.dcmread(DICOM_MONO2, stop_before_pixels=True)
    text = _post(client, DICOM_MONO2, phrase="edema").text
    for keyword in (
        "PatientName",
        "PatientID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "StudyDate",
        "PatientBirthDate",
        "InstitutionName",
        "ReferringPhysicianName",
    ):
        value = str(header.get(keyword, "") or "")
        if len(value) > 3:
            assert value not in text, keyword
    dicom = _post(client, DICOM_MONO2).json()["preprocessing"]["dicom"]
    assert set(dicom) == {"modality", "photometric", "bits_stored", "modality_lut", "voi", "window", "inverted"}


def test_letterbox_reported_is_the_one_grounding_applies(client):
    body = _post(client, PNG_WIDE).json()
    image = read_image(PNG_WIDE)
    box = body["preprocessing"]["letterbox"]
    assert box == letterbox_image(image, 224)[1].to_dict() == Letterbox.fit(409, 512, 224).to_dict()
    assert (box["new_width"], box["new_height"], box["pad_left"], box["pad_top"]) == (224, 179, 0, 22)


def test_classes_are_comma_separated_trimmed_and_deduplicated(client, model):
    body = _post(client, PNG_SQUARE, classes=" Pneumothorax ,Edema,, edema ,Lung   Opacity").json()
    assert list(body["scores"]) == ["Pneumothorax", "Edema", "Lung Opacity"]
    expected = zero_shot(model, read_image(PNG_SQUARE), ["Pneumothorax", "Edema", "Lung Opacity"])[0]
    np.testing.assert_allclose(list(body["scores"].values()), expected.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("Pneumothorax\nPleural Effusion\nEdema", ["Pneumothorax", "Pleural Effusion", "Edema"]),
        ("Pneumothorax\r\n\r\nPleural   Effusion,\n Edema\n", ["Pneumothorax", "Pleural Effusion", "Edema"]),
        ("Pneumothorax, Pleural Effusion\nedema\nEdema", ["Pneumothorax", "Pleural Effusion", "edema"]),
    ],
)
def test_classes_one_per_line_are_separate_classes(client, model, text, names):
    """The page's textarea: each line is a class (commas still separate), never merged into one."""
    body = _post(client, PNG_SQUARE, classes=text).json()
    assert list(body["scores"]) == names
    expected = zero_shot(model, read_image(PNG_SQUARE), names)[0]
    np.testing.assert_allclose(list(body["scores"].values()), expected.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"classes": ""}, "holds no class name"),
        ({"classes": ",,"}, "holds no class name"),
        ({"classes": " , \n ,"}, "holds no class name"),
        ({"phrase": "   "}, "'phrase' field is empty"),
        ({"phrase": ""}, "'phrase' field is empty"),
    ],
)
def test_blank_classes_or_phrase_are_refused_not_read_as_the_defaults(client, data, words):
    response = _post(client, PNG_SQUARE, **data)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert words in error and "leave the field out" in error


def test_left_out_classes_and_phrase_are_the_defaults(client):
    body = _post(client, PNG_SQUARE).json()
    assert list(body["scores"]) == list(CLASS_SETS["chexpert"]) and body["phrase"] is None


# ----------------------------------------------------------------------------- analyze: errors


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


_FORM = {"content-type": "multipart/form-data; boundary=b0undary"}


@pytest.mark.parametrize(
    ("kwargs", "status", "words"),
    [
        ({"data": {"phrase": "edema"}}, 422, "multipart/form-data"),  # urlencoded
        ({"content": _multipart([("phrase", None, b"edema")]), "headers": _FORM}, 422, "no 'file' field"),
        ({"content": b'{"file": 1}', "headers": {"content-type": "application/json"}}, 422, "multipart/form-data"),
        ({"content": b"", "headers": {"content-type": "multipart/form-data"}}, 422, "multipart/form-data"),
        (
            {"content": _multipart([("file", "a.png", b"x"), ("colour", None, b"red")]), "headers": _FORM},
            422,
            "unknown form fields ['colour']",
        ),
        ({"content": _multipart([("file", "a.png", b"x")])[:-30], "headers": _FORM}, 422, "ends early"),
        (
            {"content": _multipart([("file", "a.png", b"x"), ("file", "b.png", b"y")]), "headers": _FORM},
            422,
            "more than once",
        ),
        ({"files": {"file": ("a.png", b"")}}, 400, "empty"),
        ({"files": {"file": ("a.png", b"not an image at all")}}, 400, "cannot decode the image"),
        ({"files": {"file": ("a.png", PNG_SQUARE.read_bytes()[:3000])}}, 400, "upload.png"),
        ({"files": {"file": ("a.dcm", DICOM_MONO2.read_bytes()[:5000])}}, 400, "truncated or corrupt"),
        ({"files": {"file": ("a.png", PNG_SQUARE.read_bytes())}, "data": {"phrase": "a"}}, 400, "phrase 'a'"),
        (
            {"files": {"file": ("a.png", PNG_SQUARE.read_bytes())}, "data": {"phrase": "x" * 301}},
            400,
            "longer than 300",
        ),
        (
            {
                "files": {"file": ("a.png", PNG_SQUARE.read_bytes())},
                "data": {"classes": ",".join(f"c{i}" for i in range(65))},
            },
            400,
            "at most 64",
        ),
        (
            {"files": {"file": ("a.png", PNG_SQUARE.read_bytes())}, "data": {"classes": "y" * 121}},
            400,
            "longer than 120",
        ),
        (
            {
                "content": _multipart([("file", "a.png", PNG_SQUARE.read_bytes()), ("phrase", None, b"\xff\xfe")]),
                "headers": _FORM,
            },
            400,
            "not UTF-8",
        ),
    ],
)
def test_bad_requests_get_a_json_message(client, kwargs, status, words):
    response = client.post("/api/analyze", **kwargs)
    assert response.status_code == status, response.text
    detail = response.json()["error"]
    assert isinstance(detail, str) and words in detail


def test_colour_dicom_is_refused_with_the_readers_message(client):
    dataset = pydicom.dcmread(DICOM_MONO2)
    dataset.PhotometricInterpretation = "RGB"
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    response = _post(client, buffer.getvalue(), name="colour.dcm")
    assert response.status_code == 400 and "colour DICOM" in response.json()["error"]


def test_uploads_over_the_size_limit_get_413(backend):
    client = _app_client(backend, max_upload_bytes=10_000)
    response = _post(client, DICOM_MONO2)  # 127 kB, refused from its Content-Length
    assert response.status_code == 413 and "upload limit of" in response.json()["error"]
    body = _multipart([("file", "a.dcm", DICOM_MONO2.read_bytes())])
    chunks = (body[i : i + 4096] for i in range(0, len(body), 4096))  # chunked: no Content-Length
    response = client.post("/api/analyze", content=chunks, headers=_FORM)
    assert response.status_code == 413 and "upload limit" in response.json()["error"]
    assert _post(client, PNG_SQUARE.read_bytes()[:9000], name="small.png").status_code == 400  # under it


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming ``width x height``, then a tiny broken IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def test_pixel_limit_is_checked_from_the_header_before_decoding(backend, monkeypatch):
    import maco_cxr.serve.uploads as uploads

    def never(*args, **kwargs):
        raise AssertionError("decoded an image over the pixel limit")

    monkeypatch.setattr(uploads, "read_image_bytes", never)
    client = _app_client(backend, max_pixels=100_000)
    for payload, name in (
        (_png_header_only(6000, 6000), "bomb.png"),
        (PNG_SQUARE.read_bytes(), "a.png"),
        (DICOM_MONO2.read_bytes(), "a.dcm"),
    ):
        response = _post(client, payload, name=name)
        assert response.status_code == 413, name
        assert "pixels" in response.json()["error"] and "--max-pixels" in response.json()["error"]


def test_a_decompression_bomb_past_pillows_own_limit_is_413(client):
    response = _post(client, _png_header_only(100_000, 100_000), name="bomb.png")
    assert response.status_code == 413


def test_an_image_under_the_pixel_limit_passes(backend):
    assert _post(_app_client(backend, max_pixels=512 * 512), PNG_SQUARE).status_code == 200


def test_serve_limits_validate_their_fields():
    from maco_cxr.errors import ConfigError

    with pytest.raises(ConfigError, match="ServeLimits.max_pixels"):
        ServeLimits(max_pixels=0)


# ----------------------------------------------------------------------------- privacy


def test_uploads_are_never_written_to_disk(client, monkeypatch):
    import tempfile

    import starlette.formparsers

    def refuse(*args, **kwargs):
        raise AssertionError("an upload was about to be written to a temporary file")

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", refuse)
    response = _post(client, DICOM_MONO1, phrase="left lower lobe")
    assert response.status_code == 200


def test_file_names_and_contents_never_reach_the_log(client, caplog):
    secret = "Doe-Jane_19700101_MRN4711"
    with caplog.at_level("DEBUG"):
        assert _post(client, DICOM_MONO2, name=f"{secret}.dcm", phrase="edema").status_code == 200
        assert _post(client, b"junk", name=f"{secret}.png").status_code == 400
        assert _post(client, DICOM_MONO2.read_bytes()[:5000], name=f"{secret}.dcm").status_code == 400
    logged = caplog.text + " ".join(str(r.args) for r in caplog.records)
    assert secret not in logged
    header = pydicom.dcmread(DICOM_MONO2, stop_before_pixels=True)
    assert str(header.PatientID) not in logged


def test_error_messages_name_the_upload_by_its_suffix_only(client):
    detail = _post(client, b"junk", name="Doe-Jane.png").json()["error"]
    assert "Doe-Jane" not in detail and detail.startswith("upload.png:")


def test_host_header_check_guards_against_dns_rebinding(backend):
    app = create_app(backend, allowed_hosts=["127.0.0.1", "localhost", "::1"])
    for base in ("http://evil.example", "http://evil.example:8000", "http://[::2]:8000", "http://127.0.0.2"):
        response = TestClient(app, base_url=base).get("/api/health")
        assert response.status_code == 400, base
        assert "invalid Host header" in response.json()["error"]
        assert response.headers["cache-control"] == "no-store"
    for base in (
        "http://127.0.0.1:8000",
        "http://localhost",
        "http://LocalHost:8000",
        "http://[::1]:8000",
        "http://[::1]",
    ):
        assert TestClient(app, base_url=base).get("/api/health").status_code == 200, base


# ----------------------------------------------------------------------------- concurrency


def test_requests_from_several_tabs_are_served_correctly_one_model_call_at_a_time(backend):
    active, most, lock = [0], [0], threading.Lock()

    def predict(image, phrase, classes):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.05)  # widen the window a race would need
        try:
            return backend.predict(image, phrase, classes)
        finally:
            with lock:
                active[0] -= 1

    client = TestClient(create_app(replace(backend, predict=predict), ServeLimits(max_concurrent_uploads=8)))
    jobs = [(PNG_SQUARE, "edema"), (PNG_WIDE, "left lung"), (DICOM_MONO1, None), (DICOM_MONO2, "pneumothorax")] * 2

    def run(job):
        path, phrase = job
        data = {"phrase": phrase} if phrase else {}
        return _post(client, path, **data).json()

    sequential = [run(job) for job in jobs[:4]]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(run, jobs))
    assert most[0] == 1
    for i, body in enumerate(parallel):
        reference = sequential[i % 4]
        assert body["scores"] == pytest.approx(reference["scores"], abs=1e-6)
        assert body.get("heatmap_png") == reference.get("heatmap_png")
        assert (body["width"], body["height"]) == (reference["width"], reference["height"])


def test_uploads_beyond_the_cap_get_503_with_retry_after_and_their_slots_come_back(backend, monkeypatch):
    """Two uploads held in decoding fill a cap of 2: a third is refused at once with 503 and
    Retry-After (the health endpoint is not capped); once they finish, uploads pass again."""
    import maco_cxr.serve.app as app_module

    entered, release = threading.Semaphore(0), threading.Event()
    decode = app_module.decode_upload

    def held_decode(*args, **kwargs):
        entered.release()
        assert release.wait(timeout=30), "the test never released the held uploads"
        return decode(*args, **kwargs)

    monkeypatch.setattr(app_module, "decode_upload", held_decode)
    client = _app_client(backend, max_concurrent_uploads=2)
    with ThreadPoolExecutor(max_workers=2) as pool:
        try:
            held = [pool.submit(_post, client, PNG_SQUARE) for _ in range(2)]
            assert all(entered.acquire(timeout=30) for _ in held)  # both hold a slot now
            busy = _post(client, PNG_SQUARE)
            health = client.get("/api/health")
        finally:
            release.set()
        answers = [future.result(timeout=60) for future in held]
    assert busy.status_code == 503 and busy.headers["retry-after"] == "2"
    assert busy.json()["error"] == (
        "the viewer is busy: 2 uploads are already in progress (maco-cxr serve "
        "--max-concurrent-uploads); send this one again in 2 s"
    )
    assert health.status_code == 200 and health.json()["limits"]["max_concurrent_uploads"] == 2
    assert [answer.status_code for answer in answers] == [200, 200]
    assert answers[0].json()["scores"] == answers[1].json()["scores"]
    assert [_post(client, PNG_SQUARE).status_code for _ in range(3)] == [200] * 3  # slots came back


def test_refused_and_failed_uploads_give_their_slot_back(backend):
    def broken(image, phrase, classes):
        raise RuntimeError("boom")

    client = _app_client(backend, max_concurrent_uploads=1, max_upload_bytes=200_000)
    statuses = [
        _post(client, b"junk", name="a.png").status_code,  # 400
        _post(client, DICOM_MONO2.read_bytes() * 2, name="a.dcm").status_code,  # 413
        client.post("/api/analyze", content=_multipart([("phrase", None, b"x")]), headers=_FORM).status_code,
    ]  # 422
    failing = TestClient(create_app(replace(backend, predict=broken), ServeLimits(max_concurrent_uploads=1)))
    statuses += [_post(failing, PNG_SQUARE).status_code, _post(failing, PNG_SQUARE).status_code]  # 500
    assert statuses == [400, 413, 422, 500, 500]
    assert _post(client, PNG_SQUARE).status_code == 200


def test_a_slow_upload_holds_its_slot_while_its_body_arrives(backend, monkeypatch):
    """A real uvicorn server on 127.0.0.1 with a cap of 1: while one client is still sending its
    body, another upload gets 503; the slow one then completes (200) and frees the slot."""
    import socket

    import httpx
    import uvicorn

    import maco_cxr.serve.app as app_module

    reading = threading.Event()
    read_form = app_module.read_form

    async def watched_read_form(*args, **kwargs):
        reading.set()  # the slot is taken before the body is read
        return await read_form(*args, **kwargs)

    monkeypatch.setattr(app_module, "read_form", watched_read_form)
    app = create_app(backend, ServeLimits(max_concurrent_uploads=1))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/api/analyze"
        body = _multipart([("file", "a.png", PNG_SQUARE.read_bytes())])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
            slow.sendall(
                f"POST /api/analyze HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: {_FORM['content-type']}\r\nContent-Length: {len(body)}\r\n"
                f"\r\n".encode()
                + body[: len(body) // 2]
            )
            assert reading.wait(timeout=30), "the slow upload never reached the app"
            busy = httpx.post(url, files={"file": ("b.png", PNG_SQUARE.read_bytes())}, timeout=30)
            slow.sendall(body[len(body) // 2 :])
            status_line = slow.makefile("rb").readline()
        after = httpx.post(url, files={"file": ("c.png", PNG_SQUARE.read_bytes())}, timeout=30)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert busy.status_code == 503 and busy.headers["retry-after"] == "2" and "busy" in busy.json()["error"]
    assert status_line.startswith(b"HTTP/1.1 200")
    assert after.status_code == 200 and list(after.json()["scores"]) == list(CLASS_SETS["chexpert"])


def test_the_byte_limit_is_checked_as_the_body_streams_in():
    """A 1 MB file against a 100 kB limit is refused after ~100 kB of the body was read, not
    after buffering all of it."""
    import asyncio

    from maco_cxr.serve.uploads import UploadError, read_form

    body = _multipart([("file", "a.png", bytes(1_000_000))])
    pulled = []

    async def chunks():
        for start in range(0, len(body), 4096):
            pulled.append(start)
            yield body[start : start + 4096]

    with pytest.raises(UploadError, match="larger than the upload limit") as refused:
        asyncio.run(read_form(_FORM["content-type"], chunks(), max_file_bytes=100_000))
    assert refused.value.status == 413
    assert len(pulled) == 100_000 // 4096 + 1 and len(body) // 4096 > 240


def test_an_unexpected_failure_is_a_500_json_without_the_upload(backend, caplog):
    def broken(image, phrase, classes):
        raise RuntimeError("boom")

    client = TestClient(create_app(replace(backend, predict=broken)))
    with caplog.at_level("ERROR"):
        response = _post(client, PNG_SQUARE, name="Doe-Jane.png")
    assert response.status_code == 500 and "internal error" in response.json()["error"]
    assert "Doe-Jane" not in caplog.text


# ----------------------------------------------------------------------------- a fine-tuned model


class _FakeClassifier:
    """What the viewer needs of a fine-tuned classifier: classes and predict(image) -> [K]."""

    task = "classification"
    classes = ("Pneumothorax", "No Finding")
    preprocessing = {"input_size": 224}

    def __init__(self):
        self.calls = []

    def predict(self, image):
        import torch

        self.calls.append(image.shape)
        brightness = float(image.mean()) / 255.0
        return torch.tensor([[brightness, 1.0 - brightness]])


def test_a_fine_tuned_classifier_plugs_in_as_one_backend():
    from maco_cxr.serve import classifier_backend

    model = _FakeClassifier()
    client = TestClient(create_app(classifier_backend(model, name="siim-finetuned")))
    health = client.get("/api/health").json()
    assert health["model"]["kind"] == "finetuned-classifier"
    assert health["tasks"] == {
        "classification": True,
        "zero_shot": False,
        "grounding": False,
        "segmentation": False,
        "detection": False,
        "maps": False,
    }
    assert health["scores"].startswith("the fine-tuned classifier's probability")
    assert health["classes"] == {"default": ["Pneumothorax", "No Finding"], "editable": False, "sets": {}}
    body = _post(client, DICOM_MONO2).json()
    brightness = read_image(DICOM_MONO2).mean() / 255.0
    assert body["scores"] == pytest.approx({"Pneumothorax": brightness, "No Finding": 1 - brightness})
    assert model.calls == [(1024, 1024)]  # the decoded image, in its own geometry
    assert "heatmap_png" not in body and body["preprocessing"]["letterbox"] is None
    assert list(_post(client, PNG_SQUARE, classes="No Finding").json()["scores"]) == ["No Finding"]
    for data, words in (({"phrase": "edema"}, "no phrase grounding"), ({"classes": "Edema"}, "only its own")):
        response = _post(client, PNG_SQUARE, **data)
        assert response.status_code == 400 and words in response.json()["error"]


def test_a_fine_tuned_classifier_directory_is_served_with_its_own_predictions(tmp_path):
    """A run's best/ folder loads through load_finetuned; the scores are its predict()."""
    from maco_cxr.models.classifier import ClassifierModel
    from maco_cxr.models.config import VisionConfig
    from maco_cxr.models.vit import MaskedViT
    from maco_cxr.serve import load_backend
    from maco_cxr.tasks.finetune.classification import FinetunedClassifier, classifier_preprocessing
    from maco_cxr.tasks.finetune.model_io import save_finetuned

    torch.manual_seed(0)
    net = ClassifierModel(MaskedViT(VisionConfig(img_size=32, embed_dim=32, depth=1, num_heads=2)), 2)
    torch.nn.init.normal_(net.head.weight, std=0.5)
    model = FinetunedClassifier(net, ("Edema", "Pneumothorax"), classifier_preprocessing(32)).eval()
    save_finetuned(model, tmp_path / "best")
    client = TestClient(create_app(load_backend(tmp_path / "best", device="cpu")))
    assert client.get("/api/health").json()["model"]["kind"] == "finetuned-classifier"
    body = _post(client, PNG_SQUARE).json()
    expected = model.predict(read_image(PNG_SQUARE))[0].tolist()
    assert list(body["scores"]) == ["Edema", "Pneumothorax"]
    assert list(body["scores"].values()) == pytest.approx(expected, abs=1e-6)


def test_a_fine_tuned_segmenter_directory_shows_its_probability_map(tmp_path):
    """The map is the segmenter's foreground probability in the image's own grid; the mask of
    its predict() is that map at the saved threshold; the class score is the map's maximum."""
    from maco_cxr.serve import load_backend
    from maco_cxr.tasks.finetune import load_finetuned

    save_tiny_segmenter(tmp_path / "best")
    backend = load_backend(tmp_path / "best", device="cpu")
    client = TestClient(create_app(backend))
    health = client.get("/api/health").json()
    assert health["model"]["kind"] == "finetuned-segmenter"
    assert health["tasks"] == {
        "classification": False,
        "zero_shot": False,
        "grounding": False,
        "segmentation": True,
        "detection": False,
        "maps": True,
    }
    assert health["classes"]["default"] == ["lung"] and health["model"]["target_labels"] == ["lung"]
    assert "highest foreground probability" in health["scores"] and "'lung'" in health["scores"]
    body = _post(client, PNG_WIDE).json()
    pixels = read_image(PNG_WIDE)
    model = load_finetuned(tmp_path / "best")
    prediction = backend.predict(pixels, None, None)
    assert prediction.heatmap.shape == pixels.shape
    np.testing.assert_array_equal(prediction.heatmap >= 0.5, model.predict(pixels)[0] > 0)
    assert body["scores"] == pytest.approx({"lung": float(prediction.heatmap.max())})
    assert body["heatmap_range"][1] == pytest.approx(float(prediction.heatmap.max()))
    shown = _png(body["heatmap_png"])
    assert shown.shape == (*pixels.shape, 3)
    np.testing.assert_array_equal(shown, overlay_heatmap(pixels, prediction.heatmap, alpha=1.0))
    assert "lung probability" in body["map"] and body["query"] is None and "boxes" not in body
    response = _post(client, PNG_SQUARE, phrase="lung")
    assert response.status_code == 400 and "no phrase grounding" in response.json()["error"]


def test_a_segmenter_of_several_labels_reports_one_score_for_their_union(tmp_path):
    """Its one output map is the union of the target labels: one score named for the union,
    not the same number repeated under each label."""
    from maco_cxr.serve import load_backend

    save_tiny_segmenter(tmp_path / "best", classes=("left lung", "right lung"))
    backend = load_backend(tmp_path / "best", device="cpu")
    client = TestClient(create_app(backend))
    health = client.get("/api/health").json()
    assert health["classes"]["default"] == ["left lung + right lung"]
    assert health["model"]["target_labels"] == ["left lung", "right lung"]
    assert "the union of ['left lung', 'right lung']" in health["scores"]
    assert health["tasks"]["classification"] is False and health["tasks"]["segmentation"] is True
    body = _post(client, PNG_WIDE).json()
    heatmap = backend.predict(read_image(PNG_WIDE), None, None).heatmap
    assert body["scores"] == pytest.approx({"left lung + right lung": float(heatmap.max())})
    assert body["map"].startswith("left lung + right lung probability")
    response = _post(client, PNG_WIDE, classes="left lung")
    assert response.status_code == 400 and "'left lung + right lung'" in response.json()["error"]


def test_a_fine_tuned_detector_directory_lists_and_draws_its_boxes(tmp_path):
    from maco_cxr.serve import load_backend
    from maco_cxr.tasks.finetune import load_finetuned

    save_tiny_detector(tmp_path / "best")
    client = TestClient(create_app(load_backend(tmp_path / "best", device="cpu")))
    health = client.get("/api/health").json()
    assert health["model"]["kind"] == "finetuned-detector"
    assert health["tasks"] == {
        "classification": False,
        "zero_shot": False,
        "grounding": False,
        "segmentation": False,
        "detection": True,
        "maps": True,
    }
    body = _post(client, PNG_WIDE).json()
    expected = load_finetuned(tmp_path / "best").predict(read_image(PNG_WIDE))
    assert len(body["boxes"]) == len(expected["boxes"]) > 0
    np.testing.assert_allclose([b["box"] for b in body["boxes"]], expected["boxes"], atol=1e-3)
    assert {b["label"] for b in body["boxes"]} == {"nodule"}
    assert body["scores"] == pytest.approx({"nodule": float(expected["scores"].max())})
    assert body["heatmap_range"] == pytest.approx([0.0, float(expected["scores"].max())])
    x0, y0, x1, y1 = (int(round(v)) for v in expected["boxes"][int(np.argmax(expected["scores"]))])
    assert x0 <= body["peak"]["x"] < x1 and y0 <= body["peak"]["y"] < y1
    assert body["map"].startswith(f"{len(expected['boxes'])} boxes")
