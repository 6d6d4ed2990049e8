"""The model's shape: one dataclass per component, presets tiny / small / base.

Values are validated in ``__post_init__`` (via :func:`maco_cxr.config.require`, so a bad
value names its field); files and ``key=value`` overrides go through the one grammar of
:mod:`maco_cxr.config`. A ``model`` mapping may start from a preset: ``{preset: tiny,
mask_ratio: 0.25}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from maco_cxr.config import require
from maco_cxr.errors import ConfigError

__all__ = ["IMAGE_MEAN", "IMAGE_STD", "PRESETS", "DecoderConfig", "MacoConfig", "TextConfig",
           "VisionConfig", "preset"]

IMAGE_MEAN = 0.4978
IMAGE_STD = 0.2449


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
        require(self.img_size % self.patch_size == 0, "img_size",
                f"{self.img_size} is not a multiple of patch_size={self.patch_size}")
        require(self.embed_dim % self.num_heads == 0, "embed_dim",
                f"{self.embed_dim} is not divisible by num_heads={self.num_heads}")
        require(self.depth >= 1, "depth", "must be >= 1")
        require(0.0 <= self.drop_path_rate < 1.0, "drop_path_rate", "must be in [0, 1)")

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
        require(self.embed_dim % self.num_heads == 0, "embed_dim",
                f"{self.embed_dim} is not divisible by num_heads={self.num_heads}")
        require(self.depth >= 1, "depth", "must be >= 1")


@dataclass
class TextConfig:
    """BERT report encoder trained from scratch; ``tokenizer`` None = the official vocabulary
    (the file is read by whoever builds the model, never by the model itself)."""

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
        require(self.hidden_size % self.num_heads == 0, "hidden_size",
                f"{self.hidden_size} is not divisible by num_heads={self.num_heads}")
        require(self.max_length >= 2, "max_length", "must be >= 2")
        require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")


LossWeighting = Literal["paper", "sum"]


@dataclass
class MacoConfig:
    """The whole MaCo model plus its preprocessing contract.

    ``super_resolution``: the batch arrives at ``2 * vision.img_size`` and the decoder predicts
    ``2p x 2p`` patches of it (paper setting); otherwise the target is the encoder input.
    ``loss_weighting``: "paper" = rec_weight * rec + (1 - rec_weight) * con; "sum" = rec + con
    (what the released code trains with). ``correlation_weighting``: MaCo's per-sample weights
    softplus(a . v + b) of the contrastive terms (its mechanism); false gives plain symmetric
    InfoNCE on the masked image (an ablation: the weights are fixed at 1 and not trained).
    """

    CONFIG_BASE_KEYS: ClassVar[tuple[str, ...]] = ("preset",)

    vision: VisionConfig = field(default_factory=VisionConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    text: TextConfig = field(default_factory=TextConfig)
    super_resolution: bool = True
    mask_ratio: float = 0.5
    norm_pix_loss: bool = False
    temperature: float = 0.03
    loss_weighting: LossWeighting = "paper"
    rec_weight: float = 0.9
    correlation_weighting: bool = True
    image_mean: float = IMAGE_MEAN
    image_std: float = IMAGE_STD

    def __post_init__(self) -> None:
        require(0.0 <= self.mask_ratio < 1.0, "mask_ratio", f"{self.mask_ratio} must be in [0, 1)")
        require(self.temperature > 0, "temperature", "must be > 0")
        require(0.0 <= self.rec_weight <= 1.0, "rec_weight", "must be in [0, 1]")
        require(self.image_std > 0, "image_std", "must be > 0")

    @classmethod
    def config_base(cls, data: dict[str, Any]) -> tuple[MacoConfig | None, dict[str, Any]]:
        """A mapping may start from a preset: ``{"preset": "tiny", ...}``."""
        name = data.pop("preset", None)
        return (preset(str(name)) if name is not None else None), data

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
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}", key="preset")
    return PRESETS[name]()
