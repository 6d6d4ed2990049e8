"""`maco-cxr reproduce` end to end on tiny fake trees of every official layout (quick mode)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from maco_cxr.cli import build_parser, main
from maco_cxr.data.datasets.chexpert import CHEXPERT_5, CHEXPERT_OBSERVATIONS
from maco_cxr.data.splits import SplitEntry, load_official_split, official_rsna_detection_test
from maco_cxr.errors import ConfigError
from maco_cxr.hub import create_model, save_pretrained
from maco_cxr.models.config import preset
from maco_cxr.tasks.reproduce import (
    ReproduceOptions,
    load_published,
    load_reproduce_data,
    plan_cells,
    reproduce,
)
from tests.data.test_datasets import make_mscxr, write_csv, write_dicom, write_image, write_mask

# a few images per split: undefined AUCs and thresholds are expected, and the official SIIM lists overlap
pytestmark = [
    pytest.mark.filterwarnings("ignore:AUC of .* is undefined:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:no (youden|max_f1) threshold for:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:the official SIIM-ACR split lists overlap:UserWarning"),
]

NIH_HEADER = [
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
]
NIH_NAMES = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)


# --- fake trees holding a few images of every official list ---------------------------------------------


def _mixed(entries: list[SplitEntry], n: int = 2, column: int = 0) -> list[SplitEntry]:
    """``n`` positives and ``n`` negatives in label ``column`` (SIIM lists have no labels: the first 2n)."""
    if not len(entries[0].labels):
        return entries[: 2 * n]
    positives = [e for e in entries if e.labels[column] == 1][:n]
    negatives = [e for e in entries if e.labels[column] == 0][:n]
    return positives + negatives


def _picks(dataset: str, lists: tuple[str, ...], avoid: frozenset[str] = frozenset()) -> dict[str, SplitEntry]:
    """Entries of the official lists (a few of each, none whose file stem is in ``avoid``), by path."""
    chosen: dict[str, SplitEntry] = {}
    for name in lists:
        entries = [e for e in load_official_split(dataset, name, deduplicate=True) if Path(e.path).stem not in avoid]
        for entry in _mixed(entries):
            chosen.setdefault(entry.path, entry)
    return chosen


def make_nih(root: Path) -> Path:
    rows = []
    for k, (name, entry) in enumerate(_picks("nih", ("train_1", "train_10", "train", "val", "test")).items()):
        write_image(root / f"images_{k % 3 + 1:03d}" / "images" / name, 40, 48, value=7 * k)
        found = [NIH_NAMES[i] for i, v in enumerate(entry.labels) if v == 1]
        rows.append(
            [name, "|".join(found) or "No Finding", 0, int(name.split("_")[0]), 50, "F", "PA", 24, 20, 0.1, 0.1]
        )
    write_csv(root / "Data_Entry_2017.csv", NIH_HEADER, rows)
    write_csv(root / "BBox_List_2017.csv", ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"], [])
    return root


def make_chexpert(root: Path) -> Path:
    """The official lists' images; also ``val_split.txt``, the val list's images here (the 100 % training
    set is train.csv minus the val list, which must then match the tree)."""
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS]
    tables: dict[str, list[list[str]]] = {"train": [], "valid": []}
    val = _picks("chexpert", ("val",))
    (root / "val_split.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "val_split.txt").write_text(
        "".join(f"{p} {' '.join(f'{v:g}' for v in e.labels)}\n" for p, e in val.items())
    )
    for k, (path, entry) in enumerate(_picks("chexpert", ("train_1", "train_10", "val", "test")).items()):
        parts = Path(path).parts  # CheXpert-v1.0-small/<split>/patientN/studyM/viewK_<frontal|lateral>.jpg
        write_image(root.joinpath(*parts[1:]), 48, 40, value=11 * k)
        labels = dict(zip(CHEXPERT_5, entry.labels))
        view = "Frontal" if "frontal" in parts[-1] else "Lateral"
        tables[parts[1]].append(
            [
                path,
                "Female",
                "60",
                view,
                "AP" if view == "Frontal" else "",
                *(f"{labels[c]:.1f}" if c in labels else "" for c in CHEXPERT_OBSERVATIONS),
            ]
        )
    for split, rows in tables.items():
        write_csv(root / f"{split}.csv", header, rows)
    return root


def make_rsna(root: Path) -> Path:
    rows, classes = [], []
    detection_test = official_rsna_detection_test()  # the paper's detection test set, held out of training
    lists = ("train_1", "train_10", "train", "val", "test")
    for k, (path, entry) in enumerate(_picks("rsna", lists, frozenset(e.name for e in detection_test)).items()):
        write_dicom(root / path, f"1.2.826.{k}", 32, 32)
        if path.startswith("stage_2_train_images/"):
            patient = Path(path).stem
            positive = entry.labels[0] == 1
            rows.append([patient, 2, 3, 6, 7, 1] if positive else [patient, "", "", "", "", 0])
            classes.append([patient, "Lung Opacity" if positive else "Normal"])
    for k, test in enumerate(detection_test[:2]):
        write_dicom(root / "stage_2_train_images" / f"{test.name}.dcm", f"1.2.827.{k}", 32, 32)
        rows.append([test.name, 4, 4, 8, 6, 1])
        classes.append([test.name, "Lung Opacity"])
    write_csv(root / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], rows)
    write_csv(root / "stage_2_detailed_class_info.csv", ["patientId", "class"], classes)
    return root


def make_siim(root: Path) -> Path:
    lines = ["ImageId, EncodedPixels"]
    for k, uid in enumerate(_picks("siim", ("train_1", "train_10", "train", "val", "test"))):
        write_dicom(root / "dicom-images-train" / f"1.2.{k}" / f"1.3.{k}" / f"{uid}.dcm", uid, 32, 32)
        lines.append(f"{uid}, {'20 3 8 3' if k % 2 == 0 else '-1'}")  # every other image has a pneumothorax
    (root / "train-rle.csv").write_text("\n".join(lines) + "\n")
    return root


def make_covid_rural(root: Path) -> dict[str, str]:
    for k, stem in enumerate(("a", "b", "c", "d", "e")):
        write_image(root / "images" / f"{stem}.png", 40, 48, value=13 * k)
        mask = np.zeros((40, 48), np.uint8)
        mask[4 + k : 12, 3 : 10 + k] = 1
        write_mask(root / "masks" / f"{stem}.png", mask)
    splits = {"train_split": ("a", "b"), "val_split": ("c",), "test_split": ("d", "e")}
    files = {}
    for key, stems in splits.items():
        path = root / f"{key}.txt"
        path.write_text("".join(f"images/{s}.png\n" for s in stems))
        files[key] = str(path)
    return files


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    base = tmp_path_factory.mktemp("trees")
    mscxr = make_mscxr(base)
    return {
        "nih": {"root": str(make_nih(base / "nih"))},
        "chexpert": {
            "root": str(make_chexpert(base / "CheXpert-v1.0-small")),
            "val_split": str(base / "CheXpert-v1.0-small" / "val_split.txt"),
        },
        "rsna": {"root": str(make_rsna(base / "rsna"))},
        "siim": {"root": str(make_siim(base / "siim"))},
        "ms_cxr": {"root": str(mscxr.root), "annotations": str(mscxr.kwargs["annotations"])},
        "covid_rural": {"root": str(base / "covid"), **make_covid_rural(base / "covid")},
    }


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("model") / "tiny"
    save_pretrained(create_model(preset("tiny")), directory)
    return directory


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data_file(path: Path, trees: dict[str, dict], *names: str, **changed: dict) -> Path:
    chosen = {name: trees[name] for name in names} | changed
    path.write_text(yaml.safe_dump(chosen))
    return path


def _check_commands(payload: dict) -> None:
    """Every recorded command of a finished cell is a valid command line of the CLI it names."""
    parser = build_parser()
    for cell in payload["cells"]:
        if cell["status"] == "failed":
            continue
        words = shlex.split(cell["command"])
        assert words[0] == "maco-cxr"
        args = parser.parse_args(words[1:])
        assert args.command == {"linear": "finetune", "grounding": "ground"}.get(cell["task"], cell["task"])
        assert str(args.out) == cell["out"]


# --- fast checks -----------------------------------------------------------------------------------------


def test_published_table_is_table_1_with_its_sources() -> None:
    published, about = load_published()
    expected = {"chexpert": (88.7, 88.7, 88.9), "nih": (79.3, 83.8, 85.9), "rsna": (91.5, 92.7, 93.6)}
    for dataset, values in expected.items():
        for fraction, value in zip((1, 10, 100), values):
            entry = published[(f"finetune-{dataset}-{fraction}", "auc")]
            assert entry.value == value and entry.unit == "%"
            assert entry.source.startswith("Table 1, row 'MaCo (Ours)'") and f"{fraction}%" in entry.source
    assert len(published) == 9
    assert about["doi"] == "10.1038/s41467-024-51749-0"
    assert set(about["not_found"]) == {"zeroshot", "grounding", "linear", "segment", "detect"}


def test_plan_selects_cells_and_skips_datasets_without_roots(tmp_path: Path) -> None:
    data = load_reproduce_data(None, ["nih.root=/data/nih", "mimic.root=/data/mimic"])
    cells, skipped = plan_cells(data, ReproduceOptions(tasks=("zeroshot", "grounding", "finetune"), fractions=(1, 100)))
    assert [c.id for c in cells] == ["zeroshot-nih", "grounding-ms-cxr", "finetune-nih-1", "finetune-nih-100"]
    assert set(skipped) == {"rsna", "siim", "chexpert"} and "rsna.root is not set" in skipped["rsna"]
    cells, skipped = plan_cells(data, ReproduceOptions(tasks=("segment",), datasets=("covid-rural",)))
    assert cells == [] and list(skipped) == ["covid-rural"]
    with pytest.raises(ConfigError, match=r"tasks: \['classify'\] are not tasks"):
        ReproduceOptions(tasks=("classify",))
    with pytest.raises(ConfigError, match="fractions"):
        ReproduceOptions(fractions=(5,))
    bad = tmp_path / "data.yaml"
    bad.write_text("nih: {roots: /data/nih}\n")
    with pytest.raises(ConfigError, match=r"nih\.roots: unknown key; did you mean nih\.root"):
        load_reproduce_data(bad)


# --- end to end (quick) ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_zero_shot_and_grounding_cells_then_a_rerun_reuses_them(
    trees: dict, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _data_file(tmp_path / "data.yaml", trees, "nih", "chexpert", "rsna", "siim", "ms_cxr")
    out = tmp_path / "out"
    argv = [
        "reproduce",
        "--model",
        str(tiny_model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--tasks",
        "zeroshot",
        "grounding",
        "--quick",
        "--skip-bad",
        "--overlays",
        "1",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    assert "5 cells: 5 run, 0 reused, 0 failed" in capsys.readouterr().out
    payload = json.loads((out / "reproduce.json").read_text())
    assert payload["quick"] and "NOT comparable" in payload["note"]
    cells = {c["id"]: c for c in payload["cells"]}
    assert list(cells) == ["zeroshot-nih", "zeroshot-rsna", "zeroshot-siim", "zeroshot-chexpert", "grounding-ms-cxr"]
    for cell in cells.values():
        assert cell["status"] == "done" and cell["quick"]
        for row in cell["rows"]:
            assert row["ours"] is not None and np.isfinite(row["ours"])
            assert row["paper"] is None  # not found in the paper's sources: left out, not invented
        assert (Path(cell["out"]) / "cell.json").is_file() and (Path(cell["out"]) / "summary.json").is_file()
    assert cells["zeroshot-nih"]["metrics"]["n_images"] == 4 and 0 <= cells["zeroshot-nih"]["metrics"]["auc"] <= 1
    assert cells["zeroshot-siim"]["settings"]["prompts"] == "siim"
    assert "--official-split test" in cells["zeroshot-rsna"]["command"]
    assert [r["metric"] for r in cells["grounding-ms-cxr"]["rows"]] == ["cnr", "miou"]
    _check_commands(payload)
    markdown = (out / "reproduce.md").read_text()
    assert "QUICK MODE" in markdown and "| zeroshot-siim | AUC (%) |" in markdown
    assert "## Published numbers not found" in markdown and "- grounding:" in markdown
    assert f"`maco-cxr zeroshot --model {tiny_model}" in markdown

    assert main(argv) == 0  # everything is reused
    assert "5 cells: 0 run, 5 reused, 0 failed" in capsys.readouterr().out
    again = json.loads((out / "reproduce.json").read_text())
    assert [c["metrics"] for c in again["cells"]] == [c["metrics"] for c in payload["cells"]]
    # other settings in the same folder: refused, not silently reused or overwritten
    assert main([a for a in argv if a != "--quick"] + ["--tasks", "grounding"]) == 1
    assert "holds a finished result computed with other settings (differing: quick)" in capsys.readouterr().out


@pytest.mark.slow
def test_the_whole_table_every_cell_filled_with_table_1_beside(trees: dict, tiny_model: Path, tmp_path: Path) -> None:
    data = load_reproduce_data(_data_file(tmp_path / "data.yaml", trees, *trees))
    options = ReproduceOptions(quick=True, skip_bad=True, device="cpu", overlays=0)  # all tasks, datasets, fractions
    report = reproduce(tiny_model, data, tmp_path / "out", options)
    expected = (
        ["zeroshot-nih", "zeroshot-rsna", "zeroshot-siim", "zeroshot-chexpert", "grounding-ms-cxr"]
        + [
            f"{task}-{d}-{f}"
            for task in ("linear", "finetune")
            for d in ("nih", "chexpert", "rsna")
            for f in (1, 10, 100)
        ]
        + [f"segment-{d}-{f}" for d in ("siim", "covid-rural") for f in (1, 10, 100)]
        + [f"detect-rsna-{f}" for f in (1, 10, 100)]
    )
    assert [c.id for c in report.cells] == expected
    assert not report.failed, [(c.id, c.error) for c in report.failed]
    assert report.skipped_datasets == {}
    payload = json.loads(report.json_path.read_text())
    table_1 = {"nih": (79.3, 83.8, 85.9), "chexpert": (88.7, 88.7, 88.9), "rsna": (91.5, 92.7, 93.6)}
    for cell in payload["cells"]:
        assert cell["status"] == "done" and cell["quick"]
        for row in cell["rows"]:
            assert row["ours"] is not None and np.isfinite(row["ours"]), (cell["id"], row)
            if cell["task"] == "finetune":
                assert row["paper"] == table_1[cell["dataset"]][(1, 10, 100).index(cell["fraction"])]
                assert "Table 1, row 'MaCo (Ours)'" in row["source"] and f"{cell['fraction']}%" in row["source"]
                assert row["diff"] == pytest.approx(row["ours"] - row["paper"], abs=1e-3)
            else:
                assert row["paper"] is None and row["source"] is None
        if cell["task"] in ("linear", "finetune", "segment", "detect"):
            assert "optim.steps=2" in cell["command"] and "data.on_error=skip" in cell["command"]
            assert (Path(cell["out"]) / "metrics.json").is_file()
            config = json.loads((Path(cell["out"]) / "config.json").read_text())
            assert config["model"]["source"] == str(tiny_model)
        assert ("--mode linear_probe" in cell["command"]) == (cell["task"] == "linear")
    cells = {c["id"]: c for c in payload["cells"]}
    assert "--config finetune/chexpert_100 " in cells["finetune-chexpert-100"]["command"]
    assert "--config segment/covid_10 " in cells["segment-covid-rural-10"]["command"]
    assert "data.train_split=" in cells["segment-covid-rural-1"]["command"]
    assert [r["metric"] for r in cells["grounding-ms-cxr"]["rows"]] == ["cnr", "miou"]
    assert cells["segment-siim-1"]["rows"][0]["metric"] == "dice"
    assert cells["detect-rsna-1"]["rows"][0]["metric"] == "ap"
    _check_commands(payload)
    markdown = report.markdown_path.read_text()
    assert markdown.count("\n| ") == 1 + len(expected) + 1  # header, one row per cell (grounding: two)
    assert "| finetune-nih-1 | AUC (%) |" in markdown and "| 79.3 |" in markdown
    assert "- linear: Linear probing: not found" in markdown and "QUICK MODE" in markdown


@pytest.mark.slow
def test_a_failing_cell_is_recorded_and_the_run_goes_on(trees: dict, tiny_model: Path, tmp_path: Path) -> None:
    (tmp_path / "no-chexpert-here").mkdir()  # a root without the dataset's files: the cell fails, not the run
    broken = {"root": str(tmp_path / "no-chexpert-here")}
    data = load_reproduce_data(_data_file(tmp_path / "data.yaml", trees, "rsna", "siim", chexpert=broken))
    options = ReproduceOptions(tasks=("zeroshot", "detect"), fractions=(1,), quick=True, skip_bad=True, device="cpu")
    report = reproduce(tiny_model, data, tmp_path / "out", options)
    status = {c.id: c.status for c in report.cells}
    assert status == {
        "zeroshot-rsna": "done",
        "zeroshot-siim": "done",
        "zeroshot-chexpert": "failed",
        "detect-rsna-1": "done",
    }, [c.error for c in report.cells]
    assert report.skipped_datasets == {"nih": "nih.root is not set in the data file"}  # ms-cxr: no task uses it
    (failed,) = report.failed
    assert failed.error.startswith("DataError: ") and "no-chexpert-here" in failed.error
    saved = json.loads((tmp_path / "out" / "zeroshot-chexpert" / "cell.json").read_text())
    assert saved["status"] == "failed" and saved["error"] == failed.error
    payload = json.loads(report.json_path.read_text())
    assert [c["rows"][0]["ours"] is None for c in payload["cells"]] == [False, False, True, False]
    _check_commands(payload)
    markdown = report.markdown_path.read_text()
    assert "| zeroshot-chexpert | AUC (%) | failed |" in markdown
    assert "## Failed cells" in markdown and "- `zeroshot-chexpert`: DataError: " in markdown
    assert "## Skipped datasets" in markdown and "- nih: nih.root is not set" in markdown
    # a rerun retries the failed cell (now fixed) and reuses the others
    fixed = load_reproduce_data(_data_file(tmp_path / "data.yaml", trees, "rsna", "siim", "chexpert"))
    again = reproduce(tiny_model, fixed, tmp_path / "out", options)
    assert {c.id: c.status for c in again.cells} == {
        "zeroshot-rsna": "reused",
        "zeroshot-siim": "reused",
        "zeroshot-chexpert": "done",
        "detect-rsna-1": "reused",
    }


def test_peer_models_run_the_same_cells_as_extra_columns(trees: dict, tiny_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("timm")
    mrm = Path(__file__).resolve().parents[1] / "assets" / "families" / "mrm" / "MRM.pth"
    data = load_reproduce_data(_data_file(tmp_path / "data.yaml", trees, "rsna"))
    options = ReproduceOptions(
        tasks=("zeroshot", "linear", "segment"), fractions=(1,), quick=True, skip_bad=True, device="cpu", overlays=0
    )
    report = reproduce(tiny_model, data, tmp_path / "out", options, peers=[f"mrm:{mrm}"])
    assert not report.failed, [(c.id, c.error) for c in report.failed]
    ((spec, cells),) = report.peers.items()
    assert spec == f"mrm:{mrm.resolve()}"
    status = {c.id: c.status for c in cells}
    assert status == {"zeroshot-rsna": "unsupported", "linear-rsna-1": "done"}  # segmentation: no siim root
    linear = next(c for c in cells if c.id == "linear-rsna-1")
    assert Path(linear.out).parent == tmp_path / "out" / "peers" / "mrm-MRM.pth" and np.isfinite(linear.metrics["auc"])
    config = json.loads((Path(linear.out) / "config.json").read_text())
    assert config["model"]["source"] == spec and config["model"]["mode"] == "linear_probe"
    payload = json.loads(report.json_path.read_text())
    assert [c["status"] for c in payload["peers"][spec]] == ["unsupported", "done"]
    _check_commands({"cells": payload["peers"][spec][1:]})
    markdown = report.markdown_path.read_text()
    assert "## Other models (the same cells and recipes)" in markdown
    assert "| zeroshot-rsna | AUC (%) |" in markdown and "n/a (the mrm family cannot do zeroshot)" in markdown
    again = reproduce(tiny_model, data, tmp_path / "out", options, peers=[f"mrm:{mrm}"])
    assert [c.status for c in again.peers[spec]] == ["unsupported", "reused"]
