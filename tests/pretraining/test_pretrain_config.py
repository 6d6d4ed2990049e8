"""Pre-training configs: YAML files, dotted overrides, typos named by key, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from maco_cxr.config import config_to_dict, from_dict, recipe_folder
from maco_cxr.errors import ConfigError
from maco_cxr.models.config import preset
from maco_cxr.pretraining.config import (
    PretrainConfig,
    check_config,
    load_pretrain_config,
    replace,
    save_pretrain_config,
)

CONFIGS = recipe_folder() / "pretrain"


def test_defaults_are_the_paper_recipe() -> None:
    config = PretrainConfig()
    assert config.model == preset("base")
    assert (config.optim.lr, config.optim.weight_decay, config.optim.betas) == (2.5e-4, 0.05, (0.9, 0.95))
    assert (config.optim.epochs, config.optim.warmup_epochs) == (51, 2.0)
    assert (config.optim.batch_size, config.optim.accum_steps, config.optim.clip_grad) == (512, 2, None)
    assert config.runtime.precision == "bf16"


def test_base_paper_config_file() -> None:
    config = load_pretrain_config(CONFIGS / "base-paper.yaml")
    model = config.model
    assert (model.vision.embed_dim, model.vision.depth, model.text.hidden_size) == (768, 12, 768)
    assert (model.input_size, model.vision.img_size, model.mask_ratio) == (448, 224, 0.5)
    assert (model.loss_weighting, model.rec_weight) == ("paper", 0.9)
    assert config.optim.lr == 2.5e-4
    assert (config.optim.epochs, config.optim.warmup_epochs) == (51, 2.0)
    assert (config.optim.batch_size, config.optim.accum_steps) == (512, 2)
    assert config.runtime.precision == "bf16"
    assert config.runtime.init_mae is None
    check_config(config)


def test_tiny_synthetic_config_file() -> None:
    config = load_pretrain_config(CONFIGS / "tiny-synthetic.yaml")
    assert config.model == preset("tiny")
    assert config.data.source == "synthetic"
    check_config(config)


def test_overrides_are_typed_and_merged_before_validation() -> None:
    config = load_pretrain_config(
        None,
        [
            "model.preset=tiny",
            "model.vision.embed_dim=64",
            "model.vision.num_heads=2",  # coupled keys
            "optim.lr=1e-4",  # YAML reads this as a string
            "optim.max_steps=10",
            "data.split=2020",
            "runtime.resume=never",
            "augment.scale=[0.9, 1.1]",
            "model.temperature=5e-2",
        ],
    )
    assert config.model.temperature == 0.05
    assert (config.model.vision.embed_dim, config.model.vision.num_heads) == (64, 2)
    assert config.model.text.hidden_size == preset("tiny").text.hidden_size
    assert config.optim.lr == 1e-4 and isinstance(config.optim.lr, float)
    assert config.optim.max_steps == 10
    assert config.data.split == "2020"
    assert config.runtime.resume == "never"
    assert config.augment.scale == (0.9, 1.1)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["optim.lrr=1"], "optim.lrr"),
        (["model.vision.deep=3"], "model.vision.deep"),
        (["runtime.outputdir=x"], "runtime.outputdir"),
        (["modell.x=1"], "modell"),
    ],
)
def test_override_typo_names_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_pretrain_config(None, overrides)


def test_file_typo_names_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model: {preset: tiny}\noptim:\n  batch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: .*optim\.batch_sise"):
        load_pretrain_config(path)
    path.write_text("model: {preset: tiny, text: {hiden_size: 4}}\n")
    with pytest.raises(ConfigError, match=r"model\.text\.hiden_size"):
        load_pretrain_config(path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lr=fast"], r"optim\.lr: 'fast' is not a number"),
        (["model.mask_ratio=half"], r"model\.mask_ratio: 'half' is not a number"),
        (["runtime.compile=maybe"], r"runtime\.compile: 'maybe' is not true or false or one of 'auto'"),
        (["optim.batch_size=0"], r"optim\.batch_size: must be >= 1"),
        (["data.source=folder"], r"data\.source"),
        (["model.preset=huge"], r"model\.preset"),
        (["optim.lr"], "key=value"),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_pretrain_config(None, overrides)


def test_cross_key_checks() -> None:
    with pytest.raises(ConfigError, match=r"data\.path: is required"):
        check_config(load_pretrain_config(None, ["data.source=store"]))
    with pytest.raises(ConfigError, match="init_mae or runtime.init_from"):
        check_config(
            load_pretrain_config(None, ["data.source=synthetic", "runtime.init_mae=a.pth", "runtime.init_from=b"])
        )


def test_yaml_round_trip(tmp_path: Path) -> None:
    config = load_pretrain_config(
        None, ["model.preset=small", "optim.max_steps=7", "data.sections=[findings]", "data.source=synthetic"]
    )
    save_pretrain_config(config, tmp_path / "c.yaml")
    again = load_pretrain_config(tmp_path / "c.yaml")
    assert again == config
    assert again.data.sections == ("findings",)
    assert from_dict(PretrainConfig, config_to_dict(config)) == config


def test_replace_changes_only_what_is_named() -> None:
    config = load_pretrain_config(None, ["model.preset=tiny"])
    changed = replace(config, optim={"max_steps": 3}, runtime={"seed": 5})
    assert (changed.optim.max_steps, changed.runtime.seed) == (3, 5)
    assert changed.model == config.model and changed.data == config.data
    with pytest.raises(ConfigError, match=r"optim\.maxsteps"):
        replace(config, optim={"maxsteps": 3})
