"""Official split files (shipped copies, SIIM overlap defect), subsets and label fractions."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from maco_cxr.data.datasets.base import ChestXrayDataset, Record
from maco_cxr.data.splits import (
    SplitEntry,
    deduplicate_splits,
    label_fraction,
    load_official_split,
    official_split_path,
    read_split_file,
    split_overlaps,
    subset_by_split_file,
)
from maco_cxr.errors import ConfigError, DataError


def entries(*paths: str) -> list[SplitEntry]:
    return [SplitEntry(p, np.zeros(0, np.float32), i + 1) for i, p in enumerate(paths)]


# --- reading split files ---------------------------------------------------------------------


def test_read_split_file(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_bytes(b"a/x.png 0 1\r\n\r\nb/y.png  1 0 \r\nc/z.png 1 1")
    got = read_split_file(path)
    assert [(e.path, e.labels.tolist(), e.line) for e in got] == [
        ("a/x.png", [0.0, 1.0], 1),
        ("b/y.png", [1.0, 0.0], 3),
        ("c/z.png", [1.0, 1.0], 4),
    ]


def test_read_split_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("a.png 0 1\nb.png 0 yes\n")
    with pytest.raises(DataError, match=r"bad\.txt, line 2: labels \['0', 'yes'\]"):
        read_split_file(bad)
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("a.png 0 1\nb.png 0\n")
    with pytest.raises(DataError, match=r"ragged\.txt, line 2: 1 labels, but line 1 has 2"):
        read_split_file(ragged)
    with pytest.raises(DataError, match="cannot read"):
        read_split_file(tmp_path / "absent.txt")


# --- shipped official files ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "name", "count", "n_labels"),
    [
        ("nih", "test", 22433, 14),
        ("nih", "train_1", 785, 14),
        ("chexpert", "val", 5000, 5),
        ("chexpert", "test", 234, 5),
        ("rsna", "test", 3000, 1),
        ("rsna", "train_10", 2518, 1),
        ("siim", "test", 1904, 0),
    ],
)
def test_official_files(dataset: str, name: str, count: int, n_labels: int) -> None:
    path = official_split_path(dataset, name)  # type: ignore[arg-type]
    assert path.is_file() and "maco-official" in path.parts
    dedupe = dataset == "siim"
    got = load_official_split(dataset, name, deduplicate=dedupe)  # type: ignore[arg-type]
    assert len(got) == count
    assert {len(e.labels) for e in got} == {n_labels}


def test_official_split_path_errors() -> None:
    with pytest.raises(ConfigError, match="no CheXpert 100 % list"):
        official_split_path("chexpert", "train")
    with pytest.raises(ConfigError, match="split name 'dev'"):
        official_split_path("nih", "dev")
    with pytest.raises(ConfigError, match="dataset='mimic'"):
        official_split_path("mimic", "test")  # type: ignore[arg-type]


def test_siim_overlap_counts_match_protocols() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lists = {role: load_official_split("siim", role) for role in ("train", "val", "test")}
    assert split_overlaps(lists) == {("train", "val"): 478, ("train", "test"): 494, ("val", "test"): 124}


def test_siim_load_warns_and_deduplicates() -> None:
    with pytest.warns(UserWarning, match="train/val 478, train/test 494, val/test 124"):
        train = load_official_split("siim", "train")
    assert len(train) == 7969
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clean = {role: load_official_split("siim", role, deduplicate=True) for role in ("train", "val", "test")}
        train_10 = load_official_split("siim", "train_10", deduplicate=True)
    # The three pairwise overlaps share no id, so train loses 478 + 494 and val 124.
    assert {r: len(v) for r, v in clean.items()} == {"train": 6997, "val": 1774, "test": 1904}
    assert set(split_overlaps(clean).values()) == {0}
    held_out = {e.path for e in clean["val"] + clean["test"]}
    assert not held_out & {e.path for e in train_10}
    assert len(train_10) < 797


def test_deduplicate_splits_priority() -> None:
    splits = {"train": entries("a", "b", "c", "d"), "val": entries("b", "e"), "test": entries("c", "e", "f")}
    got = deduplicate_splits(splits)
    assert {k: [e.path for e in v] for k, v in got.items()} == {
        "train": ["a", "d"],
        "val": ["b"],
        "test": ["c", "e", "f"],
    }
    with pytest.raises(ConfigError, match=r"\['dev'\]"):
        deduplicate_splits({"dev": entries("a")})


# --- subsets ---------------------------------------------------------------------------------


def fake_dataset(
    paths: list[str], classes: tuple[str, ...] = ("A", "B"), relative: list[str] | None = None
) -> ChestXrayDataset:
    records = [
        Record(
            image_path=Path(p),
            labels=np.full(len(classes), np.nan, np.float32),
            meta={"relative_path": relative[i]} if relative else {},
        )
        for i, p in enumerate(paths)
    ]
    return ChestXrayDataset(records, classes)


def test_subset_matches_names_paths_stems_and_relative_paths(tmp_path: Path) -> None:
    ds = fake_dataset(
        [
            "/data/nih/images_001/images/00000001_000.png",
            "/data/rsna/stage_2_train_images/abc.dcm",
            "/data/siim/dicom-images-train/1.2/1.3/1.2.276.0.1.dcm",
            "/data/CheX-renamed/train/patient00001/study1/view1_frontal.jpg",
            "/data/CheX-renamed/train/patient00002/study1/view1_frontal.jpg",
        ],
        relative=[
            "",
            "",
            "",
            "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
            "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg",
        ],
    )
    split_file = tmp_path / "list.txt"
    split_file.write_text(
        "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg 1 0\n"
        "1.2.276.0.1 0 0\n"
        "stage_2_train_images/abc.dcm 0 1\n"
        "00000001_000.png 1 1\n"
    )
    subset = subset_by_split_file(ds, split_file, use_file_labels=True)
    assert [r.image_path.name for r in subset.records] == [
        "view1_frontal.jpg",
        "1.2.276.0.1.dcm",
        "abc.dcm",
        "00000001_000.png",
    ]
    assert "patient00002" in str(subset.records[0].image_path)
    assert [r.labels.tolist() for r in subset.records] == [[1, 0], [0, 0], [0, 1], [1, 1]]
    assert np.isnan(ds.records[1].labels).all()  # the original is untouched
    assert type(subset) is type(ds) and len(ds) == 5
    rest = subset_by_split_file(ds, split_file, exclude=True)
    assert [r.meta["relative_path"] for r in rest.records] == [
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
    ]


def test_subset_reports_unmatched_entries(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = fake_dataset(["/d/a.png", "/d/b.png"])
    listed = entries("a.png", "zz.png")
    with pytest.raises(DataError, match=r"1 of 2 entries match no record .*line 2 'zz.png'"):
        subset_by_split_file(ds, listed)
    with caplog.at_level(logging.WARNING):
        subset = subset_by_split_file(ds, listed, on_error="skip")
    assert [r.image_path.name for r in subset.records] == ["a.png"]
    assert len(subset.skips) == 1 and "zz.png" in subset.skips.skipped[0]["reason"]
    assert "1 of 2 entries" in caplog.text
    with pytest.raises(ConfigError, match="0 labels per entry but the dataset has 2 classes"):
        subset_by_split_file(ds, listed, use_file_labels=True)


# --- label fractions -------------------------------------------------------------------------


def patient_records(sizes: list[int]) -> list[Record]:
    return [
        Record(image_path=Path(f"p{p}_{i}.png"), patient_id=f"p{p}")
        for p, size in enumerate(sizes)
        for i in range(size)
    ]


def test_label_fraction_deterministic_and_seeded() -> None:
    records = patient_records([1, 2, 3, 4, 1, 2, 5, 1, 1, 3] * 10)
    first = label_fraction(records, 0.1, seed=0)
    assert first == label_fraction(records, 0.1, seed=0)
    assert first != label_fraction(records, 0.1, seed=1)
    assert first == sorted(first) and len(set(first)) == len(first)


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 1.0])
def test_label_fraction_size_and_patient_disjointness(fraction: float) -> None:
    sizes = [1, 2, 3, 4, 1, 2, 5, 1, 1, 3] * 30
    records = patient_records(sizes)
    chosen = label_fraction(records, fraction, seed=3)
    target = max(1, round(fraction * len(records)))
    assert target <= len(chosen) < target + max(sizes)
    picked = {records[i].patient_id for i in chosen}
    rest = {r.patient_id for i, r in enumerate(records) if i not in set(chosen)}
    assert not picked & rest  # no patient has images on both sides


def test_label_fraction_without_patients_is_exact() -> None:
    records = [Record(image_path=Path(f"{i}.png")) for i in range(200)]
    assert len(label_fraction(records, 0.1, seed=5)) == 20
    assert label_fraction(records[:3], 0.01, seed=5) in ([0], [1], [2])
    assert label_fraction([], 0.5, seed=0) == []
    for bad in (0.0, 1.5, math.nan):
        with pytest.raises(ConfigError, match="fraction"):
            label_fraction(records, bad, seed=0)
