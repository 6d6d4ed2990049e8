"""MRM (Zhou et al., ICLR 2023): masked record modelling, a ViT-B/16 image encoder for fine-tuning.

The released ``MRM.pth`` is ``{"model": state_dict}`` of ``model_mrm.MRM`` (github.com/RL4M/MRM-pytorch,
commit 3730ba4): the MAE-style encoder (``patch_embed``, ``cls_token``, the fixed sin-cos ``pos_embed``,
``blocks``, ``norm``) plus the image decoder (``decoder_*``, ``mask_token``) and the report decoder
(``bert_encoder``, ``bert_mlp``) that only pre-training uses. A file written by their fine-tuning
(``train.py`` ``save_model_auc``: a plain state dict with ``fc_norm`` and a ``head``) loads too.

Built with timm's ``VisionTransformer`` (global average pool, ``fc_norm``), whose tensor names are
the checkpoint's. Sizes come from the tensors: patch size, width and input channels from
``patch_embed.proj.weight``, depth from the block count, MLP ratio from ``mlp.fc1``, the input size
from ``pos_embed``. The head count cannot be read from ``qkv`` shapes: it is the authors' fixed 12
(``models_vit.vit_base_patch16``), or ``vision_heads=`` for another checkpoint.

The authors' fine-tuning rules (``NIH_ChestX-ray/``), as their code computes them:

- Model (``train.py`` ``setup``, lines 100-138): ``models_vit.vit_base_patch16(global_pool=True,
  drop_path_rate=0.1)``, the checkpoint loaded with ``strict=False``: the encoder's final ``norm`` is
  deleted (``models_vit.py`` lines 23-32) and a fresh ``fc_norm`` (weight 1, bias 0) is trained in its
  place; decoder and BERT tensors are unused.
- Features (``models_vit.py`` ``forward_features``, lines 34-53): the CLS token prepended, the
  position table added, the blocks run; then the mean of the patch tokens (CLS left out), then
  ``fc_norm``. That pooled, normalised vector is :meth:`MrmModel.image_features`: it is what their
  classification head reads. A larger input (``image_size=``) resamples the patch rows of the table
  bicubically (``util/pos_embed.py`` ``interpolate_pos_embed``, lines 75-96).
- Image (``utils/data_utils.py`` ``transform_test``, lines 27-33, after ``my_dataset.py`` line 67's
  ``.convert('RGB')``): the shorter side resized to the input size (torchvision ``Resize``,
  bilinear), centre-cropped square, grey repeated to 3 channels, ``/ 255``, normalised with mean
  0.4978 and std 0.2449.

MRM has no text tower aligned with the image (its BERT only decodes masked reports during
pre-training), so it can neither retrieve, score zero-shot nor ground. :meth:`MrmModel.embed` returns
the same pooled features as its global embedding, with no local features: an image-only embedding
for image-to-image similarity and clustering, in no joint space with any text. Returning it instead
of refusing lets embedding, image-similarity and linear-probe tools run on MRM, while everything that
needs text is refused by its capability.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import timm.models.vision_transformer
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn

from maco_cxr.data.io import check_image_size
from maco_cxr.errors import CheckpointError, ConfigError
from maco_cxr.families.base import FoundationModel
from maco_cxr.models.vit import resample_pos_embed

__all__ = ["MRM_HEADS", "MRM_MEAN", "MRM_STD", "MrmModel", "load", "mrm_input"]

MRM_MEAN = 0.4978
MRM_STD = 0.2449
#: ``models_vit.vit_base_patch16``'s head count (not recorded in the checkpoint)
MRM_HEADS = 12
#: ``train.py`` ``setup``: the stochastic depth their fine-tuning trains with (no effect in eval mode)
MRM_DROP_PATH = 0.1
_REQUIRED = ("patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed", "blocks.0.attn.qkv.weight")
#: tensors of the released files that fine-tuning does not use: the encoder's final norm (replaced
#: by fc_norm), the image and report decoders, a fine-tuned classification head
_UNUSED_PREFIXES = ("norm.", "decoder_", "mask_token", "bert_encoder.", "bert_mlp.", "head.")
_OPTIONS = {"vision_heads", "image_size", "drop_path_rate"}


def mrm_input(pixels: np.ndarray, size: int) -> torch.Tensor:
    """``transform_test``: uint8 ``[H, W]`` -> float32 ``[3, size, size]``, shorter side resized."""
    image = Image.fromarray(np.ascontiguousarray(pixels))
    image = TF.center_crop(TF.resize(image, size, interpolation=TF.InterpolationMode.BILINEAR), [size, size])
    x = (TF.to_tensor(image) - MRM_MEAN) / MRM_STD
    return x.expand(3, -1, -1).contiguous()


class MrmModel(FoundationModel):
    """An MRM image encoder as their fine-tuning builds it (global pool + ``fc_norm``)."""

    family: ClassVar[str] = "mrm"
    capabilities: ClassVar[frozenset[str]] = frozenset({"finetune"})

    def __init__(self, vit: timm.models.vision_transformer.VisionTransformer) -> None:
        super().__init__()
        self.vit = vit
        self.input_size = int(vit.patch_embed.img_size[0])
        self.feature_dim = int(vit.num_features)

    def image_input(self, pixels: np.ndarray, where: str = "image") -> torch.Tensor:
        check_image_size(pixels.shape, where)
        return mrm_input(pixels, self.input_size)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        """(pooled features ``[N, D]``, None): image-only, not in a joint space with any text."""
        return self.image_features(x.to(self.device)), None

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """``fc_norm(mean of the patch tokens)``: ``models_vit.forward_features`` with global_pool."""
        return self.vit.forward_head(self.vit.forward_features(x), pre_logits=True)


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read it as an MRM checkpoint (a torch state dict): {err}") from err
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: an MRM checkpoint is {{'model': state_dict}} (MRM.pth) or a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise CheckpointError(
            f"{path}: not an MRM (MAE-style ViT) checkpoint of the mrm family: tensor {missing[0]!r} is missing. "
            "MRM's released MRM.pth is {'model': state_dict} of model_mrm.MRM"
        )
    return {k: v.float() for k, v in state.items()}


def _count(state: dict[str, torch.Tensor], prefix: str) -> int:
    return len({key[len(prefix) :].split(".")[0] for key in state if key.startswith(prefix)})


def build_vit(
    state: dict[str, torch.Tensor], *, heads: int, image_size: int | None, drop_path_rate: float
) -> timm.models.vision_transformer.VisionTransformer:
    """timm's ViT with the sizes the encoder tensors imply and MRM's fine-tuning head (avg pool, fc_norm)."""
    width, channels, patch, _ = state["patch_embed.proj.weight"].shape
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    if channels != 3:
        raise CheckpointError(f"the mrm family takes 3-channel encoders (MRM.pth's); this one has {channels}")
    if width % heads:
        raise ConfigError(f"vision_heads={heads} does not divide the encoder width {width}")
    size = patch * grid if image_size is None else image_size
    if size % patch:
        raise ConfigError(f"image_size={size} is not a multiple of the patch size {patch}")
    return timm.models.vision_transformer.VisionTransformer(
        img_size=size,
        patch_size=patch,
        in_chans=channels,
        num_classes=0,
        global_pool="avg",
        embed_dim=width,
        depth=_count(state, "blocks."),
        num_heads=heads,
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / width,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        drop_path_rate=drop_path_rate,
    )


def load(path: str | Path, *, tokenizer: str | Path | None = None, **options: Any) -> MrmModel:
    """``MRM.pth`` (or a file their fine-tuning wrote) as their fine-tuning builds it, in eval mode.

    Options: ``vision_heads`` (default 12, the authors' ViT-B/16), ``image_size`` (default: the
    checkpoint's, 224; another size resamples the position table as ``interpolate_pos_embed`` does),
    ``drop_path_rate`` (default 0.1, their fine-tuning's).
    """
    if tokenizer is not None:
        raise ConfigError("the mrm family is an image encoder only and takes no tokenizer files")
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise ConfigError(f"the mrm family takes the options {sorted(_OPTIONS)}; got {unknown}")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; give MRM's MRM.pth")
    state = _state_dict(path)
    vit = build_vit(
        state,
        heads=int(options.get("vision_heads", MRM_HEADS)),
        image_size=options.get("image_size"),
        drop_path_rate=float(options.get("drop_path_rate", MRM_DROP_PATH)),
    )
    expected = vit.state_dict()
    fc_norm = {"fc_norm.weight": torch.ones(vit.num_features), "fc_norm.bias": torch.zeros(vit.num_features)}
    encoder = {k: v for k, v in state.items() if not k.startswith(_UNUSED_PREFIXES)}
    missing = [key for key in expected if key not in encoder and key not in fc_norm]
    if missing:
        raise CheckpointError(f"{path}: the mrm checkpoint lacks tensor {missing[0]!r}")
    unexpected = [key for key in encoder if key not in expected]
    if unexpected:
        raise CheckpointError(f"{path}: tensors the mrm (MAE ViT) layout does not have, e.g. {unexpected[0]!r}")
    encoder = {**fc_norm, **encoder}
    grid = vit.patch_embed.grid_size
    encoder["pos_embed"] = resample_pos_embed(encoder["pos_embed"], grid)
    wrong = [k for k, v in encoder.items() if v.shape != expected[k].shape]
    if wrong:
        key = wrong[0]
        raise CheckpointError(
            f"{path}: mrm tensor {key!r} has shape {list(encoder[key].shape)}, the encoder the other tensors "
            f"imply needs {list(expected[key].shape)}"
        )
    vit.load_state_dict(encoder, strict=True)
    return MrmModel(vit).eval()
