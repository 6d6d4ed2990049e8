"""The MaCo model: masked ViT + MAE decoder + BERT, joined by correlation-weighted contrast.

Computes exactly what the official code computes (see ``tests/models/test_official_fixture.py``),
with these parameter groups (official names in brackets):

- ``visual``: masked ViT encoder [``patch_embed``, ``cls_token``, ``pos_embed``, ``blocks``, ``norm``]
- ``decoder``: MAE decoder [``decoder_*``, ``mask_token``]
- ``text``: BERT with pooler [``bert_encoder.model.bert``]
- ``img_proj``: linear map of patch tokens into the text space [``img_mlp``]
- ``patch_weight``: correlation weights a, b over the visibility vector [``pos_weight_img``]
- ``inverse_temperature``: learnable multiplier of the cosine logits, not exponentiated [``Tpar``]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from maco_cxr.errors import DataError
from maco_cxr.models.config import MacoConfig
from maco_cxr.models.decoder import MaeDecoder
from maco_cxr.models.losses import Gather, correlation_weighted_contrastive_loss, reconstruction_loss
from maco_cxr.models.text import TextEncoder, trim_padding
from maco_cxr.models.vit import MaskedViT

TokenBatch = dict[str, torch.Tensor]


def joint_embeddings(img_proj: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder output ``[N, 1 + L, D_vision]`` -> (global ``[N, D]``, patches ``[N, L, D]``) in the
    joint space: every patch token projected by ``img_proj`` (the class token dropped), the global
    embedding their mean (project, then mean, as the official code computes it).

    The one image-encoding recipe: the model's methods, pre-training, :mod:`maco_cxr.inference`
    (and through it zero-shot, grounding, retrieval, ``predict`` and ``serve``) and the exported
    graphs all call it, so they cannot drift apart.
    """
    patches = img_proj(tokens[:, 1:])
    return patches.mean(dim=1), patches


def resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The official zero-shot geometry on float ``[N, C, H, W]``: shorter side to ``size``
    (bilinear, antialiased), then the centre ``size x size`` crop."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    images = F.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return images[..., top : top + size, left : left + size]


class Tokenizer(Protocol):
    """What the model needs of a tokenizer (:class:`maco_cxr.data.tokenizer.ReportTokenizer`)."""

    vocab_size: int

    def __call__(self, texts: Sequence[str]) -> TokenBatch: ...


class MacoModel(nn.Module):
    """The model; ``tokenizer`` turns text into ids (the model itself never reads a file).

    ``family``, ``capabilities``, ``input_size`` and ``patch_grid`` are the face every
    foundation-model family shares (:mod:`maco_cxr.families.base`); MaCo's own zero-shot and
    grounding rules live with their tasks (:mod:`maco_cxr.tasks.zeroshot`, ``grounding``).
    """

    family: ClassVar[str] = "maco"
    capabilities: ClassVar[frozenset[str]] = frozenset({"texts", "patches", "zeroshot", "grounding", "finetune"})

    def __init__(self, config: MacoConfig, tokenizer: Tokenizer) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        if self.tokenizer.vocab_size > config.text.vocab_size:
            raise DataError(
                f"tokenizer has {self.tokenizer.vocab_size} tokens but text.vocab_size is "
                f"{config.text.vocab_size}; set text.vocab_size >= the tokenizer's size"
            )
        vision = config.vision
        self.visual = MaskedViT(vision)
        target_patch = vision.patch_size * (2 if config.super_resolution else 1)
        self.decoder = MaeDecoder(config.decoder, vision.embed_dim, vision.grid_size, target_patch)
        self.text = TextEncoder(config.text)
        self.img_proj = nn.Linear(vision.embed_dim, config.embed_dim)
        self.patch_weight = nn.Linear(vision.num_patches, 1)
        self.inverse_temperature = nn.Parameter(torch.tensor(1.0 / config.temperature))
        nn.init.xavier_uniform_(self.img_proj.weight)
        nn.init.zeros_(self.img_proj.bias)
        nn.init.zeros_(self.patch_weight.weight)
        nn.init.zeros_(self.patch_weight.bias)
        if not config.correlation_weighting:  # the ablation: weights fixed at 1, the prior stays uniform
            self.patch_weight.requires_grad_(False)

    # ----------------------------------------------------------------------------- helpers
    @property
    def device(self) -> torch.device:
        return self.img_proj.weight.device

    @property
    def input_size(self) -> int:
        return self.config.vision.img_size

    @property
    def patch_grid(self) -> tuple[int, int]:
        return (self.config.vision.grid_size, self.config.vision.grid_size)

    @property
    def feature_dim(self) -> int:
        return self.config.vision.embed_dim

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay besides biases and norms."""
        names = {f"visual.{n}" for n in self.visual.no_weight_decay()}
        names |= {f"decoder.{n}" for n in self.decoder.no_weight_decay()}
        return names | {"inverse_temperature"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.decoder.grad_checkpointing = enable
        self.text.bert.grad_checkpointing = enable

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 grey ``[N, H, W]`` or ``[N, 1, H, W]`` -> normalised float ``[N, 3, H, W]``;
        float input is taken as already normalised (1 or 3 channels). In eval mode a float batch
        that looks like [0, 1] pixels warns (the check syncs, so training skips it)."""
        if not isinstance(images, torch.Tensor):
            raise DataError(
                f"the model's own methods take tensors, got {type(images).__name__}; for paths, "
                "PIL images or numpy arrays use maco_cxr.encode_images(model, images) (or "
                "patch_embeddings, zero_shot, ground), which read and convert them"
            )
        images = images.to(self.device, non_blocking=True)
        if images.ndim == 3:
            images = images.unsqueeze(1)
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"images must be [N, H, W] or [N, 1|3, H, W]; got shape {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            dtype = self.img_proj.weight.dtype
            images = (images.to(dtype) / 255.0 - self.config.image_mean) / self.config.image_std
        elif not images.is_floating_point():
            raise DataError(f"images must be uint8 or normalised float; got dtype {images.dtype}")
        elif not self.training and images.numel() and images.min() >= 0 and images.max() <= 1 and images.std() > 0:
            warnings.warn(
                "float images lie in [0, 1]: they look unnormalised. This model expects "
                f"(x/255 - {self.config.image_mean}) / {self.config.image_std}; pass uint8 to let "
                "the model normalise.",
                stacklevel=3,
            )
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images

    def tokenize(self, texts: Sequence[str] | TokenBatch) -> TokenBatch:
        if isinstance(texts, dict):
            batch = texts
        else:
            if isinstance(texts, str):
                texts = [texts]
            batch = trim_padding(self.tokenizer(list(texts)))
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    # ----------------------------------------------------------------------------- inference
    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Unmasked encoder output ``[N, 1 + L, D_vision]`` for images of any size (resized,
        centre-cropped to the encoder's input when needed)."""
        x = self.normalize(images)
        if images.dtype == torch.uint8:
            x = resize_center_crop(x, self.config.vision.img_size)
        elif x.shape[-1] != self.config.vision.img_size or x.shape[-2] != self.config.vision.img_size:
            raise DataError(
                f"normalised float images must be {self.config.vision.img_size}x"
                f"{self.config.vision.img_size}; got {tuple(x.shape[-2:])}. Pass uint8 to let the "
                "model resize them."
            )
        return self.visual.forward_features(x)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float ``[N, 3, S, S]`` at the encoder's size -> (global ``[N, D]``, patches
        ``[N, L, D]``) by :func:`joint_embeddings`, unnormalised."""
        return joint_embeddings(self.img_proj, self.visual.forward_features(x))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Global image embeddings ``[N, D]`` = mean of the projected patch tokens, unnormalised."""
        return joint_embeddings(self.img_proj, self.image_tokens(images))[0]

    def patch_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Per-patch embeddings in the joint space ``[N, g, g, D]`` (g = 14 at 224 px)."""
        tokens = joint_embeddings(self.img_proj, self.image_tokens(images))[1]
        grid = self.config.vision.grid_size
        return tokens.reshape(tokens.shape[0], grid, grid, -1)

    def encode_texts(self, texts: Sequence[str] | TokenBatch) -> torch.Tensor:
        """Report embeddings ``[N, D]``: BERT pooler output of "[CLS] " + text, unnormalised."""
        batch = self.tokenize(texts)
        return self.text(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))

    def patch_weights(self, temperature: float = 0.02) -> torch.Tensor:
        """softmax(a / temperature) over the patch grid ``[g, g]``: the official grounding prior."""
        grid = self.config.vision.grid_size
        return torch.softmax(self.patch_weight.weight.reshape(-1) / temperature, dim=0).reshape(grid, grid)

    # ----------------------------------------------------------------------------- training
    def pretrain_losses(
        self,
        images: torch.Tensor,
        texts: Sequence[str] | TokenBatch,
        mask_noise: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        gather: Gather | None = None,
        negative_texts: Sequence[str] | TokenBatch | None = None,
    ) -> dict[str, torch.Tensor]:
        """Both pre-training losses on a batch.

        images: uint8 ``[N, S, S]`` / ``[N, 1, S, S]`` or normalised float ``[N, 1|3, S, S]`` with
        S = ``config.input_size`` (448 in the paper setting). texts: strings or a token batch.
        mask_noise ``[N, L]``: uniform noise deciding the mask (drawn when None).
        negative_texts: one extra text per image that the image must score below its own (see
        :func:`~maco_cxr.models.losses.correlation_weighted_contrastive_loss`; None = the paper).
        Returns ``rec``, ``con``, ``total``, ``mask`` (1 = removed), ``ids_restore``, ``pred``,
        ``latent``, ``image_embed``, ``text_embed``, ``weights``.
        """
        big = self.normalize(images)
        size = self.config.input_size
        if big.shape[-2:] != (size, size):
            raise DataError(
                f"pre-training images must be {size}x{size} (config.input_size); got {tuple(big.shape[-2:])}"
            )
        # a grey batch arrives as one channel seen three times (an expand view): resample and
        # score that one channel instead of three identical copies
        target = big[:, :1] if big.shape[1] == 3 and big.stride(1) == 0 else big
        small = target
        if self.config.super_resolution:
            small = F.interpolate(
                target, size=(self.config.vision.img_size,) * 2, mode="bicubic", align_corners=False, antialias=False
            )
        small = small.expand(-1, 3, -1, -1)
        if mask_noise is None:
            mask_noise = torch.rand(
                big.shape[0], self.config.vision.num_patches, device=big.device, generator=generator
            )
        latent, mask, ids_restore = self.visual.forward_masked(small, self.config.mask_ratio, mask_noise.to(big.device))
        pred = self.decoder(latent, ids_restore)
        num_patches = self.config.vision.num_patches
        num_masked = num_patches - int(num_patches * (1 - self.config.mask_ratio))
        rec = reconstruction_loss(pred, target, mask, self.config.norm_pix_loss, num_masked)

        image_embed = joint_embeddings(self.img_proj, latent)[0]
        text_embed = self.encode_texts(texts)
        weight_logits = None
        if self.config.correlation_weighting:
            weight_logits = self.patch_weight((1 - mask).to(self.patch_weight.weight.dtype)).float()
        negative_embed = None if negative_texts is None else self.encode_texts(negative_texts)
        con, weights = correlation_weighted_contrastive_loss(
            image_embed, text_embed, weight_logits, self.inverse_temperature, gather, negative_embed
        )
        if self.config.loss_weighting == "sum":
            total = rec + con
        else:
            total = self.config.rec_weight * rec + (1 - self.config.rec_weight) * con
        return {
            "rec": rec,
            "con": con,
            "total": total,
            "mask": mask,
            "ids_restore": ids_restore,
            "pred": pred,
            "latent": latent,
            "image_embed": image_embed,
            "text_embed": text_embed,
            "weights": weights,
        }

    def forward(
        self,
        images: torch.Tensor,
        texts: Sequence[str] | TokenBatch,
        mask_noise: torch.Tensor | None = None,
        gather: Gather | None = None,
        negative_texts: Sequence[str] | TokenBatch | None = None,
    ) -> dict[str, torch.Tensor]:
        """Pre-training forward (what DDP wraps): see :meth:`pretrain_losses`."""
        return self.pretrain_losses(images, texts, mask_noise, gather=gather, negative_texts=negative_texts)
