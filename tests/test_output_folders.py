"""No writer deletes or fills a folder it did not write (issue 19.1/19.2).

The rule: a new or empty folder is used, a folder this package wrote for the same purpose (its
``.maco-cxr.json`` marker) may be replaced or added to, and anything else is refused with an error
naming the folder and its files, leaving every file as it was.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from maco_cxr._atomic import MARKER_NAME, atomic_directory, claim_output_folder
from maco_cxr.cli import main
from maco_cxr.errors import OutputFolderError
from maco_cxr.hub import create_model, save_pretrained
from maco_cxr.models.config import preset


def _user_folder(path):
    """A folder as a user keeps it: a file and a subfolder with a file."""
    (path / "notes").mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work")
    (path / "notes" / "day1.txt").write_text("do not lose")
    return path


def _unchanged(path) -> bool:
    return (
        (path / "thesis.tex").read_text() == "years of work"
        and (path / "notes" / "day1.txt").read_text() == "do not lose"
        and not (path / MARKER_NAME).exists()
    )


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return create_model(preset("tiny"))


def test_atomic_directory_refuses_a_foreign_folder_and_names_its_files(tmp_path):
    folder = _user_folder(tmp_path / "v")
    with pytest.raises(OutputFolderError) as caught:
        with atomic_directory(folder, "export") as tmp:
            (tmp / "x").write_text("new")
    message = str(caught.value)
    assert str(folder) in message and "notes" in message and "thesis.tex" in message
    assert "new or empty folder" in message
    assert _unchanged(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]  # no temporary left behind


def test_atomic_directory_replaces_only_its_own_kind(tmp_path):
    with atomic_directory(tmp_path / "v", "export") as tmp:
        (tmp / "a").write_text("1")
    marker = json.loads((tmp_path / "v" / MARKER_NAME).read_text())
    assert marker["written_by"] == "maco-cxr" and marker["kind"] == "export"
    with atomic_directory(tmp_path / "v", "export") as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == [MARKER_NAME, "b"]
    with pytest.raises(OutputFolderError, match="as a export output, not a model output"):
        with atomic_directory(tmp_path / "v", "model"):
            pass
    assert (tmp_path / "v" / "b").read_text() == "2"


def test_atomic_directory_takes_an_empty_folder_and_refuses_a_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with atomic_directory(tmp_path / "empty", "model") as tmp:
        (tmp / "a").write_text("1")
    assert (tmp_path / "empty" / "a").read_text() == "1"
    (tmp_path / "file").write_text("mine")
    with pytest.raises(OutputFolderError, match="not a folder"):
        with atomic_directory(tmp_path / "file", "model"):
            pass
    assert (tmp_path / "file").read_text() == "mine"


def test_claim_output_folder_adds_only_to_its_own_kind(tmp_path):
    folder = claim_output_folder(tmp_path / "new" / "report", "grounding")
    assert folder.is_absolute() and (folder / MARKER_NAME).is_file()
    (folder / "metric.csv").write_text("ours")
    assert claim_output_folder(folder, "grounding") == folder
    with pytest.raises(OutputFolderError, match="grounding output, not a zeroshot output"):
        claim_output_folder(folder, "zeroshot")
    user = _user_folder(tmp_path / "mine")
    with pytest.raises(OutputFolderError, match="thesis.tex"):
        claim_output_folder(user, "grounding")
    assert _unchanged(user)


def test_a_damaged_marker_is_not_ours(tmp_path):
    folder = _user_folder(tmp_path / "v")
    (folder / MARKER_NAME).write_text("{not json")
    with pytest.raises(OutputFolderError, match="did not write it"):
        claim_output_folder(folder, "export")


def test_save_pretrained_keeps_a_users_folder(tmp_path, tiny_model):
    folder = _user_folder(tmp_path / "v")
    with pytest.raises(OutputFolderError, match="thesis.tex"):
        save_pretrained(tiny_model, folder)
    assert _unchanged(folder)
    save_pretrained(tiny_model, tmp_path / "m")
    save_pretrained(tiny_model, tmp_path / "m")  # its own output: replaced
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_export_keeps_a_users_folder(tmp_path, tiny_model):
    from maco_cxr.export import export

    folder = _user_folder(tmp_path / "v")
    with pytest.raises(OutputFolderError, match="thesis.tex"):
        export(tiny_model, folder, formats=("torchscript",), check=False)
    assert _unchanged(folder)


def test_save_finetuned_keeps_a_users_folder(tmp_path):
    from tests.tiny_finetuned import save_tiny_segmenter

    folder = _user_folder(tmp_path / "v")
    with pytest.raises(OutputFolderError, match="thesis.tex"):
        save_tiny_segmenter(folder)
    assert _unchanged(folder)
    save_tiny_segmenter(tmp_path / "seg")
    save_tiny_segmenter(tmp_path / "seg")  # its own output: replaced
    assert (tmp_path / "seg" / "config.json").is_file()


@pytest.mark.parametrize("out", ["v", "."])
def test_convert_cli_refuses_a_users_folder_even_as_dot(tmp_path, official_fixture_dir, capsys, out):
    folder = _user_folder(tmp_path / "v")
    cwd = os.getcwd()
    os.chdir(folder if out == "." else tmp_path)
    try:
        code = main(["convert", "--official", str(official_fixture_dir / "maco.pth"), "--out", out])
    finally:
        os.chdir(cwd)
    assert code == 2
    error = capsys.readouterr().err
    assert "refusing to replace" in error and str(folder) in error and "thesis.tex" in error
    assert _unchanged(folder)


def test_convert_cli_will_not_replace_the_current_folder(tmp_path, official_fixture_dir, capsys):
    """Swapping the working directory out would leave the user's shell in a deleted folder."""
    target = tmp_path / "here"
    target.mkdir()
    cwd = os.getcwd()
    os.chdir(target)
    try:
        assert main(["convert", "--official", str(official_fixture_dir / "maco.pth"), "--out", "."]) == 2
        assert main(["convert", "--official", str(official_fixture_dir / "maco.pth"), "--out", "model"]) == 0
    finally:
        os.chdir(cwd)
    assert "current working directory" in capsys.readouterr().err
    assert (target / "model" / "model.safetensors").is_file() and (target / "model" / MARKER_NAME).is_file()
