"""Grounding reports: per-threshold metrics, the official metric.csv, validation thresholds,
bootstrap intervals, and mask ground truth (SIIM, COVID rural, CheXlocalize, manifest masks).

Every map here is known exactly: the model's patch grid is replaced by a fixed 14 x 14 grid of
levels and the map by that grid upsampled blockwise (16 x 16 pixels per patch), so on the
224 grid the map is 1 on block A (rows 80-95, columns 80-95), 0.625 on block B (rows 80-95,
columns 96-111) and 0 elsewhere, for every image and phrase. Scaled to [-1, 1] (the
metric.csv thresholds 0.1 ... 0.5) that is A = 1, B = 0.25, rest = -1, so ``map > t`` is
A + B for t = 0.1, 0.2 and A for t >= 0.3. Scaled to [0, 1] (the validation search over
0.2 ... 0.8) it is A = 1, B = 0.625: A + B up to t = 0.6, A for t = 0.7, 0.8.

Images are 384 x 448 (H x W): the letterbox halves them (192 x 224) and pads 16 rows on top,
so original (x, y) lands on (x / 2, y / 2 + 16). Ground truths: WIDE = A + B (original
x 160-224, y 128-160), NARROW = A (x 160-192, y 128-160), MISS = block C of patch (10, 10)
(x 320-352, y 288-320). By hand, with |A| = |B| = |C| = 256 pixels:

- WIDE: IoU 1, 1, .5, .5, .5 (t = 0.1 ... 0.5); Dice 1, 1, 2/3, 2/3, 2/3; precision 1;
  recall 1, 1, .5, .5, .5; mIoU .7; CNR: inside 1 and .25 (mean .625, variance .140625),
  outside -1 (variance 0): 1.625 / .375 = 13/3; pointing hit.
- NARROW: IoU .5, .5, 1, 1, 1; Dice 2/3, 2/3, 1, 1, 1; precision .5, .5, 1, 1, 1; recall 1;
  mIoU .8; CNR (1 - m) / sqrt(v) with m, v the mean and variance of the outside (256 at .25,
  the rest at -1); pointing hit.
- MISS: IoU, Dice, precision, recall 0; mIoU 0; CNR (-1 - m) / sqrt(v) (outside: 256 at 1,
  256 at .25, the rest at -1); pointing miss.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maco_cxr.cli import main
from maco_cxr.data.datasets import build_dataset
from maco_cxr.data.datasets.base import ChestXrayDataset, Record
from maco_cxr.data.rle import rle_encode
from maco_cxr.hub import create_model, save_pretrained
from maco_cxr.metrics import OPT_TH_THRESHOLDS
from maco_cxr.models.config import DecoderConfig, MacoConfig, TextConfig, VisionConfig
from maco_cxr.tasks.grounding import (
    DEFAULT_PHRASE_TEMPLATE,
    evaluate_grounding,
    grounding_items,
    mask_grounding_items,
)

H, W = 384, 448
N_PIXELS = 224 * 224
WIDE, NARROW, MISS = (160, 128, 224, 160), (160, 128, 192, 160), (320, 288, 352, 320)


def _outside_cnr(inside: float, outside_values: list[tuple[int, float]]) -> float:
    """CNR with a constant inside (variance 0) and an outside of (count, value) pairs."""
    n = sum(c for c, _ in outside_values)
    mean = sum(c * v for c, v in outside_values) / n
    var = sum(c * v * v for c, v in outside_values) / n - mean**2
    return (inside - mean) / np.sqrt(var)


EXPECTED = {
    "wide": {
        "iou": [1, 1, 0.5, 0.5, 0.5],
        "dice": [1, 1, 2 / 3, 2 / 3, 2 / 3],
        "precision": [1] * 5,
        "recall": [1, 1, 0.5, 0.5, 0.5],
        "miou": 0.7,
        "cnr": 13 / 3,
        "pointing": True,
        "opt_iou": [1, 1, 1, 1, 1, 0.5, 0.5],
    },
    "narrow": {
        "iou": [0.5, 0.5, 1, 1, 1],
        "dice": [2 / 3, 2 / 3, 1, 1, 1],
        "precision": [0.5, 0.5, 1, 1, 1],
        "recall": [1] * 5,
        "miou": 0.8,
        "pointing": True,
        "cnr": _outside_cnr(1.0, [(256, 0.25), (N_PIXELS - 512, -1.0)]),
        "opt_iou": [0.5, 0.5, 0.5, 0.5, 0.5, 1, 1],
    },
    "miss": {
        "iou": [0] * 5,
        "dice": [0] * 5,
        "precision": [0] * 5,
        "recall": [0] * 5,
        "miou": 0.0,
        "pointing": False,
        "cnr": _outside_cnr(-1.0, [(256, 1.0), (256, 0.25), (N_PIXELS - 768, -1.0)]),
        "opt_iou": [0] * 7,
    },
}


def _levels() -> torch.Tensor:
    grid = torch.zeros(14, 14)
    grid[5, 5], grid[5, 6] = 1.0, 0.625
    return grid


@pytest.fixture()
def blocky(monkeypatch):
    """Replace the model's map by the fixed block map of the module docstring."""

    def patch_embeddings(model, images, **kwargs):
        out = torch.zeros(images.shape[0], 14, 14, model.config.embed_dim)
        out[..., 0] = _levels()
        return out

    def grounding_map(patches, weights, phrase, out_size=224, sigma=1.5):
        return np.kron(np.asarray(patches)[..., 0], np.ones((16, 16))).astype(np.float32)

    monkeypatch.setattr("maco_cxr.tasks.grounding.patch_embeddings", patch_embeddings)
    monkeypatch.setattr(
        "maco_cxr.tasks.grounding.encode_texts",
        lambda model, texts, **kwargs: torch.ones(len(texts), model.config.embed_dim),
    )
    monkeypatch.setattr("maco_cxr.tasks.grounding.grounding_map", grounding_map)


def _tiny_config() -> MacoConfig:
    return MacoConfig(
        vision=VisionConfig(embed_dim=32, depth=1, num_heads=2),
        decoder=DecoderConfig(embed_dim=32, depth=1, num_heads=2),
        text=TextConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
    )


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("model") / "tiny"
    save_pretrained(create_model(_tiny_config()), directory)
    return directory


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return create_model(_tiny_config()).eval()


def _assert_item(row: dict, kind: str) -> None:
    expected = EXPECTED[kind]
    for name in ("iou", "dice", "precision", "recall"):
        got = [float(row[f"{name}@{t}"]) for t in ("0.1", "0.2", "0.3", "0.4", "0.5")]
        np.testing.assert_allclose(got, expected[name], atol=1e-12, err_msg=f"{kind} {name}")
    assert float(row["miou"]) == pytest.approx(expected["miou"], abs=1e-12)
    assert float(row["cnr"]) == pytest.approx(expected["cnr"], rel=1e-9)
    assert str(row["pointing"]) == str(expected["pointing"])


# --- boxes: evaluate_grounding on an in-memory dataset ----------------------------------------


class _Images(ChestXrayDataset):
    def __getitem__(self, index):
        return {"image": torch.zeros(1, H, W, dtype=torch.uint8), "index": index, "path": "mem"}


def _record(boxes: list[tuple[tuple[int, ...], str, str]], patient: str | None = None) -> Record:
    return Record(
        image_path=Path("mem.png"),
        boxes=np.array([b for b, _, _ in boxes], np.float32),
        box_labels=[label for _, label, _ in boxes],
        patient_id=patient,
        meta={"box_meta": [{"category": c} for _, _, c in boxes]},
    )


def _test_set() -> _Images:
    return _Images(
        [
            _record([(WIDE, "wide effusion", "effusion"), (NARROW, "narrow effusion", "effusion")], "p1"),
            _record([(MISS, "missed nodule", "nodule"), (WIDE, "large nodule", "nodule")], "p2"),
        ]
    )


def _val_set() -> _Images:
    return _Images([_record([(WIDE, "val effusion", "effusion"), (NARROW, "val nodule", "nodule")], "p9")])


def test_rows_hold_the_per_threshold_metrics_and_the_table_is_the_official_layout(tiny_model, blocky):
    result = evaluate_grounding(tiny_model, _test_set())
    kinds = ["wide", "narrow", "miss", "wide"]
    assert [r["phrase"] for r in result.rows] == ["wide effusion", "narrow effusion", "missed nodule", "large nodule"]
    for row, kind in zip(result.rows, kinds):
        _assert_item(row, kind)
        assert row["target"] == "boxes" and row["mask_pixels"] == (512 if kind == "wide" else 256)
    assert result.threshold_metrics[0]["thresholds"] == [0.1, 0.2, 0.3, 0.4, 0.5]
    np.testing.assert_allclose(result.opt_th_metrics[1]["iou"], EXPECTED["narrow"]["opt_iou"])

    table = result.table
    assert result.summary["metric_table"] is table
    assert list(table)[:13] == [
        "threshold",
        "iou",
        "cnr",
        "pg",
        "dice",
        "recall",
        "precision",
        "iou_cat",
        "cnr_cat",
        "pg_cat",
        "dice_cat",
        "recall_cat",
        "precision_cat",
    ]
    assert list(table)[13:] == [
        "iou_effusion",
        "iou_nodule",
        "cnr_effusion",
        "cnr_nodule",
        "pg_effusion",
        "pg_nodule",
        "dice_effusion",
        "dice_nodule",
    ]
    assert table["threshold"] == [0.1, 0.2, 0.3, 0.4, 0.5, "mean"]
    # IoU per item: t <= .2: 1, .5, 0, 1; t >= .3: .5, 1, 0, .5
    np.testing.assert_allclose(table["iou"], [0.625, 0.625, 0.5, 0.5, 0.5, 0.55])
    np.testing.assert_allclose(table["iou_effusion"], [0.75] * 6)
    np.testing.assert_allclose(table["iou_nodule"], [0.5, 0.5, 0.25, 0.25, 0.25, 0.35])
    np.testing.assert_allclose(table["iou_cat"], [0.625, 0.625, 0.5, 0.5, 0.5, 0.55])
    # precision per item: t <= .2: 1, .5, 0, 1; t >= .3: 1, 1, 0, 1
    np.testing.assert_allclose(table["precision"], [0.625, 0.625, 0.75, 0.75, 0.75, 0.7])
    np.testing.assert_allclose(table["pg"], [0.75] * 6)
    np.testing.assert_allclose(table["pg_nodule"], [0.5] * 6)
    cnr = [EXPECTED[k]["cnr"] for k in kinds]
    np.testing.assert_allclose(table["cnr"], [np.mean(cnr)] * 6)
    np.testing.assert_allclose(table["cnr_nodule"], [(cnr[2] + cnr[3]) / 2] * 6)
    assert result.summary["target"] == "boxes" and "ci" not in result.summary


def test_validation_thresholds_are_chosen_per_category_and_applied_to_test(tiny_model, blocky):
    validation = evaluate_grounding(tiny_model, _val_set())
    result = evaluate_grounding(tiny_model, _test_set(), validation=validation)
    opt = result.summary["opt_thresholds"]
    # validation IoU on the [0, 1] map: effusion (A + B) 1 up to t = .6, then .5 -> 0.2 (first
    # best); nodule (A) .5 up to t = .6, then 1 -> 0.7
    assert opt["per_category"]["effusion"]["threshold"] == OPT_TH_THRESHOLDS[0] == 0.2
    assert opt["per_category"]["nodule"]["threshold"] == OPT_TH_THRESHOLDS[5] == pytest.approx(0.7)
    assert opt["per_category"]["effusion"]["val_iou"] == opt["per_category"]["nodule"]["val_iou"] == 1.0
    # test at 0.2: wide 1, narrow .5; at 0.7: miss 0, wide .5
    assert [r["opt_iou"] for r in result.rows] == pytest.approx([1.0, 0.5, 0.0, 0.5])
    assert opt["per_category"]["effusion"]["iou"] == pytest.approx(0.75)
    assert opt["per_category"]["effusion"]["precision"] == pytest.approx(0.75)
    assert opt["per_category"]["effusion"]["recall"] == pytest.approx(1.0)
    assert opt["per_category"]["nodule"]["iou"] == pytest.approx(0.25)
    assert opt["iou"] == pytest.approx(0.5) and opt["iou_cat"] == pytest.approx(0.5)
    assert opt["mean"]["threshold"] == pytest.approx(0.45) and opt["n_val"] == 2
    assert opt["categories_without_validation"] == []


def test_categories_without_validation_items_are_listed_not_fatal(tiny_model, blocky):
    only_effusion = _Images([_record([(WIDE, "val effusion", "effusion")])])
    validation = evaluate_grounding(tiny_model, only_effusion)
    result = evaluate_grounding(tiny_model, _test_set(), validation=validation)
    opt = result.summary["opt_thresholds"]
    assert opt["categories_without_validation"] == ["nodule"] and opt["n_test_without_validation"] == 2
    assert list(opt["per_category"]) == ["effusion"] and np.isnan(result.rows[2]["opt_iou"])


def test_bootstrap_intervals_are_seeded_by_patient_and_cover_the_estimate(tiny_model, blocky):
    first = evaluate_grounding(tiny_model, _test_set(), n_bootstrap=200, seed=5).summary["ci"]
    again = evaluate_grounding(tiny_model, _test_set(), n_bootstrap=200, seed=5).summary["ci"]
    other = evaluate_grounding(tiny_model, _test_set(), n_bootstrap=200, seed=6).summary["ci"]
    assert first == again and first != other
    assert first["unit"] == "patient" and first["n_groups"] == 2 and first["n_resamples"] == 200
    cnr = [EXPECTED[k]["cnr"] for k in ("wide", "narrow", "miss", "wide")]
    assert first["cnr"]["estimate"] == pytest.approx(np.mean(cnr))
    assert first["miou"]["estimate"] == pytest.approx((0.7 + 0.8 + 0 + 0.7) / 4)
    for key in ("cnr", "miou"):
        assert first[key]["low"] <= first[key]["estimate"] <= first[key]["high"]
    # two patients: a draw holds p1 twice (mIoU .75), p2 twice (.35) or both (.55)
    assert first["miou"]["low"] == pytest.approx(0.35) and first["miou"]["high"] == pytest.approx(0.75)


# --- boxes: the CLI on a manifest with train / val / test splits ------------------------------


def _write_png(path: Path, height: int = H, width: int = W) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width), 90, np.uint8)).save(path)
    return path


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _manifest(tmp_path: Path) -> Path:
    root = tmp_path / "manifest"
    for name in ("t1", "t2", "v1"):
        _write_png(root / "images" / f"{name}.png")
    _write_csv(
        root / "manifest.csv",
        ["image_path", "labels", "patient_id", "split"],
        [["images/t1.png", "", "p1", "test"], ["images/t2.png", "", "p2", "test"], ["images/v1.png", "", "p9", "val"]],
    )
    _write_csv(
        root / "boxes.csv",
        ["image_path", "label", "x_min", "y_min", "x_max", "y_max", "category"],
        [
            ["images/t1.png", "wide effusion", *WIDE, "effusion"],
            ["images/t1.png", "narrow effusion", *NARROW, "effusion"],
            ["images/t2.png", "missed nodule", *MISS, "nodule"],
            ["images/t2.png", "large nodule", *WIDE, "nodule"],
            ["images/v1.png", "val effusion", *WIDE, "effusion"],
            ["images/v1.png", "val nodule", *NARROW, "nodule"],
        ],
    )
    return root


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_cli_writes_metric_csv_opt_thresholds_and_intervals(tiny_model_dir, tmp_path, blocky, capsys):
    root = _manifest(tmp_path)
    args = [
        "ground",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        "manifest",
        "--root",
        str(root),
        "--split",
        "test",
        "--val-split",
        "val",
        "--bootstrap",
        "100",
        "--seed",
        "3",
        "--overlays",
        "1",
        "--no-progress",
    ]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "a"
    items = _read_csv(out / "items.csv")
    assert [r["phrase"] for r in items] == ["wide effusion", "narrow effusion", "missed nodule", "large nodule"]
    for row, kind in zip(items, ["wide", "narrow", "miss", "wide"]):
        _assert_item(row, kind)
    assert list(items[0])[-4:] == ["opt_threshold", "opt_iou", "patient", "path"]
    assert [float(r["opt_iou"]) for r in items] == pytest.approx([1.0, 0.5, 0.0, 0.5])

    table = _read_csv(out / "metric.csv")
    assert [r["threshold"] for r in table] == ["0.1", "0.2", "0.3", "0.4", "0.5", "mean"]
    assert [float(r["iou"]) for r in table] == pytest.approx([0.625, 0.625, 0.5, 0.5, 0.5, 0.55])
    assert [float(r["recall"]) for r in table] == pytest.approx([0.75, 0.75, 0.5, 0.5, 0.5, 0.6])
    assert float(table[0]["dice_effusion"]) == pytest.approx(round((1 + 2 / 3) / 2, 3))
    assert table[0]["cnr"] == str(
        round(float(np.mean([EXPECTED[k]["cnr"] for k in ("wide", "narrow", "miss", "wide")])), 3)
    )

    opt = _read_csv(out / "opt_thresholds.csv")
    assert [(r["category"], r["threshold"], r["n_val"], r["n_test"]) for r in opt] == [
        ("effusion", "0.2", "1", "2"),
        ("nodule", "0.7", "1", "2"),
        ("mean", "0.45", "2", "4"),
    ]
    assert [float(r["iou"]) for r in opt] == pytest.approx([0.75, 0.25, 0.5])

    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 4 and summary["target"] == "boxes" and summary["validation"]["n"] == 2
    assert summary["opt_thresholds"]["iou"] == pytest.approx(0.5)
    assert summary["metric_table"]["iou"][0] == pytest.approx(0.625)
    ci = summary["ci"]
    assert ci["unit"] == "patient" and ci["seed"] == 3 and ci["n_resamples"] == 100
    assert ci["miou"]["low"] <= summary["miou"] <= ci["miou"]["high"]
    assert "items 95% CI" in printed and "category (val threshold)" in printed
    assert len(list((out / "overlays").glob("*.png"))) == 1

    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["ci"] == ci


def test_cli_rejects_a_negative_bootstrap(tiny_model_dir, tmp_path, capsys):
    root = _manifest(tmp_path)
    args = ["--model", str(tiny_model_dir), "--dataset", "manifest", "--root", str(root), "--bootstrap", "-1"]
    for command in ("ground", "zeroshot", "retrieve"):
        with pytest.raises(SystemExit) as exit_code:
            main([command, *args, "--out", str(tmp_path / "x")])
        assert exit_code.value.code == 2
        assert "argument --bootstrap: -1: give 0 (no intervals) or a number of resamples" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# --- masks -------------------------------------------------------------------------------------


def _mask(*boxes: tuple[int, int, int, int]) -> np.ndarray:
    """0/1 ``[H, W]`` from original-pixel xyxy boxes."""
    mask = np.zeros((H, W), np.uint8)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = 1
    return mask


def _write_dicom(path: Path, uid: str) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, uid, "CR"
    ds.Rows, ds.Columns = H, W
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.zeros(H * W, np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_siim_masks_through_the_cli(tiny_model_dir, tmp_path, blocky):
    root = tmp_path / "siim"
    uids = ("1.2.3.1", "1.2.3.2", "1.2.3.3")
    for k, uid in enumerate(uids):
        _write_dicom(root / "dicom-images-train" / f"s{k}" / f"r{k}" / f"{uid}.dcm", uid)
    stray = _mask(NARROW)
    stray[200, 300] = 1  # an even row and column: the nearest-neighbour halving never samples it
    (root / "train-rle.csv").write_text(
        f"ImageId, EncodedPixels\n{uids[0]}, {rle_encode(_mask(WIDE))}\n{uids[1]}, -1\n{uids[2]}, {rle_encode(stray)}\n"
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "ground",
                "--model",
                str(tiny_model_dir),
                "--dataset",
                "siim",
                "--root",
                str(root),
                "--bootstrap",
                "50",
                "--overlays",
                "0",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    items = _read_csv(out / "items.csv")
    assert [(r["category"], r["query"], r["target"], r["n_boxes"], r["mask_pixels"]) for r in items] == [
        ("Pneumothorax", "findings suggesting pneumothorax. ", "mask", "0", "512"),
        ("Pneumothorax", "findings suggesting pneumothorax. ", "mask", "0", "256"),
    ]
    _assert_item(items[0], "wide")
    _assert_item(items[1], "narrow")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target"] == "mask" and summary["n"] == 2 and summary["ci"]["unit"] == "image"
    table = _read_csv(out / "metric.csv")
    assert [float(r["iou_Pneumothorax"]) for r in table] == pytest.approx([0.75] * 6)


def test_covid_rural_masks_with_a_phrase_template_and_empty_masks_left_out(tiny_model_dir, tmp_path, blocky):
    root = tmp_path / "covid"
    masks = {"a": _mask(WIDE), "b": _mask(), "c": _mask(MISS)}
    for stem, mask in masks.items():
        _write_png(root / "images" / f"{stem}.png")
        _write_png(root / "masks" / f"{stem}.png")
        Image.fromarray(mask * 255).save(root / "masks" / f"{stem}.png")
    out = tmp_path / "out"
    assert (
        main(
            [
                "ground",
                "--model",
                str(tiny_model_dir),
                "--dataset",
                "covid-rural",
                "--root",
                str(root),
                "--target",
                "masks",
                "--phrase-template",
                "{c}",
                "--bootstrap",
                "0",
                "--out",
                str(out),
                "--overlays",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    items = _read_csv(out / "items.csv")
    assert [(r["phrase"], r["query"], r["category"]) for r in items] == [("Opacity", "opacity. ", "Opacity")] * 2
    _assert_item(items[0], "wide")
    _assert_item(items[1], "miss")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_empty_mask"] == 1 and summary["n"] == 2 and "ci" not in summary


def _encode_coco(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_api

    rle = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


def test_chexlocalize_pathology_masks_through_evaluate_grounding(tiny_model, tmp_path, blocky):
    from maco_cxr.data.datasets.chexlocalize import CHEXLOCALIZE_PATHOLOGIES

    root = tmp_path / "chexlocalize"
    one, two = "patient1_study1_view1_frontal", "patient2_study1_view1_frontal"
    truth = {cxr: {p: _mask() for p in CHEXLOCALIZE_PATHOLOGIES} for cxr in (one, two)}
    truth[one]["Cardiomegaly"] = _mask(WIDE)
    truth[one]["Airspace Opacity"] = _mask(NARROW)
    truth[two]["Cardiomegaly"] = _mask(MISS)
    (root / "CheXlocalize").mkdir(parents=True)
    (root / "CheXlocalize" / "gt_segmentations_val.json").write_text(
        json.dumps({cxr: {p: _encode_coco(m) for p, m in per.items()} for cxr, per in truth.items()})
    )
    for cxr in (one, two):
        patient, study, view, side = cxr.split("_")
        path = root / "CheXpert" / "val" / patient / study / f"{view}_{side}.jpg"
        path.parent.mkdir(parents=True)
        Image.fromarray(np.zeros((H, W), np.uint8)).save(path)
    dataset = build_dataset("chexlocalize", root)
    items = grounding_items(dataset)  # no boxes: auto takes the masks
    assert [(i.record_index, i.category, i.phrase, i.target) for i in items] == [
        (0, "Cardiomegaly", "Findings suggesting Cardiomegaly.", "mask"),
        (0, "Airspace Opacity", "Findings suggesting Airspace Opacity.", "mask"),
        (1, "Cardiomegaly", "Findings suggesting Cardiomegaly.", "mask"),
    ]
    from maco_cxr.cli.ground import _DEFAULT_TEMPLATE

    assert DEFAULT_PHRASE_TEMPLATE == _DEFAULT_TEMPLATE == "Findings suggesting {c}."
    assert grounding_items(dataset, target="boxes") == []
    result = evaluate_grounding(tiny_model, dataset, items=items, n_bootstrap=20)
    for row, kind in zip(result.rows, ["wide", "narrow", "miss"]):
        _assert_item(row, kind)
    assert [r["patient"] for r in result.rows] == ["patient1", "patient1", "patient2"]
    s = result.summary
    assert s["ci"]["unit"] == "patient" and s["ci"]["n_groups"] == 2
    assert s["per_category"]["Cardiomegaly"]["miou"] == pytest.approx(0.35)
    assert s["per_category"]["Airspace Opacity"]["pointing"] == 1.0
    np.testing.assert_allclose(result.table["iou_Cardiomegaly"], [0.5, 0.5, 0.25, 0.25, 0.25, 0.35])
    only = mask_grounding_items(dataset, ["airspace opacity"], phrase_template="{c}")
    assert [(i.phrase, i.mask_part) for i in only] == [("Airspace Opacity", "Airspace Opacity")]


def test_manifest_mask_labels_are_separate_items(tiny_model, tmp_path, blocky):
    root = tmp_path / "manifest"
    _write_png(root / "images" / "x.png")
    for name, box in (("lungs", WIDE), ("heart", NARROW)):
        Image.fromarray(_mask(box) * 255).save(_write_png(root / "masks" / f"{name}.png"))
    _write_csv(root / "manifest.csv", ["image_path", "labels"], [["images/x.png", ""]])
    _write_csv(
        root / "masks.csv",
        ["image_path", "mask_path", "label"],
        [["images/x.png", "masks/lungs.png", "lungs"], ["images/x.png", "masks/heart.png", "heart"]],
    )
    dataset = build_dataset("manifest", root)
    items = grounding_items(dataset, phrase_template="the {c}")
    assert [(i.phrase, i.category, i.mask_part) for i in items] == [
        ("the lungs", "lungs", "lungs"),
        ("the heart", "heart", "heart"),
    ]
    result = evaluate_grounding(tiny_model, dataset, items=items)
    _assert_item(result.rows[0], "wide")
    _assert_item(result.rows[1], "narrow")


def test_ms_cxr_validation_annotation_file_chooses_the_thresholds(tiny_model_dir, tmp_path, blocky):
    root = tmp_path / "mimic-jpg"
    header = ["dicom_id", "path", "x", "y", "w", "h", "image_width", "image_height", "category_name", "label_text"]

    def xywh(box: tuple[int, int, int, int]) -> list[int]:
        return [box[0], box[1], box[2] - box[0], box[3] - box[1]]

    for name in ("aaa", "bbb"):
        _write_png(root / "files" / "p10" / f"{name}.png")
    test = _write_csv(
        tmp_path / "ms_cxr_test.csv",
        header,
        [
            ["aaa", "files/p10/aaa.png", *xywh(WIDE), W, H, "Pleural Effusion", "Left pleural effusion"],
            ["aaa", "files/p10/aaa.png", *xywh(NARROW), W, H, "Cardiomegaly", "Enlarged heart"],
        ],
    )
    val = _write_csv(
        tmp_path / "ms_cxr_val.csv",
        header,
        [
            ["bbb", "files/p10/bbb.png", *xywh(NARROW), W, H, "Pleural Effusion", "Small effusion"],
            ["bbb", "files/p10/bbb.png", *xywh(WIDE), W, H, "Cardiomegaly", "Cardiomegaly"],
        ],
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "ground",
                "--model",
                str(tiny_model_dir),
                "--dataset",
                "ms-cxr",
                "--root",
                str(root),
                "--annotations",
                str(test),
                "--val-annotations",
                str(val),
                "--bootstrap",
                "0",
                "--overlays",
                "0",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    opt = {r["category"]: r for r in _read_csv(out / "opt_thresholds.csv")}
    # validation: effusion is A only (best at 0.7), cardiomegaly A + B (best at 0.2); on test
    # the effusion (A + B) at 0.7 and the heart (A) at 0.2 both score IoU .5
    assert (opt["Pleural Effusion"]["threshold"], opt["Cardiomegaly"]["threshold"]) == ("0.7", "0.2")
    assert float(opt["Pleural Effusion"]["iou"]) == pytest.approx(0.5)
    assert float(opt["Cardiomegaly"]["iou"]) == pytest.approx(0.5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["validation"]["annotations"] == str(val) and summary["validation"]["n"] == 2
