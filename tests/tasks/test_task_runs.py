"""The task functions behind `zeroshot`, `ground`, `retrieve` and `reproduce`, on phantoms.

- run_zeroshot / run_grounding / run_retrieval: frozen results whose figures and intervals are
  the ones their summary.json holds, and the files they list.
- A reproduce cell and the command it records write the same files with the same numbers.
- reproduce: the split error names --skip-bad; --skip-bad does not invalidate cells finished
  without it (nor the reverse when nothing was left out); missing data paths fail once, up front.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import maco_cxr
from maco_cxr.cli import main
from maco_cxr.data.datasets import build_dataset
from maco_cxr.data.synthetic import generate_phantom, write_synthetic_dataset
from maco_cxr.errors import ConfigError
from maco_cxr.hub import create_model, save_pretrained
from maco_cxr.models.config import preset
from maco_cxr.tasks.grounding import GroundingResult, run_grounding
from maco_cxr.tasks.reproduce import ReproduceOptions, load_reproduce_data, reproduce
from maco_cxr.tasks.results import Estimate, RunSource
from maco_cxr.tasks.retrieval import RetrievalResult, run_retrieval
from maco_cxr.tasks.zeroshot import ZeroShotResult, run_zeroshot
from tests.data.test_datasets import MSCXR_HEADER, write_csv
from tests.tasks.test_reproduce import NIH_HEADER, NIH_NAMES, _picks

pytestmark = [
    pytest.mark.filterwarnings("ignore:AUC of .* is undefined:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:.*bootstrap replicates gave an undefined:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:.*values of .* items are NaN:RuntimeWarning"),
]

SIZE = 64
MSCXR_FINDINGS = {
    "pleural effusion": "Pleural Effusion",
    "pneumothorax": "Pneumothorax",
    "cardiomegaly": "Cardiomegaly",
    "consolidation": "Consolidation",
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("model") / "tiny"
    save_pretrained(create_model(preset("tiny")), directory)
    return directory


def _save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _test_list(path: Path, extra: tuple[str, ...] = ()) -> Path:
    """A split file of the NIH test images of the tree (and of ``extra`` names, absent from it)."""
    entries = [(name, entry.labels) for name, entry in _picks("nih", ("test",)).items()]
    entries += [(name, np.zeros(14)) for name in extra]
    path.write_text("".join(f"{name} {' '.join(f'{v:g}' for v in labels)}\n" for name, labels in entries))
    return path


def make_phantom_nih(root: Path) -> Path:
    """An NIH tree whose official test images (a few) are phantoms."""
    rows = []
    for k, (name, entry) in enumerate(_picks("nih", ("test",)).items()):
        phantom = generate_phantom(np.random.default_rng(k), SIZE)
        _save_png(root / "images_001" / "images" / name, phantom.image)
        found = [NIH_NAMES[i] for i, v in enumerate(entry.labels) if v == 1]
        rows.append(
            [name, "|".join(found) or "No Finding", 0, int(name.split("_")[0]), 50, "F", "PA", SIZE, SIZE, 0.1, 0.1]
        )
    write_csv(root / "Data_Entry_2017.csv", NIH_HEADER, rows)
    write_csv(root / "BBox_List_2017.csv", ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"], [])
    return root


def make_phantom_mscxr(base: Path) -> tuple[Path, Path]:
    """MS-CXR annotations on phantom images in the MIMIC-CXR-JPG layout: one phrase per finding."""
    root, rows = base / "mimic-jpg", []
    for k, kind in enumerate(MSCXR_FINDINGS):
        phantom = generate_phantom(np.random.default_rng(10 + k), SIZE, [kind])
        relative = f"files/p1{k}/p1{k}00000{k}/s5000000{k}/img{k}.jpg"
        _save_png(root / relative, phantom.image)
        for finding in phantom.findings:
            x0, y0, x1, y1 = finding.box_xyxy
            rows.append(
                [
                    f"img{k}",
                    relative,
                    x0,
                    y0,
                    max(x1 - x0, 1),
                    max(y1 - y0, 1),
                    SIZE,
                    SIZE,
                    MSCXR_FINDINGS[finding.kind],
                    finding.phrase,
                ]
            )
    return root, write_csv(base / "ms_cxr.csv", MSCXR_HEADER, rows)


@pytest.fixture(scope="module")
def phantom_trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    base = tmp_path_factory.mktemp("phantom-trees")
    mimic, annotations = make_phantom_mscxr(base)
    nih = make_phantom_nih(base / "nih")
    return {
        "nih": {"root": str(nih), "test_split": str(_test_list(base / "nih_test.txt"))},
        "ms_cxr": {"root": str(mimic), "annotations": str(annotations)},
    }


@pytest.fixture(scope="module")
def phantom_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    write_synthetic_dataset(root, 12, seed=0, size=SIZE, split_fractions=(0.0, 0.5, 0.5))
    return root


def _data_file(path: Path, entries: dict) -> Path:
    path.write_text(yaml.safe_dump(entries))
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "cell.json"
    }


# --- the task functions ----------------------------------------------------------------------------------


def test_the_task_functions_are_exported_beside_the_per_image_ones() -> None:
    assert maco_cxr.run_zeroshot is run_zeroshot and maco_cxr.run_grounding is run_grounding
    assert maco_cxr.run_retrieval is run_retrieval
    assert callable(maco_cxr.zero_shot) and callable(maco_cxr.ground) and callable(maco_cxr.retrieve)


def test_run_zeroshot_returns_a_frozen_result_holding_what_summary_json_says(
    tiny_model, phantom_manifest, tmp_path
) -> None:
    model = maco_cxr.load(tiny_model)
    test = build_dataset("manifest", phantom_manifest, split="test")
    val = build_dataset("manifest", phantom_manifest, split="val")
    source = RunSource(model=str(tiny_model), dataset="manifest", root=str(phantom_manifest), split="test")
    result = run_zeroshot(
        model,
        test,
        tmp_path / "zs",
        classes=["pleural effusion", "cardiomegaly"],
        validation=val,
        n_bootstrap=50,
        seed=1,
        source=source,
        validation_source=RunSource(split="val"),
    )
    assert isinstance(result, ZeroShotResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.n_images = 0  # type: ignore[misc]
    summary = json.loads(result.summary_path.read_text())
    assert result.n_images == summary["n_images"] == len(test)
    assert result.n_unreadable == result.n_skipped == 0
    assert (summary["model"], summary["split"]) == (str(tiny_model), "test")
    assert summary["validation"]["split"] == "val"
    assert summary["validation"]["n_images"] == len(val) and summary["operating_points"] is not None
    names = [str(p.relative_to(result.out)) for p in result.files]
    assert names[:3] == ["scores.csv", "val_scores.csv", "roc_curves.png"] and names[-1] == "summary.json"
    assert "reliability.png" in names and all(p.is_file() for p in result.files)
    auc = result.metrics["macro_auc"]
    assert auc.value == pytest.approx(summary["macro_auc"], abs=1e-12)
    assert (auc.low, auc.high) == (summary["ci"]["macro_auc"]["low"], summary["ci"]["macro_auc"]["high"])
    assert result.metrics["macro_acc"] == Estimate(summary["macro_acc"])  # no interval for ACC
    per_class = result.per_class["cardiomegaly"]["auc"]
    assert per_class.value == pytest.approx(summary["per_class"]["cardiomegaly"]["auc"], abs=1e-12)


def test_run_grounding_returns_a_frozen_result_with_intervals_and_counts(
    tiny_model, phantom_manifest, tmp_path
) -> None:
    model = maco_cxr.load(tiny_model)
    dataset = build_dataset("manifest", phantom_manifest)
    result = run_grounding(
        model, dataset, tmp_path / "g", target="boxes", overlays=2, n_bootstrap=40, source=RunSource(dataset="manifest")
    )
    assert isinstance(result, GroundingResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.n_items = 0  # type: ignore[misc]
    summary = json.loads(result.summary_path.read_text())
    assert result.n_items == summary["n"] > 0 and summary["dataset"] == "manifest"
    assert (result.n_unreadable, result.n_empty_mask, result.n_unusable) == (0, 0, 0)
    assert summary["overlays"] == [str(p.relative_to(result.out)) for p in result.files if p.suffix == ".png"]
    assert len(summary["overlays"]) == 2 and all(name.startswith("overlays/") for name in summary["overlays"])
    assert [p.name for p in result.files if p.suffix != ".png"] == ["items.csv", "metric.csv", "summary.json"]
    miou = result.metrics["miou"]
    assert miou.value == pytest.approx(summary["miou"]) and miou.low == summary["ci"]["miou"]["low"]
    assert miou.low <= miou.value <= miou.high
    assert set(result.per_category) == set(summary["per_category"])


def test_run_retrieval_intervals_resample_queries_around_the_recalls(tiny_model, phantom_manifest, tmp_path) -> None:
    model = maco_cxr.load(tiny_model)
    dataset = build_dataset("manifest", phantom_manifest)
    result = run_retrieval(model, dataset, tmp_path / "r", ks=(1, 5), n_bootstrap=60, seed=3)
    assert isinstance(result, RetrievalResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.n_pairs = 0  # type: ignore[misc]
    summary = json.loads(result.summary_path.read_text())
    assert result.files == (result.summary_path,) and result.n_pairs == summary["n"] == 12
    assert summary["ks"] == [1, 5]
    assert summary["ci"]["n_resamples"] == 60 and summary["ci"]["unit"] == "patient"
    recalls = maco_cxr.retrieve(model, dataset, ks=(1, 5))
    for key in ("i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5"):
        # the per-query hits the intervals resample average to the recalls of retrieve()
        assert summary["ci"][key]["estimate"] == pytest.approx(recalls[key]) == pytest.approx(summary[key])
        assert result.metrics[key].low <= result.metrics[key].value <= result.metrics[key].high
    no_ci = run_retrieval(model, dataset, tmp_path / "r0", ks=(1,), n_bootstrap=0)
    assert no_ci.summary["ci"] is None and no_ci.metrics["i2t_R@1"].low is None


# --- reproduce cell == the command it records --------------------------------------------------------------


@pytest.mark.slow
def test_a_reproduce_cell_and_its_command_write_the_same_files_and_numbers(tiny_model, phantom_trees, tmp_path) -> None:
    data = load_reproduce_data(_data_file(tmp_path / "data.yaml", phantom_trees))
    options = ReproduceOptions(tasks=("zeroshot", "grounding"), device="cpu", overlays=2, batch_size=3)
    report = reproduce(tiny_model, data, tmp_path / "out", options)
    assert [(c.id, c.status) for c in report.cells] == [("zeroshot-nih", "done"), ("grounding-ms-cxr", "done")]
    for cell in report.cells:
        words = shlex.split(cell.command)
        again = tmp_path / "command" / cell.id
        words[words.index("--out") + 1] = str(again)
        assert main([*words[1:], "--no-progress"]) == 0
        ours, theirs = _files(Path(cell.out)), _files(again)
        assert list(ours) == list(theirs) and "summary.json" in ours
        for name in ours:
            assert ours[name] == theirs[name], f"{cell.id}: {name} differs"
        summary = json.loads((again / "summary.json").read_text())
        if cell.task == "zeroshot":
            assert {"scores.csv", "roc_curves.png"} <= set(ours)
            assert (cell.metrics["auc"], cell.metrics["f1"], cell.metrics["acc"]) == (
                summary["macro_auc"],
                summary["mean_f1_weighted"],
                summary["macro_acc"],
            )
            assert cell.metrics["n_images"] == summary["n_images"] == 4
            assert summary["split_file"] == phantom_trees["nih"]["test_split"]
            assert summary["official_split"] is None
        else:
            assert {"items.csv", "metric.csv"} <= set(ours) and len(summary["overlays"]) == 2
            assert (cell.metrics["cnr"], cell.metrics["miou"], cell.metrics["n_items"]) == (
                summary["cnr"],
                summary["miou"],
                summary["n"],
            )
            assert summary["annotations"] == phantom_trees["ms_cxr"]["annotations"]


# --- reproduce: issue 19 item 14 ------------------------------------------------------------------------


def _with_extra_test_entry(tmp_path: Path, trees: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """The NIH tree with a test list naming its test images plus one that is not there."""
    listed = _test_list(tmp_path / "nih_test_plus_one.txt", ("99999999_000.png",))
    return {"nih": {**trees["nih"], "test_split": str(listed)}}


def test_the_split_error_of_a_cell_names_the_skip_bad_flag(tiny_model, phantom_trees, tmp_path, capsys) -> None:
    data = _data_file(tmp_path / "data.yaml", _with_extra_test_entry(tmp_path, phantom_trees))
    assert (
        main(
            [
                "reproduce",
                "--model",
                str(tiny_model),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "out"),
                "--tasks",
                "zeroshot",
                "--device",
                "cpu",
            ]
        )
        == 1
    )
    printed = capsys.readouterr().out
    assert "failed zeroshot-nih: DataError:" in printed and "1 of 5 entries match no record" in printed
    assert "--skip-bad on the command line" in printed


def test_skip_bad_does_not_invalidate_finished_cells_unless_they_left_inputs_out(
    tiny_model, phantom_trees, tmp_path
) -> None:
    zeroshot: dict = {"tasks": ("zeroshot",), "device": "cpu"}
    data = load_reproduce_data(_data_file(tmp_path / "data.yaml", {"nih": phantom_trees["nih"]}))
    first = reproduce(tiny_model, data, tmp_path / "strict", ReproduceOptions(**zeroshot))
    (cell,) = first.cells
    assert cell.status == "done" and cell.metrics["n_left_out"] == 0 and not cell.skip_bad
    # --skip-bad and other run-control settings (batch size, workers, overlays) reuse the finished cell
    again = reproduce(
        tiny_model, data, tmp_path / "strict", ReproduceOptions(**zeroshot, skip_bad=True, batch_size=2, overlays=0)
    )
    assert [(c.status, c.metrics) for c in again.cells] == [("reused", cell.metrics)]
    # a cell finished with --skip-bad that left nothing out is reused by a run without it
    lenient = ReproduceOptions(**zeroshot, skip_bad=True)
    skipped_nothing = reproduce(tiny_model, data, tmp_path / "lenient", lenient)
    assert [(c.status, c.skip_bad) for c in skipped_nothing.cells] == [("done", True)]
    assert skipped_nothing.cells[0].metrics == cell.metrics
    strict = reproduce(tiny_model, data, tmp_path / "lenient", ReproduceOptions(**zeroshot))
    assert [c.status for c in strict.cells] == ["reused"]

    # a cell that left an entry out under --skip-bad is not passed off as a strict result
    entries = _with_extra_test_entry(tmp_path, phantom_trees)
    skipping = load_reproduce_data(_data_file(tmp_path / "skip.yaml", entries))
    done = reproduce(tiny_model, skipping, tmp_path / "skip", ReproduceOptions(**zeroshot, skip_bad=True))
    assert [(c.status, c.metrics["n_left_out"]) for c in done.cells] == [("done", 1)]
    refused = reproduce(tiny_model, skipping, tmp_path / "skip", ReproduceOptions(**zeroshot))
    (cell,) = refused.cells
    assert cell.status == "failed"
    assert "left out 1 unusable inputs" in cell.error and "pass --skip-bad to reuse it" in cell.error
    saved = json.loads((tmp_path / "skip" / "zeroshot-nih" / "cell.json").read_text())
    assert saved["status"] == "done" and saved["skip_bad"]  # the finished result is kept, not overwritten


def test_missing_data_paths_fail_once_before_any_cell_runs(tiny_model, phantom_trees, tmp_path, capsys) -> None:
    entries = {
        "nih": {"root": str(tmp_path / "no-nih")},
        "rsna": {"root": str(tmp_path / "no-rsna")},
        "siim": {"root": phantom_trees["nih"]["root"], "test_split": str(tmp_path / "no-list.txt")},
        "mimic": {"root": str(tmp_path / "no-mimic")},
        "ms_cxr": {"annotations": phantom_trees["ms_cxr"]["annotations"]},
    }
    data = load_reproduce_data(_data_file(tmp_path / "data.yaml", entries))
    with pytest.raises(ConfigError) as caught:
        reproduce(
            tiny_model,
            data,
            tmp_path / "out",
            ReproduceOptions(tasks=("zeroshot", "grounding")),
            data_file=str(tmp_path / "data.yaml"),
        )
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'data.yaml'}: 4 paths of the data file do not exist")
    for key, missing in (
        ("nih.root", "no-nih"),
        ("rsna.root", "no-rsna"),
        ("siim.test_split", "no-list.txt"),
        ("mimic.root", "no-mimic"),
    ):
        assert f"{key}: {tmp_path / missing}" in message
    assert not (tmp_path / "out").exists()  # nothing was run or written
    # only the selected cells' datasets are checked
    only = reproduce(tiny_model, data, tmp_path / "out", ReproduceOptions(tasks=("zeroshot",), datasets=("chexpert",)))
    assert only.cells == []
    assert (
        main(
            [
                "reproduce",
                "--model",
                str(tiny_model),
                "--data",
                str(tmp_path / "data.yaml"),
                "--out",
                str(tmp_path / "cli"),
                "--tasks",
                "zeroshot",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "maco-cxr reproduce: error:" in err and "nih.root:" in err and "siim.test_split:" in err
