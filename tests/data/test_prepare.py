"""prepare_dataset: contents, failures, parallel == serial, resume after a kill, CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import maco_cxr.data.prepare as prepare_module
from maco_cxr.data.datasets.base import ChestXrayDataset, Record
from maco_cxr.data.io import ImageInfo, read_image, read_image_with_info
from maco_cxr.data.letterbox import Letterbox
from maco_cxr.data.prepare import prepare_dataset
from maco_cxr.errors import DataError, ImageReadError

SIZE = 32
SHAPES = [(40, 60), (64, 64), (80, 50), (30, 30), (50, 90), (70, 40), (33, 47)]
CORRUPT = 4  # index of the truncated PNG
MASKED = 1
BOXED = 2


def _write_images(root: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    paths = []
    for i, (h, w) in enumerate(SHAPES):
        path = root / "images" / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(path)
        paths.append(path)
    data = paths[CORRUPT].read_bytes()
    paths[CORRUPT].write_bytes(data[: len(data) // 3])
    h, w = SHAPES[MASKED]
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[10:30, 20:50] = 255
    (root / "masks").mkdir()
    Image.fromarray(mask).save(root / "masks" / "m1.png")
    return paths


def _dataset(root: Path) -> ChestXrayDataset:
    paths = _write_images(root)
    records = []
    for i, path in enumerate(paths):
        records.append(
            Record(
                image_path=path,
                report=f"report {i}.",
                labels=np.array([1.0, math.nan], dtype=np.float32) if i % 2 else None,
                patient_id=f"p{i}",
                split="train" if i < 5 else "test",
            )
        )
    records[BOXED].boxes = np.array([[10.0, 20.0, 30.0, 60.0]], dtype=np.float32)
    records[BOXED].box_labels = ["nodule"]
    records[MASKED].mask_paths = [root / "masks" / "m1.png"]
    return ChestXrayDataset(records, ("a", "b"))


def _manifest(store: Path) -> list[dict]:
    return [json.loads(line) for line in (store / "manifest.jsonl").read_text().splitlines()]


def _snapshot(store: Path) -> dict[str, bytes]:
    """Every file of the store except the per-run report, byte for byte."""
    return {p.name: p.read_bytes() for p in sorted(store.iterdir())}


def test_store_contents_match_letterbox_of_each_image(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path / "src")
    report = prepare_dataset(dataset, tmp_path / "store", SIZE, shard_size=3)
    store = tmp_path / "store"
    assert (report.n_ok, report.n_failed, report.n_shards) == (6, 1, 3)

    info = json.loads((store / "store.json").read_text())
    assert info["size"] == SIZE and info["count"] == 6 and info["classes"] == ["a", "b"]
    assert info["version"] == prepare_module.FORMAT_VERSION
    assert info["source"] == "ChestXrayDataset"
    assert [s["count"] for s in info["shards"]] == [3, 2, 1]  # shard 1 lost the corrupt image

    rows = _manifest(store)
    assert [r["index"] for r in rows] == list(range(6))
    assert [r["source_index"] for r in rows] == [0, 1, 2, 3, 5, 6]
    for row in rows:
        shard = info["shards"][row["shard"]]
        stored = np.load(store / shard["images"])[row["offset"]]
        pixels = read_image(row["path"])
        box = Letterbox.fit(*pixels.shape, SIZE)
        assert row["letterbox"] == box.to_dict()
        np.testing.assert_array_equal(stored, box.apply_image(pixels))
        assert row["report"] == f"report {row['source_index']}."
        assert row["patient_id"] == f"p{row['source_index']}"

    by_source = {r["source_index"]: r for r in rows}
    assert by_source[1]["labels"] == [1.0, None] and by_source[0]["labels"] is None
    assert by_source[5]["split"] == "test"
    # boxes: 80x50 (HxW) image -> scale 32/80 = 0.4, content 20 wide, pad_left 6
    np.testing.assert_allclose(by_source[BOXED]["boxes"], [[10.0, 8.0, 18.0, 24.0]], rtol=1e-6)
    assert by_source[BOXED]["box_labels"] == ["nodule"]
    masked = by_source[MASKED]
    assert masked["has_mask"] and not by_source[0]["has_mask"]
    mask = np.load(store / info["shards"][masked["shard"]]["masks"])[masked["offset"]]
    expected = np.zeros((SIZE, SIZE), dtype=np.uint8)
    expected[5:15, 10:25] = 1  # 64x64 -> 32x32 halves the [10:30, 20:50] rectangle
    np.testing.assert_array_equal(mask, expected)
    assert info["shards"][1]["masks"] is None and info["shards"][2]["masks"] is None


def test_unreadable_file_is_reported_with_reason(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path / "src")
    prepare_dataset(dataset, tmp_path / "store", SIZE, shard_size=3)
    report = json.loads((tmp_path / "store" / "prepare_report.json").read_text())
    assert report["n_ok"] == 6 and report["n_failed"] == 1
    (failure,) = report["failures"]
    assert failure["path"] == str(dataset.records[CORRUPT].image_path)
    assert "img4.png" in failure["reason"] and len(failure["reason"]) > len("img4.png")
    assert str(dataset.records[CORRUPT].image_path) not in {r["path"] for r in _manifest(tmp_path / "store")}


def test_strict_stops_at_first_failure_naming_the_file(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path / "src")
    with pytest.raises(DataError, match="img4.png"):
        prepare_dataset(dataset, tmp_path / "store", SIZE, shard_size=3, on_error="raise")
    # the shard finished before the failure is kept; the store is not marked complete
    assert (tmp_path / "store" / "shard_00000.json").is_file()
    assert not (tmp_path / "store" / "shard_00001.json").exists()
    assert not (tmp_path / "store" / "store.json").exists()


def test_workers_give_the_same_store(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path / "src")
    prepare_dataset(dataset, tmp_path / "serial", SIZE, shard_size=3)
    prepare_dataset(dataset, tmp_path / "parallel", SIZE, shard_size=3, workers=2)
    assert _snapshot(tmp_path / "serial") == _snapshot(tmp_path / "parallel")


def test_resume_after_kill_reads_only_missing_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = _dataset(tmp_path / "src")
    store = tmp_path / "store"
    prepare_dataset(dataset, store, SIZE, shard_size=3)
    reference = _snapshot(store)
    # a kill while writing the last shard: its array, the manifest and store.json are missing
    for name in ("shard_00002.npy", "manifest.jsonl", "store.json"):
        (store / name).unlink()
    reads: list[str] = []

    def counting_read(path: Path) -> tuple[np.ndarray, ImageInfo]:
        reads.append(Path(path).name)
        return read_image_with_info(path)

    monkeypatch.setattr(prepare_module, "read_image_with_info", counting_read)
    report = prepare_dataset(dataset, store, SIZE, shard_size=3)
    assert reads == ["img6.png"]
    assert report.n_reused_shards == 2
    assert _snapshot(store) == reference


def test_strict_failure_then_rerun_equals_fresh_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = _dataset(tmp_path / "src")
    prepare_dataset(dataset, tmp_path / "fresh", SIZE, shard_size=2)

    def failing_read(path: Path) -> tuple[np.ndarray, ImageInfo]:
        if Path(path).name == "img3.png":
            raise ImageReadError(f"{path}: simulated crash")
        return read_image_with_info(path)

    monkeypatch.setattr(prepare_module, "read_image_with_info", failing_read)
    with pytest.raises(DataError, match="img3.png"):
        prepare_dataset(dataset, tmp_path / "store", SIZE, shard_size=2, on_error="raise")
    monkeypatch.undo()
    report = prepare_dataset(dataset, tmp_path / "store", SIZE, shard_size=2)
    assert report.n_reused_shards == 1
    assert _snapshot(tmp_path / "store") == _snapshot(tmp_path / "fresh")


def test_kill_while_replacing_a_shard_never_reuses_mixed_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = _dataset(tmp_path / "src")
    store = tmp_path / "store"
    prepare_dataset(dataset, store, SIZE, shard_size=3)
    reference = _snapshot(store)
    # another dataset into the same folder, killed between a shard's array and its JSON
    swapped = dataset.records[:]
    swapped[0], swapped[1] = swapped[1], swapped[0]  # same shapes and counts, other pixels
    other = ChestXrayDataset(swapped, dataset.classes)
    real_write_json = prepare_module.write_json

    def killed(path: Path, payload: object) -> None:
        if path.name == "shard_00000.json":
            raise KeyboardInterrupt
        real_write_json(path, payload)

    monkeypatch.setattr(prepare_module, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(other, store, SIZE, shard_size=3)
    monkeypatch.undo()
    report = prepare_dataset(dataset, store, SIZE, shard_size=3)
    assert report.n_reused_shards == 2  # shards 1 and 2 were the same for both datasets
    assert {k: v for k, v in _snapshot(store).items() if ".tmp" not in k} == reference


def test_changed_size_prepares_every_shard_again(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path / "src")
    prepare_dataset(dataset, tmp_path / "store", SIZE, shard_size=3)
    report = prepare_dataset(dataset, tmp_path / "store", 24, shard_size=3)
    assert report.n_reused_shards == 0
    assert np.load(tmp_path / "store" / "shard_00000.npy").shape == (3, 24, 24)
    assert json.loads((tmp_path / "store" / "store.json").read_text())["size"] == 24


def test_rejects_empty_dataset_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no records"):
        prepare_dataset(ChestXrayDataset([]), tmp_path / "store")
    dataset = ChestXrayDataset([Record(image_path=tmp_path / "x.png")])
    with pytest.raises(ValueError, match="shard_size"):
        prepare_dataset(dataset, tmp_path / "store", shard_size=0)


def _write_generic_manifest(root: Path) -> None:
    paths = _write_images(root)
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_path", "report", "labels", "patient_id", "split"])
        for i, path in enumerate(paths):
            writer.writerow(
                [
                    path.relative_to(root).as_posix(),
                    f"finding {i}.",
                    "b|c" if i == 1 else "",
                    f"p{i}",
                    "train" if i < 5 else "test",
                ]
            )
        writer.writerow(["", "a row without an image", "", "p9", "train"])  # line 9


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from maco_cxr.cli import main

    _write_generic_manifest(tmp_path / "src")
    store = tmp_path / "store"
    code = main(
        [
            "prepare",
            str(tmp_path / "src"),
            "--dataset",
            "manifest",
            "--out",
            str(store),
            "--size",
            str(SIZE),
            "--split",
            "train",
            "--shard-size",
            "2",
            "--no-progress",
            "--dataset-arg",
            "classes=[b, c]",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "prepared 4 images" in captured.out and "prepare_report.json" in captured.err
    rows = _manifest(store)
    assert [Path(r["path"]).name for r in rows] == ["img0.png", "img1.png", "img2.png", "img3.png"]
    assert {r["split"] for r in rows} == {"train"}
    assert rows[1]["labels"] == [1.0, 1.0] and rows[0]["labels"] == [None, None]
    report = json.loads((store / "prepare_report.json").read_text())
    assert report["n_failed"] == 1 and report["failures"][0]["path"].endswith("img4.png")
    (skipped,) = report["skipped_rows"]
    assert "line 9" in skipped["where"] and "image_path" in skipped["reason"]
    info = json.loads((store / "store.json").read_text())
    assert info["source"] == "manifest" and info["classes"] == ["b", "c"]

    strict = main(
        [
            "prepare",
            str(tmp_path / "src"),
            "--dataset",
            "manifest",
            "--out",
            str(tmp_path / "strict"),
            "--size",
            str(SIZE),
            "--strict",
            "--no-progress",
        ]
    )
    assert strict == 2
    assert "line 9" in capsys.readouterr().err
    assert (
        main(
            [
                "prepare",
                str(tmp_path / "src"),
                "--dataset",
                "manifest",
                "--out",
                str(tmp_path / "bad"),
                "--dataset-arg",
                "nonsense",
            ]
        )
        == 2
    )


def test_adapter_skips_are_reported(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path / "src")
    dataset.skips.add("labels.csv, line 3", "field 'labels' is not a number")
    report = prepare_dataset(dataset, tmp_path / "store", SIZE)
    saved = json.loads((tmp_path / "store" / "prepare_report.json").read_text())
    assert (
        saved["skipped_rows"]
        == report.skipped_rows
        == [{"where": "labels.csv, line 3", "reason": "field 'labels' is not a number"}]
    )
