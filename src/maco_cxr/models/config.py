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

__all__ = [
    "IMAGE_MEAN",
    "IMAGE_STD",
    "PAPER_ANCHOR_SIZES",
    "PRESETS",
    "DecoderConfig",
    "MacoConfig",
    "SegmentationLossWeights",
    "TextConfig",
    "UperNetConfig",
    "ViTDetConfig",
    "VisionConfig",
    "preset",
]

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
        require(
            self.img_size % self.patch_size == 0,
            "img_size",
            f"{self.img_size} is not a multiple of patch_size={self.patch_size}",
        )
        require(
            self.embed_dim % self.num_heads == 0,
            "embed_dim",
            f"{self.embed_dim} is not divisible by num_heads={self.num_heads}",
        )
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
        require(
            self.embed_dim % self.num_heads == 0,
            "embed_dim",
            f"{self.embed_dim} is not divisible by num_heads={self.num_heads}",
        )
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
        require(
            self.hidden_size % self.num_heads == 0,
            "hidden_size",
            f"{self.hidden_size} is not divisible by num_heads={self.num_heads}",
        )
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


# ----------------------------------------------------------------------------- task heads
# The heads' configs live here, not next to their torch modules, so that a task config can be
# read and checked (``maco-cxr segment --config ...``) without importing torch.


@dataclass
class UperNetConfig:
    """Head sizes. Paper setting (ViT-B): channels 768, pool scales 1/2/3/6, aux 256, dropout 0.1.

    ``channels`` None = the backbone's width (768 for ViT-B, the paper's value); ``aux_channels``
    None = a third of it (256 for ViT-B), 0 = no auxiliary head; so a small backbone gets a
    head of its own size. ``blocks``: 0-based ViT blocks feeding the four levels (None =
    :func:`maco_cxr.models.upernet.feature_blocks`).
    """

    channels: int | None = None
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    aux_channels: int | None = None
    aux_level: int = 2
    dropout: float = 0.1
    num_classes: int = 1
    blocks: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        require(
            self.blocks is None or len(self.blocks) == 4,
            "blocks",
            f"need 4 block indices (one per level), got {self.blocks}",
        )
        require(self.channels is None or self.channels >= 1, "channels", "must be >= 1 or null")
        require(
            self.aux_channels is None or self.aux_channels >= 0,
            "aux_channels",
            "must be >= 0 (0 = no aux head) or null",
        )
        require(0 <= self.aux_level < 4, "aux_level", f"{self.aux_level} is not a level in 0..3")
        require(0.0 <= self.dropout < 1.0, "dropout", f"{self.dropout} must be in [0, 1)")
        require(self.num_classes >= 1, "num_classes", "must be >= 1")


@dataclass(frozen=True)
class SegmentationLossWeights:
    """Paper weights: focal x2.0 + Dice x1.0 on the decode head, x0.8 / x0.4 on the aux head."""

    focal: float = 2.0
    dice: float = 1.0
    aux_focal: float = 0.8
    aux_dice: float = 0.4
    gamma: float = 2.0
    alpha: float = 0.5


PAPER_ANCHOR_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)  # at 1024 px, one size per level p2..p6


@dataclass
class ViTDetConfig:
    """Pyramid and detector settings (defaults: ViTDet at 1024 px, 2 classes incl. background).

    ``out_channels`` None = a third of the backbone's width, rounded to a multiple of 16 (256
    for ViT-B, the paper's value); ``box_head_fc`` None = 4 x ``out_channels`` (1024 for
    ViT-B); so a small backbone gets a detector of its own size. ``anchor_sizes``: one per
    level (p2..p5, plus p6 with ``top_pool``); None scales ``PAPER_ANCHOR_SIZES`` by
    ``image_size / 1024``. ``rpn_*`` / ``box_*`` are torchvision's Faster R-CNN arguments of
    the same names.
    """

    out_channels: int | None = None
    scales: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)
    top_pool: bool = True
    anchor_sizes: tuple[float, ...] | None = None
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_conv_depth: int = 2
    box_head_convs: int = 4
    box_head_fc: int | None = None
    num_classes: int = 2
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 1000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    box_batch_size_per_image: int = 512
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100

    def __post_init__(self) -> None:
        bad = [s for s in self.scales if s not in (4.0, 2.0, 1.0, 0.5)]
        require(not bad, "scales", f"{bad} not supported; choose from 4, 2, 1, 0.5")
        require(
            self.anchor_sizes is None or len(self.anchor_sizes) == self.num_levels,
            "anchor_sizes",
            f"{len(self.anchor_sizes or ())} sizes for {self.num_levels} pyramid levels; give one size per "
            "level (p6 counts with top_pool)",
        )
        require(self.num_classes >= 2, "num_classes", "counts the background: it must be >= 2")
        for name in ("out_channels", "box_head_fc"):
            require(getattr(self, name) is None or getattr(self, name) >= 1, name, "must be >= 1 or null")
        require(self.rpn_conv_depth >= 1, "rpn_conv_depth", "must be >= 1")
        require(self.box_head_convs >= 0, "box_head_convs", "must be >= 0")

    @property
    def num_levels(self) -> int:
        return len(self.scales) + int(self.top_pool)

    def anchors_for(self, image_size: int) -> tuple[float, ...]:
        if self.anchor_sizes is not None:
            return self.anchor_sizes
        factor = image_size / 1024.0
        return tuple(max(1.0, a * factor) for a in PAPER_ANCHOR_SIZES[: self.num_levels])
