from __future__ import annotations

import pytest

from maco_cxr.config import MacoConfig, apply_overrides, load_config, preset, save_config
from maco_cxr.errors import ConfigError


def test_overrides_parse_types_and_nest():
    config = apply_overrides(preset("tiny"), ["vision.depth=2", "mask_ratio=0.75", "norm_pix_loss=true",
                                              "loss_weighting=sum", "text.dropout=0"])
    assert config.vision.depth == 2 and config.mask_ratio == 0.75 and config.norm_pix_loss is True
    assert config.loss_weighting == "sum" and config.text.dropout == 0.0


@pytest.mark.parametrize("override, message", [
    ("vision.dpeth=2", "vision.dpeth"),
    ("mask_ratoi=0.5", "mask_ratoi"),
    ("mask_ratio=1.5", "mask_ratio"),
    ("loss_weighting=mean", "loss_weighting"),
    ("vision=3", "is a section"),
    ("norm_pix_loss=3", "true/false"),
    ("vision.embed_dim=130", "vision.embed_dim"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        apply_overrides(preset("tiny"), [override])


def test_yaml_round_trip_and_typo_in_file(tmp_path):
    config = apply_overrides(preset("small"), ["temperature=0.05"])
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config
    (tmp_path / "bad.yaml").write_text("vision:\n  embed_dimm: 64\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*vision\.embed_dimm"):
        load_config(tmp_path / "bad.yaml", MacoConfig)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="huge"):
        preset("huge")


def test_coupled_keys_change_together():
    config = apply_overrides(preset("tiny"), ["vision.embed_dim=96", "vision.num_heads=3"])
    assert (config.vision.embed_dim, config.vision.num_heads) == (96, 3)
    assert preset("tiny").vision.embed_dim == 128  # the original is untouched


def test_exponent_without_dot_is_a_float():
    assert apply_overrides(preset("tiny"), ["temperature=3e-2"]).temperature == 0.03
    with pytest.raises(ConfigError, match="temperature: expected a number"):
        apply_overrides(preset("tiny"), ["temperature=cold"])


def test_null_sets_an_optional_string_to_none():
    config = apply_overrides(preset("tiny"), ["text.tokenizer=my.json"])
    assert config.text.tokenizer == "my.json"
    assert apply_overrides(config, ["text.tokenizer=null"]).text.tokenizer is None
