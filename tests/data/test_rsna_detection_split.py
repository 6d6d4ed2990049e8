"""The official RSNA detection test set (COCO file) and its reader."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from maco_cxr.data.datasets import RsnaPneumonia
from maco_cxr.data.splits import (
    DetectionEntry,
    detection_split_entries,
    detection_split_overlaps,
    official_rsna_detection_test,
    official_rsna_detection_test_path,
    read_coco_detection_split,
    read_split_file,
    rsna_detection_test_overlaps,
    subset_by_split_file,
)
from maco_cxr.errors import DataError

UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


# --- the shipped official file ---------------------------------------------------------------


def test_official_rsna_detection_test_counts() -> None:
    entries = official_rsna_detection_test()
    assert len(entries) == 1218
    assert sum(len(e.boxes) for e in entries) == 1947
    assert all(len(e.boxes) >= 1 for e in entries)  # all positive
    assert {label for e in entries for label in e.box_labels} == {"pneu"}
    assert len({e.name for e in entries}) == 1218
    assert all(np.all(e.boxes[:, 2:] > e.boxes[:, :2]) for e in entries)
    assert {(e.width, e.height) for e in entries} == {(1024, 1024)}
    assert all(re.match(UUID, e.name) for e in entries)


def test_official_file_boxes_are_xyxy_of_the_coco_boxes() -> None:
    path = official_rsna_detection_test_path()
    assert path.name == "detection_test_coco_format.json" and path.parent.name == "RSNA_Pneumonia"
    raw = json.loads(path.read_text())
    first = raw["images"][0]
    assert first["file_name"].startswith("/mnt/")  # the authors' machine: match on base name
    entry = official_rsna_detection_test()[0]
    assert entry.name == "359355a8-5981-406a-a8c3-3dcfdde9169e"
    assert entry.image_id == first["id"] == 6189 and entry.line == 1
    boxes = [a["bbox"] for a in raw["annotations"] if a["image_id"] == first["id"]]
    expected = [[x, y, x + w, y + h] for x, y, w, h in boxes]
    np.testing.assert_array_equal(entry.boxes, np.array(expected, np.float32))
    np.testing.assert_array_equal(entry.boxes, [[611, 553, 817, 758]])
    assert entry.boxes.dtype == np.float32


def test_overlap_with_the_classification_lists() -> None:
    counts = rsna_detection_test_overlaps()
    assert counts["train"] == 1173 and counts["val"] == 45
    assert counts["train"] + counts["val"] == 1218
    assert counts["test"] == 0  # the classification test list is stage-2 test images
    assert counts == {"train": 1173, "val": 45, "test": 0, "train_1": 15, "train_10": 185}
    assert rsna_detection_test_overlaps(["val"]) == {"val": 45}


# --- the reader on small files ---------------------------------------------------------------


def write_coco(
    path: Path,
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    categories: list[dict[str, Any]] | None = None,
) -> Path:
    data: dict[str, Any] = {"images": images, "annotations": annotations}
    if categories is not None:
        data["categories"] = categories
    path.write_text(json.dumps(data))
    return path


def image(image_id: int, file_name: str) -> dict[str, Any]:
    return {"id": image_id, "width": 16, "height": 12, "file_name": file_name}


def box(k: int, image_id: int, bbox: list[float], category: int = 1) -> dict[str, Any]:
    return {"id": k, "image_id": image_id, "bbox": bbox, "category_id": category, "iscrowd": 0}


def test_read_coco_detection_split(tmp_path: Path) -> None:
    path = write_coco(
        tmp_path / "coco.json",
        [image(7, "/data/png_all/p-one.png"), image(3, "C:\\x\\p-two.png"), image(5, "p-three.dcm")],
        [box(1, 3, [1, 2, 3, 4]), box(2, 7, [0.5, 0, 2, 1.5]), box(3, 3, [4, 4, 1, 1], category=0)],
        [{"id": 0, "name": "none_pneu"}, {"id": 1, "name": "pneu"}],
    )
    entries = read_coco_detection_split(path)
    assert [e.name for e in entries] == ["p-one", "p-two", "p-three"]
    assert [e.line for e in entries] == [1, 2, 3] and entries[1].image_id == 3
    np.testing.assert_array_equal(entries[0].boxes, [[0.5, 0, 2.5, 1.5]])
    np.testing.assert_array_equal(entries[1].boxes, [[1, 2, 4, 6], [4, 4, 5, 5]])
    assert entries[1].box_labels == ("pneu", "none_pneu")
    assert entries[2].boxes.shape == (0, 4) and entries[2].box_labels == ()
    assert (entries[0].width, entries[0].height) == (16, 12)
    no_categories = write_coco(tmp_path / "bare.json", [image(1, "a.png")], [box(1, 1, [0, 0, 1, 1])])
    assert read_coco_detection_split(no_categories)[0].box_labels == ("1",)


@pytest.mark.parametrize(
    ("images", "annotations", "message"),
    [
        ([image(1, "a.png")], [box(1, 2, [0, 0, 1, 1])], r"annotations\[0\] field 'image_id': no image has id 2"),
        (
            [image(1, "x/a.png"), image(2, "y/a.png")],
            [],
            r"images\[1\] field 'file_name': the base name 'a' is the one of images\[0\] too",
        ),
        ([image(1, "a.png"), image(1, "b.png")], [], r"images\[1\] field 'id': 1 is the id of images\[0\] too"),
        (
            [image(1, "a.png")],
            [box(1, 1, [0, 0, 0, 1])],
            r"annotations\[0\] field 'bbox': box size 0.0x1.0 \(w x h\) is not positive",
        ),
        (
            [image(1, "a.png")],
            [box(1, 1, [0, 0, 1])],
            r"annotations\[0\] field 'bbox': \[0, 0, 1\] is not \[x, y, w, h\]",
        ),
        (
            [{"id": "1", "file_name": "a.png", "width": 1, "height": 1}],
            [],
            r"images\[0\] field 'id': '1' is not an integer",
        ),
        ([{"id": 1, "width": 1, "height": 1}], [], r"images\[0\] field 'file_name': None is not a file name"),
    ],
)
def test_read_coco_detection_split_errors(
    tmp_path: Path, images: list[dict[str, Any]], annotations: list[dict[str, Any]], message: str
) -> None:
    path = write_coco(tmp_path / "bad.json", images, annotations)
    with pytest.raises(DataError, match=message) as info:
        read_coco_detection_split(path)
    assert str(path) in str(info.value)


def test_read_coco_detection_split_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read the COCO file"):
        read_coco_detection_split(tmp_path / "absent.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(DataError, match="expected a COCO object"):
        read_coco_detection_split(tmp_path / "list.json")
    (tmp_path / "half.json").write_text('{"images": []}')
    with pytest.raises(DataError, match="field 'annotations' is missing or not a list"):
        read_coco_detection_split(tmp_path / "half.json")


# --- applying it to the RSNA adapter ---------------------------------------------------------


def write_dicom(path: Path, uid: str) -> None:
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
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(range(16))
    ds.save_as(path, enforce_file_format=True)


def test_subset_rsna_by_the_detection_split(tmp_path: Path) -> None:
    root = tmp_path / "rsna"
    for k, pid in enumerate(("p-one", "p-two", "p-three")):
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", f"1.2.{k}")
    with (root / "stage_2_train_labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patientId", "x", "y", "width", "height", "Target"])
        writer.writerows([["p-one", 1, 2, 3, 4, 1], ["p-two", "", "", "", "", 0], ["p-three", 0, 0, 2, 2, 1]])
    entries = read_coco_detection_split(
        write_coco(
            tmp_path / "det.json",
            [image(1, "/mnt/x/p-three.png"), image(2, "/mnt/x/p-one.png")],
            [box(1, 1, [0, 0, 2, 2]), box(2, 2, [1, 2, 3, 4])],
        )
    )
    dataset = RsnaPneumonia(root, positives_only=True)
    subset = subset_by_split_file(dataset, detection_split_entries(entries))
    assert [r.patient_id for r in subset.records] == ["p-three", "p-one"]
    for record, entry in zip(subset.records, entries, strict=True):
        np.testing.assert_array_equal(record.boxes, entry.boxes)
    lists = {
        "train": read_split_file(
            _write(tmp_path / "train.txt", "stage_2_train_images/p-one.dcm 1\nstage_2_train_images/p-two.dcm 0\n")
        )
    }
    assert detection_split_overlaps(entries, lists) == {"train": 1}
    assert isinstance(entries[0], DetectionEntry)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
