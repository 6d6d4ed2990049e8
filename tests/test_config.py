"""The one config grammar: coercion, overrides, typo and type errors that name key and source."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from maco_cxr.config import Override, apply_overrides, config_to_dict, load_config, require, save_config
from maco_cxr.errors import ConfigError
from maco_cxr.models.config import MacoConfig, preset


@dataclass
class _Inner:
    rate: float = 0.1
    steps: int = 10
    flag: bool = False
    name: str | None = None
    pair: tuple[float, float] = (0.5, 1.5)
    mode: Literal["a", "b"] = "a"

    def __post_init__(self) -> None:
        require(self.steps >= 1, "steps", "must be >= 1")


@dataclass
class _Outer:
    inner: _Inner = field(default_factory=_Inner)
    extra: dict = field(default_factory=dict)
    seed: int = 0


def test_values_take_their_field_type():
    cfg = load_config(
        _Outer,
        None,
        [
            "inner.rate=1e-4",
            "inner.steps=1e3",
            "inner.flag=true",
            "inner.name=null",
            "inner.pair=[1, 2]",
            "inner.mode=b",
            "extra.split=train",
            "seed=7",
        ],
    )
    assert cfg.inner.rate == 1e-4 and isinstance(cfg.inner.rate, float)  # YAML 1.1 reads 1e-4 as text
    assert cfg.inner.steps == 1000 and isinstance(cfg.inner.steps, int)
    assert cfg.inner.flag is True and cfg.inner.name is None and cfg.inner.pair == (1.0, 2.0)
    assert cfg.inner.mode == "b" and cfg.extra == {"split": "train"} and cfg.seed == 7
    assert apply_overrides(cfg, {"inner.name": 2020}).inner.name == "2020"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("inner.flag=yes", r"inner\.flag: expected true or false, got 'yes'"),
        ("inner.flag=1.5", r"inner\.flag: expected true or false, got 1\.5"),
        ("inner.flag=1", r"inner\.flag: expected true or false, got 1"),
        ("inner.steps=2.5", r"inner\.steps: 2\.5 is not an integer"),
        ("inner.rate=fast", r"inner\.rate: 'fast' is not a number"),
        ("inner.pair=[1]", r"inner\.pair: expected a list of 2 values"),
        ("inner.mode=c", r"inner\.mode: 'c' is not one of 'a', 'b'"),
        ("inner.steps=0", r"inner\.steps: must be >= 1"),
        ("inner=3", r"inner: is a section"),
        ("seed", "key=value"),
    ],
)
def test_bad_values_name_the_key_and_the_type(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_Outer, None, [override])


def test_typo_names_the_key_the_nearest_one_and_where_it_came_from(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(_Outer, None, ["inner.rat=1"])
    text = str(err.value)
    assert text.startswith("command line (inner.rat=1): inner.rat: unknown key; did you mean inner.rate?")
    path = tmp_path / "run.yaml"
    path.write_text("inner:\n  rate: 0.2\n  stpes: 4\n")
    with pytest.raises(ConfigError, match=rf"^{path}: inner\.stpes: unknown key; did you mean inner\.steps\?"):
        load_config(_Outer, path)
    # a bad key on the command line is not blamed on the file
    with pytest.raises(ConfigError, match=r"^command line \(seeed=1\): seeed: unknown key; did you mean seed\?"):
        load_config(_Outer, None, ["seeed=1"])
    path.write_text("inner:\n  rate: 0.2\n")
    with pytest.raises(ConfigError, match=r"^command line \(inner\.stepz=1\): inner\.stepz"):
        load_config(_Outer, path, ["inner.stepz=1"])
    path.write_text("inner:\n  steps: 0\n")
    with pytest.raises(ConfigError, match=rf"^{path}: inner\.steps: must be >= 1"):
        load_config(_Outer, path)
    with pytest.raises(ConfigError, match=r"^flags: inner\.steps: must be >= 1"):
        load_config(_Outer, None, [Override("inner.steps", 0, "flags")])


def test_files_set_only_what_differs_and_overrides_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("inner:\n  rate: 0.2\nseed: 3\n")
    cfg = load_config(_Outer, path, ["inner.rate=0.3"])
    assert (cfg.inner.rate, cfg.inner.steps, cfg.seed) == (0.3, 10, 3)
    save_config(cfg, tmp_path / "again.yaml")
    assert load_config(_Outer, tmp_path / "again.yaml") == cfg
    save_config(cfg, tmp_path / "again.json")
    assert load_config(_Outer, tmp_path / "again.json") == cfg


def test_model_presets_and_coupled_keys():
    config = apply_overrides(
        preset("tiny"),
        ["vision.depth=2", "mask_ratio=0.75", "norm_pix_loss=true", "loss_weighting=sum", "text.dropout=0"],
    )
    assert config.vision.depth == 2 and config.mask_ratio == 0.75 and config.norm_pix_loss is True
    assert config.loss_weighting == "sum" and config.text.dropout == 0.0
    coupled = apply_overrides(preset("tiny"), ["vision.embed_dim=96", "vision.num_heads=3"])
    assert (coupled.vision.embed_dim, coupled.vision.num_heads) == (96, 3)
    assert preset("tiny").vision.embed_dim == 128  # the original is untouched
    with pytest.raises(ConfigError, match=r"vision\.embed_dim: 130 is not divisible by num_heads=4"):
        apply_overrides(preset("tiny"), ["vision.embed_dim=130"])
    # a preset starts the section afresh, then the other keys apply
    small = apply_overrides(preset("tiny"), ["preset=small", "mask_ratio=0.25"])
    assert small.vision == preset("small").vision and small.mask_ratio == 0.25
    assert load_config(MacoConfig, None, ["preset=tiny", "vision.depth=3"]).vision.depth == 3
    with pytest.raises(ConfigError, match=r"preset: unknown preset 'huge'"):
        load_config(MacoConfig, None, ["preset=huge"])
    assert config_to_dict(preset("tiny"))["vision"]["embed_dim"] == 128


def test_null_sets_an_optional_string_to_none():
    config = apply_overrides(preset("tiny"), ["text.tokenizer=my.json"])
    assert config.text.tokenizer == "my.json"
    assert apply_overrides(config, ["text.tokenizer=null"]).text.tokenizer is None


# ------------------------------------------------------------------ the shipped configs

from maco_cxr.config import RECIPE_FOLDERS, recipe_folder, recipe_names  # noqa: E402  (section appended)

_CONFIGS = recipe_folder()
_SHIPPED = sorted(_CONFIGS.glob("*/*.yaml"))


def test_configs_are_shipped_for_every_command():
    assert {p.parent.name for p in _SHIPPED} == {"finetune", "segment", "detect", "pretrain"}
    assert set(RECIPE_FOLDERS) == {p.parent.name for p in _SHIPPED}
    # the parametrised test below covers every YAML in the recipes folder, and --config can name each of them
    assert sorted(p for p in _CONFIGS.rglob("*") if p.is_file()) == _SHIPPED and len(_SHIPPED) == 21
    assert [f"{p.parent.name}/{p.stem}" for p in _SHIPPED] == recipe_names()


@pytest.mark.parametrize("path", _SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_config_loads(path, tmp_path):
    from maco_cxr.pretraining.config import PretrainConfig, load_pretrain_config
    from maco_cxr.tasks.finetune import ClassifyConfig, DetectConfig, SegmentConfig

    kinds = {"finetune": ClassifyConfig, "segment": SegmentConfig, "detect": DetectConfig, "pretrain": PretrainConfig}
    kind = kinds[path.parent.name]
    config = load_pretrain_config(path) if kind is PretrainConfig else load_config(kind, path)
    assert isinstance(config, kind)
    # a run's saved config reads back as the same config
    save_config(config, tmp_path / "saved.yaml")
    again = (
        load_pretrain_config(tmp_path / "saved.yaml")
        if kind is PretrainConfig
        else load_config(kind, tmp_path / "saved.yaml")
    )
    assert again == config


def test_minimums_name_the_key_and_say_null_only_where_it_is_allowed():
    from maco_cxr.tasks.finetune.classification import ClassifyEval
    from maco_cxr.tasks.finetune.segmentation import SegmentEval

    assert ClassifyEval(every=None).every is None
    with pytest.raises(ConfigError, match=r"every.*must be >= 1 or null"):
        ClassifyEval(every=0)
    with pytest.raises(ConfigError, match=r"batch_size.*must be >= 1$"):
        SegmentEval(batch_size=0)
