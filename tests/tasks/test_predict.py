"""`predict` over a mixed folder: rows, failures, equality with the task functions, DICOM
identifiers, the frontal filter, resuming a killed run, and fine-tuned model folders."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maco_cxr.cli import main
from maco_cxr.data.io import read_image
from maco_cxr.errors import ConfigError, OutputFolderError, RunInterrupted
from maco_cxr.hub import create_model, load, save_pretrained
from maco_cxr.inference import encode_images
from maco_cxr.models.config import preset
from maco_cxr.models.vit import MaskedViT
from maco_cxr.tasks import predict as predict_module
from maco_cxr.tasks.finetune import load_finetuned
from maco_cxr.tasks.finetune.model_io import save_finetuned
from maco_cxr.tasks.grounding import ground
from maco_cxr.tasks.predict import predict
from maco_cxr.tasks.zeroshot import zero_shot
from tests.tiny_finetuned import save_tiny_detector, save_tiny_segmenter, tiny_vision

CLASSES = ["Pneumothorax", "Edema"]
PATIENT = "16d7f894-55d7-4d95-8957-d18987f0e981"  # the PatientID of the test DICOMs
LATERAL_UID = "1.2.826.0.1.3680043.8.498.1"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("model") / "tiny"
    save_pretrained(create_model(preset("tiny")), directory)
    return directory


@pytest.fixture(scope="module")
def model(model_dir):
    return load(model_dir)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, cxr_real_dir) -> Path:
    """2 PNGs, a JPEG, a DICOM, a DICOM without extension, a lateral DICOM (sub-folder), a
    truncated PNG, a text file named .dcm and a hidden file."""
    import pydicom

    root = tmp_path_factory.mktemp("inputs") / "cxr"
    (root / "sub").mkdir(parents=True)
    pngs = sorted((cxr_real_dir / "images").glob("*.png"), key=lambda p: p.stat().st_size)
    shutil.copy(pngs[0], root / "a.png")
    shutil.copy(pngs[1], root / "sub" / "b.png")
    Image.open(pngs[2]).convert("L").save(root / "c.jpg", quality=90)
    dicoms = sorted((cxr_real_dir / "dicom").glob("*.dcm"))
    shutil.copy(dicoms[0], root / "sub" / "d.dcm")
    shutil.copy(dicoms[1], root / "e_no_extension")
    lateral = pydicom.dcmread(dicoms[0])
    lateral.ViewPosition = "LL"
    lateral.SOPInstanceUID = LATERAL_UID
    lateral.save_as(root / "sub" / "lateral.dcm")
    data = pngs[3].read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "notes.dcm").write_text("not a DICOM file\n")
    (root / ".DS_Store").write_bytes(b"\0\1")
    return root


GOOD = ("a.png", "c.jpg", "e_no_extension", "sub/b.png", "sub/d.dcm", "sub/lateral.dcm")
BAD = ("notes.dcm", "truncated.png")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _paths(folder: Path, names) -> list[str]:
    return [str(folder / name) for name in names]


@pytest.fixture(scope="module")
def zero_shot_run(model_dir, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "zs"
    result = predict(model_dir, [folder], out, classes=CLASSES, embeddings=True, batch_size=3, chunk_size=4)
    return result, out


def test_every_good_file_is_one_row_and_the_bad_ones_are_failures(zero_shot_run, folder):
    result, out = zero_shot_run
    rows = _rows(out / "predictions.csv")
    assert [row["path"] for row in rows] == sorted(_paths(folder, GOOD))
    failures = {row["path"]: row["reason"] for row in _rows(out / "failures.csv")}
    assert sorted(failures) == _paths(folder, BAD)
    assert "truncated" in failures[str(folder / "truncated.png")]
    assert "DICOM" in failures[str(folder / "notes.dcm")]
    assert (result.n_inputs, result.n_predicted, result.n_failed, result.n_skipped) == (8, 6, 2, 0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["hidden_ignored"] == 1 and summary["classes"] == CLASSES
    assert summary["timings"]["images_per_second"] > 0 and summary["model"]["task"] == "zero-shot"
    assert [int(r["height"]) for r in rows] == [read_image(p).shape[0] for p in sorted(_paths(folder, GOOD))]


def test_scores_and_embeddings_equal_the_task_functions(zero_shot_run, model):
    _, out = zero_shot_run
    rows = _rows(out / "predictions.csv")
    paths = [row["path"] for row in rows]
    scores = np.array([[float(row[f"score:{c}"]) for c in CLASSES] for row in rows])
    np.testing.assert_allclose(scores, zero_shot(model, paths, CLASSES).numpy(), atol=1e-6, rtol=0)
    embeddings = np.load(out / "embeddings.npy")
    index = _rows(out / "embeddings_index.csv")
    assert [r["path"] for r in index] == paths and [int(r["embedding_row"]) for r in rows] == list(range(6))
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, encode_images(model, paths).numpy(), atol=1e-5, rtol=1e-5)


def test_dicom_identifiers_are_written_and_patient_data_only_when_asked(zero_shot_run, model_dir, folder, tmp_path):
    _, out = zero_shot_run
    rows = {Path(row["path"]).name: row for row in _rows(out / "predictions.csv")}
    assert "PatientID" not in next(iter(rows.values()))
    assert rows["e_no_extension"]["SOPInstanceUID"].startswith("1.2.276.0.7230010.3.1.4")
    assert rows["e_no_extension"]["ViewPosition"] == "PA" and rows["d.dcm"]["StudyInstanceUID"]
    assert rows["lateral.dcm"]["SOPInstanceUID"] == LATERAL_UID
    assert rows["a.png"]["SOPInstanceUID"] == rows["a.png"]["ViewPosition"] == ""
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".csv", ".json"):
            assert PATIENT not in path.read_text(), path
    asked = predict(model_dir, [folder / "sub"], tmp_path / "ids", classes=CLASSES, patient_id=True)
    with_ids = {Path(r["path"]).name: r["PatientID"] for r in _rows(asked.out / "predictions.csv")}
    assert with_ids == {"b.png": "", "d.dcm": PATIENT, "lateral.dcm": PATIENT}


def test_frontal_only_lists_other_views_and_keeps_images_without_the_tag(model_dir, folder, tmp_path):
    result = predict(model_dir, [folder], tmp_path / "frontal", classes=CLASSES, frontal_only=True)
    names = [Path(r["path"]).name for r in _rows(result.out / "predictions.csv")]
    assert "lateral.dcm" not in names and {"a.png", "c.jpg", "d.dcm", "e_no_extension"} <= set(names)
    skipped = _rows(result.out / "skipped.csv")
    assert [Path(r["path"]).name for r in skipped] == ["lateral.dcm"]
    assert skipped[0]["ViewPosition"] == "LL" and "not a frontal view" in skipped[0]["reason"]
    assert "PatientID" not in skipped[0]
    counts = result.summary["counts"]
    assert (counts["skipped_views"], counts["without_view_position"], counts["failed"]) == (1, 3, 2)


def test_grounding_maps_equal_ground_in_the_original_grid(model_dir, model, folder, tmp_path):
    phrases = ["left pleural effusion", "edema"]
    inputs = [folder / "a.png", folder / "e_no_extension"]
    result = predict(model_dir, inputs, tmp_path / "maps", phrases=phrases, overlays=True, batch_size=2)
    rows = _rows(result.out / "predictions.csv")
    assert [Path(r["path"]).name for r in rows] == ["a.png", "e_no_extension"]
    names = set()
    for row in rows:
        for phrase in phrases:
            name = row[f"map:{phrase}"]
            assert name.startswith("maps/") and Path(row["path"]).name not in name  # no file name in it
            heatmap = np.load(result.out / name)
            expected = ground(model, row["path"], phrase)
            assert heatmap.shape == expected.shape == read_image(row["path"]).shape
            np.testing.assert_allclose(heatmap, expected, rtol=1e-4, atol=1e-6)
            overlay = Image.open((result.out / name).with_suffix(".png"))
            assert overlay.size == (heatmap.shape[1], heatmap.shape[0])
            names.add(name)
    assert len(names) == 4


def test_a_killed_run_resumes_without_recomputing_its_finished_chunks(model_dir, folder, tmp_path, monkeypatch):
    inputs = [folder / name for name in ("a.png", "c.jpg", "e_no_extension", "sub/b.png", "sub/d.dcm")]
    options = {"classes": CLASSES, "embeddings": True, "batch_size": 2, "chunk_size": 2}
    reference = predict(model_dir, inputs, tmp_path / "whole", **options)
    calls: list[int] = []
    original = predict_module._predict_batch

    def killed_after_the_first_chunk(engine, items):
        calls.append(len(items))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return original(engine, items)

    monkeypatch.setattr(predict_module, "_predict_batch", killed_after_the_first_chunk)
    with pytest.raises(RunInterrupted, match="^chunk 2 of 3$") as interrupted:
        predict(model_dir, inputs, tmp_path / "resumed", **options)
    assert isinstance(interrupted.value, KeyboardInterrupt) and interrupted.value.where == "chunk 2 of 3"
    assert not (tmp_path / "resumed" / "predictions.csv").exists()
    assert [p.name for p in (tmp_path / "resumed" / "parts").iterdir()] == ["000000"]

    calls.clear()
    monkeypatch.setattr(
        predict_module, "_predict_batch", lambda engine, items: calls.append(len(items)) or original(engine, items)
    )
    resumed = predict(model_dir, inputs, tmp_path / "resumed", **options)
    assert calls == [2, 1]  # files 3-4 and 5; files 1-2 were done
    assert (resumed.n_done_before, resumed.n_predicted) == (2, 5)
    for name in ("predictions.csv", "failures.csv", "embeddings_index.csv"):
        assert (resumed.out / name).read_text() == (reference.out / name).read_text()
    np.testing.assert_array_equal(np.load(resumed.out / "embeddings.npy"), np.load(reference.out / "embeddings.npy"))

    calls.clear()
    again = predict(model_dir, inputs, tmp_path / "resumed", **options)  # finished: nothing to do
    assert calls == [] and again.n_done_before == 5
    assert (again.out / "predictions.csv").read_text() == (reference.out / "predictions.csv").read_text()


def test_resuming_with_other_settings_is_refused_naming_the_difference(zero_shot_run, model_dir, folder, tmp_path):
    _, out = zero_shot_run
    with pytest.raises(ConfigError, match=r"other settings \(classes: .*embeddings: true there, false now"):
        predict(model_dir, [folder], out, classes=["Edema"])
    with pytest.raises(ConfigError, match="phrases"):
        predict(model_dir, [folder], out, classes=CLASSES, embeddings=True, phrases=["edema"])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "report.docx").write_text("x")
    with pytest.raises(
        OutputFolderError, match=r"busy: refusing to write into a folder that holds files \(report.docx\)"
    ):
        predict(model_dir, [folder], busy, classes=CLASSES)
    assert sorted(p.name for p in busy.iterdir()) == ["report.docx"]


def test_a_list_file_with_relative_and_missing_entries(model_dir, folder, tmp_path):
    listing = folder / "sub" / "list.txt"
    listing.write_text("# images to score\nb.png\n\n../a.png\nmissing.png\n")
    try:
        result = predict(model_dir, [], tmp_path / "listed", list_file=listing, classes=CLASSES)
    finally:
        listing.unlink()
    assert [Path(r["path"]).name for r in _rows(result.out / "predictions.csv")] == ["a.png", "b.png"]
    failures = _rows(result.out / "failures.csv")
    assert [Path(r["path"]).name for r in failures] == ["missing.png"] and "no such file" in failures[0][
        "reason"
    ].lower()


def test_a_fine_tuned_classifier_folder_gives_its_probabilities(folder, tmp_path):
    from maco_cxr.models.classifier import ClassifierModel
    from maco_cxr.tasks.finetune.classification import (
        FinetunedClassifier,
        classifier_preprocessing,
    )

    torch.manual_seed(0)
    net = ClassifierModel(MaskedViT(tiny_vision()), 2)
    torch.nn.init.normal_(net.head.weight, std=0.5)
    save_finetuned(FinetunedClassifier(net, ("Edema", "Pneumothorax"), classifier_preprocessing(64)), tmp_path / "best")
    result = predict(tmp_path / "best", [folder], tmp_path / "out", batch_size=4)
    rows = _rows(result.out / "predictions.csv")
    assert len(rows) == 6 and result.n_failed == 2 and result.summary["classes"] == ["Edema", "Pneumothorax"]
    scores = np.array([[float(r["score:Edema"]), float(r["score:Pneumothorax"])] for r in rows])
    expected = load_finetuned(tmp_path / "best").predict([r["path"] for r in rows]).numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="fine-tuned classification"):
        predict(tmp_path / "best", [folder], tmp_path / "zs", classes=CLASSES)


def test_a_fine_tuned_segmenter_folder_writes_masks_in_the_original_grid(folder, tmp_path):
    save_tiny_segmenter(tmp_path / "best")
    inputs = [folder / "a.png", folder / "sub" / "d.dcm"]
    result = predict(tmp_path / "best", inputs, tmp_path / "out")
    rows = _rows(result.out / "predictions.csv")
    # one batch, as predict ran it: a random head puts many pixels near the threshold
    masks = load_finetuned(tmp_path / "best").predict([row["path"] for row in rows])
    for row, predicted in zip(rows, masks):
        mask = np.asarray(Image.open(result.out / row["mask"]))
        expected = predicted[0]
        assert mask.shape == read_image(row["path"]).shape and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask > 0, expected > 0)
        assert int(row["mask_pixels"]) == int(expected.sum())


def test_a_fine_tuned_detector_folder_writes_its_boxes(folder, tmp_path):
    save_tiny_detector(tmp_path / "best")
    path = folder / "a.png"
    result = predict(tmp_path / "best", [path], tmp_path / "out")
    row = _rows(result.out / "predictions.csv")[0]
    boxes = _rows(result.out / "detections.csv")
    expected = load_finetuned(tmp_path / "best").predict(path)
    assert int(row["n_boxes"]) == len(boxes) == len(expected["boxes"]) > 0
    assert {b["label"] for b in boxes} == {"nodule"}
    got = np.array([[float(b[k]) for k in ("x_min", "y_min", "x_max", "y_max")] for b in boxes])
    np.testing.assert_allclose(got, expected["boxes"], atol=0.01)


def test_cli_predict_end_to_end_with_a_worker(model_dir, folder, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(
        [
            "predict",
            str(folder),
            "--model",
            str(model_dir),
            "--out",
            str(out),
            "--classes",
            "siim",
            "--frontal-only",
            "--workers",
            "1",
            "--batch-size",
            "4",
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "8 files: 5 predicted, 2 failed, 1 skipped views" in printed and "images/s" in printed
    settings = json.loads((out / "settings.json").read_text())
    assert settings["classes"] == ["Pneumothorax"] and len(settings["prompts"]["Pneumothorax"]["pos"]) == 2  # siim set
    assert main(["predict", str(folder), "--model", str(model_dir), "--out", str(out), "--no-progress"]) == 2
    assert "nothing to predict" in capsys.readouterr().err
