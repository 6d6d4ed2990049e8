"""No test-set leakage into pre-training: data.exclude / prepare --exclude, and the MS-CXR check on MIMIC-CXR."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from maco_cxr.cli import main
from maco_cxr.data.datasets import build_dataset
from maco_cxr.data.prepare import apply_exclusions, prepare_dataset
from maco_cxr.data.splits import read_id_list
from maco_cxr.errors import ConfigError, DataError
from maco_cxr.pretraining.config import load_pretrain_config
from maco_cxr.pretraining.data import RecordSource, StoreSource, open_source
from maco_cxr.pretraining.pretrain import pretrain
from tests.data.test_datasets import MSCXR_HEADER, make_mimic, write_csv

from .conftest import micro_config, write_manifest


def _drawn(monkeypatch: pytest.MonkeyPatch, source_class: type) -> list[str]:
    """Record the file of every sample the training loop loads (loader workers: 0, in this process)."""
    drawn: list[str] = []
    original = source_class.load

    def load(self, index: int):  # type: ignore[no-untyped-def]
        drawn.append(self.where(index).split(" ")[0])
        return original(self, index)

    monkeypatch.setattr(source_class, "load", load)
    return drawn


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_pretraining_never_draws_an_excluded_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    folder = write_manifest(tmp_path / "data", 12)
    # an official-style split file ('path label...'): by trailing path components and by bare name
    listed = tmp_path / "test_list.txt"
    listed.write_text("# held-out test images\ndata/img_003.png 0 1\nimg_005.png 1 0\n\nnot_in_the_data.png 0 0\n")
    config = micro_config(
        folder, tmp_path / "run", optim={"max_steps": 6}, data={"exclude": [str(listed), "img_010"]}
    )  # inline: the file stem
    drawn = _drawn(monkeypatch, RecordSource)
    with caplog.at_level(logging.INFO, logger="maco_cxr"):
        final = pretrain(config).model_dir

    excluded = {str(folder / f"img_{i:03d}.png") for i in (3, 5, 10)}
    kept = {str(folder / f"img_{i:03d}.png") for i in range(12)} - excluded
    assert drawn and set(drawn) <= kept and not set(drawn) & excluded
    assert len(set(drawn)) >= 6  # 3 epochs of 2 steps x 4 samples over the 9 kept images
    run = tmp_path / "run"
    report = json.loads((run / "excluded.json").read_text())
    assert report["n_excluded"] == 3 and set(report["excluded"]) == excluded
    assert [(s["source"], s["entries"], s["unmatched"], s["images"]) for s in report["sources"]] == [
        (str(listed), 3, 1, 2),
        ("inline", 1, 0, 1),
    ]
    assert report["ms_cxr"] is None  # not MIMIC-CXR: no MS-CXR check
    assert all(row["excluded"] == 3 for row in _rows(run))
    pretraining = json.loads((final / "config.json").read_text())["pretraining"]
    assert pretraining["excluded"]["n_excluded"] == 3
    assert pretraining["config"]["data"]["exclude"] == [str(listed), "img_010"]
    assert "on 9 samples (3 excluded)" in caplog.text
    assert "data.exclude: left out 3 of 12 images" in caplog.text


def test_exclude_setting_errors_and_one_file_as_a_string(tmp_path: Path) -> None:
    folder = write_manifest(tmp_path / "data", 8)
    with pytest.raises(ConfigError, match=r"data\.exclude: 'missing\.txt' looks like a list file but does not exist"):
        pretrain(micro_config(folder, tmp_path / "run", data={"exclude": ["missing.txt"]}))
    config = load_pretrain_config(None, [f"data.path={folder}", "data.exclude=img_001"])
    assert config.data.exclude == ("img_001",)
    every = tmp_path / "every.txt"
    every.write_text("".join(f"img_{i:03d}.png\n" for i in range(8)))
    with pytest.raises(DataError, match="data.exclude left out all 8 images"):
        pretrain(micro_config(folder, tmp_path / "run", data={"exclude": [str(every)]}))


def test_prepare_exclude_leaves_images_out_of_the_store_and_pretraining_excludes_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_manifest(tmp_path / "data", 10)
    listed = tmp_path / "held_out.csv"
    write_csv(listed, ["image_path", "label"], [["img_001.png", 1], ["img_008.png", 0]])
    store = tmp_path / "store"
    code = main(
        [
            "prepare",
            str(folder),
            "--dataset",
            "manifest",
            "--out",
            str(store),
            "--size",
            "128",
            "--no-progress",
            "--exclude",
            str(listed),
            "img_004",
        ]
    )
    assert code == 0
    assert "excluded 3 images named by --exclude" in capsys.readouterr().out
    rows = [json.loads(line) for line in (store / "manifest.jsonl").read_text().splitlines()]
    names = {Path(r["path"]).name for r in rows}
    assert len(rows) == 7 and not names & {"img_001.png", "img_004.png", "img_008.png"}
    report = json.loads((store / "prepare_report.json").read_text())
    assert report["n_excluded"] == 3
    assert {Path(p).name for p in report["excluded"]["excluded"]} == {"img_001.png", "img_004.png", "img_008.png"}
    info = json.loads((store / "store.json").read_text())
    assert info["n_excluded"] == 3 and info["exclusion"]["sources"][0]["format"] == "csv"

    drawn = _drawn(monkeypatch, StoreSource)
    config = micro_config(
        store, tmp_path / "run", data={"source": "store", "exclude": ["img_002"]}, optim={"max_steps": 3}
    )
    pretrain(config)
    assert drawn and not {Path(p).name for p in drawn} & {"img_001.png", "img_002.png", "img_004.png", "img_008.png"}
    assert json.loads((tmp_path / "run" / "excluded.json").read_text())["n_excluded"] == 1


def _mimic(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The fake MIMIC-CXR tree (train: d1 PA, d2 LATERAL) and an MS-CXR CSV on d1 (and d3, a test image)."""
    fake = make_mimic(tmp_path)
    ms_cxr = write_csv(
        tmp_path / "MS_CXR_Local_Alignment_v1.0.0.csv",
        MSCXR_HEADER,
        [
            ["d1", "files/p10/p10000001/s50000001/d1.jpg", 1, 1, 4, 4, 16, 12, "Atelectasis", "left lower atelectasis"],
            ["d3", "files/p10/p10000002/s50000002/d3.jpg", 1, 1, 4, 4, 16, 12, "Edema", "edema"],
        ],
    )
    return fake.root, fake.kwargs["reports_root"], ms_cxr


def _mimic_config(tmp_path: Path, root: Path, reports: Path, **data: object):
    return micro_config(
        root,
        tmp_path / "run",
        optim={"batch_size": 2, "max_steps": 1},
        data={"kind": "mimic-cxr", "options": {"reports_root": str(reports), "views": None}, **data},
    )


def test_mimic_pretraining_warns_with_the_count_of_ms_cxr_images(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, reports, ms_cxr = _mimic(tmp_path)
    assert read_id_list(ms_cxr).is_ms_cxr
    with caplog.at_level(logging.WARNING, logger="maco_cxr"):
        pretrain(_mimic_config(tmp_path, root, reports, ms_cxr=str(ms_cxr)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    (message,) = [m for m in warnings if "MS-CXR" in m]
    assert message.startswith("1 MS-CXR images (") and "add " in message and "to data.exclude" in message
    check = json.loads((tmp_path / "run" / "excluded.json").read_text())["ms_cxr"]
    assert check == {"checked": True, "annotations": [str(ms_cxr)], "images": 1, "remaining": 1}


@pytest.mark.parametrize("how", ["unknown", "ms_cxr_excluded", "dicom_id_list"])
def test_mimic_check_without_annotations_or_with_them_excluded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    root, reports, ms_cxr = _mimic(tmp_path)
    data: dict[str, object] = {}
    if how == "ms_cxr_excluded":
        data = {"exclude": [str(ms_cxr)]}
    elif how == "dicom_id_list":  # a plain list of MS-CXR dicom_ids: excludes, and checked through data.ms_cxr
        ids = tmp_path / "ms_cxr_dicom_ids.txt"
        ids.write_text("dicom_id\nd1\nd3\n")
        data = {"exclude": [str(ids)], "ms_cxr": str(ids)}
    config = _mimic_config(tmp_path, root, reports, **data)
    with caplog.at_level(logging.INFO, logger="maco_cxr"):
        opened = open_source(config.data, config.model.input_size, tmp_path, is_master=True, barrier=lambda: None)
    ms_warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "MS-CXR" in r.getMessage()
    ]
    if how == "unknown":
        (message,) = ms_warnings
        assert "\n" not in message and "not checked" in message and "data.exclude" in message
        assert opened.exclusion.ms_cxr == {"checked": False, "annotations": [], "images": None, "remaining": None}
        assert len(opened.source) == 2
    else:
        assert not ms_warnings and "none of its images is left" in caplog.text
        assert opened.exclusion.count == 1 and opened.exclusion.ms_cxr["remaining"] == 0
        assert [opened.source.where(i).split(" ")[0] for i in range(len(opened.source))] == [
            str(root / "files/p10/p10000001/s50000001/d2.jpg")
        ]


def test_mimic_prepare_warns_and_excludes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    root, reports, ms_cxr = _mimic(tmp_path)
    base = [
        "prepare",
        str(root),
        "--dataset",
        "mimic-cxr",
        "--size",
        "32",
        "--no-progress",
        "--dataset-arg",
        f"reports_root={reports}",
    ]
    with caplog.at_level(logging.WARNING, logger="maco_cxr"):
        assert main([*base, "--out", str(tmp_path / "unchecked")]) == 0
    assert "MS-CXR images may be among these MIMIC-CXR images" in caplog.text and "--exclude FILE" in caplog.text
    caplog.clear()
    assert main([*base, "--out", str(tmp_path / "checked"), "--ms-cxr", str(ms_cxr)]) == 0
    assert "2 MS-CXR images" in caplog.text  # d1 (train) and d3 (test): no --split, all images
    assert "2 MS-CXR images are in the store" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "clean"), "--exclude", str(ms_cxr)]) == 0
    assert "excluded 2 images" in capsys.readouterr().out
    info = json.loads((tmp_path / "clean" / "store.json").read_text())
    assert info["count"] == 1 and info["exclusion"]["ms_cxr"]["remaining"] == 0
    # pre-training on the clean store re-checks it against the annotations it was prepared with
    caplog.clear()
    store = load_pretrain_config(
        None,
        [
            "data.source=store",
            f"data.path={tmp_path / 'clean'}",
            "data.split=null",
        ],
    ).data
    with caplog.at_level(logging.INFO, logger="maco_cxr"):
        opened = open_source(store, 32, tmp_path, is_master=True, barrier=lambda: None)
    assert len(opened.source) == 1 and opened.exclusion.ms_cxr["remaining"] == 0
    assert "none of its images is left" in caplog.text
    # the library call
    dataset = build_dataset("mimic-cxr", root, reports_root=reports)
    kept, exclusion = apply_exclusions(dataset.records, [], ms_cxr=str(ms_cxr), check_ms_cxr=True)
    assert len(kept) == 3 and exclusion.ms_cxr["remaining"] == 2
    report = prepare_dataset(dataset, tmp_path / "library", 32, exclude=[str(ms_cxr)])
    assert report.n_excluded == 2 and report.n_ok == 1
