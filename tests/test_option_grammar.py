"""One option grammar: ``-o``, ``--dataset-arg``, ``data.options`` and prompt files read values
like every config (``yes`` is text, so a bool option given ``yes`` is the same error everywhere)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from maco_cxr.cli import main
from maco_cxr.cli._model_args import add_dataset_arguments, build_dataset_from_args
from maco_cxr.config import coerce_arguments, load_config, parse_options
from maco_cxr.data.datasets import GenericManifest, RsnaPneumonia
from maco_cxr.errors import ConfigError
from maco_cxr.tasks.finetune import ClassifyConfig
from maco_cxr.tasks.finetune.splits import build_splits
from maco_cxr.tasks.prompts import resolve_prompts


def _from_dash_o(root: Path, option: str) -> ConfigError:
    parser = argparse.ArgumentParser()
    add_dataset_arguments(parser, required=True)
    args = parser.parse_args(["--dataset", "rsna", "--root", str(root), "-o", option, "--skip-bad"])
    with pytest.raises(ConfigError) as info:
        build_dataset_from_args(args)
    return info.value


def _from_data_options(root: Path, option: str) -> ConfigError:
    overrides = ["data.kind=rsna", f"data.root={root}", f"data.options.{option}"]
    config = load_config(ClassifyConfig, None, overrides)
    with pytest.raises(ConfigError) as info:
        build_splits(config.data)
    return info.value


def _from_dataset_arg(root: Path, option: str, capsys: pytest.CaptureFixture) -> str:
    assert main(["prepare", str(root), "--dataset", "rsna", "--out", str(root / "store"), "--dataset-arg", option]) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("positives_only=yes", "rsna dataset option: positives_only: expected true or false, got 'yes'"),
        ("x=yes", "rsna dataset option: x: unknown key; "),
        ("positivs_only=true", "rsna dataset option: positivs_only: unknown key; did you mean positives_only?"),
    ],
)
def test_adapter_options_error_the_same_way_from_every_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture, option: str, message: str
) -> None:
    dash_o = _from_dash_o(tmp_path, option)
    data_options = _from_data_options(tmp_path, option)
    assert str(dash_o) == str(data_options)
    assert str(dash_o).startswith(message)
    assert f"maco-cxr prepare: error: {dash_o}" in _from_dataset_arg(tmp_path, option, capsys)


def test_option_values_read_like_overrides() -> None:
    values = parse_options(["a=yes", "b=1e-4", "c=[x, y]", "d=", "e=true", "f=ms_cxr.csv"], "-o")
    assert values == {"a": "yes", "b": 1e-4, "c": ["x", "y"], "d": None, "e": True, "f": "ms_cxr.csv"}
    with pytest.raises(ConfigError, match=r"^-o: 'annotations' is not of the form KEY=VALUE"):
        parse_options(["annotations"], "-o")


def test_options_take_the_adapter_parameter_types() -> None:
    assert coerce_arguments(RsnaPneumonia, {"positives_only": True, "split": "test"}, given=("root",)) == {
        "positives_only": True,
        "split": "test",
    }
    # a list stays a list, a tuple a tuple, a path passes as given; numbers become text for text options
    path = Path("labels.csv")
    assert coerce_arguments(GenericManifest, {"classes": ["a", "b"], "mask_labels": ("m",), "split": 1}) == {
        "classes": ["a", "b"],
        "mask_labels": ("m",),
        "split": "1",
    }
    assert coerce_arguments(GenericManifest, {"root": path})["root"] is path
    with pytest.raises(ConfigError, match=r"^classes: \['a', \[1\]\] is not a list of text or null$"):
        coerce_arguments(GenericManifest, {"classes": ["a", [1]]})
    with pytest.raises(ConfigError, match=r"root: unknown key"):
        coerce_arguments(GenericManifest, {"root": "x"}, given=("root",))


def test_prompt_files_read_yes_as_text_like_every_config(tmp_path: Path) -> None:
    path = tmp_path / "prompts.yaml"
    path.write_text('pos: [yes]\nneg: ["no {c}"]\n')
    table = resolve_prompts(["Edema"], path)
    assert table["Edema"].positive == ("yes",) and table["Edema"].negative == ("no edema",)
    path.write_text('pos: ["There is {c}."]\nnegs: ["no {c}."]\n')
    with pytest.raises(ConfigError) as info:
        resolve_prompts(["Edema"], path)
    assert str(info.value) == f"{path}: negs: unknown key; did you mean neg? valid keys here: neg, pos"
