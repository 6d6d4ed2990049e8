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
    return client.post("/api/analyze", files={"file": (name or getattr(path, "name", "x"), payload)},
                       data=data)


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
    assert body["tasks"] == {"classification": True, "zero_shot": True, "grounding": True, "maps": False}
    assert body["classes"]["default"] == list(CLASS_SETS["chexpert"])
    assert body["classes"]["editable"] is True and body["classes"]["sets"]["nih"] == list(CLASS_SETS["nih"])
    assert body["limits"]["max_upload_bytes"] == 50 * 2**20


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
    for keyword in ("PatientName", "PatientID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                    "StudyDate", "PatientBirthDate", "InstitutionName", "ReferringPhysicianName"):
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
    empty = _post(client, PNG_SQUARE, classes=" , ").json()
    assert list(empty["scores"]) == list(CLASS_SETS["chexpert"])


# ----------------------------------------------------------------------------- analyze: errors


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


_FORM = {"content-type": "multipart/form-data; boundary=b0undary"}


@pytest.mark.parametrize(("kwargs", "status", "words"), [
    ({"data": {"phrase": "edema"}}, 422, "multipart/form-data"),  # urlencoded
    ({"content": _multipart([("phrase", None, b"edema")]), "headers": _FORM}, 422, "no 'file' field"),
    ({"content": b'{"file": 1}', "headers": {"content-type": "application/json"}}, 422, "multipart/form-data"),
    ({"content": b"", "headers": {"content-type": "multipart/form-data"}}, 422, "multipart/form-data"),
    ({"content": _multipart([("file", "a.png", b"x"), ("colour", None, b"red")]), "headers": _FORM},
     422, "unknown form fields ['colour']"),
    ({"content": _multipart([("file", "a.png", b"x")])[:-30], "headers": _FORM}, 422, "ends early"),
    ({"content": _multipart([("file", "a.png", b"x"), ("file", "b.png", b"y")]), "headers": _FORM}, 422,
     "more than once"),
    ({"files": {"file": ("a.png", b"")}}, 400, "empty"),
    ({"files": {"file": ("a.png", b"not an image at all")}}, 400, "cannot decode the image"),
    ({"files": {"file": ("a.png", PNG_SQUARE.read_bytes()[:3000])}}, 400, "upload.png"),
    ({"files": {"file": ("a.dcm", DICOM_MONO2.read_bytes()[:5000])}}, 400, "truncated or corrupt"),
    ({"files": {"file": ("a.png", PNG_SQUARE.read_bytes())}, "data": {"phrase": "a"}}, 400, "phrase 'a'"),
    ({"files": {"file": ("a.png", PNG_SQUARE.read_bytes())}, "data": {"phrase": "x" * 301}}, 400, "longer than 300"),
    ({"files": {"file": ("a.png", PNG_SQUARE.read_bytes())},
      "data": {"classes": ",".join(f"c{i}" for i in range(65))}}, 400, "at most 64"),
    ({"files": {"file": ("a.png", PNG_SQUARE.read_bytes())}, "data": {"classes": "y" * 121}}, 400,
     "longer than 120"),
    ({"content": _multipart([("file", "a.png", PNG_SQUARE.read_bytes()), ("phrase", None, b"\xff\xfe")]),
      "headers": _FORM}, 400, "not UTF-8"),
])
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
    chunks = (body[i:i + 4096] for i in range(0, len(body), 4096))  # chunked: no Content-Length
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
    for payload, name in ((_png_header_only(6000, 6000), "bomb.png"), (PNG_SQUARE.read_bytes(), "a.png"),
                          (DICOM_MONO2.read_bytes(), "a.dcm")):
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
    app = create_app(backend, allowed_hosts=["127.0.0.1", "localhost"])
    assert TestClient(app, base_url="http://evil.example").get("/api/health").status_code == 400
    assert TestClient(app, base_url="http://127.0.0.1:8000").get("/api/health").status_code == 200


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

    client = TestClient(create_app(replace(backend, predict=predict)))
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
    assert health["tasks"] == {"classification": True, "zero_shot": False, "grounding": False,
                               "maps": False}
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
    assert health["model"]["kind"] == "finetuned-segmenter" and health["tasks"]["maps"] is True
    assert health["tasks"]["grounding"] is False and health["classes"]["default"] == ["lung"]
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


def test_a_fine_tuned_detector_directory_lists_and_draws_its_boxes(tmp_path):
    from maco_cxr.serve import load_backend
    from maco_cxr.tasks.finetune import load_finetuned

    save_tiny_detector(tmp_path / "best")
    client = TestClient(create_app(load_backend(tmp_path / "best", device="cpu")))
    assert client.get("/api/health").json()["model"]["kind"] == "finetuned-detector"
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
