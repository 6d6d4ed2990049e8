"""BioViL (Boecking et al., ECCV 2022) and BioViL-T (Bannur et al., CVPR 2023): ResNet-50 + CXR-BERT, joint space 128.

Both come from Microsoft's hi-ml-multimodal (github.com/microsoft/hi-ml, folder ``hi-ml-multimodal``, commit
b67c1d27c6b17d8e8ff01f8c507f3cabdb307388; PyPI ``hi-ml-multimodal`` 0.2.2 is the same code). Line numbers below are
of ``hi-ml-multimodal/src/health_multimodal/`` at that commit. A release is a Hugging Face repository holding the
image model (``biovil_image_resnet50_proj_size_128.pt`` in microsoft/BiomedVLP-CXR-BERT-specialized,
``biovil_t_image_model_proj_size_128.pt`` in microsoft/BiomedVLP-BioViL-T: plain state dicts of their
``ImageModel``) next to the CXR-BERT text model (``pytorch_model.bin`` or ``model.safetensors`` + ``config.json``
of their ``CXRBertModel``) and its tokenizer files. :func:`load` takes that folder or the image file in it.

The models, as their code builds them:

- Image (``image/model/model.py`` ``ImageModel`` lines 47-55, 77-94; ``image/model/modules.py`` ``MLP`` lines
  12-51): a torchvision ResNet (``image/model/resnet.py`` lines 27-50, 83-91: Bottleneck, 3-4-6-3, no dilation)
  run to ``layer4``; BioViL-T's ``MultiImageEncoder`` (``image/model/encoder.py`` lines 92-141) maps it by a 1x1
  convolution to 256 channels and, for a single image, concatenates its learnt ``missing_previous_emb`` (the ViT
  temporal pooler runs only on an image pair, so it is loaded here with the rest, never run). The projector is
  1x1 conv, BatchNorm, ReLU, 1x1 conv to 128; the global embedding is the mean of the projected patch
  embeddings; both are L2-normalised (model.py lines 84-85, 102-115; ``image/inference_engine.py`` lines 59-87).
  ``image_features`` is their pooled trunk output ``img_embedding`` (2048 for BioViL, 512 = [features,
  missing-prior embedding] for BioViL-T).
- Text (``text/model/modelling_cxrbert.py`` lines 30-51, 100-102, 122-146; ``text/data/io.py`` lines 29-57;
  ``text/inference_engine.py`` lines 37-72): BERT, the last layer's [CLS] state through dense, GELU, LayerNorm
  (eps 1e-12), dense; prompts lose trailing "!?." and are padded to the longest; a text holding a special token
  other than [MASK] is refused.
- Image input (``image/utils.py`` lines 13, 31-41; ``image/data/io.py`` lines 16-43 ``remap_to_uint8`` and 46-68
  ``load_image``; ``image/data/transforms.py`` line 37): pixels stretched to 0..255 (min to 0, max to 255), the
  shorter side resized to 512 (PIL bilinear), centre-cropped to 480 (BioViL) or 448 (BioViL-T), divided by 255,
  grey repeated to 3 channels; no mean/std normalisation.
- Zero-shot (``vlp/inference_engine.py`` lines 43-55; ``test_multimodal/vlp/test_zero_shot_classification.py``
  lines 39-56 for the prompts and 139-157 for the rule): a class side's prompt embeddings are averaged
  unnormalised, then L2-normalised; the score is the cosine similarity to the normalised image embedding, and
  their rule calls a class present when the positive side's score beats the negative side's. Probabilities here
  are softmax([s+, s-])[0] = sigmoid(s+ - s-): the same decision at 0.5 and the same ranking as their s+ - s-.
- Grounding (``vlp/inference_engine.py`` lines 57-158): cosine of each normalised patch embedding with the
  normalised phrase embedding, a Gaussian filter (sigma 1.5, scipy's default 'reflect'), resized to the crop's
  extent in the input image, ``int(crop * S / 512)`` px, and padded with NaN to the input size: the strips the
  centre crop cut away are NaN. A letterboxed ``S x S`` image is their "original image", so their map is
  ``S x S`` as it is; NaN strips are kept. Interpolation: bilinear as their phrase-grounding notebook calls it
  (``notebooks/phrase_grounding.ipynb``); their function's default, nearest, is ``interpolation="nearest"``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from scipy.ndimage import gaussian_filter
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.transforms import functional as TF
from transformers import BertConfig, BertModel, BertTokenizerFast

from maco_cxr.data.io import check_image_size
from maco_cxr.errors import CheckpointError, ConfigError, DataError
from maco_cxr.families._checkpoint import count, load_strict, tensor
from maco_cxr.families.base import FoundationModel, cosine_softmax_scores

__all__ = [
    "BIOVIL_IMAGE_WEIGHTS",
    "BIOVIL_T_IMAGE_WEIGHTS",
    "BiovilModel",
    "BiovilTModel",
    "biovil_image_input",
    "load",
    "remap_to_uint8",
]

BIOVIL_IMAGE_WEIGHTS = "biovil_image_resnet50_proj_size_128.pt"
BIOVIL_T_IMAGE_WEIGHTS = "biovil_t_image_model_proj_size_128.pt"
RESIZE = 512  # image/utils.py TRANSFORM_RESIZE
SIGMA = 1.5  # vlp/inference_engine.py _get_similarity_map_from_embeddings
TEXT_WEIGHTS = ("pytorch_model.bin", "model.safetensors")
TOKENIZER_FILES = "vocab.txt + tokenizer_config.json"
_STEM = "encoder.encoder.conv1.weight"
_TEMPORAL = ("encoder.backbone_to_vit.weight", "encoder.missing_previous_emb")
_INTERPOLATIONS = ("bilinear", "nearest")


def remap_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """``image/data/io.py`` ``remap_to_uint8`` (no percentiles): min to 0, max to 255, truncated to uint8.

    A constant image (their 0/0) gives zeros."""
    values = pixels.astype(float)
    values -= values.min()
    top = values.max()
    if top == 0:
        return np.zeros(pixels.shape, np.uint8)
    values /= top
    values *= 255
    return values.astype(np.uint8)


def biovil_image_input(pixels: np.ndarray, crop: int) -> torch.Tensor:
    """Their ``load_image`` + ``create_chest_xray_transform_for_inference(512, crop)``: uint8 ``[H, W]`` ->
    float32 ``[3, crop, crop]`` in 0..1."""
    image = Image.fromarray(remap_to_uint8(pixels)).convert("L")
    image = TF.center_crop(TF.resize(image, RESIZE), crop)
    return TF.to_tensor(image).repeat(3, 1, 1)


class _Projector(nn.Module):
    """``modules.py`` ``MLP(use_1x1_convs=True)``: their tensor names (``model.0``, ``model.1``, ``model.3``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(input_dim, hidden_dim, kernel_size=1, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, output_dim, kernel_size=1, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _PoolerBlock(nn.Module):
    """The tensors of one ``transformer.py`` ``Block`` (norm1, attn.proj_q/k/v/proj, norm2, mlp.fc1/fc2)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        for name in ("proj_q", "proj_k", "proj_v"):
            self.attn.add_module(name, nn.Linear(dim, dim, bias=False))
        self.attn.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(dim, hidden)
        self.mlp.fc2 = nn.Linear(hidden, dim)


class _TemporalPooler(nn.Module):
    """BioViL-T's ``VisionTransformerPooler`` tensors, held so the release loads strictly and saves back whole.

    It combines an image with a prior image; single-image use never runs it (encoder.py lines 122-133)."""

    def __init__(self, dim: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_PoolerBlock(dim, hidden) for _ in range(blocks))
        self.norm_post = nn.LayerNorm(dim, eps=1e-6)
        self.type_embed = nn.Parameter(torch.zeros(2, 1, dim))


class _ImageEncoder(nn.Module):
    """Their ``ImageEncoder`` / ``MultiImageEncoder``: ``encoder`` is the ResNet trunk, ``fc`` kept but unused."""

    def __init__(self, trunk: ResNet, temporal: tuple[int, int, int] | None) -> None:
        super().__init__()
        self.encoder = trunk
        if temporal is not None:
            width, hidden, blocks = temporal
            trunk_dim = trunk.fc.in_features
            self.backbone_to_vit = nn.Conv2d(trunk_dim, width, kernel_size=1, bias=False)
            self.vit_pooler = _TemporalPooler(width, hidden, blocks)
            self.missing_previous_emb = nn.Parameter(torch.zeros(1, width, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch features ``[N, C, h, w]`` (encoder.py lines 49-57, 129-135; resnet.py lines 37-45)."""
        t = self.encoder
        x = t.maxpool(t.relu(t.bn1(t.conv1(x))))
        x = t.layer4(t.layer3(t.layer2(t.layer1(x))))
        if hasattr(self, "backbone_to_vit"):
            x = self.backbone_to_vit(x)
            prior = self.missing_previous_emb.expand(x.shape[0], -1, x.shape[2], x.shape[3])
            x = torch.cat([x, prior], dim=1)
        return x


class _ImageModel(nn.Module):
    """Their ``ImageModel`` tensor layout: ``encoder.*`` and ``projector.*``."""

    def __init__(self, encoder: _ImageEncoder, projector: _Projector) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector


class _ProjectionHead(nn.Module):
    """``modelling_cxrbert.py`` ``BertProjectionHead`` (lines 30-51): dense, GELU, LayerNorm(1e-12), dense."""

    def __init__(self, hidden: int, projection: int) -> None:
        super().__init__()
        self.dense_to_hidden = nn.Linear(hidden, projection)
        self.LayerNorm = nn.LayerNorm(projection, eps=1e-12)
        self.dense_to_output = nn.Linear(projection, projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_to_output(self.LayerNorm(F.gelu(self.dense_to_hidden(x))))


class BiovilModel(FoundationModel):
    """BioViL: image embeddings L2-normalised as their engine gives them; texts unnormalised (their
    ``normalize=False`` scoring path), normalised where they normalise (prototypes, maps)."""

    family: ClassVar[str] = "biovil"
    capabilities: ClassVar[frozenset[str]] = frozenset({"texts", "patches", "zeroshot", "grounding", "finetune"})
    crop: ClassVar[int] = 480  # image/utils.py get_image_inference
    #: their zero-shot prompts for pneumonia (test_zero_shot_classification.py lines 43-54), ``{c}`` the class
    prompt_templates: ClassVar[tuple[tuple[str, ...], tuple[str, ...]]] = (
        (
            "Findings consistent with {c}",
            "Findings suggesting {c}",
            "This opacity can represent {c}",
            "Findings are most compatible with {c}",
        ),
        ("There is no {c}", "No evidence of {c}", "No evidence of acute {c}", "No signs of {c}"),
    )

    def __init__(
        self,
        image: _ImageModel,
        text: BertModel,
        text_projection: _ProjectionHead,
        tokenizer: BertTokenizerFast,
        interpolation: str = "bilinear",
    ) -> None:
        super().__init__()
        self.image = image
        self.text = text
        self.text_projection = text_projection
        self.tokenizer = tokenizer
        self.interpolation = interpolation
        self.input_size = self.crop
        self.feature_dim = image.projector.model[0].in_channels
        self.patch_grid = (self.crop // 32, self.crop // 32)

    def image_input(self, pixels: np.ndarray, where: str = "image") -> torch.Tensor:
        """Their inference transform (module docstring), per image."""
        check_image_size(pixels.shape, where)
        return biovil_image_input(pixels, self.crop)

    def _patches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.image.encoder(x.to(self.device, torch.float32))
        return features, self.image.projector(features)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised mean of the projected patches ``[N, D]``, normalised patches ``[N, h*w, D]`` row-major):
        image/model/model.py lines 84-85, 110-115; image/inference_engine.py lines 67, 81-82."""
        _, projected = self._patches(x)
        global_ = F.normalize(projected.mean(dim=(2, 3)), dim=-1)
        local = F.normalize(projected, dim=1).flatten(2).transpose(1, 2)
        return global_, local

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Their ``img_embedding``: the trunk's patch features averaged (encoder.py lines 53, 136)."""
        features, _ = self._patches(x)
        return features.mean(dim=(2, 3))

    def _tokens(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``text/data/io.py`` lines 29-57 and ``text/inference_engine.py`` lines 37-50."""
        special = [t for t in self.tokenizer.all_special_tokens if t != self.tokenizer.mask_token]
        for text in texts:
            found = [t for t in special if t in text]
            if found:
                raise DataError(f"text {text!r} contains the special token {found[0]}; BioViL's tokenizer refuses it")
        batch = self.tokenizer(
            [t.rstrip("!?.") for t in texts], add_special_tokens=True, padding="longest", return_tensors="pt"
        )
        longest = self.text.config.max_position_embeddings
        if batch["input_ids"].shape[1] > longest:
            raise DataError(
                f"a text is {batch['input_ids'].shape[1]} tokens long; the {self.family} text model takes at "
                f"most {longest}: shorten it"
            )
        return {k: batch[k].to(self.device) for k in ("input_ids", "attention_mask")}

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Projected [CLS] embeddings ``[N, D]``, unnormalised (modelling_cxrbert.py lines 100-102, 122-146)."""
        hidden = self.text(**self._tokens(list(texts))).last_hidden_state
        return self.text_projection(hidden[:, 0])

    def class_prototype(self, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """Mean of the unnormalised prompt embeddings, then L2-normalised (vlp/inference_engine.py lines 47-51)."""
        return F.normalize(prompt_embeddings.float().mean(dim=0), dim=-1)

    def zero_shot_scores(self, images: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """softmax([cos(z, P), cos(z, N)])[0]: their "positive beats negative" at 0.5 (module docstring)."""
        return cosine_softmax_scores(images, positive, negative)

    def phrase_maps(self, letterboxed: torch.Tensor, phrases: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Their ``get_similarity_map_from_raw_data`` on each letterboxed image: ``[P_i, S, S]`` float32 with the
        cropped-away strips NaN (vlp/inference_engine.py lines 57-158)."""
        pixels = torch.as_tensor(letterboxed)
        if pixels.ndim != 3 or pixels.shape[1] != pixels.shape[2]:
            raise DataError(f"phrase_maps expects letterboxed images [N, S, S]; got {list(pixels.shape)}")
        if len(phrases) != pixels.shape[0]:
            raise DataError(f"{len(phrases)} phrase lists for {pixels.shape[0]} images")
        size = int(pixels.shape[1])
        flat = [p for group in phrases for p in group]
        maps, cursor = [], 0
        with torch.no_grad():
            texts = F.normalize(self.encode_texts(flat), dim=-1).float().cpu() if flat else None
            for i, group in enumerate(phrases):
                x = self.image_input(pixels[i].cpu().numpy().astype(np.uint8), f"letterboxed image {i}")
                _, local = self.embed(x[None])
                grid = local[0].float().cpu().reshape(*self.patch_grid, -1)
                stack = [self._similarity_map(grid, texts[cursor + k], size) for k in range(len(group))]
                cursor += len(group)
                maps.append(np.stack(stack) if stack else np.empty((0, size, size), np.float32))
        return maps

    def _similarity_map(self, grid: torch.Tensor, text: torch.Tensor, size: int) -> np.ndarray:
        """Lines 100-109 (cosine, Gaussian sigma 1.5) and 125-150 (resize to the crop's extent, NaN padding)."""
        similarity = (grid @ text).numpy()
        smoothed = torch.tensor(gaussian_filter(similarity, sigma=(SIGMA, SIGMA), order=0))
        extent = int(self.crop * size / RESIZE)
        resized = F.interpolate(
            smoothed[None, None],
            size=(extent, extent),
            mode=self.interpolation,
            align_corners=False if self.interpolation == "bilinear" else None,
        )
        margin = size - extent
        pad = (margin // 2, math.ceil(margin / 2)) * 2
        return F.pad(resized[0, 0], pad, value=float("nan")).numpy()


class BiovilTModel(BiovilModel):
    """BioViL-T, single-image: the trunk's 1x1 projection to its temporal width plus the learnt missing-prior
    embedding, cropped to 448."""

    family: ClassVar[str] = "biovil-t"
    crop: ClassVar[int] = 448


def _read_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        state = (
            load_file(str(path))
            if path.suffix == ".safetensors"
            else torch.load(path, map_location="cpu", weights_only=True)
        )
    except Exception as err:  # noqa: BLE001 - any reader failure is one answer: not a readable checkpoint
        raise CheckpointError(f"{path}: cannot read it as {what} (a torch state dict): {err}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: {what} is a plain state dict of tensors; found a {type(state).__name__}")
    other = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if other is not None:
        raise CheckpointError(f"{path}: {what} is a plain state dict of tensors; its entry {other!r} is not a tensor")
    return state


def build_image_model(state: dict[str, torch.Tensor], path: Path, family: str) -> _ImageModel:
    """Their ImageModel from its tensors: ResNet depths, widths, expansion and classes, projector and (BioViL-T)
    temporal sizes all read from the shapes; a checkpoint of the real ResNet-50 gives torchvision's resnet50."""
    p = "encoder.encoder."
    stem = tensor(state, p + "conv1.weight", path, family)
    if stem.shape[0] != 64:
        raise CheckpointError(f"{path}: the {family} ResNet stem has {stem.shape[0]} channels; torchvision's has 64")
    layers = [count(state, p + f"layer{i}.{{}}.conv1.weight") for i in range(1, 5)]
    if 0 in layers:
        tensor(state, p + f"layer{layers.index(0) + 1}.0.conv1.weight", path, family)
    width = tensor(state, p + "layer1.0.conv1.weight", path, family).shape[0]
    groups = width // tensor(state, p + "layer1.0.conv2.weight", path, family).shape[1]
    expansion = tensor(state, p + "layer1.0.conv3.weight", path, family).shape[0] // 64
    block = Bottleneck
    if expansion != Bottleneck.expansion:
        block = type("Bottleneck", (Bottleneck,), {"expansion": expansion})
    classes = tensor(state, p + "fc.weight", path, family).shape[0]
    trunk = ResNet(block, layers, num_classes=classes, groups=groups, width_per_group=width // groups)
    temporal = None
    if family == "biovil-t":
        dim = tensor(state, "encoder.backbone_to_vit.weight", path, family).shape[0]
        blocks = count(state, "encoder.vit_pooler.blocks.{}.norm1.weight")
        hidden = tensor(state, "encoder.vit_pooler.blocks.0.mlp.fc1.weight", path, family).shape[0]
        temporal = (dim, hidden, blocks)
    first = tensor(state, "projector.model.0.weight", path, family)
    last = tensor(state, "projector.model.3.weight", path, family)
    model = _ImageModel(_ImageEncoder(trunk, temporal), _Projector(first.shape[1], first.shape[0], last.shape[0]))
    load_strict(model, state, path, family)
    return model


def build_text_model(
    state: dict[str, torch.Tensor], config: dict[str, Any], path: Path, family: str
) -> tuple[BertModel, _ProjectionHead]:
    """CXR-BERT from its tensors: BertModel without pooler (theirs is BertForMaskedLM) and the projection head.

    Heads, layer-norm eps and activation are not in the tensors: config.json's values, else BERT-base's
    (hidden // 64 heads, 1e-12, gelu). The masked-LM head (``cls.predictions.*``) is not needed and is skipped."""
    state = {k: v for k, v in state.items() if k != "bert.embeddings.position_ids"}
    words = tensor(state, "bert.embeddings.word_embeddings.weight", path, family)
    hidden = words.shape[1]
    head = tensor(state, "cls_projection_head.dense_to_hidden.weight", path, family)
    bert_config = BertConfig(
        vocab_size=words.shape[0],
        hidden_size=hidden,
        num_hidden_layers=count(state, "bert.encoder.layer.{}.attention.self.query.weight"),
        num_attention_heads=int(config.get("num_attention_heads", max(1, hidden // 64))),
        intermediate_size=tensor(state, "bert.encoder.layer.0.intermediate.dense.weight", path, family).shape[0],
        max_position_embeddings=tensor(state, "bert.embeddings.position_embeddings.weight", path, family).shape[0],
        type_vocab_size=tensor(state, "bert.embeddings.token_type_embeddings.weight", path, family).shape[0],
        layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
        hidden_act=config.get("hidden_act", "gelu"),
        pad_token_id=int(config.get("pad_token_id", 0)),
        attn_implementation="eager",
    )
    text = BertModel(bert_config, add_pooling_layer=False)
    projection = _ProjectionHead(hidden, head.shape[0])
    unknown = [k for k in state if not k.startswith(("bert.", "cls_projection_head.", "cls.predictions."))]
    if unknown:
        raise CheckpointError(f"{path}: the {family} text checkpoint has an unexpected tensor {unknown[0]!r}")
    load_strict(text, {k[5:]: v for k, v in state.items() if k.startswith("bert.")}, path, family)
    prefix = "cls_projection_head."
    load_strict(projection, {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, path, family)
    return text, projection


def _image_file(path: Path, family: str) -> Path:
    if path.is_dir():
        names = (BIOVIL_IMAGE_WEIGHTS, BIOVIL_T_IMAGE_WEIGHTS)
        names = names[::-1] if family == "biovil-t" else names
        found = [path / n for n in names if (path / n).is_file()]
        if not found:
            raise CheckpointError(f"{path}: no {' or '.join(names)} in this folder; give the image checkpoint")
        return found[0]
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; give a BioViL image checkpoint ({BIOVIL_IMAGE_WEIGHTS})")
    return path


def _text_file(where: Path, family: str) -> Path:
    if where.is_file():
        return where
    for name in TEXT_WEIGHTS:
        if (where / name).is_file():
            return where / name
    raise CheckpointError(
        f"{where}: no {' or '.join(TEXT_WEIGHTS)} here; the {family} text model (CXR-BERT) is the Hugging Face "
        "repository's weights file: put it beside the image checkpoint or pass text=PATH"
    )


def _tokenizer(folder: Path, family: str) -> BertTokenizerFast:
    if not (folder / "vocab.txt").is_file():
        raise ConfigError(
            f"the {family} family needs the CXR-BERT tokenizer files ({TOKENIZER_FILES}) of its Hugging Face "
            f"repository; {folder} has no vocab.txt: pass tokenizer=FOLDER"
        )
    return BertTokenizerFast.from_pretrained(str(folder), local_files_only=True)


def load(
    path: str | Path,
    *,
    tokenizer: str | Path | None = None,
    family: str = "biovil",
    text: str | Path | None = None,
    interpolation: str = "bilinear",
) -> BiovilModel:
    """A BioViL (``family="biovil"``) or BioViL-T (``family="biovil-t"``) release: ``path`` is its folder or its
    image checkpoint. The tensors say which model a file is (BioViL-T's have ``encoder.backbone_to_vit``); a file
    of the other one is refused, naming the family to load it as. The text weights are ``text`` or the
    ``pytorch_model.bin``/``model.safetensors`` beside the image file (``config.json`` beside them read for
    heads); the tokenizer is ``tokenizer`` or that same folder. ``interpolation``: how the map is resized
    (bilinear, their notebook's; or nearest, their function's default)."""
    if family not in ("biovil", "biovil-t"):
        raise ConfigError(f"the biovil module loads the families 'biovil' and 'biovil-t', not {family!r}")
    if interpolation not in _INTERPOLATIONS:
        raise ConfigError(f"interpolation must be one of {', '.join(_INTERPOLATIONS)}; got {interpolation!r}")
    image_path = _image_file(Path(path), family)
    state = _read_state(image_path, f"a {family} image checkpoint")
    if _STEM not in state:
        raise CheckpointError(
            f"{image_path}: not a {family} image checkpoint (a hi-ml-multimodal ImageModel state dict): "
            f"it lacks tensor {_STEM!r}"
        )
    found = "biovil-t" if any(k in state for k in _TEMPORAL) else "biovil"
    if family != found:
        raise CheckpointError(f"{image_path}: this is a {found} image checkpoint, not {family}; load it as {found}")
    image = build_image_model(state, image_path, family)

    text_path = _text_file(Path(text) if text is not None else image_path.parent, family)
    config_file = text_path.parent / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    bert, projection = build_text_model(
        _read_state(text_path, f"a {family} text checkpoint"), config, text_path, family
    )
    words = _tokenizer(Path(tokenizer) if tokenizer is not None else text_path.parent, family)
    cls = BiovilTModel if family == "biovil-t" else BiovilModel
    return cls(image, bert, projection, words, interpolation).eval()
