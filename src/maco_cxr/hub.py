"""Saving and loading models: this package's format and the official MaCo / MAE checkpoints.

Format: a directory with ``model.safetensors``, ``config.json`` (the model config plus the
preprocessing contract) and ``tokenizer.json``. Foreign weights are converted by pure
``state_dict -> state_dict`` functions that recognise the source by its keys, and every load
reports what was loaded, ignored and missing.

Official checkpoints do not record attention-head counts. :data:`KNOWN_CHECKPOINTS` recognises
the released ones by the shapes of their tensors and supplies the head counts; for any other
official-format file the assumed counts are announced with a :class:`HeadCountWarning`.
``load(..., sha256=HEX)`` checks a file's digest before reading it.

Named checkpoints (:data:`NAMED_CHECKPOINTS`: ``maco-base``, ``mae-vit-base``, the test fixture
``official-maco-tiny``) record where their authors publish them, their licence terms and how a
copy is verified: by its SHA-256 where one is known, else by the shape signature of its
:data:`KNOWN_CHECKPOINTS` entry (no digest is ever invented). ``load("maco-base")`` resolves one
through the download cache (:mod:`maco_cxr.cache`), converting it once to this package's format.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from maco_cxr._atomic import atomic_directory, write_json
from maco_cxr.cache import (
    NAMED_CHECKPOINTS,
    OFFLINE_VARIABLES,
    NamedCheckpoint,
    cache_dir,
    download,
    is_offline,
    named_checkpoint,
)
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
    known_checkpoint: str | None = None  # name of the KNOWN_CHECKPOINTS entry the file matched

    def summary(self) -> str:
        def names(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8})" if len(keys) > 8 else "")

        lines = [f"{self.source}: {len(self.loaded)} tensors loaded"]
        if self.known_checkpoint:
            lines.append(f"  recognised as {self.known_checkpoint} (head counts from the known-checkpoint registry)")
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


def convert_official_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official MaCo names -> this package's names. Returns (converted, ignored keys)."""
    converted, ignored = {}, []
    for key, value in clean_state_dict(state_dict).items():
        if OFFICIAL_UNUSED.match(key):
            ignored.append(key)
            continue
        for old, new in OFFICIAL_PREFIXES:
            if key.startswith(old):
                converted[new + key[len(old) :]] = value
                break
        else:
            ignored.append(key)
    return converted, ignored


def _count(state_dict: dict[str, torch.Tensor], pattern: str) -> int:
    indices = {int(m.group(1)) for k in state_dict if (m := re.match(pattern, k))}
    return max(indices) + 1 if indices else 0


def infer_config(
    state_dict: dict[str, torch.Tensor],
    *,
    text_heads: int | None = None,
    vision_heads: int | None = None,
    decoder_heads: int | None = None,
) -> MacoConfig:
    """Every size of a converted MaCo state dict from its tensor shapes.

    Head counts are not recorded in tensors; those not given default to 64-dim ViT and BERT heads
    and 128-dim decoder heads (:func:`load_official` first consults :data:`KNOWN_CHECKPOINTS`).
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
        raise CheckpointError(
            f"decoder.pred has {pred_out} outputs; expected {(2 * patch) ** 2 * 3} "
            f"(super-resolution) or {patch**2 * 3} (plain) for patch {patch}"
        )
    text_dim = words.shape[1]
    mlp_hidden = state_dict["visual.blocks.0.mlp.fc1.weight"].shape[0]
    return MacoConfig(
        vision=VisionConfig(
            img_size=grid * patch,
            patch_size=patch,
            embed_dim=vision_dim,
            depth=_count(state_dict, r"visual\.blocks\.(\d+)\."),
            num_heads=vision_heads or max(1, vision_dim // 64),
            mlp_ratio=mlp_hidden / vision_dim,
        ),
        decoder=DecoderConfig(
            embed_dim=decoder_dim,
            depth=_count(state_dict, r"decoder\.blocks\.(\d+)\."),
            num_heads=decoder_heads or max(1, decoder_dim // 128),
            mlp_ratio=state_dict["decoder.blocks.0.mlp.fc1.weight"].shape[0] / decoder_dim,
        ),
        text=TextConfig(
            vocab_size=words.shape[0],
            hidden_size=text_dim,
            num_layers=_count(state_dict, r"text\.bert\.encoder\.layer\.(\d+)\."),
            num_heads=text_heads or max(1, text_dim // 64),
            intermediate_size=intermediate,
            max_length=positions.shape[0],
        ),
        super_resolution=super_resolution,
        temperature=1.0 / float(state_dict["inverse_temperature"]) if "inverse_temperature" in state_dict else 0.03,
    )


# ------------------------------------------------------------------------ known checkpoints


class HeadCountWarning(UserWarning):
    """Head counts of an official checkpoint were assumed (the file is not a known checkpoint and
    the caller gave none), or contradict the known checkpoint it is (see :func:`load_official`)."""


@dataclass(frozen=True)
class CheckpointSignature:
    """The sizes that tell MaCo checkpoints apart, read off the tensor shapes of a converted state
    dict (:func:`checkpoint_signature`). ``text_intermediate`` None in a registry entry = any."""

    vision_width: int
    vision_depth: int
    patch_size: int
    grid_size: int
    text_width: int
    text_layers: int
    vocab_size: int
    max_positions: int
    decoder_width: int
    decoder_depth: int
    pred_outputs: int
    text_intermediate: int | None = None

    def matches(self, other: CheckpointSignature) -> bool:
        """Whether ``other`` (a file's signature) has this entry's sizes (None fields match anything)."""
        return all(
            mine is None or mine == theirs for mine, theirs in zip(self.__dict__.values(), other.__dict__.values())
        )


@dataclass(frozen=True)
class KnownCheckpoint:
    """A checkpoint recognised by its shapes, with the head counts its file does not record."""

    name: str
    description: str
    signature: CheckpointSignature
    vision_heads: int
    text_heads: int
    decoder_heads: int
    training_data: str

    @property
    def heads(self) -> dict[str, int]:
        return {"vision_heads": self.vision_heads, "text_heads": self.text_heads, "decoder_heads": self.decoder_heads}


# Sources (github:SZUHvern/MaCo, commit 7f64d95):
# - ViT-B/16: `maco()` in model_MaCo.py (and ZeroShot/model_MaCo.py, `Phrase Grounding.py`) builds
#   patch_size=16, embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=768, decoder_depth=4,
#   decoder_num_heads=6, mlp_ratio=4; `MaCo.__init__` defaults img_size=224 (grid 14).
# - pred outputs 3072 = (2 * 16)^2 * 3: the README's pre-training command passes --SR 1, for which
#   `decoder_pred = nn.Linear(decoder_embed_dim, (patch_size * 2)**2 * in_chans)`.
# - BERT: `BertConfig` in bert/bert_encoder.py and ZeroShot/bert/bert_encoder.py (and their
#   compiled bert/__pycache__/bert_encoder.cpython-38.pyc, same constants) sets vocab_size=30000,
#   num_hidden_layers=6, num_attention_heads=6, max_position_embeddings=100 (and hidden_size=384,
#   intermediate_size=1536). mimic_wordpiece.json has 30,000 tokens.
# - BERT width 768, not the 384 of that BertConfig: `img_mlp = nn.Linear(embed_dim, 768)` is
#   contrasted with the BERT pooler output (model_MaCo.py `forward`), and zero-shot allocates
#   768-wide text embeddings (ZeroShot/model_MaCo.py `set_cls_feature`). The released source
#   therefore is not the configuration the checkpoint was trained with in at least the width; the
#   text head count 6 is the only one the repository states (768 / 6 = 128-dim heads) and is
#   not verified against the released weights. The FFN width is read from the tensors (None).
KNOWN_CHECKPOINTS: tuple[KnownCheckpoint, ...] = (
    KnownCheckpoint(
        name="maco-official",
        description="the released MaCo maco.pth (Huang et al., Nature Communications 2024): ViT-B/16 at "
        "224 px, BERT 768 x 6 layers, MAE decoder 768 x 4 predicting 32x32 patches of the 448 px image",
        signature=CheckpointSignature(
            vision_width=768,
            vision_depth=12,
            patch_size=16,
            grid_size=14,
            text_width=768,
            text_layers=6,
            vocab_size=30000,
            max_positions=100,
            decoder_width=768,
            decoder_depth=4,
            pred_outputs=3072,
        ),
        vision_heads=12,
        text_heads=6,
        decoder_heads=6,
        training_data="MIMIC-CXR v2 image-report pairs (official MaCo pre-training, Huang et al. 2024)",
    ),
    KnownCheckpoint(
        # tests/assets/official-maco-tiny: fixture.json "config" (num_heads 4, text_heads 2,
        # decoder_num_heads 2; widths 64, depths 2 / 2 / 1, FFN 256, vocab 30000, 100 positions).
        name="official-maco-tiny",
        description="the tiny random-weight test fixture saved by the official MaCo code",
        signature=CheckpointSignature(
            vision_width=64,
            vision_depth=2,
            patch_size=16,
            grid_size=14,
            text_width=64,
            text_layers=2,
            vocab_size=30000,
            max_positions=100,
            decoder_width=64,
            decoder_depth=1,
            pred_outputs=3072,
            text_intermediate=256,
        ),
        vision_heads=4,
        text_heads=2,
        decoder_heads=2,
        training_data="none: random weights (a test fixture)",
    ),
)


def _by_hand(entry: NamedCheckpoint, path: Path) -> str:
    where = f"download {entry.url}" if entry.url else f"copy {entry.source}"
    return f"to provide it by hand, {where} and put it at {path} ({entry.verified_by})"


def verify_named_file(entry: NamedCheckpoint, path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is ``entry``'s file (digest, else shapes)."""
    if entry.sha256 is not None:
        verify_sha256(path, entry.sha256)
        return
    raw = _read_torch_checkpoint(path)
    if entry.kind == "mae-init":
        blocks = _count(raw, r"blocks\.(\d+)\.")
        patch = raw.get("patch_embed.proj.weight")
        if patch is None or tuple(patch.shape) != (768, 3, 16, 16) or blocks != 12:
            shape = None if patch is None else tuple(patch.shape)
            raise CheckpointError(
                f"{path}: not {entry.name} (patch_embed.proj.weight {shape}, {blocks} blocks; expected "
                "(768, 3, 16, 16) and 12)"
            )
        return
    if not is_official_state_dict(raw):
        raise CheckpointError(f"{path}: not {entry.name}: no official MaCo keys ('Tpar', 'bert_encoder.*')")
    known = identify_checkpoint(convert_official_state_dict(raw)[0])
    if known is None or known.name != entry.known_checkpoint:
        found = "an unknown MaCo checkpoint" if known is None else known.name
        raise CheckpointError(f"{path}: not {entry.name}: its tensor shapes are those of {found}")


def checkpoint_file(name: str, *, url: str | None = None, progress: bool = True) -> Path:
    """The named checkpoint's file in the cache (``<cache>/<name>/<file>``), verified; downloaded
    when absent (from ``url`` when given, else the authors' link), unless offline."""
    entry = named_checkpoint(name)
    path = cache_dir() / entry.name / entry.file_name
    if path.is_file():
        try:
            verify_named_file(entry, path)
        except CheckpointError as err:
            raise CheckpointError(f"{err}; remove {path} and download it again, or {_by_hand(entry, path)}") from err
        return path
    source = url or entry.url
    if is_offline():
        raise CheckpointError(
            f"{name} is not in the cache and downloads are off ({' or '.join(OFFLINE_VARIABLES)} is set); "
            + _by_hand(entry, path)
        )
    if source is None:
        raise CheckpointError(f"{name} has no download link; {_by_hand(entry, path)}")
    try:
        download(source, path, verify=lambda part: verify_named_file(entry, part), progress=progress)
    except CheckpointError as err:
        raise CheckpointError(f"{name}: {err}; {_by_hand(entry, path)}") from err
    return path


def named_model_dir(name: str, *, url: str | None = None, progress: bool = True) -> Path:
    """The named MaCo checkpoint converted to this package's format (``<cache>/<name>/model``),
    converted once from :func:`checkpoint_file`; its ``config.json`` records the provenance."""
    entry = named_checkpoint(name)
    if entry.kind != "maco":
        raise CheckpointError(
            f"{name} is {entry.description}, not a MaCo model: pre-train from it with runtime.init_mae={name}"
        )
    folder = cache_dir() / entry.name / "model"
    if (folder / WEIGHTS_NAME).is_file():
        return folder
    file = checkpoint_file(name, url=url, progress=progress)
    model, _ = load_official(file)
    provenance = {"name": entry.name, "source": entry.source, "url": entry.url, "licence": entry.licence}
    save_pretrained(model, folder, extra_config={"checkpoint": {**provenance, "file_sha256": file_sha256(file)}})
    return folder


HF_HUB_PREFIX = "hf-hub:"


def hf_hub_folder(spec: str) -> Path:
    """The local snapshot of ``hf-hub:ORG/NAME[@REVISION]`` (a model or fine-tuned folder pushed
    with :func:`push_to_hub`), read through the Hugging Face Hub client's own cache: offline
    (``HF_HUB_OFFLINE``/``MACO_CXR_OFFLINE``) only from it."""
    repo, _, revision = spec.removeprefix(HF_HUB_PREFIX).partition("@")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise CheckpointError(f"{spec!r}: expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise CheckpointError(
            f"{spec}: the Hugging Face Hub needs huggingface_hub: pip install 'maco-cxr[hub]'"
        ) from err
    try:
        return Path(snapshot_download(repo_id=repo, revision=revision or None, local_files_only=is_offline()))
    except Exception as err:  # the hub client raises many types (offline, 404, auth, network)
        offline = " (offline: only the hub client's cache is read; download it once online)" if is_offline() else ""
        raise CheckpointError(f"{spec}: {type(err).__name__}: {err}{offline}") from err


def resolve_model_path(model: str | Path) -> Path:
    """``model`` as a path: itself when it exists (a local folder wins over a name), the snapshot
    of an ``hf-hub:ORG/NAME[@REV]`` spec, else the cached, converted folder of the named
    checkpoint it names (:func:`named_model_dir`)."""
    path = Path(model)
    if str(model).startswith(HF_HUB_PREFIX):
        return hf_hub_folder(str(model))
    if not path.exists() and str(model) in NAMED_CHECKPOINTS:
        return named_model_dir(str(model))
    return path


def checkpoint_signature(state_dict: dict[str, torch.Tensor]) -> CheckpointSignature:
    """The sizes of a converted MaCo state dict (this package's names)."""
    config = infer_config(state_dict)
    return CheckpointSignature(
        vision_width=config.vision.embed_dim,
        vision_depth=config.vision.depth,
        patch_size=config.vision.patch_size,
        grid_size=config.vision.grid_size,
        text_width=config.text.hidden_size,
        text_layers=config.text.num_layers,
        vocab_size=config.text.vocab_size,
        max_positions=config.text.max_length,
        decoder_width=config.decoder.embed_dim,
        decoder_depth=config.decoder.depth,
        pred_outputs=state_dict["decoder.pred.weight"].shape[0],
        text_intermediate=config.text.intermediate_size,
    )


def identify_checkpoint(state_dict: dict[str, torch.Tensor]) -> KnownCheckpoint | None:
    """The :data:`KNOWN_CHECKPOINTS` entry whose signature a converted state dict has, else None."""
    signature = checkpoint_signature(state_dict)
    return next((known for known in KNOWN_CHECKPOINTS if known.signature.matches(signature)), None)


def _resolve_heads(
    state_dict: dict[str, torch.Tensor], source: str, given: dict[str, int | None]
) -> tuple[dict[str, int | None], KnownCheckpoint | None]:
    """Head counts for :func:`infer_config`: the caller's, else the registry's; warns when a given
    count contradicts a recognised checkpoint or when counts must be assumed."""
    known = identify_checkpoint(state_dict)
    if known is not None:
        for name, value in given.items():
            if value is not None and value != known.heads[name]:
                warnings.warn(
                    f"{source}: recognised as {known.name}, whose {name} is {known.heads[name]}; "
                    f"using the {name}={value} you passed",
                    HeadCountWarning,
                    stacklevel=4,
                )
        return {name: known.heads[name] if value is None else value for name, value in given.items()}, known
    missing = [name for name, value in given.items() if value is None]
    if missing:
        defaults = infer_config(state_dict)
        assumed = {
            "vision_heads": defaults.vision.num_heads,
            "text_heads": defaults.text.num_heads,
            "decoder_heads": defaults.decoder.num_heads,
        }
        signature = checkpoint_signature(state_dict)
        warnings.warn(
            f"{source}: not a known checkpoint (ViT {signature.vision_width}x{signature.vision_depth}, BERT "
            f"{signature.text_width}x{signature.text_layers}, decoder {signature.decoder_width}x"
            f"{signature.decoder_depth}); its file does not record attention-head counts, so these were "
            f"assumed: {', '.join(f'{name}={assumed[name]}' for name in missing)} (64-dim ViT and BERT heads, "
            "128-dim decoder heads). Wrong head counts give wrong outputs without an error: pass the real "
            f"ones ({', '.join(f'{name}=N' for name in missing)} in Python; "
            f"{' '.join('--' + name.replace('_', '-') + ' N' for name in missing)} on the command line).",
            HeadCountWarning,
            stacklevel=4,
        )
    return given, None


# ------------------------------------------------------------------------ file digests


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file, read in ``chunk_size`` chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(chunk_size):
                digest.update(chunk)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read to check its SHA-256: {err}") from err
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str | None = None) -> str:
    """The file's SHA-256 hex digest; raises :class:`CheckpointError` (naming the file and both
    digests) when ``expected`` is given and differs."""
    if expected is not None:
        wanted = expected.strip().lower().removeprefix("sha256:")
        if not re.fullmatch(r"[0-9a-f]{64}", wanted):
            raise CheckpointError(f"{expected!r} is not a SHA-256 digest (64 hexadecimal characters)")
    actual = file_sha256(path)
    if expected is not None and actual != wanted:
        raise CheckpointError(
            f"{path}: SHA-256 mismatch: expected {wanted}, got {actual}; the file is "
            "damaged, incomplete or another checkpoint (download it again, or check the "
            "digest you passed)"
        )
    return actual


def _load_into(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str, ignored: list[str], strict: bool
) -> LoadReport:
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
        raise CheckpointError(
            f"{source}: missing tensors {report.missing[:10]}; the checkpoint does not "
            "match this model (pass strict=False to load anyway)"
        )
    model.load_state_dict(usable, strict=False)
    logger.debug(report.summary())
    return report


def _is_optional_buffer(key: str) -> bool:
    return key.endswith(("position_ids", "token_type_ids"))


def _read_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint (weights_only=True): {err}") from err
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


SIDECAR_KEYS = ("vision_heads", "text_heads", "decoder_heads")


def read_sidecar(checkpoint: Path) -> dict[str, int]:
    """The head counts a user states once in a sidecar beside an official file (``maco.json``
    next to ``maco.pth``: ``{"text_heads": 6, ...}``); ``{}`` when there is none. Arguments
    given to :func:`load_official` win over it; unknown keys and non-integers are errors."""
    sidecar = checkpoint.with_suffix(".json")
    if not sidecar.is_file():
        return {}
    try:
        stated = json.loads(sidecar.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{sidecar}: cannot read the sidecar of {checkpoint.name} ({err})") from err
    if not isinstance(stated, dict):
        raise ConfigError(f'{sidecar}: expected an object of head counts, e.g. {{"text_heads": 6}}')
    for key, value in stated.items():
        if key not in SIDECAR_KEYS:
            near = difflib.get_close_matches(key, SIDECAR_KEYS, n=1)
            hint = f"did you mean {near[0]}? " if near else ""
            raise ConfigError(f"{sidecar}: unknown key {key!r}; {hint}valid keys: {', '.join(SIDECAR_KEYS)}")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{sidecar}: {key} must be a positive integer, got {value!r}")
    return stated


def load_official(
    path: str | Path,
    *,
    text_heads: int | None = None,
    vision_heads: int | None = None,
    decoder_heads: int | None = None,
    tokenizer: ReportTokenizer | None = None,
    strict: bool = True,
    sha256: str | None = None,
) -> tuple[MacoModel, LoadReport]:
    """Build a model from an official ``maco.pth`` (``{"model": state_dict, ...}``).

    Head counts are not stored in the file. Each one not given is taken from a sidecar beside
    the file (:func:`read_sidecar`: ``maco.json`` next to ``maco.pth``), else from the
    :data:`KNOWN_CHECKPOINTS` entry the tensor shapes match; a given one always wins (warning
    when it contradicts the entry). For an unrecognised file the counts not given are assumed
    (64-dim ViT/BERT heads, 128-dim decoder heads) and a :class:`HeadCountWarning` says
    which. ``sha256``: the expected hex digest of the file, checked before it is read.
    """
    path = Path(path)
    if sha256 is not None:
        verify_sha256(path, sha256)
    raw = _read_torch_checkpoint(path)
    if not is_official_state_dict(raw):
        raise CheckpointError(f"{path}: not an official MaCo checkpoint (no 'Tpar' or 'bert_encoder.*' keys)")
    converted, ignored = convert_official_state_dict(raw)
    given = {"vision_heads": vision_heads, "text_heads": text_heads, "decoder_heads": decoder_heads}
    stated = read_sidecar(path)
    given = {k: v if v is not None else stated.get(k) for k, v in given.items()}
    heads, known = _resolve_heads(converted, str(path), given)
    config = infer_config(converted, **heads)
    model = create_model(config, tokenizer)
    report = _load_into(model, converted, str(path), ignored, strict)
    if known is not None:
        report.known_checkpoint = known.name
        logger.info("%s: recognised as %s (%s)", path, known.name, known.description)
    return model.eval(), report


def save_pretrained(model: MacoModel, directory: str | Path, extra_config: dict[str, Any] | None = None) -> Path:
    """Write the package format (``model.safetensors``, ``config.json``, ``tokenizer.json``)
    atomically: a kill leaves the old directory or the new one, never half of one."""
    with atomic_directory(directory, "model") as tmp:
        state = {
            k: v.detach().contiguous().cpu()
            for k, v in clean_state_dict(model.state_dict()).items()
            if not _is_optional_buffer(k)
        }
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
        raise CheckpointError(
            f"{directory}: format version {meta['format_version']} is newer than this "
            f"maco-cxr understands ({FORMAT_VERSION}); upgrade maco-cxr"
        )
    try:
        config = from_dict(MacoConfig, meta["model"])
    except (ConfigError, KeyError) as err:
        raise CheckpointError(f"{directory / CONFIG_NAME}: the model config cannot be read: {err}") from err
    tokenizer_path = directory / TOKENIZER_NAME
    tokenizer = ReportTokenizer.from_file(tokenizer_path if tokenizer_path.is_file() else None, config.text.max_length)
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


def load(
    path_or_dir: str | Path,
    text_heads: int | None = None,
    *,
    vision_heads: int | None = None,
    decoder_heads: int | None = None,
    strict: bool = True,
    map_location: str | torch.device = "cpu",
    sha256: str | None = None,
) -> MacoModel:
    """Load a MaCo model from this package's directory format or an official ``maco.pth``.

    Sizes are read from the files. The official checkpoint does not record head counts: known
    checkpoints get theirs from :data:`KNOWN_CHECKPOINTS`; for others pass ``text_heads``,
    ``vision_heads`` and ``decoder_heads`` (else they are assumed, with a warning; see
    :func:`load_official`). ``sha256``: expected hex digest of the file (of ``model.safetensors``
    for a directory), checked before loading. The model is returned in eval mode.
    """
    path = resolve_model_path(path_or_dir)
    if path.is_dir():
        if sha256 is not None:
            verify_sha256(path / WEIGHTS_NAME, sha256)
        model, _ = load_pretrained(path, strict=strict)
    elif path.is_file() and path.suffix == ".safetensors":
        if sha256 is not None:
            verify_sha256(path, sha256)
        model, _ = load_pretrained(path.parent, strict=strict)
    elif path.is_file():
        model, _ = load_official(
            path,
            text_heads=text_heads,
            vision_heads=vision_heads,
            decoder_heads=decoder_heads,
            strict=strict,
            sha256=sha256,
        )
    else:
        near = difflib.get_close_matches(str(path_or_dir), list(NAMED_CHECKPOINTS), n=1)
        hint = f" (did you mean the named checkpoint {near[0]!r}?)" if near else ""
        raise CheckpointError(
            f"{path}: no such file or directory{hint}; give a model directory (config.json + "
            f"model.safetensors), an official maco.pth, or a named checkpoint ({', '.join(NAMED_CHECKPOINTS)})"
        )
    return model.to(map_location)


def load_mae_weights(model: MacoModel, path: str | Path) -> LoadReport:
    """Initialise the image encoder (and the decoder where shapes agree) from MAE weights
    (``{"model": {timm keys}}``, a file or the named checkpoint ``mae-vit-base``), non-strictly,
    returning what was loaded and ignored."""
    if not Path(path).exists() and str(path) in NAMED_CHECKPOINTS:
        path = checkpoint_file(str(path))
    state = clean_state_dict(_read_torch_checkpoint(Path(path)))
    renamed = {}
    for key, value in state.items():
        for old, new in OFFICIAL_PREFIXES:
            if key.startswith(old) and not new.startswith(("text.", "img_proj", "patch_weight", "inverse")):
                renamed[new + key[len(old) :]] = value
                break
        else:
            renamed[key] = value
    report = _load_into(model, renamed, str(path), [], strict=False)
    report.missing = [k for k in report.missing if k.startswith("visual.")]
    return report
