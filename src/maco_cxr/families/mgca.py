"""MGCA (Wang et al., NeurIPS 2022): ViT-B/16 or ResNet-50 + Bio_ClinicalBERT, multi-granularity alignment.

The released ``vit_base.ckpt`` / ``resnet_50.ckpt`` are PyTorch Lightning checkpoints of ``MGCA``
(github.com/HKU-MedAI/MGCA, commit 680fe4a6ee0cc454ab58fd1a8b28fee81c03d742; line numbers below are of that
commit). Their ``state_dict`` holds, under ``mgca/models/mgca/mgca_module.py`` lines 64-76's names:
``img_encoder_q.model`` (the image trunk), ``img_encoder_q.global_embed`` / ``.local_embed``,
``text_encoder_q.model`` (BLIP's ``med.py`` BERT), ``text_encoder_q.global_embed`` / ``.local_embed``,
``word_local_atten_layer`` and, used by training only and skipped here, ``patch_local_atten_layer`` and
``prototype_layer``. The tensors say which trunk a file has (``img_encoder_q.model.cls_token``: ViT).

The models, as their code builds and runs them:

- ViT (``mgca/models/backbones/vits.py`` lines 111-198, ``create_vit`` lines 325-340; ``encoder.py`` lines
  71-94, 135-143): their own ViT (timm's ``PatchEmbed``, qkv bias, LayerNorm eps 1e-6, class token, no head),
  tensor for tensor timm's ``VisionTransformer``, which runs it here. Heads: their fixed 12 for width 768 and
  16 for 1024, i.e. width // 64; patch, width, depth, MLP width and input size (224) come from the tensors. The
  global feature is the final-norm class token, the local features the 196 patch tokens.
- ResNet-50 (``cnn_backbones.py`` lines 31-35; ``encoder.py`` lines 96-133): torchvision's ``resnet50`` with
  ``fc`` removed; the 224 input is first upsampled to 299 x 299 (bilinear, ``align_corners=True``); the global
  feature is ``layer4`` average-pooled (2048), the local features ``layer3``'s 19 x 19 grid (1024), row-major.
- Heads (``encoder.py`` lines 17-54): global Linear-BatchNorm-ReLU-Linear-BatchNorm(affine=False), local the
  same with 1x1 ``Conv1d`` over the tokens; every embedding is L2-normalised (``mgca_module.py`` lines 86-99).
- Text (``encoder.py`` lines 146-186, 307-376 ``aggregate_tokens``, 378-396 ``forward``; ``med.py`` lines
  43-85; ``configs/bert_config.json``: 6 layers of 768, 12 heads): BERT without pooler; its forward passes
  ``token_type_ids`` where ``med.BertModel.forward`` takes ``position_ids``
  (``encoder.py`` line 379 against ``med.py`` lines 661-664), so every token reads position 0 and no
  token-type table exists: reproduced here by passing the (all-zero) token types as position ids. The last
  layer's states are merged into words by summing word pieces; the report feature is the [CLS] state, the word
  features the rest. The cross-attention layers of ``med.py`` (``add_cross_attention``) run only in its
  "multimodal" mode, never in "text", and are skipped. Reports are cleaned as their dataset does
  (``datasets/pretrain_dataset.py`` lines 70-134, see :mod:`maco_cxr.families._bert`) and tokenised to 112
  tokens (``max_words``, lines 20, 149-155 of ``get_caption``). A text that the cleaning empties is refused.
- Image input (``datasets/utils.py`` ``resize_img`` lines 28-74, ``get_imgs`` 77-85, ``datasets/transforms.py``
  lines 17-21, the evaluation transform): the longest side resized to 256 with OpenCV's ``INTER_AREA`` (the
  other side truncated to an integer), centred zero padding (floor before, ceil after), grey to 3 channels,
  centre crop 224, ``/ 255``, normalised with mean 0.5 and std 0.5. :func:`cv2_area_resize` reproduces
  OpenCV's ``INTER_AREA`` bit for bit (its area tables for shrinking, the 2 x 2 fast path, its fixed-point
  bilinear for enlarging), so OpenCV is not needed.
- ``image_features``: their linear-probe feature, ``ImageEncoder``'s first output (``ssl_finetuner.py`` line
  100): the class token (ViT) or the pooled ``layer4`` (ResNet), before the heads.

Their repository has no zero-shot code. The rule here follows their image-text loss (``mgca_module.py`` lines
104-109, the paper's Eq. 1): cosine similarities divided by the training temperature 0.07 and a softmax over
the candidate texts, i.e. p = softmax([s+, s-] / 0.07)[0] against the class prototypes (each prompt
embedding normalised, averaged, normalised again). Grounding follows their visualisation notebook
(``mgca/visualization/visualize_attention_map.ipynb`` cell 3 and cell 5, the code for the paper's Fig. 3
activation maps): the attention weights of ``word_local_atten_layer`` (one head, their default ``num_heads``)
with the words' embeddings as queries and the patch embeddings as keys and values, reshaped to the patch grid
and resized bilinearly with ``align_corners=True``. The notebook shows one word; a phrase here is the mean of
its words' maps (our rule), and its display steps (division by the image's largest value, ``1 -`` for
OpenCV's BGR colour map) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import timm.models.vision_transformer
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet
from transformers import BertModel, BertTokenizerFast

from maco_cxr.data.io import check_image_size
from maco_cxr.errors import CheckpointError, ConfigError, DataError
from maco_cxr.families._bert import build_bert, clean_report, lightning_state, merge_word_pieces, tokenise
from maco_cxr.families._bert import tokenizer as bert_tokenizer
from maco_cxr.families._checkpoint import count, load_strict, tensor
from maco_cxr.families.base import FoundationModel, cosine_prototype

__all__ = [
    "MGCA_CROP",
    "MGCA_MAX_WORDS",
    "MGCA_RESIZE",
    "MGCA_TEMPERATURE",
    "MgcaModel",
    "cv2_area_resize",
    "load",
    "mgca_input",
    "mgca_resize",
]

MGCA_RESIZE = 256  # datasets/pretrain_dataset.py line 20, classification_dataset.py imsize=256
MGCA_CROP = 224  # datasets/transforms.py line 9, encoder.py line 74
MGCA_MAX_WORDS = 112  # datasets/pretrain_dataset.py line 20
MGCA_TEMPERATURE = 0.07  # mgca_module.py line 37 (softmax_temperature)
RESNET_SIZE = 299  # encoder.py line 115
_FAMILY = "mgca"
_VIT = "img_encoder_q.model.cls_token"
_RESNET = "img_encoder_q.model.conv1.weight"
_BERT = "text_encoder_q.model."
_TRAINING_ONLY = ("prototype_layer.", "patch_local_atten_layer.")
_COEF_SCALE = 2048  # OpenCV's INTER_RESIZE_COEF_SCALE


def _area_taps(src: int, dst: int) -> list[tuple[int, int, np.float32]]:
    """OpenCV's ``computeResizeAreaTab``: (output, input, weight) triples for shrinking ``src`` to ``dst``."""
    scale = src / dst
    taps = []
    for d in range(dst):
        start = d * scale
        end = start + scale
        cell = min(scale, src - start)
        first, last = math.ceil(start), min(math.floor(end), src - 1)
        first = min(first, last)
        if first - start > 1e-3:
            taps.append((d, first - 1, np.float32((first - start) / cell)))
        taps.extend((d, s, np.float32(1.0 / cell)) for s in range(first, last))
        if end - last > 1e-3:
            taps.append((d, last, np.float32(min(min(end - last, 1.0), cell) / cell)))
    return taps


def _area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV's general ``INTER_AREA`` shrink: float32 rows then columns in its order, rounded half to even."""
    source = image.astype(np.float32)
    rows = np.zeros((image.shape[0], width), np.float32)
    for d, s, weight in _area_taps(image.shape[1], width):
        rows[:, d] += source[:, s] * weight
    out = np.zeros((height, width), np.float32)
    started = np.zeros(height, bool)
    for d, s, weight in _area_taps(image.shape[0], height):
        out[d] = out[d] + weight * rows[s] if started[d] else weight * rows[s]
        started[d] = True
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _area_integer(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV's integer-factor fast path: 2 x 2 sums rounded half up, other factors sum * (1 / area) in float."""
    ky, kx = image.shape[0] // height, image.shape[1] // width
    sums = image.astype(np.int64).reshape(height, ky, width, kx).sum(axis=(1, 3))
    if ky == kx == 2:
        return ((sums + 2) >> 2).astype(np.uint8)
    return np.clip(np.rint(sums.astype(np.float32) * np.float32(1.0 / (ky * kx))), 0, 255).astype(np.uint8)


def _enlarge_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's ``INTER_AREA`` enlarging taps (its "area mode" bilinear): left index and 11-bit weights."""
    scale, inverse = src / dst, dst / src
    index, weights = np.empty(dst, np.int64), np.empty((dst, 2), np.int64)
    for d in range(dst):
        s = math.floor(d * scale)
        f = np.float32((d + 1) - (s + 1) * inverse)
        f = np.float32(0) if f <= 0 else np.float32(f - math.floor(f))
        if s >= src - 1:
            f, s = np.float32(0), src - 1
        index[d] = s
        weights[d] = (round(float((np.float32(1) - f) * _COEF_SCALE)), round(float(f * _COEF_SCALE)))
    return index, weights


def _enlarge(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Fixed-point horizontal pass, then OpenCV's SIMD vertical pass ((a >> 4) * b >> 16, rounded shift by 2)."""
    xi, xw = _enlarge_taps(image.shape[1], width)
    yi, yw = _enlarge_taps(image.shape[0], height)
    source = image.astype(np.int64)
    rows = source[:, xi] * xw[:, 0] + source[:, np.minimum(xi + 1, image.shape[1] - 1)] * xw[:, 1]
    edge = xi >= image.shape[1] - 1
    rows[:, edge] = source[:, xi[edge]] * _COEF_SCALE
    top, bottom = rows[yi] >> 4, rows[np.minimum(yi + 1, image.shape[0] - 1)] >> 4
    value = ((top * yw[:, :1]) >> 16) + ((bottom * yw[:, 1:]) >> 16)
    return np.clip((value + 2) >> 2, 0, 255).astype(np.uint8)


def cv2_area_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)`` for uint8 grey images, without OpenCV
    (checked equal, pixel for pixel, to OpenCV 4.10 and 5.1 on shrinking, enlarging and tie-heavy images)."""
    if image.shape == (height, width):
        return image.copy()
    if image.shape[0] >= height and image.shape[1] >= width:
        if image.shape[0] % height == 0 and image.shape[1] % width == 0:
            return _area_integer(image, height, width)
        return _area(image, height, width)
    return _enlarge(image, height, width)


def mgca_resize(pixels: np.ndarray, size: int = MGCA_RESIZE) -> np.ndarray:
    """Their ``resize_img`` (datasets/utils.py lines 28-74): uint8 ``[H, W]`` -> uint8 ``[size, size]``."""
    height, width = pixels.shape
    if height >= width:  # ``size.index(max_dim) == 0``: a square image is "higher"
        new = (size, int(float(width) * (size / float(height))))
    else:
        new = (int(float(height) * (size / float(width))), size)
    resized = cv2_area_resize(np.ascontiguousarray(pixels, dtype=np.uint8), *new)
    top, left = (size - new[0]) // 2, (size - new[1]) // 2
    out = np.zeros((size, size), np.uint8)
    out[top : top + new[0], left : left + new[1]] = resized
    return out


def mgca_input(pixels: np.ndarray) -> torch.Tensor:
    """``get_imgs`` + the evaluation ``DataTransforms``: resize_img(256), centre crop 224, (x / 255 - 0.5) / 0.5."""
    margin = (MGCA_RESIZE - MGCA_CROP) // 2  # torchvision: int(round((256 - 224) / 2))
    crop = mgca_resize(pixels)[margin : margin + MGCA_CROP, margin : margin + MGCA_CROP]
    x = (torch.from_numpy(crop.astype(np.float32)) / 255 - 0.5) / 0.5
    return x[None].expand(3, -1, -1).contiguous()


class _Projection(nn.Module):
    """Their GlobalEmbedding (``linear=True``) or LocalEmbedding (1x1 Conv1d over tokens), ``encoder.py`` 17-54."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, local: bool) -> None:
        super().__init__()
        layer = (lambda i, o: nn.Conv1d(i, o, kernel_size=1)) if local else nn.Linear
        self.local = local
        self.head = nn.Sequential(
            layer(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            layer(hidden, out_dim),
            nn.BatchNorm1d(out_dim, affine=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.local:
            return self.head(x.permute(0, 2, 1)).permute(0, 2, 1)
        return self.head(x)


class _ImageEncoder(nn.Module):
    """``img_encoder_q``: the trunk (``model``) and its two heads."""

    def __init__(self, trunk: nn.Module, vit: bool, global_embed: _Projection, local_embed: _Projection) -> None:
        super().__init__()
        self.model = trunk
        self.vit = vit
        self.global_embed = global_embed
        self.local_embed = local_embed

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(global feature ``[N, C]``, local features ``[N, L, C']``): encoder.py lines 114-143."""
        if self.vit:
            tokens = self.model.forward_features(x)
            return tokens[:, 0], tokens[:, 1:]
        m = self.model
        x = F.interpolate(x, size=(RESNET_SIZE, RESNET_SIZE), mode="bilinear", align_corners=True)
        x = m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x)))))))
        local = x.flatten(2).transpose(1, 2)
        return m.layer4(x).mean(dim=(2, 3)), local.contiguous()


class _TextHeads(nn.Module):
    """``text_encoder_q``'s heads (its BERT is built apart, with transformers)."""

    def __init__(self, global_embed: _Projection, local_embed: _Projection) -> None:
        super().__init__()
        self.global_embed = global_embed
        self.local_embed = local_embed


class _Nets(nn.Module):
    """Every module of theirs that inference uses, under the checkpoint's names (BERT apart)."""

    def __init__(self, image: _ImageEncoder, text: _TextHeads, attention: nn.MultiheadAttention) -> None:
        super().__init__()
        self.img_encoder_q = image
        self.text_encoder_q = text
        self.word_local_atten_layer = attention


class MgcaModel(FoundationModel):
    """An MGCA checkpoint: embeddings are their L2-normalised global and local embeddings."""

    family: ClassVar[str] = _FAMILY
    capabilities: ClassVar[frozenset[str]] = frozenset({"texts", "patches", "zeroshot", "grounding", "finetune"})

    def __init__(self, nets: _Nets, bert: BertModel, tokens: BertTokenizerFast, grid: int, backbone: str) -> None:
        super().__init__()
        self.nets = nets
        self.bert = bert
        self.tokenizer = tokens
        self.vocab = {v: k for k, v in tokens.get_vocab().items()}
        self.backbone = backbone
        self.input_size = MGCA_CROP
        self.feature_dim = int(nets.img_encoder_q.global_embed.head[0].in_features)
        self.patch_grid = (grid, grid)

    def image_input(self, pixels: np.ndarray, where: str = "image") -> torch.Tensor:
        """Their evaluation input (module docstring), per image."""
        check_image_size(pixels.shape, where)
        return mgca_input(pixels)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised global ``[N, D]``, normalised patches ``[N, L, D]``): mgca_module.py lines 86-91."""
        encoder = self.nets.img_encoder_q
        features, local = encoder(x.to(self.device, torch.float32))
        return F.normalize(encoder.global_embed(features), dim=-1), F.normalize(encoder.local_embed(local), dim=-1)

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """``ImageEncoder``'s global feature before the heads, what their linear probe reads (ssl_finetuner.py 100)."""
        return self.nets.img_encoder_q(x)[0]

    def _words(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
        """(report features ``[N, H]``, word features ``[N, L-1, H]``, words): encoder.py lines 307-396."""
        for text in texts:
            if not clean_report(text):
                raise DataError(
                    f"text {text!r} is empty after MGCA's report cleaning, which drops every sentence of one word "
                    "(datasets/pretrain_dataset.py lines 100-104): write two words or more, e.g. 'there is effusion'"
                )
        batch = tokenise(self.tokenizer, texts, MGCA_MAX_WORDS, self.device)
        hidden = self.bert(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["token_type_ids"],
        ).last_hidden_state
        merged, words = merge_word_pieces(hidden, batch["input_ids"], self.vocab)
        return merged[:, 0], merged[:, 1:], words

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised report embeddings ``[N, D]``: the [CLS] state through the global head (lines 94-99)."""
        report, _, _ = self._words(list(texts))
        return F.normalize(self.nets.text_encoder_q.global_embed(report), dim=-1)

    def class_prototype(self, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """Each prompt normalised, averaged, normalised again (module docstring: no zero-shot code of theirs)."""
        return cosine_prototype(prompt_embeddings)

    def zero_shot_scores(self, images: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """softmax([cos(z, P), cos(z, N)] / 0.07)[0]: their image-text loss's scores (mgca_module.py 104-109)."""
        z = F.normalize(images.float(), dim=-1)
        pair = torch.stack([z @ F.normalize(positive.float(), dim=-1).T, z @ F.normalize(negative.float(), dim=-1).T])
        return torch.softmax(pair / MGCA_TEMPERATURE, dim=0)[0]

    def phrase_maps(self, letterboxed: torch.Tensor, phrases: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Their notebook's word-to-patch attention, per phrase the mean over its words, on the crop's extent of each
        letterboxed image; what the centre crop cut away is NaN. ``[P_i, S, S]`` float32."""
        pixels = torch.as_tensor(letterboxed)
        if pixels.ndim != 3 or pixels.shape[1] != pixels.shape[2]:
            raise DataError(f"phrase_maps expects letterboxed images [N, S, S]; got {list(pixels.shape)}")
        if len(phrases) != pixels.shape[0]:
            raise DataError(f"{len(phrases)} phrase lists for {pixels.shape[0]} images")
        size = int(pixels.shape[1])
        extent = int(MGCA_CROP * size / MGCA_RESIZE)
        margin = size - extent
        pad = (margin // 2, math.ceil(margin / 2)) * 2
        maps = []
        with torch.no_grad():
            for i, group in enumerate(phrases):
                if not group:
                    maps.append(np.empty((0, size, size), np.float32))
                    continue
                x = self.image_input(pixels[i].cpu().numpy().astype(np.uint8), f"letterboxed image {i}")
                _, patches = self.embed(x[None])
                _, word_features, words = self._words(list(group))
                word_emb = F.normalize(self.nets.text_encoder_q.local_embed(word_features), dim=-1)
                stack = []
                for k in range(len(group)):
                    real = [j for j, w in enumerate(words[k][1:]) if w not in ("[SEP]", "[PAD]")]
                    _, attention = self.nets.word_local_atten_layer(word_emb[k : k + 1, real], patches, patches)
                    grid = attention[0].mean(dim=0).reshape(1, 1, *self.patch_grid).float()
                    resized = F.interpolate(grid, size=(extent, extent), mode="bilinear", align_corners=True)
                    stack.append(F.pad(resized[0, 0], pad, value=float("nan")).cpu().numpy())
                maps.append(np.stack(stack))
        return maps


def _vit(state: dict[str, torch.Tensor], path: Path) -> tuple[nn.Module, int]:
    """timm's VisionTransformer sized from their ViT's tensors; heads = width // 64 (create_vit, vits.py 325-340)."""
    p = "img_encoder_q.model."
    patch = tensor(state, p + "patch_embed.proj.weight", path, _FAMILY)
    width, channels, size = patch.shape[0], patch.shape[1], patch.shape[-1]
    tokens = tensor(state, p + "pos_embed", path, _FAMILY).shape[1] - 1
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise CheckpointError(f"{path}: the mgca ViT position table has {tokens} patch rows, not a square grid")
    hidden = tensor(state, p + "blocks.0.mlp.fc1.weight", path, _FAMILY).shape[0]
    trunk = timm.models.vision_transformer.VisionTransformer(
        img_size=grid * size,
        patch_size=size,
        in_chans=channels,
        num_classes=0,
        global_pool="token",
        embed_dim=width,
        depth=count(state, p + "blocks.{}.norm1.weight"),
        num_heads=max(1, width // 64),
        mlp_ratio=hidden / width,
        qkv_bias=True,
    )
    if grid * size != MGCA_CROP:
        raise CheckpointError(f"{path}: the mgca ViT takes {grid * size} px; their encoder takes {MGCA_CROP}")
    return trunk, grid


def _resnet(state: dict[str, torch.Tensor], path: Path) -> tuple[nn.Module, int]:
    """torchvision's ResNet sized from the tensors (the released file gives resnet50 itself), ``fc`` removed."""
    p = "img_encoder_q.model."
    stem = tensor(state, p + "conv1.weight", path, _FAMILY)
    layers = [count(state, p + f"layer{i}.{{}}.conv1.weight") for i in range(1, 5)]
    if 0 in layers:
        tensor(state, p + f"layer{layers.index(0) + 1}.0.conv1.weight", path, _FAMILY)
    width = tensor(state, p + "layer1.0.conv1.weight", path, _FAMILY).shape[0]
    groups = width // tensor(state, p + "layer1.0.conv2.weight", path, _FAMILY).shape[1]
    expansion = tensor(state, p + "layer1.0.conv3.weight", path, _FAMILY).shape[0] // stem.shape[0]
    block = (
        Bottleneck if expansion == Bottleneck.expansion else type("Bottleneck", (Bottleneck,), {"expansion": expansion})
    )
    trunk = ResNet(block, layers, groups=groups, width_per_group=width // groups)
    trunk.fc = nn.Identity()
    grid = RESNET_SIZE
    for _ in range(4):  # conv1, maxpool, layer2, layer3: each halves with padding, rounding up
        grid = (grid + 1) // 2
    return trunk, grid


def _projection(state: dict[str, torch.Tensor], prefix: str, path: Path, local: bool) -> _Projection:
    first = tensor(state, prefix + "head.0.weight", path, _FAMILY)
    last = tensor(state, prefix + "head.3.weight", path, _FAMILY)
    return _Projection(first.shape[1], first.shape[0], last.shape[0], local)


def load(path: str | Path, *, tokenizer: str | Path | None = None, **options: Any) -> MgcaModel:
    """An MGCA Lightning ``.ckpt`` as released (``vit_base.ckpt`` or ``resnet_50.ckpt``), in eval mode on CPU.

    ``tokenizer``: the Bio_ClinicalBERT tokenizer folder (Hugging Face emilyalsentzer/Bio_ClinicalBERT)."""
    if options:
        raise ConfigError(f"the mgca family takes no options; got {sorted(options)}")
    path = Path(path)
    words = bert_tokenizer(tokenizer, _FAMILY)
    state = lightning_state(path, _FAMILY)
    if _VIT not in state and _RESNET not in state:
        raise CheckpointError(
            f"{path}: not a mgca checkpoint (a Lightning .ckpt of mgca_module.MGCA): it has neither "
            f"{_VIT!r} (ViT) nor {_RESNET!r} (ResNet-50)"
        )
    vit = _VIT in state
    trunk, grid = _vit(state, path) if vit else _resnet(state, path)
    text = {k: v for k, v in state.items() if k.startswith(_BERT) and ".crossattention." not in k}
    try:
        bert = build_bert(text, _BERT, path, _FAMILY)
    except CheckpointError as err:  # _bert names the key inside the tower; name it as the file does
        raise CheckpointError(str(err).replace("tensor '", f"tensor '{_BERT}", 1)) from err
    emb = tensor(state, "img_encoder_q.global_embed.head.3.weight", path, _FAMILY).shape[0]
    image = _ImageEncoder(
        trunk,
        vit,
        _projection(state, "img_encoder_q.global_embed.", path, local=False),
        _projection(state, "img_encoder_q.local_embed.", path, local=True),
    )
    heads = _TextHeads(
        _projection(state, "text_encoder_q.global_embed.", path, local=False),
        _projection(state, "text_encoder_q.local_embed.", path, local=True),
    )
    nets = _Nets(image, heads, nn.MultiheadAttention(emb, 1, batch_first=True))
    rest = {k: v for k, v in state.items() if not k.startswith((_BERT, *_TRAINING_ONLY))}
    load_strict(nets, rest, path, _FAMILY)
    return MgcaModel(nets, bert, words, grid, "vit" if vit else "resnet").eval()
