"""CheXzero (Tiu et al., Nat. Biomed. Eng. 2022): OpenAI CLIP fine-tuned on MIMIC-CXR reports.

The released checkpoints (``best_64_5e-05_original_22000_0.864.pt`` and the ensemble) are plain
state dicts of OpenAI's CLIP (``model.py`` of github.com/rajpurkarlab/CheXzero, commit 5c341db),
ViT-B/32 at 224 px. They are built here with open_clip's :class:`~open_clip.model.CLIP`, whose
tensor names are OpenAI's, in float32; the sizes come from the tensors the way OpenAI's
``build_model`` reads them (heads = width // 64 on both towers).

The authors' rules, as their code computes them:

- Image (``data_process.py`` ``preprocess``, lines 31-41, then ``zero_shot.py`` ``make``, lines
  377-384): the longest side resized to the input size with PIL's Lanczos filter (their
  ``Image.ANTIALIAS``) to ``int(side * ratio)``, pasted on a black square at
  ``((S - w) // 2, (S - h) // 2)``; grey repeated to 3 channels; normalised on the 0-255 scale
  with mean 101.48761 and std 83.43944. Their offline 320 px HDF5 step is a storage format, not
  the model: the image is letterboxed once, to 224, so a 224 x 224 image goes in unresampled.
- Text: CLIP's BPE (open_clip ships the same ``bpe_simple_vocab_16e6.txt.gz``), lower-cased,
  context length from the checkpoint (77), the feature at the end-of-text token projected.
- Zero-shot (``zero_shot.py`` ``zeroshot_classifier`` lines 111-127, ``predict`` lines 152-156,
  ``run_softmax_eval`` lines 244-261): each template's embedding L2-normalised, averaged,
  normalised again; the image embedding normalised; p = exp(s+) / (exp(s+) + exp(s-)) of the
  cosine similarities to the templates ``"{}"`` and ``"no {}"``.

CheXzero has no patch tokens in the joint space (only the class token is projected), so it
does not ground phrases. Fine-tuning trains the image tower through its projected embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import open_clip
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from PIL import Image

from maco_cxr.data.io import check_image_size
from maco_cxr.errors import CheckpointError, ConfigError
from maco_cxr.families.base import FoundationModel, cosine_prototype, cosine_softmax_scores

__all__ = ["CHEXZERO_MEAN", "CHEXZERO_STD", "CheXzeroModel", "chexzero_letterbox", "load"]

CHEXZERO_MEAN = 101.48761
CHEXZERO_STD = 83.43944
_REQUIRED = (
    "visual.conv1.weight",
    "visual.class_embedding",
    "visual.positional_embedding",
    "visual.proj",
    "token_embedding.weight",
    "positional_embedding",
    "ln_final.weight",
    "text_projection",
)
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def chexzero_letterbox(pixels: np.ndarray, size: int) -> np.ndarray:
    """``data_process.preprocess``: Lanczos resize of the longest side to ``size`` (sizes
    truncated), pasted centred on black; uint8 ``[H, W]`` -> float32 ``[size, size]``."""
    image = Image.fromarray(pixels)
    ratio = size / max(image.size)
    new_size = tuple(int(side * ratio) for side in image.size)
    if new_size != image.size:
        image = image.resize(new_size, Image.Resampling.LANCZOS)
    canvas = Image.new("L", (size, size))
    canvas.paste(image, ((size - new_size[0]) // 2, (size - new_size[1]) // 2))
    return np.asarray(canvas, dtype=np.float32)


class CheXzeroModel(FoundationModel):
    """A CheXzero checkpoint in open_clip's CLIP; embeddings are CLIP's, unnormalised."""

    family: ClassVar[str] = "chexzero"
    capabilities: ClassVar[frozenset[str]] = frozenset({"texts", "zeroshot", "finetune"})
    prompt_templates: ClassVar[tuple[tuple[str, ...], tuple[str, ...]]] = (("{c}",), ("no {c}",))

    def __init__(self, clip: CLIP, context_length: int) -> None:
        super().__init__()
        self.clip = clip
        self.context_length = context_length
        self.input_size = int(clip.visual.image_size[0])
        self.feature_dim = int(clip.text_projection.shape[1])
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)

    def image_input(self, pixels: np.ndarray, where: str = "image") -> torch.Tensor:
        check_image_size(pixels.shape, where)
        boxed = chexzero_letterbox(np.ascontiguousarray(pixels), self.input_size)
        x = (torch.from_numpy(boxed) - CHEXZERO_MEAN) / CHEXZERO_STD
        return x[None].expand(3, -1, -1).contiguous()

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.clip.encode_image(x.to(self.device)), None

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """The projected image embedding: CLIP's only pooled feature shared by both towers."""
        return self.clip.encode_image(x)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts), context_length=self.context_length)
        return self.clip.encode_text(tokens.to(self.device))

    def class_prototype(self, prompt_embeddings: torch.Tensor) -> torch.Tensor:
        return cosine_prototype(prompt_embeddings)

    def zero_shot_scores(self, images: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        return cosine_softmax_scores(images, positive, negative)


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read it as a CheXzero checkpoint (a torch state dict): {err}") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: a CheXzero checkpoint is a state dict; found {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise CheckpointError(
            f"{path}: not a CheXzero (OpenAI CLIP ViT) checkpoint of the chexzero family: tensor {missing[0]!r} "
            "is missing. CheXzero's released .pt files are state dicts of its model.py CLIP"
        )
    return {k: v.float() for k, v in state.items() if k not in _OPENAI_EXTRAS}


def _count(state: dict[str, torch.Tensor], prefix: str) -> int:
    return len({key[len(prefix) :].split(".")[0] for key in state if key.startswith(prefix)})


def build_clip(state: dict[str, torch.Tensor]) -> CLIP:
    """open_clip's CLIP with the sizes an OpenAI ViT state dict implies (its ``build_model``)."""
    vision_width = state["visual.conv1.weight"].shape[0]
    patch = state["visual.conv1.weight"].shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = state["ln_final.weight"].shape[0]
    vision = CLIPVisionCfg(
        layers=_count(state, "visual.transformer.resblocks."),
        width=vision_width,
        head_width=64,
        patch_size=patch,
        image_size=patch * grid,
    )
    text = CLIPTextCfg(
        context_length=state["positional_embedding"].shape[0],
        vocab_size=state["token_embedding.weight"].shape[0],
        width=text_width,
        heads=max(1, text_width // 64),
        layers=_count(state, "transformer.resblocks."),
    )
    return CLIP(state["text_projection"].shape[1], vision_cfg=vision, text_cfg=text, quick_gelu=True)


def load(path: str | Path, *, tokenizer: str | Path | None = None, **options: Any) -> CheXzeroModel:
    """A CheXzero ``.pt`` state dict as released (OpenAI CLIP keys, fp16 or fp32), in eval mode."""
    if tokenizer is not None:
        raise ConfigError("the chexzero family needs no tokenizer files: CLIP's BPE vocabulary ships with open_clip")
    if options:
        raise ConfigError(f"the chexzero family takes no options; got {sorted(options)}")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; give a CheXzero checkpoint (.pt)")
    state = _state_dict(path)
    clip = build_clip(state)
    result = clip.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise CheckpointError(f"{path}: the chexzero checkpoint lacks tensor {result.missing_keys[0]!r}")
    if result.unexpected_keys:
        raise CheckpointError(
            f"{path}: tensors the chexzero (OpenAI CLIP) layout does not have, e.g. {result.unexpected_keys[0]!r}"
        )
    return CheXzeroModel(clip, int(state["positional_embedding"].shape[0])).eval()
