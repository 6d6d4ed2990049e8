"""Dataset adapters on tiny fake copies of each official layout, plus tests/assets/cxr-real."""

from __future__ import annotations

import csv
import gzip
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from maco_cxr.data.datasets import (
    DATASETS,
    CheXpert,
    CovidRural,
    CxrReal,
    GenericManifest,
    MimicCxrJpg,
    MsCxr,
    NihChestXray14,
    RsnaPneumonia,
    SiimAcr,
    build_dataset,
)
from maco_cxr.data.datasets.base import ChestXrayDataset
from maco_cxr.data.datasets.chexpert import CHEXPERT_5, CHEXPERT_OBSERVATIONS
from maco_cxr.data.datasets.nih import NIH_CLASSES
from maco_cxr.data.rle import rle_encode
from maco_cxr.errors import ConfigError, DataError

CXR_REAL = Path(__file__).resolve().parents[1] / "assets" / "cxr-real"
NAN = float("nan")


# --- writers ---------------------------------------------------------------------------------


def write_image(path: Path, height: int = 12, width: int = 16, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.arange(height * width).reshape(height, width) + value) % 256
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def write_mask(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((mask > 0).astype(np.uint8) * 255).save(path)
    return path


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
    ds.Modality = "CR"
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
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def drop_column(path: Path, column: str) -> None:
    """Rewrite a CSV without one column (names compared after stripping, as SIIM needs)."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    keep = [i for i, name in enumerate(rows[0]) if name.strip() != column]
    write_csv(path, [rows[0][i] for i in keep], [[r[i] for i in keep] for r in rows[1:]])


def labels_of(ds: ChestXrayDataset) -> list[list[float]]:
    return [r.labels.tolist() for r in ds.records]


def assert_labels(ds: ChestXrayDataset, expected: list[list[float]]) -> None:
    np.testing.assert_array_equal(np.array(labels_of(ds)), np.array(expected))


# --- fake layouts ----------------------------------------------------------------------------


@dataclass
class Fake:
    """A fake dataset tree and how to break it."""

    cls: type[ChestXrayDataset]
    root: Path
    count: int  # records with default arguments
    table: Path | None  # a CSV with a required column
    column: str
    image: Path  # an image used by exactly one record
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self, **kwargs: Any) -> ChestXrayDataset:
        return self.cls(self.root, **{**self.kwargs, **kwargs})


def make_manifest(tmp: Path) -> Fake:
    root = tmp / "manifest"
    write_image(root / "img" / "a.png")
    write_image(root / "img" / "b.png", value=7)
    write_image(root / "img" / "c.png", 6, 8)
    absolute = write_image(tmp / "elsewhere" / "d.png")
    write_csv(
        root / "manifest.csv",
        ["image_path", "report", "labels", "patient_id", "split", "site"],
        [
            ["img/a.png", "Small left effusion.", "Effusion|Nodule", "p1", "train", "x"],
            ["img/b.png", "", "No Finding", "p1", "train", "y"],
            ["img/c.png", "Unclear.", "", "p2", "val", "z"],
            [str(absolute), "Big heart.", "Cardiomegaly", "", "test", "w"],
        ],
    )
    write_csv(
        root / "boxes.csv",
        ["image_path", "label", "x_min", "y_min", "x_max", "y_max", "category"],
        [
            ["img/a.png", "effusion", 1, 2, 5, 9, "finding"],
            ["img/a.png", "nodule", 8, 1, 10.5, 3, "finding"],
            ["img/c.png", "left lung", 0, 0, 4, 6, "anatomy"],
        ],
    )
    lungs = np.zeros((12, 16), np.uint8)
    lungs[2:6, 3:9] = 1
    effusion = np.zeros((12, 16), np.uint8)
    effusion[5:8, 0:4] = 1
    write_mask(root / "masks" / "a_lungs.png", lungs)
    write_mask(root / "masks" / "a_effusion.png", effusion)
    write_csv(
        root / "masks.csv",
        ["image_path", "mask_path", "label"],
        [["img/a.png", "masks/a_lungs.png", "lungs"], ["img/a.png", "masks/a_effusion.png", "effusion"]],
    )
    return Fake(GenericManifest, root, 4, root / "manifest.csv", "image_path", root / "img" / "b.png")


def make_mimic(tmp: Path) -> Fake:
    root = tmp / "mimic"
    reports = tmp / "mimic-reports"
    study1 = Path("files/p10/p10000001/s50000001")
    study2 = Path("files/p10/p10000002/s50000002")
    write_image(root / study1 / "d1.jpg")
    write_image(root / study1 / "d2.jpg")
    write_image(root / study2 / "d3.jpg")
    write_image(root / study2 / "d4.jpg")
    write_csv(
        root / "mimic-cxr-2.0.0-metadata.csv.gz",
        ["dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns"],
        [
            ["d1", 10000001, 50000001, "PA", 12, 16],
            ["d2", 10000001, 50000001, "LATERAL", 12, 16],
            ["d3", 10000002, 50000002, "AP", 12, 16],
            ["d4", 10000002, 50000002, "PA", 12, 16],
        ],
    )
    write_csv(
        root / "mimic-cxr-2.0.0-split.csv",
        ["dicom_id", "study_id", "subject_id", "split"],
        [
            ["d1", 50000001, 10000001, "train"],
            ["d2", 50000001, 10000001, "train"],
            ["d3", 50000002, 10000002, "test"],
            ["d4", 50000002, 10000002, "test"],
        ],
    )
    values = {"Atelectasis": "1.0", "Cardiomegaly": "-1.0", "Edema": "0.0"}
    write_csv(
        root / "mimic-cxr-2.0.0-chexpert.csv",
        ["subject_id", "study_id", *sorted(CHEXPERT_OBSERVATIONS)],
        [[10000001, 50000001, *(values.get(c, "") for c in sorted(CHEXPERT_OBSERVATIONS))]],
    )
    (reports / study1.parent).mkdir(parents=True)
    (reports / study1.with_suffix(".txt")).write_text(
        "                                 FINAL REPORT\n INDICATION: Cough.\n\n"
        " FINDINGS: Left lower lobe atelectasis.\n\n IMPRESSION: Atelectasis.\n"
    )
    (reports / study2.parent).mkdir(parents=True)
    (reports / study2.with_suffix(".txt")).write_text(
        " FINDINGS: Lines and tubes in place.\n\n IMPRESSION: No acute process.\n"
    )
    return Fake(
        MimicCxrJpg,
        root,
        3,
        root / "mimic-cxr-2.0.0-split.csv",
        "split",
        root / study1 / "d1.jpg",
        {"reports_root": reports},
    )


def make_chexpert(tmp: Path) -> Fake:
    root = tmp / "CheXpert-v1.0-small"
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS]

    def row(path: str, view: str, **labels: str) -> list[str]:
        cells = {name.replace(" ", "_"): value for name, value in labels.items()}
        return [
            f"CheXpert-v1.0-small/{path}",
            "Female",
            "68",
            view,
            "AP" if view == "Frontal" else "",
            *(cells.get(c.replace(" ", "_"), "") for c in CHEXPERT_OBSERVATIONS),
        ]

    write_csv(
        root / "train.csv",
        header,
        [
            row(
                "train/patient00001/study1/view1_frontal.jpg",
                "Frontal",
                Cardiomegaly="1.0",
                Edema="-1.0",
                Pleural_Effusion="0.0",
            ),
            row("train/patient00001/study1/view2_lateral.jpg", "Lateral", Cardiomegaly="1.0"),
            row("train/patient00002/study1/view1_frontal.jpg", "Frontal", Atelectasis="-1.0", Consolidation="1.0"),
        ],
    )
    write_csv(
        root / "valid.csv",
        header,
        [
            row("valid/patient64541/study1/view1_frontal.jpg", "Frontal", Edema="1.0"),
        ],
    )
    for path in (
        "train/patient00001/study1/view1_frontal.jpg",
        "train/patient00001/study1/view2_lateral.jpg",
        "train/patient00002/study1/view1_frontal.jpg",
        "valid/patient64541/study1/view1_frontal.jpg",
    ):
        write_image(root / path)
    return Fake(CheXpert, root, 2, root / "train.csv", "Path", root / "train/patient00002/study1/view1_frontal.jpg")


def make_nih(tmp: Path) -> Fake:
    root = tmp / "nih"
    write_image(root / "images_001" / "images" / "00000001_000.png")
    write_image(root / "images_001" / "images" / "00000001_001.png")
    write_image(root / "images_002" / "images" / "00000002_000.png")
    write_image(root / "images_002" / "images" / "00000003_000.png")
    write_csv(
        root / "Data_Entry_2017.csv",
        [
            "Image Index",
            "Finding Labels",
            "Follow-up #",
            "Patient ID",
            "Patient Age",
            "Patient Gender",
            "View Position",
            "OriginalImage[Width",
            "Height]",
            "OriginalImagePixelSpacing[x",
            "y]",
            "",
        ],
        [
            ["00000001_000.png", "Cardiomegaly", 0, 1, 58, "M", "PA", 2682, 2749, 0.14, 0.14, ""],
            ["00000001_001.png", "Effusion|Pleural_Thickening|Hernia", 1, 1, 58, "M", "PA", 2894, 2729, 0.14, 0.14, ""],
            ["00000002_000.png", "No Finding", 0, 2, 81, "M", "PA", 2500, 2048, 0.17, 0.17, ""],
            ["00000003_000.png", "Infiltration", 0, 3, 74, "F", "AP", 2500, 2048, 0.17, 0.17, ""],
        ],
    )
    write_csv(
        root / "BBox_List_2017.csv",
        ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]", "", "", ""],
        [
            ["00000001_000.png", "Cardiomegaly", 2.5, 3, 10, 4, "", "", ""],
            ["00000003_000.png", "Infiltrate", 1, 1, 2, 2, "", "", ""],
            ["00000003_000.png", "Effusion", 0, 5, 3, 3, "", "", ""],
        ],
    )
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000002_000.png\n")
    (root / "test_list.txt").write_text("00000003_000.png\n")
    return Fake(
        NihChestXray14,
        root,
        4,
        root / "Data_Entry_2017.csv",
        "Patient ID",
        root / "images_002" / "images" / "00000002_000.png",
    )


def make_rsna(tmp: Path) -> Fake:
    root = tmp / "rsna"
    for pid in ("p-one", "p-two", "p-three"):
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", f"1.2.3.{len(pid)}")
    write_dicom(root / "stage_2_test_images" / "t-one.dcm", "1.2.4.1")
    write_csv(
        root / "stage_2_train_labels.csv",
        ["patientId", "x", "y", "width", "height", "Target"],
        [
            ["p-one", 1, 2, 3, 4, 1],
            ["p-two", "", "", "", "", 0],
            ["p-one", 5.5, 0, 2, 1, 1],
            ["p-three", 0, 0, 8, 8, 1],
        ],
    )
    write_csv(
        root / "stage_2_detailed_class_info.csv",
        ["patientId", "class"],
        [["p-one", "Lung Opacity"], ["p-two", "Normal"], ["p-three", "Lung Opacity"]],
    )
    return Fake(
        RsnaPneumonia, root, 3, root / "stage_2_train_labels.csv", "Target", root / "stage_2_train_images" / "p-two.dcm"
    )


SIIM_UIDS = ("1.2.276.0.7230010.3.1.4.1", "1.2.276.0.7230010.3.1.4.2", "1.2.276.0.7230010.3.1.4.3")


def make_siim(tmp: Path) -> Fake:
    root = tmp / "siim"
    for k, uid in enumerate(SIIM_UIDS):
        write_dicom(root / "dicom-images-train" / f"1.2.{k}" / f"1.3.{k}" / f"{uid}.dcm", uid)
    write_dicom(root / "dicom-images-test" / "9" / "9" / "1.2.9.dcm", "1.2.9")
    root.joinpath("train-rle.csv").write_text(
        "ImageId, EncodedPixels\n"
        f"{SIIM_UIDS[0]}, 1 2 8 1\n"  # column 0 rows 1-2, column 1 row 3
        f"{SIIM_UIDS[1]}, -1\n"
        f"{SIIM_UIDS[0]}, 60 4\n"  # last column, rows 4-7
        f"{SIIM_UIDS[2]}, -1\n"
    )
    return Fake(
        SiimAcr,
        root,
        3,
        root / "train-rle.csv",
        "EncodedPixels",
        root / "dicom-images-train" / "1.2.1" / "1.3.1" / f"{SIIM_UIDS[1]}.dcm",
    )


MSCXR_HEADER = ["dicom_id", "path", "x", "y", "w", "h", "image_width", "image_height", "category_name", "label_text"]


def make_mscxr(tmp: Path) -> Fake:
    root = tmp / "mimic-jpg"
    one = "files/p15/p15000001/s50000009/aaa.jpg"
    two = "files/p16/p16000002/s50000010/bbb.jpg"
    write_image(root / one)
    write_image(root / two)
    annotations = write_csv(
        tmp / "ms_cxr.csv",
        MSCXR_HEADER,
        [
            ["aaa", one, 1, 2, 3, 4, 16, 12, "Pleural Effusion", "Left pleural effusion"],
            ["aaa", one, 8, 2, 2, 2, 16, 12, "Pleural Effusion", "left pleural effusion"],
            ["aaa", one, 0, 0, 5, 5, 16, 12, "Cardiomegaly", "Enlarged heart"],
            ["bbb", two, 4, 4, 4, 4, 16, 12, "Pneumothorax", "Small right apical pneumothorax"],
        ],
    )
    return Fake(MsCxr, root, 3, annotations, "label_text", root / two, {"annotations": annotations})


def make_covid_rural(tmp: Path) -> Fake:
    root = tmp / "covid"
    write_image(root / "images" / "a.png")
    write_image(root / "images" / "b.jpg")
    mask = np.zeros((12, 16), np.uint8)
    mask[3:7, 2:5] = 1
    write_mask(root / "masks" / "a.png", mask)
    write_mask(root / "masks" / "b.png", 1 - mask)
    return Fake(CovidRural, root, 2, None, "", root / "images" / "b.jpg")


MAKERS: dict[str, Callable[[Path], Fake]] = {
    "manifest": make_manifest,
    "mimic": make_mimic,
    "chexpert": make_chexpert,
    "nih": make_nih,
    "rsna": make_rsna,
    "siim": make_siim,
    "ms-cxr": make_mscxr,
    "covid-rural": make_covid_rural,
}
WITH_TABLE = [name for name in MAKERS if name != "covid-rural"]


# --- contract tests over every adapter -------------------------------------------------------


@pytest.mark.parametrize("name", MAKERS)
def test_sample_contract(name: str, tmp_path: Path) -> None:
    fake = MAKERS[name](tmp_path)
    ds = fake.build()
    assert len(ds) == fake.count and len(ds.skips) == 0
    for index in range(len(ds)):
        sample = ds[index]
        image = sample["image"]
        assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 1
        if "labels" in sample:
            assert sample["labels"].dtype == torch.float32
            assert sample["labels"].shape == (len(ds.classes),)
        if "boxes" in sample:
            assert sample["boxes"].shape == (len(sample["box_labels"]), 4)
        if "mask" in sample:
            assert sample["mask"].shape == image.shape[1:]
            assert set(sample["mask"].unique().tolist()) <= {0, 1}


@pytest.mark.parametrize("name", WITH_TABLE)
def test_missing_column(name: str, tmp_path: Path) -> None:
    fake = MAKERS[name](tmp_path)
    assert fake.table is not None
    drop_column(fake.table, fake.column)
    with pytest.raises(DataError) as info:
        fake.build()
    message = str(info.value)
    assert str(fake.table) in message and repr(fake.column) in message
    assert "the columns are" in message


@pytest.mark.parametrize("name", MAKERS)
def test_missing_image_raises(name: str, tmp_path: Path) -> None:
    fake = MAKERS[name](tmp_path)
    fake.image.unlink()
    with pytest.raises(DataError) as info:
        fake.build()
    assert fake.image.stem in str(info.value)
    if fake.table is not None:
        assert str(fake.table) in str(info.value) and ", line " in str(info.value)


@pytest.mark.parametrize("name", MAKERS)
def test_missing_image_skipped_and_counted(name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fake = MAKERS[name](tmp_path)
    fake.image.unlink()
    with caplog.at_level(logging.WARNING):
        ds = fake.build(on_error="skip")
    assert len(ds) == fake.count - 1
    assert len(ds.skips) == 1 and fake.image.stem in ds.skips.skipped[0]["reason"]
    assert "skipped 1 bad rows/files" in caplog.text
    assert all(r.image_path != fake.image for r in ds.records)


@pytest.mark.parametrize("name", MAKERS)
def test_on_error_is_validated(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="on_error='ignore'"):
        MAKERS[name](tmp_path).build(on_error="ignore")


def test_registry(tmp_path: Path) -> None:
    assert set(DATASETS) == {
        "manifest",
        "cxr-real",
        "mimic-cxr",
        "chexpert",
        "nih",
        "rsna",
        "siim",
        "ms-cxr",
        "covid-rural",
        "vindr-cxr",
        "chexlocalize",
    }
    assert isinstance(build_dataset("cxr-real", CXR_REAL), CxrReal)
    fake = make_nih(tmp_path)
    assert len(build_dataset("nih", fake.root, split="test")) == 1
    with pytest.raises(ConfigError, match=r"unknown dataset kind 'nhi'; valid kinds: \['chexlocalize', 'chexpert'"):
        build_dataset("nhi", fake.root)


# --- cxr-real (real images shipped with the tests) -------------------------------------------


def csv_rows(name: str) -> list[dict[str, str]]:
    with (CXR_REAL / name).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_cxr_real_counts_match_the_csvs() -> None:
    manifest, boxes, masks = csv_rows("manifest.csv"), csv_rows("boxes.csv"), csv_rows("masks.csv")
    ds = CxrReal(CXR_REAL)
    assert len(ds) == len(manifest) == 26 and len(ds.skips) == 0
    assert sum(len(r.box_labels) for r in ds.records) == len(boxes)
    assert sum(len(r.mask_paths) for r in ds.records) == len(masks)
    names = {n for row in manifest for n in row["labels"].split("|") if n}
    expected = sorted(names - {"No Finding"})
    assert ds.classes == tuple(expected)
    by_name = {r.image_path.name: r for r in ds.records}
    assert by_name["nih_00027426_000.png"].labels.tolist() == [0.0] * len(expected)
    heart = by_name["nih_00000001_000.png"].labels
    assert heart[expected.index("Cardiomegaly")] == 1.0 and heart.sum() == 1.0
    val = CxrReal(CXR_REAL, split="val")
    assert len(val) == sum(row["split"] == "val" for row in manifest)
    left = CxrReal(CXR_REAL, mask_labels=["left lung"])
    assert sum(len(r.mask_paths) for r in left.records) == sum(row["label"] == "left lung" for row in masks)


def test_cxr_real_sample_geometry() -> None:
    ds = CxrReal(CXR_REAL)
    index = next(i for i, r in enumerate(ds.records) if r.mask_paths and r.boxes is not None)
    sample = ds[index]
    row = next(r for r in csv_rows("manifest.csv") if r["image_path"] == "images/" + ds.records[index].image_path.name)
    assert sample["image"].shape == (1, int(row["height"]), int(row["width"]))
    assert sample["mask"].shape == sample["image"].shape[1:]
    assert 0 < int(sample["mask"].sum()) < sample["mask"].numel()
    assert sample["patient_id"] == row["patient_id"]
    assert (sample["boxes"][:, 2] <= int(row["width"]) + 1).all()


# --- GenericManifest -------------------------------------------------------------------------


def test_manifest_records(tmp_path: Path) -> None:
    fake = make_manifest(tmp_path)
    ds = fake.build()
    assert ds.classes == ("Cardiomegaly", "Effusion", "Nodule")
    assert_labels(ds, [[0, 1, 1], [0, 0, 0], [NAN, NAN, NAN], [1, 0, 0]])
    a, b, c, d = ds.records
    assert a.report == "Small left effusion." and b.report is None
    assert (a.patient_id, d.patient_id, c.split) == ("p1", None, "val")
    assert a.meta["site"] == "x" and d.image_path.is_absolute()
    np.testing.assert_array_equal(a.boxes, [[1, 2, 5, 9], [8, 1, 10.5, 3]])
    assert a.box_labels == ["effusion", "nodule"]
    assert a.meta["box_meta"][0] == {"category": "finding"}
    assert b.boxes is None and c.box_labels == ["left lung"]
    assert [p.name for p in a.mask_paths] == ["a_lungs.png", "a_effusion.png"]
    assert int(ds[0]["mask"].sum()) == 4 * 6 + 3 * 4 - 1  # the union (one shared pixel)
    assert "mask" not in ds[1]
    only = fake.build(mask_labels=["effusion"])
    assert int(only[0]["mask"].sum()) == 3 * 4
    assert only.records[0].meta["mask_labels"] == ["effusion"]
    assert [r.image_path.name for r in fake.build(split="train").records] == ["a.png", "b.png"]
    chosen = fake.build(classes=["Nodule", "Atelectasis"])
    assert_labels(chosen, [[1, 0], [0, 0], [NAN, NAN], [0, 0]])


def test_manifest_jsonl(tmp_path: Path) -> None:
    root = tmp_path / "j"
    write_image(root / "a.png")
    write_image(root / "b.png")
    write_mask(root / "m.png", np.eye(12, 16, dtype=np.uint8))
    lines = [
        {
            "image_path": "a.png",
            "report": "Nodule.",
            "labels": ["Nodule", "Mass"],
            "patient_id": 7,
            "split": "train",
            "boxes": [{"box": [1, 1, 4, 5], "label": "nodule", "category": "finding"}],
            "mask_paths": ["m.png"],
            "mask_labels": ["nodule"],
            "source": "s1",
        },
        {"image_path": "b.png", "labels": "No Finding", "split": "val", "boxes": []},
    ]
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    ds = GenericManifest(root)
    assert ds.classes == ("Mass", "Nodule")
    assert_labels(ds, [[1, 1], [0, 0]])
    a, b = ds.records
    assert a.patient_id == "7" and a.meta["source"] == "s1"
    assert a.meta["box_meta"] == [{"category": "finding"}] and a.box_labels == ["nodule"]
    assert b.boxes is not None and b.boxes.shape == (0, 4)
    assert int(ds[0]["mask"].sum()) == 12
    assert len(GenericManifest(root / "manifest.jsonl", split="val")) == 1
    (root / "manifest.jsonl").write_text('{"image_path": "a.png"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"jsonl, line 2: a line must hold one JSON object"):
        GenericManifest(root)


def test_manifest_bad_rows(tmp_path: Path) -> None:
    fake = make_manifest(tmp_path)
    write_csv(
        fake.root / "boxes.csv",
        ["image_path", "label", "x_min", "y_min", "x_max", "y_max"],
        [
            ["img/a.png", "effusion", 1, 2, 5, 9],
            ["img/zz.png", "nodule", 1, 1, 2, 2],
            ["img/b.png", "nodule", 5, 1, 2, "x"],
        ],
    )
    with pytest.raises(
        DataError,
        match=r"boxes\.csv, line 3: field 'image_path': 'img/zz.png' "
        "is not in the manifest",
    ):
        fake.build()
    ds = fake.build(on_error="skip")
    assert [s["where"][-6:] for s in ds.skips.skipped] == ["line 3", "line 4"]
    assert "'y_max': cannot parse 'x'" in ds.skips.skipped[1]["reason"]
    assert ds.records[1].boxes is None
    write_csv(fake.root / "manifest.csv", ["image_path", "labels"], [["img/a.png", "No Finding|Nodule"]])
    with pytest.raises(
        DataError,
        match=r"manifest\.csv, line 2: field 'labels': 'No Finding' "
        "together with findings",
    ):
        fake.build()
    write_csv(fake.root / "manifest.csv", ["image_path", "labels"], [["img/a.png", "Nodule"]])
    with pytest.raises(DataError, match="split='train' was given but no row has a 'split'"):
        fake.build(split="train")


def test_manifest_mask_of_wrong_size(tmp_path: Path) -> None:
    fake = make_manifest(tmp_path)
    write_mask(fake.root / "masks" / "a_lungs.png", np.ones((12, 15), np.uint8))
    ds = fake.build()
    with pytest.raises(DataError, match=r"a_lungs\.png: mask is 15x12 .* is 16x12"):
        ds[0]


# --- MIMIC-CXR-JPG ---------------------------------------------------------------------------


def test_mimic_records(tmp_path: Path) -> None:
    fake = make_mimic(tmp_path)
    ds = fake.build(classes=["Atelectasis", "Cardiomegaly", "Edema", "Pneumonia"], require_report=False)
    assert [r.meta["dicom_id"] for r in ds.records] == ["d1", "d3", "d4"]  # LATERAL left out
    assert_labels(ds, [[1, NAN, 0, 0], [NAN] * 4, [NAN] * 4])  # study 2 has no label row
    d1 = ds.records[0]
    assert d1.report == "Left lower lobe atelectasis. Atelectasis."
    assert (d1.patient_id, d1.split, d1.meta["ViewPosition"]) == ("10000001", "train", "PA")
    assert ds.records[1].report == "Lines and tubes in place. No acute process."
    ones = fake.build(classes=["Cardiomegaly", "Pneumonia"], uncertain="ones", blank="nan", split="train")
    assert_labels(ones, [[1, NAN]])
    every_view = fake.build(views=None, split="train")
    assert [r.meta["ViewPosition"] for r in every_view.records] == ["PA", "LATERAL"]
    assert len(fake.build(views=["AP"])) == 1
    assert ds.classes == ("Atelectasis", "Cardiomegaly", "Edema", "Pneumonia")
    assert fake.build().classes == CHEXPERT_OBSERVATIONS


def test_mimic_reports(tmp_path: Path) -> None:
    fake = make_mimic(tmp_path)
    empty = fake.kwargs["reports_root"] / "files/p10/p10000002/s50000002.txt"
    empty.write_text(" INDICATION: Fever.\n COMPARISON: None.\n")
    with pytest.raises(
        DataError,
        match=r"split\.csv, line 4: report file .*s50000002\.txt has "
        "no text in sections",
    ):
        fake.build()
    ds = fake.build(on_error="skip")
    assert len(ds) == 1 and len(ds.skips) == 2  # both images of the study
    assert fake.build(require_report=False).records[1].report is None
    only_impression = fake.build(split="train", report_sections=("impression",))
    assert only_impression.records[0].report == "Atelectasis."
    with pytest.raises(DataError, match=r"s50000001\.txt does not exist \(check reports_root"):
        fake.build(reports_root=tmp_path / "nowhere")


def test_mimic_bad_label(tmp_path: Path) -> None:
    fake = make_mimic(tmp_path)
    write_csv(
        fake.root / "mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id", "Edema"], [[10000001, 50000001, "maybe"]]
    )
    with pytest.raises(
        DataError,
        match=r"chexpert\.csv, line 2: field 'Edema': cannot parse "
        "'maybe'",
    ):
        fake.build(classes=["Edema"])
    ds = fake.build(classes=["Edema"], on_error="skip")
    assert [r.meta["dicom_id"] for r in ds.records] == ["d3", "d4"]
    assert len(ds.skips) == 2 and "label row" in ds.skips.skipped[1]["reason"]
    with pytest.raises(ConfigError, match="'Pneumonitis'"):
        fake.build(classes=["Pneumonitis"])


# --- CheXpert --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uncertain", "blank", "expected"),
    [
        # CHEXPERT_5: Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion
        ("ignore", "zeros", [[0, 1, 0, NAN, 0], [NAN, 0, 1, 0, 0]]),
        ("ones", "zeros", [[0, 1, 0, 1, 0], [1, 0, 1, 0, 0]]),
        ("zeros", "nan", [[NAN, 1, NAN, 0, 0], [0, NAN, 1, NAN, NAN]]),
    ],
)
def test_chexpert_label_policies(tmp_path: Path, uncertain: str, blank: str, expected: list[list[float]]) -> None:
    ds = make_chexpert(tmp_path).build(uncertain=uncertain, blank=blank)
    assert ds.classes == CHEXPERT_5
    assert_labels(ds, expected)


def test_chexpert_records(tmp_path: Path) -> None:
    fake = make_chexpert(tmp_path)
    ds = fake.build()
    first = ds.records[0]
    assert first.image_path == fake.root / "train/patient00001/study1/view1_frontal.jpg"
    assert first.meta["relative_path"] == ("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg")
    assert (first.patient_id, first.split, first.meta["AP/PA"]) == ("patient00001", "train", "AP")
    assert len(fake.build(frontal_only=False)) == 3
    valid = fake.build(split="valid", classes=["Edema", "No Finding"])
    assert_labels(valid, [[1, 0]])
    renamed = fake.root.rename(tmp_path / "chexpert-copy")
    assert len(CheXpert(renamed)) == 2


def test_chexpert_bad_values(tmp_path: Path) -> None:
    fake = make_chexpert(tmp_path)
    text = fake.table.read_text().replace(",1.0,", ",2.0,", 1)  # line 2, Cardiomegaly
    fake.table.write_text(text)
    with pytest.raises(DataError, match=r"train\.csv, line 2: field 'Cardiomegaly': value '2\.0'"):
        fake.build()
    with pytest.raises(ConfigError, match="uncertain='maybe'"):
        fake.build(uncertain="maybe")
    with pytest.raises(ConfigError, match="split='val'"):
        fake.build(split="val")


# --- NIH ChestX-ray14 ------------------------------------------------------------------------


def test_nih_records(tmp_path: Path) -> None:
    fake = make_nih(tmp_path)
    ds = fake.build()
    assert ds.classes == NIH_CLASSES and len(NIH_CLASSES) == 14
    onehot = np.zeros((4, 14))
    onehot[0, NIH_CLASSES.index("Cardiomegaly")] = 1
    for name in ("Effusion", "Pleural Thickening", "Hernia"):
        onehot[1, NIH_CLASSES.index(name)] = 1
    onehot[3, NIH_CLASSES.index("Infiltration")] = 1
    assert_labels(ds, onehot.tolist())
    first, second, _, last = ds.records
    assert first.image_path == fake.root / "images_001/images/00000001_000.png"
    assert (first.patient_id, first.meta["View Position"]) == ("1", "PA")
    assert "" not in first.meta
    np.testing.assert_allclose(first.boxes, [[2.5, 3, 12.5, 7]])
    assert first.box_labels == ["Cardiomegaly"] and second.boxes is None
    np.testing.assert_allclose(last.boxes, [[1, 1, 3, 3], [0, 5, 3, 8]])
    assert last.box_labels == ["Infiltration", "Effusion"]
    test = fake.build(split="test")
    assert [r.image_path.name for r in test.records] == ["00000003_000.png"]
    assert test.records[0].split == "test"
    assert len(fake.build(split="train_val")) == 3
    assert fake.build(bbox_list=None).records[0].boxes is None


def test_nih_bad_rows(tmp_path: Path) -> None:
    fake = make_nih(tmp_path)
    (fake.root / "test_list.txt").write_text("00000003_000.png\n00000009_000.png\n")
    with pytest.raises(DataError, match=r"test_list\.txt, line 2: image '00000009_000\.png'"):
        fake.build(split="test")
    text = fake.table.read_text().replace("Infiltration", "Infiltrashun")
    fake.table.write_text(text)
    with pytest.raises(
        DataError,
        match=r"Data_Entry_2017\.csv, line 5: field 'Finding Labels': "
        "unknown finding 'Infiltrashun'",
    ):
        fake.build()


# --- RSNA Pneumonia --------------------------------------------------------------------------


def test_rsna_records(tmp_path: Path) -> None:
    fake = make_rsna(tmp_path)
    ds = fake.build()
    assert ds.classes == ("Lung Opacity",)
    assert [r.patient_id for r in ds.records] == ["p-one", "p-two", "p-three"]
    assert_labels(ds, [[1], [0], [1]])
    np.testing.assert_allclose(ds.records[0].boxes, [[1, 2, 4, 6], [5.5, 0, 7.5, 1]])
    assert ds.records[1].boxes.shape == (0, 4)
    assert ds.records[0].box_labels == ["Lung Opacity"] * 2
    assert ds.records[1].meta["class"] == "Normal"
    sample = ds[0]
    assert sample["image"].shape == (1, 8, 8) and sample["boxes"].shape == (2, 4)
    assert [r.patient_id for r in fake.build(positives_only=True).records] == ["p-one", "p-three"]
    test = fake.build(split="test")
    assert [r.patient_id for r in test.records] == ["t-one"] and np.isnan(test.records[0].labels[0])
    with pytest.raises(ConfigError, match="positives_only"):
        fake.build(split="test", positives_only=True)


def test_rsna_bad_row_leaves_the_image_out(tmp_path: Path) -> None:
    fake = make_rsna(tmp_path)
    write_csv(
        fake.table,
        ["patientId", "x", "y", "width", "height", "Target"],
        [["p-one", 1, 2, 3, 4, 1], ["p-two", 1, "", "", "", 0], ["p-one", 5, 0, -2, 1, 1], ["p-three", 0, 0, 8, 8, 1]],
    )
    with pytest.raises(DataError, match=r"labels\.csv, line 3: fields \['x'\]: a Target 0 row"):
        fake.build()
    ds = fake.build(on_error="skip")
    assert [r.patient_id for r in ds.records] == ["p-three"]
    reasons = [s["reason"] for s in ds.skips.skipped]
    assert len(reasons) == 4 and "box size -2.0x1.0" in reasons[1]
    assert "image 'p-one' left out: its row at line 4" in reasons[2]


# --- SIIM-ACR --------------------------------------------------------------------------------


def test_siim_records_and_masks(tmp_path: Path) -> None:
    fake = make_siim(tmp_path)
    ds = fake.build()
    assert ds.classes == ("Pneumothorax",)
    assert [r.meta["uid"] for r in ds.records] == list(SIIM_UIDS)
    assert_labels(ds, [[1], [0], [0]])  # " -1" is empty once stripped
    expected = np.zeros((8, 8), np.uint8)
    expected[1:3, 0] = 1
    expected[3, 1] = 1
    expected[4:8, 7] = 1
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), expected)
    assert ds[1]["mask"].sum() == 0 and ds[0]["image"].shape == (1, 8, 8)
    assert rle_encode(expected) == "1 2 8 1 48 4"  # the two rows OR-ed, re-encoded
    test = fake.build(split="test")
    assert len(test) == 1 and "mask" not in test[0]


def test_siim_bad_rle(tmp_path: Path) -> None:
    fake = make_siim(tmp_path)
    text = fake.table.read_text()
    fake.table.write_text(text.replace(" 60 4", " 62 4"))
    ds = fake.build()
    with pytest.raises(
        DataError,
        match=r"train-rle\.csv, line 4, field 'EncodedPixels' .*"
        "end at pixel 66",
    ):
        ds[0]
    fake.table.write_text(text.replace(" 60 4", " 60 x"))
    with pytest.raises(DataError, match=r"line 4: field 'EncodedPixels': RLE token 'x'"):
        fake.build()
    ds = fake.build(on_error="skip")
    assert [r.meta["uid"] for r in ds.records] == list(SIIM_UIDS[1:])
    assert "image '1.2.276.0.7230010.3.1.4.1' left out" in ds.skips.skipped[1]["reason"]


# --- MS-CXR ----------------------------------------------------------------------------------


def check_mscxr(ds: ChestXrayDataset, root: Path) -> None:
    assert len(ds) == 3 and ds.classes[4] == "Lung Opacity"
    effusion, heart, ptx = ds.records
    assert effusion.report == "Left pleural effusion"
    assert effusion.meta["category"] == "Pleural Effusion"
    np.testing.assert_allclose(effusion.boxes, [[1, 2, 4, 6], [8, 2, 10, 4]])
    assert effusion.box_labels == ["Left pleural effusion"] * 2
    assert heart.image_path == effusion.image_path == root / "files/p15/p15000001/s50000009/aaa.jpg"
    assert (heart.meta["category"], ptx.patient_id) == ("Cardiomegaly", "16000002")
    assert ds[2]["boxes"].tolist() == [[4, 4, 8, 8]]


def test_mscxr_csv_and_json_agree(tmp_path: Path) -> None:
    fake = make_mscxr(tmp_path)
    check_mscxr(fake.build(), fake.root)
    coco = {
        "images": [
            {"id": 1, "path": "files/p15/p15000001/s50000009/aaa.jpg", "width": 16, "height": 12},
            {"id": 2, "path": "files/p16/p16000002/s50000010/bbb.jpg"},
        ],
        "categories": [
            {"id": 3, "name": "Pleural Effusion"},
            {"id": 4, "name": "Cardiomegaly"},
            {"id": 5, "name": "pneumothorax"},
        ],
        "annotations": [
            {"image_id": 1, "bbox": [1, 2, 3, 4], "category_id": 3, "label_text": "Left pleural effusion"},
            {"image_id": 1, "bbox": [8, 2, 2, 2], "category_id": 3, "label_text": "left pleural effusion"},
            {"image_id": 1, "bbox": [0, 0, 5, 5], "category_id": 4, "label_text": "Enlarged heart"},
            {"image_id": 2, "bbox": [4, 4, 4, 4], "category_id": 5, "label_text": "Small right apical pneumothorax"},
        ],
    }
    path = tmp_path / "ms_cxr.json"
    path.write_text(json.dumps(coco))
    check_mscxr(MsCxr(fake.root, annotations=path), fake.root)
    coco["annotations"][1]["category_id"] = 4
    path.write_text(json.dumps(coco))
    with pytest.raises(
        DataError,
        match=r"annotations\[1\]: phrase 'left pleural effusion' .* "
        "category 'Cardiomegaly' here",
    ):
        MsCxr(fake.root, annotations=path)
    ds = MsCxr(fake.root, annotations=path, on_error="skip")
    assert [r.meta["category"] for r in ds.records] == ["Cardiomegaly", "Pneumothorax"]


def test_mscxr_split_and_bad_rows(tmp_path: Path) -> None:
    fake = make_mscxr(tmp_path)
    with pytest.raises(DataError, match="no 'split' column"):
        fake.build(split="test")
    rows = [
        ["aaa", "files/p15/p15000001/s50000009/aaa.jpg", 1, 2, 3, 4, 16, 12, "Edema", "edema", "test"],
        ["bbb", "files/p16/p16000002/s50000010/bbb.jpg", 1, 2, 3, 4, 16, 12, "Pneumonia", "x", "train"],
    ]
    write_csv(fake.table, [*MSCXR_HEADER, "split"], rows)
    assert [r.report for r in fake.build(split="test").records] == ["edema"]
    assert [r.split for r in fake.build().records] == ["test", "train"]
    rows[1][8] = "Pneumonitis"
    write_csv(fake.table, [*MSCXR_HEADER, "split"], rows)
    with pytest.raises(
        DataError,
        match=r"ms_cxr\.csv, line 3: field 'category_name': "
        "'Pneumonitis' is not an MS-CXR category",
    ):
        fake.build()


# --- COVID rural -----------------------------------------------------------------------------


def test_covid_rural(tmp_path: Path) -> None:
    fake = make_covid_rural(tmp_path)
    ds = fake.build()
    assert [r.image_path.name for r in ds.records] == ["a.png", "b.jpg"]
    assert ds.classes == ("Opacity",) and ds.records[0].labels is None
    assert int(ds[0]["mask"].sum()) == 12 and int(ds[1]["mask"].sum()) == 12 * 16 - 12
    write_mask(fake.root / "masks" / "a.png", np.ones((11, 16), np.uint8))
    with pytest.raises(DataError, match=r"masks/a\.png: mask is 16x11"):
        ds[0]
    split_root = tmp_path / "by-split"
    write_image(split_root / "test" / "images" / "c.png")
    write_mask(split_root / "test" / "masks" / "c.png", np.ones((12, 16), np.uint8))
    assert len(CovidRural(split_root, split="test")) == 1
    write_image(fake.root / "images" / "a.jpeg")
    with pytest.raises(DataError, match=r"a\.png: the file stem 'a' also names"):
        fake.build()
