"""Saving and loading models: this package's format and the official MaCo / MAE checkpoints.

Format: a directory with ``model.safetensors``, ``config.json`` (the model config plus the
preprocessing contract) and ``tokenizer.json``. Foreign weights are converted by pure
``state_dict -> state_dict`` functions that recognise the source by its keys, and every load
reports what was loaded, ignored and missing.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from maco_cxr._atomic import atomic_directory, write_json
from maco_cxr.config import config_to_dict, from_dict
from maco_cxr.data.tokenizer import ReportTokenizer
from maco_cxr.errors import CheckpointError, ConfigError
from maco_cxr.models.config import DecoderConfig, MacoConfig, TextConfig, VisionConfig
from maco_cxr.models.maco import MacoModel

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TOKENIZER_NAME = "tokenizer.json"

# Official tensors no inference or training path of MaCo uses (kept out of converted weights).
OFFICIAL_UNUSED = re.compile(
    r"^(pos_weight_text\.|pos_cat\.|logit_scale$|WCE\.|bert_encoder\.model\.cls\.|"
    r"bert_encoder\.model\.bert\.embeddings\.position_ids$)"
)
OFFICIAL_PREFIXES = (
    ("bert_encoder.model.bert.", "text.bert."),
    ("decoder_embed.", "decoder.embed."),
    ("decoder_blocks.", "decoder.blocks."),
    ("decoder_norm.", "decoder.norm."),
    ("decoder_pred.", "decoder.pred."),
    ("decoder_pos_embed", "decoder.pos_embed"),
    ("mask_token", "decoder.mask_token"),
    ("img_mlp.", "img_proj."),
    ("pos_weight_img.", "patch_weight."),
    ("Tpar", "inverse_temperature"),
    ("patch_embed.", "visual.patch_embed."),
    ("blocks.", "visual.blocks."),
    ("norm.", "visual.norm."),
    ("cls_token", "visual.cls_token"),
    ("pos_embed", "visual.pos_embed"),
)


@dataclass
class LoadReport:
    """What a load did with each tensor."""

    source: str
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def names(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8})" if len(keys) > 8 else "")

        lines = [f"{self.source}: {len(self.loaded)} tensors loaded"]
        if self.ignored:
            lines.append(f"  ignored {len(self.ignored)}: {names(self.ignored)}")
        if self.missing:
            lines.append(f"  missing {len(self.missing)} (left at initialisation): {names(self.missing)}")
        return "\n".join(lines)


def clean_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DDP's ``module.`` and torch.compile's ``_orig_mod.`` prefixes."""
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in state_dict.items()}


def is_official_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    return "Tpar" in state_dict or any(k.startswith("bert_encoder.model.bert.") for k in state_dict)


def convert_official_state_dict(state_dict: dict[str, torch.Tensor]
                                ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official MaCo names -> this package's names. Returns (converted, ignored keys)."""
    converted, ignored = {}, []
    for key, value in clean_state_dict(state_dict).items():
        if OFFICIAL_UNUSED.match(key):
            ignored.append(key)
            continue
        for old, new in OFFICIAL_PREFIXES:
            if key.startswith(old):
                converted[new + key[len(old):]] = value
                break
        else:
            ignored.append(key)
    return converted, ignored


def _count(state_dict: dict[str, torch.Tensor], pattern: str) -> int:
    indices = {int(m.group(1)) for k in state_dict if (m := re.match(pattern, k))}
    return max(indices) + 1 if indices else 0


def infer_config(state_dict: dict[str, torch.Tensor], *, text_heads: int | None = None,
                 vision_heads: int | None = None, decoder_heads: int | None = None) -> MacoConfig:
    """Every size of a converted MaCo state dict from its tensor shapes.

    Head counts are not recorded in tensors; defaults follow the released model (ViT-B/16 with
    64-dim heads, decoder 768 with 6 heads = 128-dim heads, BERT with 64-dim heads).
    """
    try:
        proj = state_dict["visual.patch_embed.proj.weight"]
        vision_dim, patch = proj.shape[0], proj.shape[-1]
        grid = int(round((state_dict["visual.pos_embed"].shape[1] - 1) ** 0.5))
        decoder_dim = state_dict["decoder.embed.weight"].shape[0]
        pred_out = state_dict["decoder.pred.weight"].shape[0]
        words = state_dict["text.bert.embeddings.word_embeddings.weight"]
        positions = state_dict["text.bert.embeddings.position_embeddings.weight"]
        intermediate = state_dict["text.bert.encoder.layer.0.intermediate.dense.weight"].shape[0]
    except KeyError as err:
        raise CheckpointError(f"checkpoint lacks tensor {err.args[0]!r}; is it a MaCo checkpoint?") from err
    super_resolution = pred_out == (2 * patch) ** 2 * 3
    if not super_resolution and pred_out != patch**2 * 3:
        raise CheckpointError(f"decoder.pred has {pred_out} outputs; expected {(2 * patch) ** 2 * 3} "
                              f"(super-resolution) or {patch**2 * 3} (plain) for patch {patch}")
    text_dim = words.shape[1]
    mlp_hidden = state_dict["visual.blocks.0.mlp.fc1.weight"].shape[0]
    return MacoConfig(
        vision=VisionConfig(img_size=grid * patch, patch_size=patch, embed_dim=vision_dim,
                            depth=_count(state_dict, r"visual\.blocks\.(\d+)\."),
                            num_heads=vision_heads or max(1, vision_dim // 64),
                            mlp_ratio=mlp_hidden / vision_dim),
        decoder=DecoderConfig(embed_dim=decoder_dim, depth=_count(state_dict, r"decoder\.blocks\.(\d+)\."),
                              num_heads=decoder_heads or max(1, decoder_dim // 128),
                              mlp_ratio=state_dict["decoder.blocks.0.mlp.fc1.weight"].shape[0] / decoder_dim),
        text=TextConfig(vocab_size=words.shape[0], hidden_size=text_dim,
                        num_layers=_count(state_dict, r"text\.bert\.encoder\.layer\.(\d+)\."),
                        num_heads=text_heads or max(1, text_dim // 64), intermediate_size=intermediate,
                        max_length=positions.shape[0]),
        super_resolution=super_resolution,
        temperature=1.0 / float(state_dict["inverse_temperature"]) if "inverse_temperature" in state_dict
        else 0.03,
    )


def _load_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str,
               ignored: list[str], strict: bool) -> LoadReport:
    own = model.state_dict()
    report = LoadReport(source=source, ignored=list(ignored))
    usable = {}
    for key, value in state_dict.items():
        if key not in own:
            report.ignored.append(key)
        elif own[key].shape != value.shape:
            report.ignored.append(f"{key} (shape {tuple(value.shape)} != {tuple(own[key].shape)})")
        else:
            usable[key] = value
    report.loaded = sorted(usable)
    report.missing = sorted(k for k in own if k not in usable and not _is_optional_buffer(k))
    if strict and report.missing:
        raise CheckpointError(f"{source}: missing tensors {report.missing[:10]}; the checkpoint does not "
                              "match this model (pass strict=False to load anyway)")
    model.load_state_dict(usable, strict=False)
    logger.debug(report.summary())
    return report


def _is_optional_buffer(key: str) -> bool:
    return key.endswith(("position_ids", "token_type_ids"))


def _read_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint "
                              f"(weights_only=True): {err}") from err
    if isinstance(payload, dict):
        for key in ("model", "state_dict", "module"):
            if key in payload and isinstance(payload[key], dict):
                return payload[key]
        if all(isinstance(v, torch.Tensor) for v in payload.values()):
            return payload
    raise CheckpointError(f"{path}: no state dict found (looked for 'model', 'state_dict', 'module')")


def create_model(config: MacoConfig, tokenizer: ReportTokenizer | None = None) -> MacoModel:
    """A new (randomly initialised) model of ``config`` with its tokenizer: ``tokenizer``, else
    the file ``config.text.tokenizer``, else the official vocabulary."""
    return MacoModel(config, tokenizer or ReportTokenizer.from_file(config.text.tokenizer, config.text.max_length))


def load_official(path: str | Path, *, text_heads: int | None = None, vision_heads: int | None = None,
                  decoder_heads: int | None = None, tokenizer: ReportTokenizer | None = None,
                  strict: bool = True) -> tuple[MacoModel, LoadReport]:
    """Build a model from an official ``maco.pth`` (``{"model": state_dict, ...}``)."""
    path = Path(path)
    raw = _read_torch_checkpoint(path)
    if not is_official_state_dict(raw):
        raise CheckpointError(f"{path}: not an official MaCo checkpoint (no 'Tpar' or 'bert_encoder.*' keys)")
    converted, ignored = convert_official_state_dict(raw)
    config = infer_config(converted, text_heads=text_heads, vision_heads=vision_heads,
                          decoder_heads=decoder_heads)
    model = create_model(config, tokenizer)
    report = _load_into(model, converted, str(path), ignored, strict)
    return model.eval(), report


def save_pretrained(model: MacoModel, directory: str | Path, extra_config: dict[str, Any] | None = None) -> Path:
    """Write the package format (``model.safetensors``, ``config.json``, ``tokenizer.json``)
    atomically: a kill leaves the old directory or the new one, never half of one."""
    with atomic_directory(directory) as tmp:
        state = {k: v.detach().contiguous().cpu() for k, v in clean_state_dict(model.state_dict()).items()
                 if not _is_optional_buffer(k)}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        config = {
            "format_version": FORMAT_VERSION,
            "model": config_to_dict(model.config),
            "preprocessing": {
                "input_size": model.config.vision.img_size,
                "pretrain_input_size": model.config.input_size,
                "channels": 3,
                "mean": model.config.image_mean,
                "std": model.config.image_std,
                "pixel_input": "uint8 grey, normalised as (x/255 - mean)/std, replicated to 3 channels",
            },
            **(extra_config or {}),
        }
        config["model"]["text"]["tokenizer"] = None
        write_json(tmp / CONFIG_NAME, config)
        model.tokenizer.save(tmp / TOKENIZER_NAME)
    return Path(directory)


def load_pretrained(directory: str | Path, strict: bool = True) -> tuple[MacoModel, LoadReport]:
    """Load the package format written by :func:`save_pretrained`."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{directory / CONFIG_NAME}: cannot read the model config: {err}") from err
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{directory}: format version {meta['format_version']} is newer than this "
                              f"maco-cxr understands ({FORMAT_VERSION}); upgrade maco-cxr")
    try:
        config = from_dict(MacoConfig, meta["model"])
    except (ConfigError, KeyError) as err:
        raise CheckpointError(f"{directory / CONFIG_NAME}: the model config cannot be read: {err}") from err
    tokenizer_path = directory / TOKENIZER_NAME
    tokenizer = ReportTokenizer.from_file(tokenizer_path if tokenizer_path.is_file() else None,
                                          config.text.max_length)
    model = MacoModel(config, tokenizer)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights}: weights file missing")
    state = load_file(str(weights))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if strict and unexpected:
        raise CheckpointError(f"{weights}: unexpected tensors {unexpected[:10]} (pass strict=False to ignore)")
    report = _load_into(model, state, str(weights), [], strict)
    return model.eval(), report


def load(path_or_dir: str | Path, text_heads: int | None = None, *, vision_heads: int | None = None,
         decoder_heads: int | None = None, strict: bool = True, map_location: str | torch.device = "cpu"
         ) -> MacoModel:
    """Load a MaCo model from this package's directory format or an official ``maco.pth``.

    Sizes are read from the files; the official checkpoint does not record head counts, so
    ``text_heads`` (and for non-standard widths ``vision_heads``/``decoder_heads``) may be given.
    The model is returned in eval mode.
    """
    path = Path(path_or_dir)
    if path.is_dir():
        model, _ = load_pretrained(path, strict=strict)
    elif path.is_file() and path.suffix == ".safetensors":
        model, _ = load_pretrained(path.parent, strict=strict)
    elif path.is_file():
        model, _ = load_official(path, text_heads=text_heads, vision_heads=vision_heads,
                                 decoder_heads=decoder_heads, strict=strict)
    else:
        raise CheckpointError(f"{path}: no such file or directory; give a model directory (config.json + "
                              "model.safetensors) or an official maco.pth")
    return model.to(map_location)


def load_mae_weights(model: MacoModel, path: str | Path) -> LoadReport:
    """Initialise the image encoder (and the decoder where shapes agree) from MAE weights
    (``{"model": {timm keys}}``), non-strictly, returning what was loaded and ignored."""
    state = clean_state_dict(_read_torch_checkpoint(Path(path)))
    renamed = {}
    for key, value in state.items():
        for old, new in OFFICIAL_PREFIXES:
            if key.startswith(old) and not new.startswith(("text.", "img_proj", "patch_weight", "inverse")):
                renamed[new + key[len(old):]] = value
                break
        else:
            renamed[key] = value
    report = _load_into(model, renamed, str(path), [], strict=False)
    report.missing = [k for k in report.missing if k.startswith("visual.")]
    return report
