"""The family registry: names, specs and the errors a user meets first."""

from __future__ import annotations

import importlib

import pytest

import maco_cxr
from maco_cxr.errors import ConfigError
from maco_cxr.families import FAMILIES, family_info, load_family, split_model_spec


def test_specs_split_only_on_registered_families() -> None:
    assert split_model_spec("chexzero:/w/best.pt") == ("chexzero", "/w/best.pt")
    assert split_model_spec("hf-hub:org/name") == ("maco", "hf-hub:org/name")
    assert split_model_spec("C:/models/maco.pth") == ("maco", "C:/models/maco.pth")
    with pytest.raises(ConfigError, match="chexzero:PATH"):
        split_model_spec("chexzero:")


def test_unknown_family_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown model family 'chexero'.*chexzero"):
        family_info("chexero")


def test_maco_family_is_the_default_load(tmp_path) -> None:
    pth = "tests/assets/official-maco-tiny/maco.pth"
    model = maco_cxr.load(pth, family="maco")
    assert model.family == "maco" and model.input_size == model.config.vision.img_size
    with pytest.raises(ConfigError, match="tokenizer ships with the package"):
        load_family(pth, "maco", tokenizer=tmp_path)


def test_each_implemented_family_states_what_the_registry_states() -> None:
    for name, info in FAMILIES.items():
        if name == "maco":
            continue
        try:
            module = importlib.import_module(f"maco_cxr.families.{info.module}")
        except ModuleNotFoundError as err:
            if err.name == f"maco_cxr.families.{info.module}":
                raise AssertionError(f"{name} is registered but has no module") from err
            raise
        classes = [v for v in vars(module).values() if isinstance(v, type) and getattr(v, "family", None) == name]
        assert classes and classes[0].capabilities == info.capabilities, name
