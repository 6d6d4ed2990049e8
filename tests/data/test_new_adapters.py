"""VinDr-CXR and CheXlocalize adapters on fake trees, and relabelling / merging of adapters."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from maco_cxr.data.datasets import CheXlocalize, VinDrCxr, build_dataset
from maco_cxr.data.datasets.base import ChestXrayDataset, Record
from maco_cxr.data.datasets.chexlocalize import CHEXLOCALIZE_PATHOLOGIES, decode_coco_rle
from maco_cxr.data.datasets.relabel import (
    MergedDataset,
    match_classes,
    merge_datasets,
    relabel_dataset,
)
from maco_cxr.data.datasets.vindr import VINDR_KAGGLE_CLASSES, VINDR_LABELS, VINDR_LOCAL_LABELS
from maco_cxr.errors import ConfigError, DataError

NAN = float("nan")
# pycocotools' decode trips NumPy 2's __array__(copy=...) deprecation inside pycocotools.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")


# --- writers ---------------------------------------------------------------------------------


def write_dicom(path: Path, uid: str, height: int = 8, width: int = 8) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = uid
    ds.Modality = "DX"
    ds.Rows, ds.Columns = height, width
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(height * width, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jpeg(path: Path, height: int, width: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width), 128, np.uint8)).save(path)
    return path


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """CheXlocalize's encoding (utils.encode_segmentation): pycocotools RLE, counts as str."""
    from pycocotools import mask as mask_api

    rle = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}


# --- VinDr-CXR (PhysioNet 1.0.0 layout) ------------------------------------------------------

IMG_A, IMG_B, IMG_C = "a" * 32, "b" * 32, "c" * 32
BOX_HEADER = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]


def vindr_label_row(
    image_id: str, rad: str | None, positives: set[str], classes: tuple[str, ...] = VINDR_LABELS
) -> list[str]:
    cells = ["1" if name in positives else "0" for name in classes]
    return [image_id, *([rad] if rad is not None else []), *cells]


def make_vindr(tmp: Path) -> Path:
    root = tmp / "vindr" / "1.0.0"
    for image_id in (IMG_A, IMG_B, IMG_C):
        write_dicom(root / "train" / f"{image_id}.dicom", f"1.2.{ord(image_id[0])}")
    labels = root / "annotations" / "image_labels_train.csv"
    write_csv(
        labels,
        ["image_id", "rad_id", *VINDR_LABELS],
        [
            vindr_label_row(IMG_A, "R1", {"Cardiomegaly", "Pleural effusion"}),
            vindr_label_row(IMG_A, "R2", {"Cardiomegaly"}),
            vindr_label_row(IMG_A, "R3", {"No finding"}),
            vindr_label_row(IMG_B, "R1", {"No finding"}),
            vindr_label_row(IMG_B, "R4", {"No finding"}),
            vindr_label_row(IMG_B, "R5", {"Nodule/Mass", "Lung tumor"}),
            vindr_label_row(IMG_C, "R2", {"Aortic enlargement"}),
            vindr_label_row(IMG_C, "R3", {"Aortic enlargement"}),
            vindr_label_row(IMG_C, "R6", {"No finding"}),
        ],
    )
    write_csv(
        root / "annotations" / "annotations_train.csv",
        BOX_HEADER,
        [
            [IMG_A, "R1", "Cardiomegaly", 1, 2, 6, 5],
            [IMG_A, "R1", "Pleural effusion", 0, 4.5, 3, 7.25],
            [IMG_A, "R2", "Cardiomegaly", 1.5, 2, 6.5, 5.5],
            [IMG_A, "R3", "No finding", "", "", "", ""],
            [IMG_B, "R1", "No finding", "", "", "", ""],
            [IMG_B, "R4", "No finding", "", "", "", ""],
            [IMG_B, "R5", "Nodule/Mass", 3, 3, 4, 4],
            [IMG_C, "R2", "Aortic enlargement", 2, 0, 4, 2],
            [IMG_C, "R3", "Aortic enlargement", 2, 1, 4, 2],
            [IMG_C, "R6", "No finding", "", "", "", ""],
        ],
    )
    return root


def column(ds: ChestXrayDataset, name: str) -> list[float]:
    k = ds.classes.index(name)
    return [float(r.labels[k]) for r in ds.records]


def test_vindr_majority_labels_boxes_and_meta(tmp_path: Path) -> None:
    root = make_vindr(tmp_path)
    ds = build_dataset("vindr-cxr", root)
    assert isinstance(ds, VinDrCxr) and ds.layout == "physionet"
    assert ds.classes == VINDR_LABELS and len(ds.classes) == 28
    assert [r.meta["image_id"] for r in ds.records] == [IMG_A, IMG_B, IMG_C]
    assert column(ds, "Cardiomegaly") == [1.0, 0.0, 0.0]  # 2 of 3
    assert column(ds, "Pleural effusion") == [0.0, 0.0, 0.0]  # 1 of 3
    assert column(ds, "No finding") == [0.0, 1.0, 0.0]
    assert column(ds, "Nodule/Mass") == [0.0, 0.0, 0.0]
    assert column(ds, "Aortic enlargement") == [0.0, 0.0, 1.0]
    assert np.nansum(ds.records[0].labels) == 1.0  # only Cardiomegaly
    a = ds.records[0]
    np.testing.assert_array_equal(a.boxes, [[1, 2, 6, 5], [0, 4.5, 3, 7.25], [1.5, 2, 6.5, 5.5]])
    assert a.boxes.dtype == np.float32
    assert a.box_labels == ["Cardiomegaly", "Pleural effusion", "Cardiomegaly"]
    assert a.meta["box_rad_ids"] == ["R1", "R1", "R2"]
    assert a.meta["rad_ids"] == ["R1", "R2", "R3"] and a.meta["vote"] == "majority"
    assert a.meta["rad_label_classes"] == VINDR_LABELS
    r1 = a.meta["rad_labels"]["R1"]
    assert [VINDR_LABELS[k] for k in np.flatnonzero(r1)] == ["Cardiomegaly", "Pleural effusion"]
    assert a.image_path == root / "train" / f"{IMG_A}.dicom" and a.split == "train"
    assert a.patient_id is None
    b = ds.records[1]
    np.testing.assert_array_equal(b.boxes, [[3, 3, 4, 4]])
    assert b.meta["box_rad_ids"] == ["R5"]
    sample = ds[0]
    assert sample["image"].dtype == torch.uint8 and tuple(sample["image"].shape) == (1, 8, 8)
    assert sample["labels"].shape == (28,) and sample["boxes"].shape == (3, 4)
    assert sample["box_labels"] == a.box_labels and "mask" not in sample


def test_vindr_any_vote_and_class_subset(tmp_path: Path) -> None:
    root = make_vindr(tmp_path)
    ds = VinDrCxr(root, vote="any", classes=["Pleural effusion", "Nodule/Mass", "No finding"])
    assert ds.classes == ("Pleural effusion", "Nodule/Mass", "No finding")
    np.testing.assert_array_equal(np.array([r.labels for r in ds.records]), [[1, 0, 1], [0, 1, 1], [0, 0, 1]])
    assert ds.records[0].meta["rad_labels"]["R3"].tolist() == [0.0, 0.0, 1.0]
    # boxes are every local finding's, whatever the chosen classes
    assert ds.records[0].box_labels == ["Cardiomegaly", "Pleural effusion", "Cardiomegaly"]
    with pytest.raises(ConfigError, match=r"classes \['Effusion'\] are not VinDr-CXR"):
        VinDrCxr(root, classes=["Effusion"])
    with pytest.raises(ConfigError, match="vote='all'"):
        VinDrCxr(root, vote="all")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="split='val'"):
        VinDrCxr(root, split="val")  # type: ignore[arg-type]


def test_vindr_test_split_consensus_and_column_alias(tmp_path: Path) -> None:
    root = make_vindr(tmp_path)
    test_labels = tuple("Other disease" if c == "Other diseases" else c for c in VINDR_LABELS)
    write_dicom(root / "test" / "t1.dicom", "1.3.1")
    write_dicom(root / "test" / "t2.dicom", "1.3.2")
    write_csv(
        root / "annotations" / "image_labels_test.csv",
        ["image_id", *test_labels],
        [
            vindr_label_row("t1", None, {"Other disease", "Pneumothorax"}, test_labels),
            vindr_label_row("t2", None, {"No finding"}, test_labels),
        ],
    )
    write_csv(
        root / "annotations" / "annotations_test.csv",
        ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"],
        [["t1", "Pneumothorax", 0, 0, 2, 3], ["t2", "No finding", "", "", "", ""]],
    )
    ds = VinDrCxr(root, split="test")
    assert column(ds, "Other diseases") == [1.0, 0.0]
    assert column(ds, "Pneumothorax") == [1.0, 0.0]
    assert column(ds, "No finding") == [0.0, 1.0]
    assert ds.records[0].meta["rad_ids"] == ["consensus"]
    assert ds.records[0].meta["box_rad_ids"] == ["consensus"]
    np.testing.assert_array_equal(ds.records[0].boxes, [[0, 0, 2, 3]])
    assert ds.records[1].boxes.shape == (0, 4) and ds.records[1].split == "test"


def test_vindr_blank_label_cell_is_zero(tmp_path: Path) -> None:
    root = make_vindr(tmp_path)
    path = root / "annotations" / "image_labels_train.csv"
    rows = list(csv.reader(path.open(newline="")))
    rows[1][2 + VINDR_LABELS.index("Cardiomegaly")] = ""  # R1 of image a
    write_csv(path, rows[0], rows[1:])
    ds = VinDrCxr(root)
    assert ds.records[0].meta["rad_labels"]["R1"][VINDR_LABELS.index("Cardiomegaly")] == 0.0
    assert column(ds, "Cardiomegaly") == [0.0, 0.0, 0.0]  # R1 blank, R2 1, R3 0: 1 of 3
    assert column(VinDrCxr(root, vote="any"), "Cardiomegaly") == [1.0, 0.0, 0.0]


def test_vindr_errors_name_file_line_and_field(tmp_path: Path) -> None:
    root = make_vindr(tmp_path)
    labels = root / "annotations" / "image_labels_train.csv"
    boxes = root / "annotations" / "annotations_train.csv"
    rows = list(csv.reader(labels.open(newline="")))
    bad = [r[:] for r in rows]
    bad[5][2 + VINDR_LABELS.index("Edema")] = "yes"  # line 6: image b
    write_csv(labels, bad[0], bad[1:])
    with pytest.raises(DataError) as info:
        VinDrCxr(root)
    assert f"{labels}, line 6: field 'Edema': 'yes' is not 0 or 1" in str(info.value)
    ds = VinDrCxr(root, on_error="skip")
    assert [r.meta["image_id"] for r in ds.records] == [IMG_A, IMG_C]
    assert len(ds.skips) == 2 and "left out" in ds.skips.skipped[1]["reason"]
    write_csv(labels, rows[0], rows[1:])

    box_rows = list(csv.reader(boxes.open(newline="")))
    broken = [r[:] for r in box_rows]
    broken[8][5] = "1"  # line 9: image c, x_max 1 < x_min 2
    write_csv(boxes, broken[0], broken[1:])
    with pytest.raises(DataError, match=rf"{boxes}, line 9: fields \['x_min'.*has no area"):
        VinDrCxr(root)
    assert [r.meta["image_id"] for r in VinDrCxr(root, on_error="skip").records] == [IMG_A, IMG_B]
    broken = [r[:] for r in box_rows] + [["z" * 32, "R1", "Cardiomegaly", 0, 0, 1, 1]]
    write_csv(boxes, broken[0], broken[1:])
    with pytest.raises(DataError, match=r"line 12: field 'image_id': 'z+' has boxes but no row"):
        VinDrCxr(root)
    broken = [r[:] for r in box_rows] + [[IMG_A, "R1", "Cardiomegally", 0, 0, 1, 1]]
    write_csv(boxes, broken[0], broken[1:])
    with pytest.raises(DataError, match=r"line 12: field 'class_name': 'Cardiomegally' is not"):
        VinDrCxr(root)
    broken = [r[:] for r in box_rows] + [[IMG_B, "R1", "No finding", 0, 0, 1, 1]]
    write_csv(boxes, broken[0], broken[1:])
    with pytest.raises(
        DataError,
        match=r"line 12: fields \['x_min', 'y_min', 'x_max', 'y_max'\]: "
        r"a 'No finding' row must have an empty box",
    ):
        VinDrCxr(root)


def test_vindr_missing_column_and_image(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_vindr(tmp_path)
    labels = root / "annotations" / "image_labels_train.csv"
    rows = list(csv.reader(labels.open(newline="")))
    keep = [i for i, name in enumerate(rows[0]) if name != "ILD"]
    write_csv(labels, [rows[0][i] for i in keep], [[r[i] for i in keep] for r in rows[1:]])
    with pytest.raises(DataError) as info:
        VinDrCxr(root)
    assert str(labels) in str(info.value) and "'ILD'" in str(info.value)
    assert "the columns are" in str(info.value)
    assert VinDrCxr(root, classes=["Cardiomegaly"]).classes == ("Cardiomegaly",)
    write_csv(labels, rows[0], rows[1:])

    (root / "train" / f"{IMG_B}.dicom").unlink()
    with pytest.raises(DataError) as info:
        VinDrCxr(root)
    assert f"{labels}, line 5" in str(info.value) and IMG_B in str(info.value)
    with caplog.at_level(logging.WARNING):
        ds = VinDrCxr(root, on_error="skip")
    assert len(ds) == 2 and len(ds.skips) == 1 and IMG_B in ds.skips.skipped[0]["reason"]
    assert "skipped 1 bad rows/files" in caplog.text
    with pytest.raises(ConfigError, match="on_error='ignore'"):
        VinDrCxr(root, on_error="ignore")  # type: ignore[arg-type]


def test_vindr_layout_detection(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="neither annotations/"):
        VinDrCxr(tmp_path)
    with pytest.raises(ConfigError, match="layout='csv'"):
        VinDrCxr(tmp_path, layout="csv")  # type: ignore[arg-type]


# --- VinDr-CXR (Kaggle VinBigData layout) ----------------------------------------------------

KAGGLE_HEADER = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]


def make_vindr_kaggle(tmp: Path) -> Path:
    root = tmp / "vinbigdata"
    for image_id in ("k1", "k2"):
        write_dicom(root / "train" / f"{image_id}.dicom", f"1.4.{image_id[-1]}")
    write_dicom(root / "test" / "k9.dicom", "1.4.9")
    write_csv(
        root / "train.csv",
        KAGGLE_HEADER,
        [
            ["k1", "Cardiomegaly", 3, "R9", 1, 1, 5, 4],
            ["k1", "Aortic enlargement", 0, "R9", 2, 0, 3, 1],
            ["k1", "Cardiomegaly", 3, "R10", 1, 2, 5, 5],
            ["k1", "No finding", 14, "R8", "", "", "", ""],
            ["k2", "No finding", 14, "R8", "", "", "", ""],
            ["k2", "No finding", 14, "R9", "", "", "", ""],
            ["k2", "No finding", 14, "R10", "", "", "", ""],
        ],
    )
    return root


def test_vindr_kaggle_layout(tmp_path: Path) -> None:
    root = make_vindr_kaggle(tmp_path)
    ds = VinDrCxr(root)
    assert ds.layout == "kaggle" and ds.classes == VINDR_KAGGLE_CLASSES
    assert column(ds, "Cardiomegaly") == [1.0, 0.0]
    assert column(ds, "Aortic enlargement") == [0.0, 0.0]
    assert column(ds, "No finding") == [0.0, 1.0]
    k1 = ds.records[0]
    np.testing.assert_array_equal(k1.boxes, [[1, 1, 5, 4], [2, 0, 3, 1], [1, 2, 5, 5]])
    assert k1.box_labels == ["Cardiomegaly", "Aortic enlargement", "Cardiomegaly"]
    assert k1.meta["box_rad_ids"] == ["R9", "R9", "R10"]
    assert k1.meta["rad_ids"] == ["R9", "R10", "R8"]
    nf = VINDR_KAGGLE_CLASSES.index("No finding")
    assert k1.meta["rad_labels"]["R8"][nf] == 1.0 and k1.meta["rad_labels"]["R8"].sum() == 1.0
    assert ds.records[1].boxes.shape == (0, 4)
    assert column(VinDrCxr(root, vote="any"), "Aortic enlargement") == [1.0, 0.0]
    test = VinDrCxr(root, split="test")
    assert len(test) == 1 and np.isnan(test.records[0].labels).all()
    assert test.records[0].boxes is None and test.records[0].meta["image_id"] == "k9"
    assert tuple(test[0]["image"].shape) == (1, 8, 8)


# --- CheXlocalize ----------------------------------------------------------------------------

CX_ONE = "patient64541_study1_view1_frontal"
CX_TWO = "patient64542_study1_view1_frontal"
CX_NEG = "patient64543_study1_view1_frontal"
CHEXPERT_14 = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]
H, W = 6, 10


def cx_masks() -> dict[str, dict[str, np.ndarray]]:
    empty = np.zeros((H, W), np.uint8)
    masks = {cxr: {p: empty.copy() for p in CHEXLOCALIZE_PATHOLOGIES} for cxr in (CX_ONE, CX_TWO)}
    masks[CX_ONE]["Cardiomegaly"][2:5, 3:8] = 1
    masks[CX_ONE]["Airspace Opacity"][0:2, 0:3] = 1
    masks[CX_ONE]["Airspace Opacity"][5, 9] = 1
    masks[CX_TWO]["Support Devices"][:, 4] = 1
    return masks


def make_chexlocalize(tmp: Path) -> Path:
    root = tmp / "chexlocalize_dataset"
    masks = cx_masks()
    payload = {cxr: {p: encode_rle(m) for p, m in per.items()} for cxr, per in masks.items()}
    (root / "CheXlocalize").mkdir(parents=True)
    (root / "CheXlocalize" / "gt_segmentations_val.json").write_text(json.dumps(payload))
    for cxr in (CX_ONE, CX_TWO, CX_NEG):
        patient, study, view, side = cxr.split("_")
        write_jpeg(root / "CheXpert" / "val" / patient / study / f"{view}_{side}.jpg", H, W)

    def row(cxr: str, positives: set[str]) -> list[str]:
        patient, study, view, side = cxr.split("_")
        return [
            f"CheXpert-v1.0/valid/{patient}/{study}/{view}_{side}.jpg",
            "Male",
            "73",
            "Frontal",
            "AP",
            *("1.0" if c in positives else "0.0" for c in CHEXPERT_14),
        ]

    write_csv(
        root / "CheXpert" / "val_labels.csv",
        ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_14],
        [
            row(CX_ONE, {"Cardiomegaly", "Lung Opacity", "Edema"}),
            row(CX_TWO, {"Support Devices"}),
            row(CX_NEG, {"No Finding"}),
        ],
    )
    return root


def test_chexlocalize_records_labels_and_masks(tmp_path: Path) -> None:
    root = make_chexlocalize(tmp_path)
    ds = build_dataset("chexlocalize", root)
    assert isinstance(ds, CheXlocalize)
    assert ds.classes == CHEXLOCALIZE_PATHOLOGIES and len(ds.classes) == 10
    assert [r.meta["cxr_id"] for r in ds.records] == [CX_ONE, CX_TWO, CX_NEG]
    assert [r.patient_id for r in ds.records] == ["patient64541", "patient64542", "patient64543"]
    labels = np.array([r.labels for r in ds.records])
    expected = np.zeros((3, 10), np.float32)
    for i, names in enumerate([("Cardiomegaly", "Airspace Opacity", "Edema"), ("Support Devices",), ()]):
        for name in names:
            expected[i, CHEXLOCALIZE_PATHOLOGIES.index(name)] = 1.0
    np.testing.assert_array_equal(labels, expected)  # Edema: labelled, but no mask drawn
    assert ds.records[0].meta["label_source"] == "labels file"
    assert ds.records[0].meta["relative_path"] == "val/patient64541/study1/view1_frontal.jpg"
    assert "segmentations" not in ds.records[2].meta

    truth = cx_masks()
    per = ds.read_pathology_masks(0)
    assert list(per) == list(CHEXLOCALIZE_PATHOLOGIES)
    for pathology, mask in per.items():
        assert mask.dtype == np.uint8 and mask.shape == (H, W)
        np.testing.assert_array_equal(mask, truth[CX_ONE][pathology])
    sample = ds[0]
    assert sample["image"].dtype == torch.uint8 and tuple(sample["image"].shape) == (1, H, W)
    union = truth[CX_ONE]["Cardiomegaly"] | truth[CX_ONE]["Airspace Opacity"]
    np.testing.assert_array_equal(sample["mask"].numpy(), union)
    assert int(sample["mask"].sum()) == 15 + 6 + 1
    negative = ds[2]
    assert negative["mask"].shape == (H, W) and int(negative["mask"].sum()) == 0
    assert all(int(m.sum()) == 0 for m in ds.read_pathology_masks(2).values())

    assert ds.pathology_pairs() == [(0, "Cardiomegaly"), (0, "Airspace Opacity"), (0, "Edema"), (1, "Support Devices")]
    assert len(ds.pathology_pairs(positive_only=False)) == 30


def test_chexlocalize_choose_pathologies(tmp_path: Path) -> None:
    root = make_chexlocalize(tmp_path)
    ds = CheXlocalize(root, pathologies="lung opacity")
    assert ds.classes == ("Airspace Opacity",) and ds.pathologies == ("Airspace Opacity",)
    assert [r.labels.tolist() for r in ds.records] == [[1.0], [0.0], [0.0]]
    mask = ds[0]["mask"].numpy()
    np.testing.assert_array_equal(mask, cx_masks()[CX_ONE]["Airspace Opacity"])
    assert mask[5, 9] == 1 and mask[0, 3] == 0 and int(mask.sum()) == 7
    two = CheXlocalize(root, pathologies=["Support Devices", "Cardiomegaly"])
    assert two.classes == ("Support Devices", "Cardiomegaly")
    assert list(two.read_pathology_masks(1)) == ["Support Devices", "Cardiomegaly"]
    np.testing.assert_array_equal(two[1]["mask"].numpy()[:, 4], np.ones(H))
    assert int(two[1]["mask"].sum()) == H
    with pytest.raises(ConfigError, match="'Effusion' is not a CheXlocalize pathology"):
        CheXlocalize(root, pathologies=["Effusion"])
    with pytest.raises(ConfigError, match="twice"):
        CheXlocalize(root, pathologies=["Lung Opacity", "Airspace Opacity"])


def test_chexlocalize_labels_from_masks_and_segmented_only(tmp_path: Path) -> None:
    root = make_chexlocalize(tmp_path)
    ds = CheXlocalize(root, use_labels_file=False)
    assert [r.meta["cxr_id"] for r in ds.records] == [CX_ONE, CX_TWO]
    edema = CHEXLOCALIZE_PATHOLOGIES.index("Edema")
    assert ds.records[0].labels[edema] == 0.0 and ds.records[0].meta["label_source"] == "masks"
    assert ds.records[0].labels.sum() == 2.0 and ds.records[1].labels.sum() == 1.0
    only = CheXlocalize(root, segmented_only=True)
    assert [r.meta["cxr_id"] for r in only.records] == [CX_ONE, CX_TWO]
    assert only.records[0].labels[edema] == 1.0


def test_chexlocalize_test_split_with_study_labels(tmp_path: Path) -> None:
    root = tmp_path / "cl"
    mask = np.zeros((H, W), np.uint8)
    mask[1:3, 1:3] = 1
    entry = {
        p: encode_rle(mask if p == "Pleural Effusion" else np.zeros((H, W), np.uint8)) for p in CHEXLOCALIZE_PATHOLOGIES
    }
    root.mkdir()
    (root / "gt_segmentations_test.json").write_text(json.dumps({"patient64741_study1_view1_frontal": entry}))
    write_jpeg(root / "CheXpert" / "test" / "patient64741" / "study1" / "view1_frontal.jpg", H, W)
    write_jpeg(root / "CheXpert" / "test" / "patient64741" / "study1" / "view2_lateral.jpg", H, W)
    write_csv(
        root / "CheXpert" / "test_labels.csv",
        ["Study", *CHEXPERT_14],
        [["CheXpert-v1.0/test/patient64741/study1", *("1" if c == "Pleural Effusion" else "0" for c in CHEXPERT_14)]],
    )
    ds = CheXlocalize(root, split="test")
    assert [r.meta["cxr_id"] for r in ds.records] == [
        "patient64741_study1_view1_frontal",
        "patient64741_study1_view2_lateral",
    ]
    k = CHEXLOCALIZE_PATHOLOGIES.index("Pleural Effusion")
    assert [r.labels[k] for r in ds.records] == [1.0, 1.0]
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), mask)
    assert int(ds[1]["mask"].sum()) == 0


def test_chexlocalize_errors(tmp_path: Path) -> None:
    root = make_chexlocalize(tmp_path)
    json_path = root / "CheXlocalize" / "gt_segmentations_val.json"
    payload = json.loads(json_path.read_text())
    broken = json.loads(json.dumps(payload))
    del broken[CX_TWO]["Edema"]
    json_path.write_text(json.dumps(broken))
    with pytest.raises(DataError) as info:
        CheXlocalize(root)
    assert f"{json_path}, image '{CX_TWO}': field(s) ['Edema'] missing" in str(info.value)
    assert len(CheXlocalize(root, pathologies="Cardiomegaly")) == 3  # Edema not needed
    skipped = CheXlocalize(root, on_error="skip")
    assert [r.meta["cxr_id"] for r in skipped.records] == [CX_ONE, CX_NEG]
    assert len(skipped.skips) == 2

    broken = json.loads(json.dumps(payload))
    broken[CX_ONE]["Cardiomegaly"]["size"] = [H]
    json_path.write_text(json.dumps(broken))
    with pytest.raises(DataError, match=r"field 'Cardiomegaly': 'size' \[6\] is not"):
        CheXlocalize(root)

    broken = json.loads(json.dumps(payload))
    broken[CX_ONE] = {p: encode_rle(np.zeros((H * 2, W * 2), np.uint8)) for p in CHEXLOCALIZE_PATHOLOGIES}
    json_path.write_text(json.dumps(broken))
    ds = CheXlocalize(root)
    with pytest.raises(
        DataError,
        match=r"field 'Enlarged Cardiomediastinum': the mask is 20x12 "
        r"\(WxH\) but the image .* is 10x6",
    ):
        ds[0]
    failed = CheXlocalize(root, on_error="skip")[0]
    assert "error" in failed and "original-resolution" in failed["error"]

    json_path.write_text(json.dumps(payload))
    image = root / "CheXpert" / "val" / "patient64542" / "study1" / "view1_frontal.jpg"
    image.unlink()
    with pytest.raises(DataError) as info:
        CheXlocalize(root)
    assert str(root / "CheXpert" / "val_labels.csv") + ", line 3" in str(info.value)
    assert str(image) in str(info.value)
    ds = CheXlocalize(root, on_error="skip")
    assert len(ds) == 2 and len(ds.skips) == 1


def test_chexlocalize_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="gt_segmentations_val.json found neither"):
        CheXlocalize(tmp_path)
    with pytest.raises(ConfigError, match="split='valid'"):
        CheXlocalize(tmp_path, split="valid")  # type: ignore[arg-type]


def test_decode_coco_rle_matches_pycocotools_layout() -> None:
    mask = np.zeros((4, 5), np.uint8)
    mask[0, 4] = mask[3, 0] = mask[1:3, 2] = 1
    rle = encode_rle(mask)
    np.testing.assert_array_equal(decode_coco_rle(rle), mask)


# --- relabel and merge -----------------------------------------------------------------------


def in_memory(classes: tuple[str, ...], labels: list[list[float]], names: list[str] | None = None) -> ChestXrayDataset:
    names = names or [f"img{i}.png" for i in range(len(labels))]
    records = [
        Record(image_path=Path(n), labels=np.array(v, dtype=np.float32), meta={"k": i})
        for i, (n, v) in enumerate(zip(names, labels, strict=True))
    ]
    return ChestXrayDataset(records, classes)


def test_match_classes_synonyms_and_case() -> None:
    match = match_classes(
        ["Cardiomegaly", "Effusion", "Pleural_Thickening", "Nodule"],
        ["pleural effusion", "CARDIOMEGALY", "Pleural Thickening", "Mass"],
    )
    assert match.mapping == {
        "pleural effusion": "Effusion",
        "CARDIOMEGALY": "Cardiomegaly",
        "Pleural Thickening": "Pleural_Thickening",
        "Mass": None,
    }
    assert match.missing == ("Mass",) and match.dropped == ("Nodule",)
    exact = match_classes(["Effusion", "Pleural Effusion"], ["effusion"])
    assert exact.mapping == {"effusion": "Effusion"} and exact.dropped == ("Pleural Effusion",)
    opacity = match_classes(["Airspace Opacity"], ["Lung Opacity"])
    assert opacity.mapping == {"Lung Opacity": "Airspace Opacity"}
    with pytest.raises(ConfigError, match="matches several source classes"):
        match_classes(["Opacity", "Airspace Opacity"], ["Lung Opacity"])
    with pytest.raises(ConfigError, match="twice"):
        match_classes(["A"], ["Effusion", "effusion"])
    assert match_classes(["Nodule/Mass"], ["Nodule"]).mapping == {"Nodule": None}
    assert match_classes(["X"], ["Effusion"], synonyms=()).missing == ("Effusion",)


def test_relabel_dataset_copies_and_reports(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = in_memory(("Cardiomegaly", "Effusion", "Nodule"), [[1, 0, 1], [0, 1, NAN], [0, 0, 0]])
    source.records[0].boxes = np.array([[1, 2, 3, 4]], np.float32)
    source.records[0].box_labels = ["Nodule"]
    with caplog.at_level(logging.WARNING):
        target = relabel_dataset(source, ["Pleural Effusion", "Cardiomegaly", "Pneumothorax"])
    assert target.classes == ("Pleural Effusion", "Cardiomegaly", "Pneumothorax")
    np.testing.assert_array_equal(np.array([r.labels for r in target.records]), [[0, 1, NAN], [1, 0, NAN], [0, 0, NAN]])
    assert target.records[0].labels.dtype == np.float32
    report = target.relabel_report  # type: ignore[attr-defined]
    assert report.missing == ("Pneumothorax",) and report.dropped == ("Nodule",)
    assert "['Pneumothorax']" in caplog.text and "NaN" in caplog.text
    # the source is untouched and nothing is shared
    assert source.classes == ("Cardiomegaly", "Effusion", "Nodule")
    np.testing.assert_array_equal(source.records[0].labels, [1, 0, 1])
    assert target.records[0] is not source.records[0]
    assert target.records[0].meta is not source.records[0].meta
    assert target.records[0].boxes is not source.records[0].boxes
    np.testing.assert_array_equal(target.records[0].boxes, [[1, 2, 3, 4]])
    target.records[0].meta["k"] = 99
    target.records[0].box_labels.append("x")
    assert source.records[0].meta["k"] == 0 and source.records[0].box_labels == ["Nodule"]
    assert type(target) is ChestXrayDataset and len(target) == 3

    unlabelled = ChestXrayDataset([Record(image_path=Path("u.png"))], ("A",))
    assert np.isnan(relabel_dataset(unlabelled, ["A", "B"]).records[0].labels).all()
    ragged = in_memory(("A", "B"), [[1, 0]])
    ragged.records[0].labels = np.array([1.0], np.float32)
    with pytest.raises(DataError, match="has 1 labels but its dataset has 2 classes"):
        relabel_dataset(ragged, ["A"])


def test_relabel_keeps_adapter_mask_reading(tmp_path: Path) -> None:
    root = make_chexlocalize(tmp_path)
    ds = CheXlocalize(root, pathologies=["Cardiomegaly", "Airspace Opacity"])
    relabelled = relabel_dataset(ds, ["Lung Opacity", "Pleural Effusion"])
    assert isinstance(relabelled, CheXlocalize)
    assert [r.labels[0] for r in relabelled.records] == [1.0, 0.0, 0.0]
    assert np.isnan(relabelled.records[0].labels[1])
    truth = cx_masks()[CX_ONE]
    np.testing.assert_array_equal(relabelled[0]["mask"].numpy(), truth["Cardiomegaly"] | truth["Airspace Opacity"])
    assert ds.classes == ("Cardiomegaly", "Airspace Opacity")


def test_merge_datasets(tmp_path: Path) -> None:
    vindr = VinDrCxr(make_vindr(tmp_path), classes=["Cardiomegaly", "Pleural effusion", "Lung Opacity", "No finding"])
    chexlocalize = CheXlocalize(make_chexlocalize(tmp_path), pathologies=["Cardiomegaly", "Airspace Opacity", "Edema"])
    merged = merge_datasets([vindr, chexlocalize])
    assert isinstance(merged, MergedDataset) and len(merged) == 6
    assert merged.classes == ("Cardiomegaly", "Pleural effusion", "Lung Opacity", "No finding", "Edema")
    labels = np.array([r.labels for r in merged.records])
    np.testing.assert_array_equal(
        labels,
        [
            [1, 0, 0, 0, NAN],
            [0, 0, 0, 1, NAN],
            [0, 0, 0, 0, NAN],
            [1, NAN, 1, NAN, 1],
            [0, NAN, 0, NAN, 0],
            [0, NAN, 0, NAN, 0],
        ],
    )
    assert [r.meta["merge_source"] for r in merged.records] == ["VinDrCxr"] * 3 + ["CheXlocalize"] * 3
    assert merged.relabel_reports["CheXlocalize"].mapping["Lung Opacity"] == "Airspace Opacity"
    assert merged.relabel_reports["VinDrCxr"].missing == ("Edema",)
    assert "merge_source" not in vindr.records[0].meta  # sources untouched
    assert vindr.classes == ("Cardiomegaly", "Pleural effusion", "Lung Opacity", "No finding")

    dicom = merged[0]
    assert tuple(dicom["image"].shape) == (1, 8, 8) and "mask" not in dicom
    assert dicom["labels"].shape == (5,) and dicom["boxes"].shape == (3, 4)
    truth = cx_masks()[CX_ONE]
    expected = truth["Cardiomegaly"] | truth["Airspace Opacity"]
    np.testing.assert_array_equal(merged[3]["mask"].numpy(), expected)

    subset = relabel_dataset(merged, ["Edema", "Cardiomegaly"])
    subset.records = subset.records[3:4]
    np.testing.assert_array_equal(subset[0]["mask"].numpy(), expected)
    assert subset[0]["labels"].tolist() == [1.0, 1.0]

    named = merge_datasets({"cl": chexlocalize, "vd": vindr}, ["Pleural Effusion"])
    assert named.classes == ("Pleural Effusion",) and list(named.parts) == ["cl", "vd"]
    assert np.isnan([r.labels[0] for r in named.records[:3]]).all()  # not chosen in cl
    assert [float(r.labels[0]) for r in named.records[3:]] == [0.0, 0.0, 0.0]
    nested = merge_datasets({"both": named, "again": vindr})
    assert list(nested.parts) == ["both/cl", "both/vd", "again"] and len(nested) == 9
    np.testing.assert_array_equal(nested[0]["mask"].numpy(), expected)
    with pytest.raises(ConfigError, match="at least one"):
        merge_datasets([])
    orphan = merged.records[0]
    orphan.meta["merge_source"] = "elsewhere"
    with pytest.raises(DataError, match="not one of the merged parts"):
        merged.read_mask(orphan, 8, 8)


def test_registry_has_the_new_kinds(tmp_path: Path) -> None:
    from maco_cxr.data.datasets import DATASETS

    assert DATASETS["vindr-cxr"] is VinDrCxr and DATASETS["chexlocalize"] is CheXlocalize
    assert len(build_dataset("vindr-cxr", make_vindr_kaggle(tmp_path), split="test")) == 1
    assert VINDR_LOCAL_LABELS[:3] == ("Aortic enlargement", "Atelectasis", "Calcification")
