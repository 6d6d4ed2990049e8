"""ONNX / TorchScript export: the graphs compute what the inference path computes (max abs <= 1e-4),
the uint8 graphs from the file's own pixels at any size; the model card's code runs."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from maco_cxr import read_image
from maco_cxr._atomic import MARKER_NAME
from maco_cxr.cli import main
from maco_cxr.data.tokenizer import ReportTokenizer
from maco_cxr.export import ExportError, export, model_card, preprocessing_contract
from maco_cxr.hub import create_model, load, save_pretrained
from maco_cxr.inference import encode_images, encode_texts, patch_embeddings, similarity
from maco_cxr.models.config import preset

ATOL = 1e-4
TEXTS = [
    "no acute cardiopulmonary process.",
    "small right pleural effusion. " * 40,
    "x",
    "heart size is normal. the lungs are clear. no pneumothorax.",
    "left lower lobe opacity",
]
GRAPH_FILES = [
    f"{name}.{ext}" for name in ("image_encoder", "image_encoder_uint8", "text_encoder") for ext in ("onnx", "pt")
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model(preset("tiny"))
    out = tmp_path_factory.mktemp("export") / "tiny"
    return model, out, export(model, out, formats=("onnx", "torchscript"))


@pytest.fixture(scope="module")
def official(official_fixture_dir, tmp_path_factory):
    """The official fixture checkpoint exported through the CLI, head counts from the registry."""
    out = tmp_path_factory.mktemp("export") / "official"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(
            [
                "export",
                "--model",
                str(official_fixture_dir / "maco.pth"),
                "--format",
                "onnx",
                "--format",
                "torchscript",
                "--out",
                str(out),
            ]
        )
    assert code == 0
    return load(official_fixture_dir / "maco.pth"), out, printed.getvalue()


@pytest.fixture(params=["tiny", "official"])
def exported(request):
    model, out, _ = request.getfixturevalue(request.param)
    return model, out


def _onnx(path, **inputs):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in inputs.items()})


def _torchscript(path, *inputs):
    with torch.no_grad(), pytest.warns(FutureWarning):  # torch.jit is deprecated, but still works
        out = torch.jit.load(str(path))(*inputs)
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _max_abs(got: np.ndarray, want: torch.Tensor) -> float:
    assert got.shape == tuple(want.shape)
    return float(np.abs(got - want.numpy()).max())


def _image_inputs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, 3, 224, 224, generator=generator),
        torch.randint(0, 256, (n, 1, 224, 224), generator=generator, dtype=torch.uint8),
    )


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 5])
def test_onnx_image_graphs_equal_the_inference_path(exported, n):
    model, out = exported
    normalised, pixels = _image_inputs(n, seed=n)
    for graph, x, eager_input in (
        ("image_encoder", normalised, normalised),
        ("image_encoder_uint8", pixels, pixels[:, 0]),
    ):
        embedding, patches = _onnx(out / f"{graph}.onnx", pixels=x)
        assert _max_abs(embedding, encode_images(model, eager_input)) <= ATOL
        assert _max_abs(patches, patch_embeddings(model, eager_input).reshape(n, 196, -1)) <= ATOL


def _pictures(cxr_real_dir) -> list[np.ndarray]:
    """Real radiographs of several sizes (one a DICOM), and random pixels, the worst case for
    resampling differences: enlarged by one pixel, halved with a rounding tie, enlarged."""
    images = sorted((cxr_real_dir / "images").glob("*.png"))[:3]
    files = [*images, sorted((cxr_real_dir / "dicom").glob("*.dcm"))[0]]
    rng = np.random.default_rng(7)
    noise = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((223, 301), (449, 448), (150, 120))]
    return [read_image(f) for f in files] + noise


@pytest.mark.slow
def test_uint8_graphs_resize_like_the_inference_path(exported, cxr_real_dir):
    """Given a file's pixels at their own size, image_encoder_uint8 (ONNX and TorchScript) gives
    what encode_images / patch_embeddings give for the same pixels, as closely as the float graph
    (measured <= 1.7e-6 / 3.4e-6; ONNX Resize(antialias=1) instead was 1.1e-4 off at 223 x 301)."""
    model, out = exported
    pictures = _pictures(cxr_real_dir)
    assert len({p.shape for p in pictures}) == len(pictures) and (224, 224) not in {p.shape for p in pictures}
    for picture in pictures:
        want = encode_images(model, [picture]), patch_embeddings(model, [picture]).reshape(1, 196, -1)
        pixels = torch.from_numpy(picture)[None, None]
        embedding, patches = _onnx(out / "image_encoder_uint8.onnx", pixels=pixels)
        assert _max_abs(embedding, want[0]) <= 1e-5 and _max_abs(patches, want[1]) <= 1e-5, picture.shape
        if (out / "image_encoder_uint8.pt").exists():
            embedding, patches = _torchscript(out / "image_encoder_uint8.pt", pixels)
            assert _max_abs(embedding, want[0]) <= 1e-6 and _max_abs(patches, want[1]) <= 1e-6, picture.shape
    same_size = torch.from_numpy(np.stack([pictures[-1], 255 - pictures[-1]]))[:, None]  # [2, 1, 150, 120]
    embedding, _ = _onnx(out / "image_encoder_uint8.onnx", pixels=same_size)
    assert _max_abs(embedding, encode_images(model, list(same_size[:, 0].numpy()))) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 5])
def test_onnx_text_graph_equals_the_inference_path(exported, n):
    model, out = exported
    texts = TEXTS[1 : n + 1] if n == 1 else TEXTS  # n = 1: the text that fills all 100 positions
    tokens = model.tokenizer(texts)
    (embedding,) = _onnx(
        out / "text_encoder.onnx", input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
    )
    assert _max_abs(embedding, encode_texts(model, texts)) <= ATOL


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 5])
def test_torchscript_graphs_equal_the_inference_path(exported, n):
    model, out = exported
    normalised, pixels = _image_inputs(n, seed=10 + n)
    embedding, patches = _torchscript(out / "image_encoder.pt", normalised)
    assert _max_abs(embedding, encode_images(model, normalised)) <= ATOL
    assert _max_abs(patches, patch_embeddings(model, normalised).reshape(n, 196, -1)) <= ATOL
    (embedding, _) = _torchscript(out / "image_encoder_uint8.pt", pixels)
    assert _max_abs(embedding, encode_images(model, pixels[:, 0])) <= ATOL
    tokens = model.tokenizer(TEXTS[:n])
    (embedding,) = _torchscript(out / "text_encoder.pt", tokens["input_ids"], tokens["attention_mask"])
    assert _max_abs(embedding, encode_texts(model, TEXTS[:n])) <= ATOL


@pytest.mark.slow
def test_official_fixture_graphs_reproduce_the_official_code(official, official_fixture_dir):
    """The graphs of the official checkpoint give the numbers the official code computed."""
    _, out, _ = official
    inputs = np.load(official_fixture_dir / "inputs.npz")
    expected = np.load(official_fixture_dir / "expected.npz")
    images = torch.from_numpy(inputs["images_224"])[:, None]  # uint8 [4, 1, 224, 224]
    batch = torch.cat([images, images[:1]])  # 5 images
    embedding, patches = _onnx(out / "image_encoder_uint8.onnx", pixels=batch)
    want = np.concatenate([expected["image_embed"], expected["image_embed"][:1]])
    np.testing.assert_allclose(embedding, want, atol=ATOL)
    np.testing.assert_allclose(patches.mean(axis=1), want, atol=ATOL)
    normalised = (images.float() / 255 - 0.4978) / 0.2449
    (embedding, _) = _onnx(out / "image_encoder.onnx", pixels=normalised[:1].expand(-1, 3, -1, -1))
    np.testing.assert_allclose(embedding, expected["image_embed"][:1], atol=ATOL)
    (text,) = _onnx(
        out / "text_encoder.onnx",
        input_ids=torch.from_numpy(inputs["input_ids"]),
        attention_mask=torch.from_numpy(inputs["attention_mask"]),
    )
    np.testing.assert_allclose(text, expected["text_embed"], atol=ATOL)


@pytest.mark.slow
def test_export_folder_states_its_contract(tiny):
    import onnx
    import onnxruntime

    model, out, result = tiny
    names = sorted(p.name for p in out.iterdir() if p.name != MARKER_NAME)  # the folder's writer marker
    assert names == sorted([*GRAPH_FILES, "MODEL_CARD.md", "export.json", "preprocessing.json", "tokenizer.json"])
    assert result.files == names and not list(out.parent.glob(".tmp-*"))
    pre = json.loads((out / "preprocessing.json").read_text())
    assert pre == preprocessing_contract(model)
    assert (pre["image"]["size"], pre["image"]["mean"], pre["image"]["std"]) == (224, 0.4978, 0.2449)
    assert pre["image"]["resize"]["interpolation"] == "bilinear" and pre["image"]["resize"]["antialias"]
    assert (pre["text"]["prefix"], pre["text"]["max_length"], pre["embedding"]["dim"]) == ("[CLS] ", 100, 128)
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["onnx_opset"] == 18 and manifest["model"]["text"]["hidden_size"] == 128
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    diffs = [v for graphs in manifest["check"]["max_abs_diff"].values() for d in graphs.values() for v in d.values()]
    assert len(diffs) == 10 and max(diffs) <= ATOL
    assert manifest["check"]["max_abs_diff"] == result.max_abs_diff
    assert manifest["graphs"]["text_encoder"]["inputs"][0]["shape"] == ["N", 100]
    assert manifest["graphs"]["image_encoder_uint8"]["inputs"][0]["shape"] == ["N", 1, "H", "W"]
    assert manifest["check"]["image_encoder_uint8_sizes"] == [[224, 224], [449, 448], [168, 113], [223, 301]]
    for graph in ("image_encoder", "image_encoder_uint8", "text_encoder"):
        proto = onnx.load(str(out / f"{graph}.onnx"))
        assert {o.domain: o.version for o in proto.opset_import}[""] >= 17
        session = onnxruntime.InferenceSession(str(out / f"{graph}.onnx"), providers=["CPUExecutionProvider"])
        assert all(isinstance(i.shape[0], str) for i in session.get_inputs())  # dynamic batch
        assert [o.name for o in session.get_outputs()] == (
            ["embedding"] if graph == "text_encoder" else ["embedding", "patch_embeddings"]
        )
    (uint8_input,) = onnxruntime.InferenceSession(
        str(out / "image_encoder_uint8.onnx"), providers=["CPUExecutionProvider"]
    ).get_inputs()
    assert uint8_input.type == "tensor(uint8)" and uint8_input.shape[1] == 1
    assert all(isinstance(uint8_input.shape[axis], str) for axis in (0, 2, 3))  # N, H, W dynamic
    saved = ReportTokenizer.from_file(out / "tokenizer.json")
    assert torch.equal(saved(TEXTS)["input_ids"], model.tokenizer(TEXTS)["input_ids"])


def _card_code(card: str, heading: str) -> str:
    return re.search(rf"{heading}\n\n```python\n(.*?)```", card, re.S).group(1)


@pytest.mark.slow
def test_model_card_code_runs_and_agrees_with_maco_cxr(tiny, cxr_real_dir, tmp_path, monkeypatch):
    """The card's onnxruntime and TorchScript code, run as written next to the exported files on a
    real radiograph, a 16-bit PNG of it and a DICOM, gives maco-cxr's numbers."""
    from PIL import Image

    model, out, _ = tiny
    folder = tmp_path / "served"
    shutil.copytree(out, folder)
    card = (folder / "MODEL_CARD.md").read_text()
    assert "not a medical device" in card and "Training data\n\nunknown\n" in card
    ort_code = _card_code(card, "## Running it with onnxruntime")
    script_code = _card_code(card, r"TorchScript \(.*?\):")
    assert "from maco_cxr import read_image" in ort_code and 'read_image("cxr.png")' in ort_code
    source = sorted((cxr_real_dir / "images").glob("*.png"))[0]
    eight_bit = read_image(source)
    Image.fromarray(eight_bit.astype(np.uint16) * 257).save(folder / "cxr16.png")  # v * 257: 0..65535
    assert Image.open(folder / "cxr16.png").mode == "I;16"
    dicom = sorted((cxr_real_dir / "dicom").glob("*.dcm"))[0]
    shutil.copy(dicom, folder / "cxr.dcm")
    shutil.copy(source, folder / "cxr.png")
    texts = ["There is a right pleural effusion.", "No acute cardiopulmonary process."]
    monkeypatch.chdir(folder)
    for name, reference in (("cxr.png", source), ("cxr16.png", source), ("cxr.dcm", dicom)):
        code = ort_code.replace('read_image("cxr.png")', f'read_image("{name}")')
        namespace: dict = {}
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            exec(compile(code, "MODEL_CARD.md", "exec"), namespace)
        assert printed.getvalue().startswith("[[")
        assert namespace["pixels"].shape == (1, 1, *read_image(reference).shape)
        np.testing.assert_allclose(namespace["text_embedding"], encode_texts(model, texts).numpy(), atol=ATOL)
        np.testing.assert_allclose(namespace["image_embedding"], encode_images(model, [reference]).numpy(), atol=ATOL)
        want_patches = patch_embeddings(model, [reference]).reshape(1, 196, -1).numpy()
        np.testing.assert_allclose(namespace["patch_embeddings"], want_patches, atol=ATOL)
        assert namespace["similarity"].shape == (1, 2)
        want_similarity = similarity(model, reference, texts).numpy()
        np.testing.assert_allclose(namespace["similarity"], want_similarity, atol=ATOL)
        with pytest.warns(FutureWarning):  # torch.jit is deprecated, but still works
            exec(compile(script_code, "MODEL_CARD.md", "exec"), namespace)
        want_embedding = encode_images(model, [reference]).numpy()
        np.testing.assert_allclose(namespace["image_embedding"].numpy(), want_embedding, atol=1e-6)


@pytest.mark.slow
def test_cli_export_reports_the_differences_and_the_registry_entry(official):
    _, out, printed = official
    for graph in ("image_encoder", "image_encoder_uint8", "text_encoder"):
        for fmt in ("onnx", "torchscript"):
            line = re.search(rf"^{graph} \({fmt}\): max abs difference from PyTorch: (.*)$", printed, re.M)
            values = [float(v) for v in re.findall(r" ([0-9.e+-]+)(?:,|$)", line.group(1))]
            assert values and max(values) <= ATOL
    card = (out / "MODEL_CARD.md").read_text()
    assert "none: random weights (a test fixture) (converted from `maco.pth`)" in card
    assert "width 64, depth 2, 4 heads" in card and "BERT, width 64, 2 layers, 2 heads" in card
    # the same Hub metadata and intended-use section as the model's own card (maco_cxr.cards)
    assert card.startswith("---\nlibrary_name: maco-cxr\nlicense: other\n") and "datasets: []" in card
    assert "## Intended use and limitations" in card and "not a medical device" in card


@pytest.mark.slow  # two ONNX exports, ~5 s each
def test_cli_export_logs_other_libraries_info_only_when_verbose(official_fixture_dir, tmp_path, caplog, capsys):
    """onnx_ir / onnxscript log ~165 INFO lines per export: shown with --verbose only."""
    command = ["export", "--model", str(official_fixture_dir / "maco.pth"), "--no-check"]

    def foreign_info() -> list[str]:
        return [r.name for r in caplog.records if r.levelno < logging.WARNING and r.name.split(".")[0] != "maco_cxr"]

    with caplog.at_level(logging.INFO):
        assert main([*command, "--out", str(tmp_path / "quiet")]) == 0
        assert foreign_info() == []
        assert "exporting image_encoder as onnx" in caplog.messages  # our own INFO lines stay
        assert capsys.readouterr().out.startswith("wrote ")
        caplog.clear()
        assert main(["--verbose", *command, "--out", str(tmp_path / "verbose")]) == 0
        shown = foreign_info()
        assert len(shown) > 50 and {name.split(".")[0] for name in shown} >= {"onnx_ir", "onnxscript"}


def test_cli_export_of_a_directory_takes_the_training_data_from_its_config(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model(preset("tiny"))
    data = {"source": "manifest", "kind": "mimic-cxr", "path": "/data/mimic", "split": "train"}
    save_pretrained(model, tmp_path / "m", extra_config={"pretraining": {"steps": 1200, "config": {"data": data}}})
    assert (
        main(
            [
                "export",
                "--model",
                str(tmp_path / "m"),
                "--format",
                "torchscript",
                "--out",
                str(tmp_path / "e"),
                "--no-check",
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    card = (tmp_path / "e" / "MODEL_CARD.md").read_text()
    assert (
        "pre-trained with maco-cxr for 1200 steps on source `manifest`, kind `mimic-cxr`, path "
        "`/data/mimic`, split `train`"
    ) in card
    assert sorted(p.name for p in (tmp_path / "e").glob("*.pt")) == [
        "image_encoder.pt",
        "image_encoder_uint8.pt",
        "text_encoder.pt",
    ]
    assert json.loads((tmp_path / "e" / "export.json").read_text())["check"] is None


def test_model_card_without_recorded_training_data_says_unknown():
    model = create_model(preset("tiny"))
    card = model_card(model)
    assert "## Training data\n\nunknown\n" in card
    assert "`pixels` uint8 [N, 1, H, W]" in card and "`embedding` float32 [N, 128]" in card
    assert "TorchScript" not in card and "TorchScript" in model_card(model, formats=("onnx", "torchscript"))
    origin = {"converted_from": {"file": "maco.pth", "sha256": "ab" * 32, "training_data": "MIMIC-CXR v2"}}
    assert f"MIMIC-CXR v2 (converted from `maco.pth`, sha256 `{'ab' * 32}`)" in model_card(model, origin)


def test_missing_onnx_packages_give_the_install_hint(tmp_path, monkeypatch):
    model = create_model(preset("tiny"))
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ImportError, match=r'pip install "maco-cxr\[export\]"'):
        export(model, tmp_path / "out")
    monkeypatch.delitem(sys.modules, "onnxscript")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="onnxruntime"):
        export(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_reports_missing_onnx_packages_as_an_error(official_fixture_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["export", "--model", str(official_fixture_dir / "maco.pth"), "--out", str(tmp_path / "o")]) == 2
    assert "maco-cxr export: error: ONNX export needs" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_formats_and_opsets_are_errors(tmp_path):
    model = create_model(preset("tiny"))
    with pytest.raises(ExportError, match="unknown export format"):
        export(model, tmp_path / "out", formats=("tflite",))
    with pytest.raises(ExportError, match="opset 16 is too old; use 17 or newer"):
        export(model, tmp_path / "out", opset=16)


@pytest.mark.slow  # exports one graph (~4 s alone)
def test_failed_check_keeps_the_old_folder(tmp_path):
    model = create_model(preset("tiny"))
    export(model, tmp_path / "out", formats=("torchscript",), check=False)  # the previous export
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    with pytest.raises(ExportError, match=r"image_encoder\.onnx: output .* differs from eager PyTorch"):
        export(model, tmp_path / "out", atol=1e-12)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert model.training  # the caller's mode is put back


def test_the_model_cards_image_reader_does_not_load_torch(cxr_real_dir):
    """The card tells users that reading images with maco_cxr.read_image does not load PyTorch."""
    files = [
        str(sorted((cxr_real_dir / kind).glob(pattern))[0])
        for kind, pattern in (("images", "*.png"), ("dicom", "*.dcm"))
    ]
    code = (
        f"import sys; from maco_cxr import read_image; [read_image(f) for f in {files}]; print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    assert "(importing it does not load PyTorch)" in model_card(create_model(preset("tiny")))


def test_importing_the_export_modules_does_not_import_onnx():
    code = (
        "import sys, maco_cxr.export, maco_cxr.cli.export; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'onnx', 'onnxruntime', 'onnxscript'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
