"""Shipped recipes found by name (``--config base-paper``, ``--config siim_10``) as well as by path."""

from __future__ import annotations

from pathlib import Path

import pytest

from maco_cxr.cli import build_parser, main
from maco_cxr.config import RECIPE_FOLDERS, recipe_folder, recipe_names, resolve_recipe
from maco_cxr.errors import ConfigError

SHIPPED = recipe_folder()


def test_the_recipes_are_package_data_inside_maco_cxr() -> None:
    import maco_cxr

    assert SHIPPED == Path(maco_cxr.__file__).parent / "recipes"
    assert sorted(p.name for p in SHIPPED.iterdir()) == sorted(RECIPE_FOLDERS)
    assert recipe_names("pretrain") == ["pretrain/base-paper", "pretrain/tiny-synthetic"]
    assert recipe_names("detect") == ["detect/rsna_1", "detect/rsna_10", "detect/rsna_100"]


@pytest.mark.parametrize(
    ("name", "folder", "expected"),
    [
        ("base-paper", None, "pretrain/base-paper.yaml"),
        ("base-paper", "pretrain", "pretrain/base-paper.yaml"),
        ("tiny-synthetic.yaml", "pretrain", "pretrain/tiny-synthetic.yaml"),
        ("siim_10", None, "segment/siim_10.yaml"),
        ("siim_10", "segment", "segment/siim_10.yaml"),
        ("segment/siim_10", None, "segment/siim_10.yaml"),
        ("finetune/nih_1", "finetune", "finetune/nih_1.yaml"),
        ("configs/finetune/nih_1.yaml", "finetune", "finetune/nih_1.yaml"),  # the old checkout path
        ("rsna_10", "detect", "detect/rsna_10.yaml"),  # a bare name is looked up in the command's folder
        ("rsna_10", "finetune", "finetune/rsna_10.yaml"),
    ],
)
def test_a_recipe_is_found_by_name(name: str, folder: str | None, expected: str) -> None:
    assert resolve_recipe(name, folder) == SHIPPED / expected


def test_an_existing_file_wins_over_a_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "base-paper"
    own.write_text("optim: {lr: 1.0e-4}\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_recipe("base-paper", "pretrain") == Path("base-paper")
    assert resolve_recipe(own, "pretrain") == own
    assert resolve_recipe("nih_1", "finetune", root=SHIPPED) == SHIPPED / "finetune" / "nih_1.yaml"


@pytest.mark.parametrize(
    ("name", "folder", "message"),
    [
        (
            "base-papr",
            "pretrain",
            (
                r"'base-papr' is neither a config file nor a shipped pretrain recipe name; "
                r"did you mean base-paper\? shipped pretrain recipes: base-paper, tiny-synthetic$"
            ),
        ),
        ("siim_10", "finetune", r"did you mean segment/siim_10 or .*shipped finetune recipes: adamw_lld, "),
        ("finetune/siim_10", None, r"did you mean segment/siim_10 or"),
        ("rsna_10", None, r"recipe 'rsna_10' is in several folders \(detect/rsna_10, finetune/rsna_10\); "),
        ("/no/such/recipe.yaml", None, r"'/no/such/recipe\.yaml' is neither a config file nor a shipped recipe"),
    ],
)
def test_an_unknown_name_lists_the_nearest(name: str, folder: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_recipe(name, folder)


def test_a_folder_is_no_recipe(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a folder; give a config file or a recipe name"):
        resolve_recipe(tmp_path, "pretrain")
    with pytest.raises(ConfigError, match="not a folder of recipes"):
        recipe_folder(tmp_path / "missing")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["pretrain", "--config", "base-paper"], "pretrain/base-paper.yaml"),
        (["finetune", "--model", "none", "--out", "x", "--config", "rsna_10"], "finetune/rsna_10.yaml"),
        (["detect", "--model", "none", "--out", "x", "--config", "rsna_10"], "detect/rsna_10.yaml"),
        (["segment", "--model", "none", "--out", "x", "--config", "siim_10"], "segment/siim_10.yaml"),
        (["segment", "--model", "none", "--out", "x", "--config", "segment/siim_10.yaml"], "segment/siim_10.yaml"),
    ],
)
def test_each_command_resolves_its_config_by_name(argv: list[str], expected: str) -> None:
    assert build_parser().parse_args(argv).config == SHIPPED / expected


@pytest.mark.parametrize("command", ["finetune", "segment", "detect"])
def test_every_fine_tuning_command_takes_a_name_and_rejects_a_typo(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--model", "none", "--config", "nih_1O", "--out", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --config: 'nih_1O' is neither a config file nor a shipped {command} recipe name" in err


def test_pretrain_takes_a_recipe_name_and_lists_the_nearest(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["pretrain", "--config", "tiny-synthetik"])
    assert "did you mean tiny-synthetic?" in capsys.readouterr().err
