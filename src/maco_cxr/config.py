"""Model configuration: one dataclass per component, presets, YAML/JSON round trips.

Every field is validated in ``__post_init__`` so a wrong value fails where it is set, with
the field's name in the message. ``apply_overrides`` turns ``key.sub=value`` strings (the
CLI's ``key=value`` arguments) into a new config and rejects unknown keys by name.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from maco_cxr.errors import ConfigError

T = TypeVar("T")

IMAGE_MEAN = 0.4978
IMAGE_STD = 0.2449


def _require(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{name}: {message}")


@dataclass
class VisionConfig:
    """ViT image encoder (patch size 16 at 224 px in every released model)."""

    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        _require(self.img_size % self.patch_size == 0, "vision.img_size",
                 f"{self.img_size} is not a multiple of vision.patch_size={self.patch_size}")
        _require(self.embed_dim % self.num_heads == 0, "vision.embed_dim",
                 f"{self.embed_dim} is not divisible by vision.num_heads={self.num_heads}")
        _require(self.depth >= 1, "vision.depth", "must be >= 1")
        _require(0.0 <= self.drop_path_rate < 1.0, "vision.drop_path_rate", "must be in [0, 1)")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


@dataclass
class DecoderConfig:
    """MAE decoder used only during pre-training."""

    embed_dim: int = 768
    depth: int = 4
    num_heads: int = 6
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        _require(self.embed_dim % self.num_heads == 0, "decoder.embed_dim",
                 f"{self.embed_dim} is not divisible by decoder.num_heads={self.num_heads}")
        _require(self.depth >= 1, "decoder.depth", "must be >= 1")


@dataclass
class TextConfig:
    """BERT report encoder trained from scratch; ``tokenizer`` None = the official vocabulary."""

    vocab_size: int = 30000
    hidden_size: int = 768
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 3072
    max_length: int = 100
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        _require(self.hidden_size % self.num_heads == 0, "text.hidden_size",
                 f"{self.hidden_size} is not divisible by text.num_heads={self.num_heads}")
        _require(self.max_length >= 2, "text.max_length", "must be >= 2")
        _require(0.0 <= self.dropout < 1.0, "text.dropout", "must be in [0, 1)")


LossWeighting = Literal["paper", "sum"]


@dataclass
class MacoConfig:
    """The whole MaCo model plus its preprocessing contract.

    ``super_resolution``: the batch arrives at ``2 * vision.img_size`` and the decoder predicts
    ``2p x 2p`` patches of it (paper setting); otherwise the target is the encoder input.
    ``loss_weighting``: "paper" = rec_weight * rec + (1 - rec_weight) * con; "sum" = rec + con
    (what the released code trains with).
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    text: TextConfig = field(default_factory=TextConfig)
    super_resolution: bool = True
    mask_ratio: float = 0.5
    norm_pix_loss: bool = False
    temperature: float = 0.03
    loss_weighting: LossWeighting = "paper"
    rec_weight: float = 0.9
    image_mean: float = IMAGE_MEAN
    image_std: float = IMAGE_STD

    def __post_init__(self) -> None:
        for name, kind in (("vision", VisionConfig), ("decoder", DecoderConfig), ("text", TextConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, from_dict(kind, value, prefix=f"{name}."))
        _require(0.0 <= self.mask_ratio < 1.0, "mask_ratio", f"{self.mask_ratio} must be in [0, 1)")
        _require(self.temperature > 0, "temperature", "must be > 0")
        _require(self.loss_weighting in ("paper", "sum"), "loss_weighting",
                 f"{self.loss_weighting!r} is not 'paper' or 'sum'")
        _require(0.0 <= self.rec_weight <= 1.0, "rec_weight", "must be in [0, 1]")
        _require(self.image_std > 0, "image_std", "must be > 0")

    @property
    def input_size(self) -> int:
        """Side of the square uint8 image that pre-training expects."""
        return self.vision.img_size * (2 if self.super_resolution else 1)

    @property
    def embed_dim(self) -> int:
        """Width of the joint image-text space (the BERT width, as in the official code)."""
        return self.text.hidden_size


def _tiny() -> MacoConfig:
    return MacoConfig(
        vision=VisionConfig(embed_dim=128, depth=4, num_heads=4),
        decoder=DecoderConfig(embed_dim=96, depth=1, num_heads=3),
        text=TextConfig(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512),
    )


def _small() -> MacoConfig:
    return MacoConfig(
        vision=VisionConfig(embed_dim=384, depth=12, num_heads=6),
        decoder=DecoderConfig(embed_dim=384, depth=2, num_heads=6),
        text=TextConfig(hidden_size=384, num_layers=6, num_heads=6, intermediate_size=1536),
    )


PRESETS = {"tiny": _tiny, "small": _small, "base": MacoConfig}


def preset(name: str) -> MacoConfig:
    """A fresh config for preset ``tiny`` (CPU tests, demo), ``small`` or ``base`` (the paper)."""
    if name not in PRESETS:
        raise ConfigError(f"preset: unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


def to_dict(config: Any) -> dict[str, Any]:
    return asdict(config)


def from_dict(kind: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``kind`` from a (nested) dict; unknown keys are an error naming them."""
    known = {f.name: f for f in fields(kind)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys here: {', '.join(prefix + k for k in known)}"
        )
    return kind(**data)


def load_config(path: str | Path, kind: type[T] = MacoConfig) -> T:  # type: ignore[assignment]
    """Read a YAML or JSON file into config dataclass ``kind``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: config file not found") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML/JSON: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    try:
        return from_dict(kind, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def save_config(config: Any, path: str | Path) -> None:
    path = Path(path)
    text = json.dumps(to_dict(config), indent=2) if path.suffix == ".json" else yaml.safe_dump(
        to_dict(config), sort_keys=False)
    path.write_text(text)


def _parse_value(raw: str, current: Any, key: str) -> Any:
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"{key}: cannot parse {raw!r}: {err}") from err
    if isinstance(current, bool) and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {raw!r}")
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, float) and isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
        except ValueError as err:
            raise ConfigError(f"{key}: expected a number, got {raw!r}") from err
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(current, str) and not isinstance(value, str) and value is not None:
        value = raw
    return value


def apply_overrides(config: T, overrides: list[str] | dict[str, Any]) -> T:
    """Return a copy of ``config`` with ``a.b=value`` overrides applied (values parsed as YAML).

    All overrides are set first and the result validated once, so coupled keys (a width and
    its head count) can change together.
    """
    items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
    data = to_dict(config)
    for key, raw in items:
        _set_nested(config, data, key.split("."), raw, key)
    return _rebuild(config, data)


def _split_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    return key.strip(), raw


def _set_nested(config: Any, data: dict[str, Any], path: list[str], raw: Any, full_key: str) -> None:
    names = {f.name for f in fields(config)}
    head = path[0]
    if head not in names:
        raise ConfigError(f"unknown config key {full_key!r}; valid keys: {', '.join(sorted(names))}")
    current = getattr(config, head)
    if len(path) > 1:
        if not is_dataclass(current):
            raise ConfigError(f"{full_key}: {head!r} has no sub-keys")
        _set_nested(current, data[head], path[1:], raw, full_key)
    elif is_dataclass(current):
        raise ConfigError(f"{full_key}: is a section; set one of its keys, e.g. {full_key}.x=...")
    else:
        data[head] = _parse_value(raw, current, full_key) if isinstance(raw, str) else raw


def _rebuild(template: T, data: dict[str, Any]) -> T:
    """A new instance of ``template``'s class from ``data``, nested sections rebuilt alike."""
    values = {}
    for f in fields(template):  # type: ignore[arg-type]
        value, current = data[f.name], getattr(template, f.name)
        if is_dataclass(current) and isinstance(value, dict):
            value = _rebuild(current, value)
        values[f.name] = value
    return type(template)(**values)
