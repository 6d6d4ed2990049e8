"""`predict` over real-world folders: non-image files apart from failures, empty files named, failures
kept on resume unless retried, the maps of deleted inputs removed (only those), overlays on request
and off the model's path, --classes that swallowed a folder, and Ctrl-C."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maco_cxr.cli import main
from maco_cxr.errors import ConfigError, RunInterrupted
from maco_cxr.hub import create_model, save_pretrained
from maco_cxr.models.config import preset
from maco_cxr.tasks import predict as predict_module
from maco_cxr.tasks.predict import predict, predict_folder
from maco_cxr.tasks.predict_inputs import file_kind

CLASSES = ["Edema"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("model") / "tiny"
    save_pretrained(create_model(preset("tiny")), directory)
    return directory


def _pngs(cxr_real_dir: Path) -> list[Path]:
    return sorted((cxr_real_dir / "images").glob("*.png"), key=lambda p: p.stat().st_size)


@pytest.fixture()
def export(tmp_path, cxr_real_dir) -> Path:
    """A hospital export: 2 PNGs, a DICOM without extension, a JPEG named .txt, a DICOMDIR, a README,
    a CSV, a text file without extension, an empty PNG, an empty .log and a truncated PNG."""
    import pydicom
    from pydicom.dataset import FileMetaDataset

    root = tmp_path / "export"
    root.mkdir()
    pngs = _pngs(cxr_real_dir)
    shutil.copy(pngs[0], root / "a.png")
    shutil.copy(pngs[1], root / "b.png")
    shutil.copy(min((cxr_real_dir / "dicom").glob("*.dcm")), root / "IM0001")
    Image.open(pngs[2]).convert("L").save(root / "scan.txt", format="JPEG")
    index = pydicom.Dataset()
    index.file_meta = FileMetaDataset()
    index.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    index.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    index.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    index.save_as(root / "DICOMDIR", enforce_file_format=True)
    (root / "README.txt").write_text("Export of 2026-11-02, 5 studies.\n")
    (root / "studies.csv").write_text("id,date\n1,2026-11-02\n")
    (root / "NOTES").write_text("Patient positioning was poor on the second film.\n")
    (root / "empty.png").write_bytes(b"")
    (root / "export.log").write_bytes(b"")
    data = pngs[3].read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _names(path: Path) -> list[str]:
    return [Path(row["path"]).name for row in _rows(path)]


def test_file_kind_reads_extension_and_signature(tmp_path) -> None:
    cases = {
        "x.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 20,
        "x.txt": b"\xff\xd8\xff\xe0" + b"\0" * 20,
        "1.2.840.113619.2.55": b"\0" * 128 + b"DICM" + b"\0" * 8,
        "t": b"II*\x00" + b"\0" * 8,
        "bad.dcm": b"plain text",
        "blob": bytes(range(256)),
        "README.md": b"# hi\n",
        "LICENSE": b"MIT License\n",
        "table.csv": b"a,b\n",
        "zero.dcm": b"",
        "zero": b"",
        "zero.txt": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    kinds = {name: file_kind(tmp_path / name) for name in cases}
    by_kind = {kind: {n for n, k in kinds.items() if k.kind == kind} for kind in ("image", "not-image", "empty")}
    assert by_kind == {
        "image": {"x.png", "x.txt", "1.2.840.113619.2.55", "t", "bad.dcm", "blob"},
        "not-image": {"README.md", "LICENSE", "table.csv", "zero.txt"},
        "empty": {"zero.dcm", "zero"},
    }
    assert kinds["README.md"].reason == (
        "not an image: a .md file without the signature of PNG, JPEG, DICOM, TIFF, JPEG 2000, GIF, WebP"
    )
    assert kinds["LICENSE"].reason == "not an image: a text file without an image extension or signature"
    assert kinds["zero.txt"].reason == "not an image: an empty .txt file"
    assert kinds["zero"].reason == "the file is empty (0 bytes); copy it again from its source"
    assert file_kind(tmp_path / "missing.png").kind == "image"  # the reader names it: no such file


def test_non_images_are_listed_apart_from_failures_and_empty_files_are_called_empty(
    model_dir, export, tmp_path, capsys
) -> None:
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                str(export),
                "--model",
                str(model_dir),
                "--out",
                str(out),
                "--classes",
                "Edema",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "11 files: 4 predicted, 2 failed, 0 skipped views, 5 not images, 0 hidden entries ignored" in printed
    assert f"listed in {out / 'non_images.csv'}" in printed
    assert _names(out / "predictions.csv") == ["IM0001", "a.png", "b.png", "scan.txt"]
    signatures = "PNG, JPEG, DICOM, TIFF, JPEG 2000, GIF, WebP"
    assert {Path(r["path"]).name: r["reason"] for r in _rows(out / "non_images.csv")} == {
        "DICOMDIR": "not an image: a DICOMDIR (the index of a DICOM export)",
        "NOTES": "not an image: a text file without an image extension or signature",
        "README.txt": f"not an image: a .txt file without the signature of {signatures}",
        "export.log": "not an image: an empty .log file",
        "studies.csv": f"not an image: a .csv file without the signature of {signatures}",
    }
    failures = {Path(r["path"]).name: r["reason"] for r in _rows(out / "failures.csv")}
    assert sorted(failures) == ["empty.png", "truncated.png"]
    assert failures["empty.png"] == (
        f"{export / 'empty.png'}: the file is empty (0 bytes); copy it again from its source"
    )
    assert "cannot decode the image" in failures["truncated.png"]


def test_failed_files_are_kept_on_resume_unless_retry_failed(
    model_dir, export, cxr_real_dir, tmp_path, monkeypatch, capsys
) -> None:
    inputs = [export / "a.png", export / "truncated.png", export / "empty.png"]
    first = predict(model_dir, inputs, tmp_path / "out", classes=CLASSES)
    assert (first.n_predicted, first.n_failed, first.n_failed_not_retried) == (1, 2, 0)
    shutil.copy(_pngs(cxr_real_dir)[3], export / "truncated.png")  # the user fixes one file
    calls: list[list[str]] = []
    original = predict_module._predict_batch
    monkeypatch.setattr(
        predict_module,
        "_predict_batch",
        lambda engine, items: calls.append([i["path"] for i in items]) or original(engine, items),
    )
    again = predict(model_dir, inputs, tmp_path / "out", classes=CLASSES)
    assert calls == [] and (again.n_done_before, again.n_failed, again.n_failed_not_retried) == (3, 2, 2)
    assert (
        main(
            [
                "predict",
                *map(str, inputs),
                "--model",
                str(model_dir),
                "--out",
                str(tmp_path / "out"),
                "--classes",
                "Edema",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        "2 of them failed in an earlier run and were not retried (--retry-failed retries them)"
        in capsys.readouterr().out
    )
    retried = predict(model_dir, inputs, tmp_path / "out", classes=CLASSES, retry_failed=True)
    assert calls == [[str(export / "truncated.png")]]  # empty.png fails before the model; a.png was done
    assert (retried.n_predicted, retried.n_failed, retried.n_failed_not_retried) == (2, 1, 0)
    assert _names(retried.out / "failures.csv") == ["empty.png"]


def test_maps_of_deleted_inputs_are_removed_and_nothing_else(model_dir, export, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    first = predict(model_dir, [export], out, phrases=["edema", "left effusion"], overlays=True)
    maps = {Path(r["path"]).name: (r["map:edema"], r["map:left effusion"]) for r in _rows(out / "predictions.csv")}
    assert sorted(maps) == ["IM0001", "a.png", "b.png", "scan.txt"] and first.removed == []
    gone = [name for npy in maps["b.png"] for name in (npy, npy.replace(".npy", ".png"))]
    assert all((out / name).is_file() for name in gone)
    (out / "maps" / "my_notes.txt").write_text("mine")  # a file the run did not write
    unlisted = out / "maps" / "0000000000000000_p0_edema.npy"  # named like a map, written by someone else
    unlisted.write_bytes(b"x")
    saved = (export / "b.png").read_bytes()
    (export / "b.png").unlink()
    assert (
        main(
            [
                "predict",
                str(export),
                "--model",
                str(model_dir),
                "--out",
                str(out),
                "--phrase",
                "edema",
                "--phrase",
                "left effusion",
                "--overlays",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "removed 4 map/mask files of 1 inputs that no longer exist" in capsys.readouterr().out
    assert not any((out / name).exists() for name in gone)
    assert (out / "maps" / "my_notes.txt").read_text() == "mine" and unlisted.read_bytes() == b"x"
    kept = [
        name
        for key in ("a.png", "scan.txt", "IM0001")
        for npy in maps[key]
        for name in (npy, npy.replace(".npy", ".png"))
    ]
    assert all((out / name).is_file() for name in kept)
    assert _names(out / "predictions.csv") == ["IM0001", "a.png", "scan.txt"]
    summary = (out / "summary.json").read_text()
    assert '"removed_inputs": 1' in summary and gone[0] in summary
    again = predict(model_dir, [export], out, phrases=["edema", "left effusion"], overlays=True)
    assert again.removed == [] and again.summary["counts"]["processed_now"] == 0  # said once, done
    (export / "b.png").write_bytes(saved)  # the input comes back: predicted again, its maps written again
    back = predict(model_dir, [export], out, phrases=["edema", "left effusion"], overlays=True)
    assert back.summary["counts"]["processed_now"] == 1 and all((out / name).is_file() for name in gone)
    (out / kept[0]).unlink()  # a map deleted by hand: its image is predicted again
    redone = predict(model_dir, [export], out, phrases=["edema", "left effusion"], overlays=True)
    assert redone.summary["counts"]["processed_now"] == 1 and (out / kept[0]).is_file()


def test_overlays_only_on_request_and_a_failed_write_is_raised(model_dir, export, tmp_path, monkeypatch) -> None:
    inputs = [export / "a.png", export / "b.png"]
    plain = predict(model_dir, inputs, tmp_path / "plain", phrases="edema")  # one phrase may be a str
    assert sorted(p.suffix for p in (plain.out / "maps").iterdir()) == [".npy", ".npy"]
    drawn = predict(model_dir, inputs, tmp_path / "drawn", phrases="edema", overlays=True)
    assert sorted(p.suffix for p in (drawn.out / "maps").iterdir()) == [".npy", ".npy", ".png", ".png"]
    for name in ("predictions.csv", "failures.csv"):
        assert (plain.out / name).read_text() == (drawn.out / name).read_text()
    with pytest.raises(ConfigError, match="overlays draw grounding maps"):
        predict(model_dir, inputs, tmp_path / "none", classes=CLASSES, overlays=True)

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(predict_module, "map_files", full_disk)
    with pytest.raises(OSError, match="No space left"):
        predict(model_dir, inputs, tmp_path / "full", phrases="edema")
    assert not list((tmp_path / "full" / "parts").iterdir())  # nothing committed for the failed chunk


def test_a_folder_swallowed_by_classes_is_named(model_dir, export, tmp_path, monkeypatch, capsys) -> None:
    common = ["--model", str(model_dir), "--no-progress"]
    assert main(["predict", *common, "--out", str(tmp_path / "a"), "--classes", "Edema", "Effusion", str(export)]) == 2
    err = capsys.readouterr().err
    assert f"--classes: '{export}' is an existing path, not class names" in err
    assert "put INPUTs before --classes or end the list with --" in err
    monkeypatch.chdir(export.parent)
    # no INPUT left: a bare name that is an existing path is refused too
    assert main(["predict", *common, "--out", "b", "--classes", "Edema", "export"]) == 2
    assert "'export' is an existing path" in capsys.readouterr().err
    # INPUTs first: a class named like a folder of the working directory is a class
    assert main(["predict", "export", *common, "--out", "c", "--classes", "export", "Edema"]) == 0
    assert main(["predict", *common, "--out", "d", "--classes", "Edema", "--", "export"]) == 0
    assert capsys.readouterr().out.count("11 files: 4 predicted") == 2
    assert not (export.parent / "a").exists() and not (export.parent / "b").exists()


def test_a_misspelt_keyword_names_the_right_one(model_dir, export, tmp_path) -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'phrase'; did you mean phrases=\?"):
        predict_folder(model_dir, export, tmp_path / "out", phrase="edema")
    with pytest.raises(TypeError, match="'colour'; its arguments are model, inputs, out, list_file"):
        predict_folder(model_dir, export, tmp_path / "out", colour=True)
    assert not (tmp_path / "out").exists()


def test_ctrl_c_names_the_chunk_and_the_rerun_finishes(model_dir, export, tmp_path, monkeypatch) -> None:
    inputs = [export / name for name in ("a.png", "b.png", "scan.txt", "IM0001")]
    reference = predict(model_dir, inputs, tmp_path / "whole", phrases="edema", chunk_size=2, batch_size=2)
    original = predict_module._predict_batch
    calls: list[int] = []

    def ctrl_c_in_the_second_chunk(engine, items):
        calls.append(len(items))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(engine, items)

    def ctrl_c_while_loading(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_module, "_build_engine", ctrl_c_while_loading)
    with pytest.raises(RunInterrupted, match=r"^chunk 1 of 2 \(loading the model\)$"):
        predict(model_dir, inputs, tmp_path / "cut", phrases="edema", chunk_size=2, batch_size=2)
    assert not (tmp_path / "cut" / "settings.json").exists()
    monkeypatch.undo()
    monkeypatch.setattr(predict_module, "_predict_batch", ctrl_c_in_the_second_chunk)
    with pytest.raises(RunInterrupted, match="^chunk 2 of 2$"):
        predict(model_dir, inputs, tmp_path / "cut", phrases="edema", chunk_size=2, batch_size=2)
    assert len(list((tmp_path / "cut" / "parts").iterdir())) == 1
    monkeypatch.setattr(predict_module, "_predict_batch", original)
    resumed = predict(model_dir, inputs, tmp_path / "cut", phrases="edema", chunk_size=2, batch_size=2)
    assert resumed.n_done_before == 2
    assert (resumed.out / "predictions.csv").read_text() == (reference.out / "predictions.csv").read_text()
    for row in _rows(resumed.out / "predictions.csv"):
        np.testing.assert_array_equal(
            np.load(resumed.out / row["map:edema"]), np.load(reference.out / row["map:edema"])
        )


def test_colour_files_are_reduced_to_grey_and_said_so_and_tiny_images_fail(
    model_dir, cxr_real_dir, tmp_path, capsys
) -> None:
    root = tmp_path / "colour"
    root.mkdir()
    grey = Image.open(_pngs(cxr_real_dir)[0])
    grey.save(root / "grey.png")
    grey.convert("RGB").save(root / "rgb.png")
    Image.new("L", (1, 1), 128).save(root / "dot.png")
    Image.new("L", (2000, 40), 128).save(root / "strip.png")
    out = tmp_path / "out"
    assert (
        main(
            ["predict", str(root), "--model", str(model_dir), "--out", str(out), "--classes", "Edema", "--no-progress"]
        )
        == 0
    )
    assert "1 colour images were reduced to grey with the PNG luma" in capsys.readouterr().out
    rows = {Path(r["path"]).name: r for r in _rows(out / "predictions.csv")}
    assert {name: row["colour"] for name, row in rows.items()} == {"grey.png": "", "rgb.png": "RGB"}
    # the luma of a grey RGB file is the grey image (scores differ only by batch arithmetic)
    assert float(rows["grey.png"]["score:Edema"]) == pytest.approx(float(rows["rgb.png"]["score:Edema"]), abs=1e-6)
    failures = {Path(r["path"]).name: r["reason"] for r in _rows(out / "failures.csv")}
    assert sorted(failures) == ["dot.png", "strip.png"]
    assert str(root / "dot.png") in failures["dot.png"] and "the image is 1x1 px" in failures["dot.png"]
