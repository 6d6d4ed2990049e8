"""BiomedCLIP (Zhang et al., NEJM AI 2024): ViT-B/16 + PubMedBERT trained on PMC-15M, run through open_clip.

The authors publish, in the Hub repository microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224,
``open_clip_config.json`` (the model and preprocessing config) and ``open_clip_pytorch_model.bin`` (the
state dict of open_clip's ``CustomTextCLIP``: ``visual.trunk.*`` a timm ``vit_base_patch16_224``,
``visual.head.proj`` its linear projection, ``text.transformer.*`` a BERT, ``text.proj.*`` an MLP
projection, ``logit_scale``) beside the PubMedBERT tokenizer files. Their inference path is open_clip's
(mlfoundations/open_clip v3.3.0, commit 3057361), which is what this module runs, offline:

- Model (``factory.py`` ``create_model``, lines 332-366 and 465-516): ``CustomTextCLIP(**model_cfg)``
  from the LOCAL config, loaded strictly. open_clip's HF text tower reads its BERT config from the Hub
  (``hf_model_name``, ``hf_model.py`` lines 119-128); here a ``BertConfig`` is built from the tensors
  instead (vocabulary, width, depth, MLP width, positions, token types; heads = width / 64, BERT's head
  width: 12 for PubMedBERT-base, ``text_heads=`` otherwise) and handed to the same constructor through
  a temporary folder. The ``text.transformer.embeddings.position_ids`` buffer that the released file
  carries (saved by transformers < 4.31) is dropped, as ``load_checkpoint`` does (lines 215-218).
  The vision tower is the timm model the config names (the sizes are that model's).
- Image (``transform.py`` ``image_transform``, eval branch, lines 409-440, with ``PreprocessCfg``
  merged from the config's ``preprocess_cfg`` and the tower's image size, ``factory.py`` lines
  609-619): shorter side resized to 224 (bicubic), centre crop, RGB, ``/ 255``, normalised with
  the config's mean and std (CLIP's).
- Text (``tokenizer.py`` ``HFTokenizer``, lines 405-499): whitespace-cleaned text, the tokenizer
  folder's WordPiece, [CLS] ... [SEP] padded/truncated to the config's context length (256); the
  tower pools the [CLS] token of the last hidden state (``cls_last_hidden_state_pooler``) and
  projects it.
- Zero-shot (``zero_shot_classifier.py`` ``build_zero_shot_classifier`` lines 52-58: each prompt
  normalised, averaged, normalised again; the model card's rule, ``model.py`` ``CustomTextCLIP.forward``
  lines 642-662: logits = ``logit_scale.exp()`` * cosine, softmax over the labels). A positive/negative class
  is that rule over the two-label set {``this is a photo of {c}``, ``this is a photo of no {c}``}: the
  model card's template (``'this is a photo of '`` + label) for the positive; the negation is ours,
  BiomedCLIP publishes no negative prompt.

Only the class token is projected into the joint space, so BiomedCLIP has no local features and does
not ground phrases. :meth:`BiomedClipModel.image_features` is the timm trunk's pooled output (final
norm, class token) before the projection.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CustomTextCLIP
from open_clip.tokenizer import HFTokenizer
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
from PIL import Image
from transformers import BertConfig

from maco_cxr.data.io import check_image_size
from maco_cxr.errors import CheckpointError, ConfigError
from maco_cxr.families.base import FoundationModel, cosine_prototype

__all__ = ["BiomedClipModel", "build_bert_config", "load"]

CONFIG_NAME = "open_clip_config.json"
WEIGHT_NAMES = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors")
TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json")
_BERT = "text.transformer."
_POSITION_IDS = "text.transformer.embeddings.position_ids"
_REQUIRED = (
    "visual.trunk.patch_embed.proj.weight",
    f"{_BERT}embeddings.word_embeddings.weight",
    f"{_BERT}embeddings.position_embeddings.weight",
    f"{_BERT}embeddings.token_type_embeddings.weight",
    f"{_BERT}encoder.layer.0.intermediate.dense.weight",
    "logit_scale",
)
_OPTIONS = {"config", "text_heads"}


class BiomedClipModel(FoundationModel):
    """open_clip's ``CustomTextCLIP`` with BiomedCLIP's tokenizer and preprocessing; embeddings unnormalised."""

    family: ClassVar[str] = "biomedclip"
    capabilities: ClassVar[frozenset[str]] = frozenset({"texts", "zeroshot", "finetune"})
    prompt_templates: ClassVar[tuple[tuple[str, ...], tuple[str, ...]]] = (
        ("this is a photo of {c}",),
        ("this is a photo of no {c}",),
    )

    def __init__(self, clip: CustomTextCLIP, tokenizer: HFTokenizer, preprocess: PreprocessCfg) -> None:
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.preprocess_cfg = preprocess
        self.transform = image_transform_v2(preprocess, is_train=False)
        self.input_size = int(clip.visual.image_size[0])
        self.feature_dim = int(clip.visual.trunk.num_features)

    def image_input(self, pixels: np.ndarray, where: str = "image") -> torch.Tensor:
        """open_clip's eval transform on the grey image (converted to RGB after the crop, as a PIL "L" image is)."""
        check_image_size(pixels.shape, where)
        return self.transform(Image.fromarray(np.ascontiguousarray(pixels)))

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.clip.encode_image(x.to(self.device)), None

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """The timm trunk's pooled output (final norm, class token), before ``visual.head``'s projection."""
        return self.clip.visual.trunk(x)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.clip.encode_text(self.tokenizer(list(texts)).to(self.device))

    def class_prototype(self, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """``build_zero_shot_classifier``: normalise each prompt, average, normalise."""
        return cosine_prototype(prompt_embeddings)

    def zero_shot_scores(self, images: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        """softmax over (positive, negative) of ``logit_scale.exp()`` * cosine, positive entry."""
        z = F.normalize(images.float(), dim=-1)
        sides = [z @ F.normalize(side.float().to(z.device), dim=-1).T for side in (positive, negative)]
        scale = self.clip.logit_scale.detach().exp().float().to(z.device)  # scores are read, never trained through
        logits = scale * torch.stack(sides, dim=-1)
        return torch.softmax(logits, dim=-1)[..., 0]


def _weights_path(path: Path) -> Path:
    if path.is_dir():
        for name in WEIGHT_NAMES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: no BiomedCLIP weights in this folder; expected one of {list(WEIGHT_NAMES)}")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; give BiomedCLIP's open_clip_pytorch_model.bin")
    return path


def _read_config(weights: Path, config: str | Path | None) -> dict[str, Any]:
    where = Path(config) if config is not None else weights.parent / CONFIG_NAME
    if not where.is_file():
        raise ConfigError(
            f"{where}: BiomedCLIP's {CONFIG_NAME} is needed to build the model; put the one published beside "
            "open_clip_pytorch_model.bin next to it, or pass config=PATH"
        )
    try:
        data = json.loads(where.read_text(encoding="utf-8"))
        model_cfg = data["model_cfg"]
        text_cfg, vision_cfg = model_cfg["text_cfg"], model_cfg["vision_cfg"]
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{where}: not an open_clip config with model_cfg.text_cfg and vision_cfg ({err})") from err
    if "hf_model_name" not in text_cfg or "timm_model_name" not in vision_cfg:
        raise ConfigError(f"{where}: a BiomedCLIP config has a timm image tower and an HF text tower")
    return data


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = open_clip.factory.load_state_dict(str(path))
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read it as a BiomedCLIP checkpoint (a torch state dict): {err}") from err
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise CheckpointError(
            f"{path}: not a BiomedCLIP (open_clip timm ViT + HF BERT) checkpoint of the biomedclip family: tensor "
            f"{missing[0]!r} is missing. BiomedCLIP's released file is open_clip_pytorch_model.bin"
        )
    return state


def _tokenizer_folder(tokenizer: str | Path | None, weights: Path) -> Path:
    folder = Path(tokenizer) if tokenizer is not None else weights.parent
    if not all((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(
            f"{folder}: the biomedclip family needs the PubMedBERT tokenizer files ({', '.join(TOKENIZER_FILES)}) "
            "published beside open_clip_pytorch_model.bin; pass tokenizer=FOLDER"
        )
    return folder


def build_bert_config(state: dict[str, torch.Tensor], *, pad_token_id: int, heads: int | None = None) -> BertConfig:
    """The text tower's BertConfig from its tensors (what open_clip would fetch from the Hub)."""
    vocab, width = state[f"{_BERT}embeddings.word_embeddings.weight"].shape
    heads = max(1, width // 64) if heads is None else heads
    if width % heads:
        raise ConfigError(f"text_heads={heads} does not divide the BERT width {width}")
    layers = {
        key[len(f"{_BERT}encoder.layer.") :].split(".")[0] for key in state if key.startswith(f"{_BERT}encoder.layer.")
    }
    return BertConfig(
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=len(layers),
        num_attention_heads=heads,
        intermediate_size=state[f"{_BERT}encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state[f"{_BERT}embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state[f"{_BERT}embeddings.token_type_embeddings.weight"].shape[0],
        pad_token_id=pad_token_id,
    )


def _build_clip(model_cfg: dict[str, Any], bert: BertConfig) -> CustomTextCLIP:
    """``CustomTextCLIP(**model_cfg)`` with the HF tower's config read from a local folder, no weights fetched."""
    cfg = deepcopy(model_cfg)
    if cfg.pop("multimodal_cfg", None) is not None:
        raise ConfigError("a CoCa config (multimodal_cfg) is not BiomedCLIP's CLIP layout")
    cfg.pop("custom_text", None)
    cfg["vision_cfg"]["timm_model_pretrained"] = False
    cfg["text_cfg"]["hf_model_pretrained"] = False
    with tempfile.TemporaryDirectory() as folder:
        bert.save_pretrained(folder)
        cfg["text_cfg"]["hf_model_name"] = folder
        return CustomTextCLIP(**cfg)


def load(path: str | Path, *, tokenizer: str | Path | None = None, **options: Any) -> BiomedClipModel:
    """BiomedCLIP's ``open_clip_pytorch_model.bin`` (or its folder) with the local ``open_clip_config.json``.

    ``tokenizer``: the folder of the tokenizer files (default: the weights' folder, as in the Hub
    repository). Options: ``config`` (path of ``open_clip_config.json``; default beside the weights),
    ``text_heads`` (default width / 64: 12 for PubMedBERT-base).
    """
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise ConfigError(f"the biomedclip family takes the options {sorted(_OPTIONS)}; got {unknown}")
    weights = _weights_path(Path(path))
    config = _read_config(weights, options.get("config"))
    state = _state_dict(weights)
    text_cfg = config["model_cfg"]["text_cfg"]
    hf_tokenizer = HFTokenizer(
        str(_tokenizer_folder(tokenizer, weights)),
        context_length=text_cfg.get("context_length", open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH),
        tokenizer_mode=text_cfg.get("tokenizer_mode"),
        local_files_only=True,
        **text_cfg.get("tokenizer_kwargs", {}),
    )
    bert = build_bert_config(state, pad_token_id=hf_tokenizer.tokenizer.pad_token_id, heads=options.get("text_heads"))
    clip = _build_clip(config["model_cfg"], bert)
    expected = clip.state_dict()
    if _POSITION_IDS not in expected:
        state.pop(_POSITION_IDS, None)
    if "logit_scale" in state and state["logit_scale"].ndim != clip.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(clip.logit_scale.shape)
    missing = [key for key in expected if key not in state]
    if missing:
        raise CheckpointError(f"{weights}: the biomedclip checkpoint lacks tensor {missing[0]!r}")
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise CheckpointError(
            f"{weights}: tensors the biomedclip layout ({CONFIG_NAME}) does not have, e.g. {unexpected[0]!r}"
        )
    wrong = [key for key, value in state.items() if value.shape != expected[key].shape]
    if wrong:
        key = wrong[0]
        raise CheckpointError(
            f"{weights}: biomedclip tensor {key!r} has shape {list(state[key].shape)}; the model "
            f"{CONFIG_NAME} describes needs {list(expected[key].shape)}"
        )
    clip.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    preprocess = merge_preprocess_dict(PreprocessCfg(), config.get("preprocess_cfg", {}))
    preprocess["size"] = clip.visual.image_size
    return BiomedClipModel(clip, hf_tokenizer, PreprocessCfg(**preprocess)).eval()
