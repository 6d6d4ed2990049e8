"""What GLoRIA and MGCA share: their Bio_ClinicalBERT text tower and their report cleaning.

MGCA's text code (github.com/HKU-MedAI/MGCA, commit 680fe4a) is GLoRIA's (github.com/marshuang80/gloria, commit
416466a) adapted, so the two families read reports the same way:

- cleaning (GLoRIA ``gloria/models/gloria_model.py`` ``process_text`` lines 165-198; MGCA
  ``mgca/datasets/pretrain_dataset.py`` lines 81-114): newlines to spaces, split on numbered points
  (``[0-9]+\\.``) and on ".", each piece lower-cased and cut into ``\\w+`` runs (nltk's ``RegexpTokenizer``),
  pieces of one word or none dropped, non-ASCII characters dropped, the pieces joined by spaces;
- word pieces merged into words by summing their states (GLoRIA ``gloria/models/text_model.py``
  ``aggregate_tokens`` lines 32-90; MGCA ``mgca/models/backbones/encoder.py`` lines 307-376): a word is a token
  not starting with ``##`` plus the ``##`` tokens after it; the list stops at ``[SEP]`` and is zero-padded back
  to the tokenised length.

The towers are built with transformers' :class:`~transformers.BertModel` sized from the tensors.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

from maco_cxr.errors import CheckpointError, ConfigError
from maco_cxr.families._checkpoint import count, load_strict, tensor

__all__ = [
    "TOKENIZER_FILES",
    "build_bert",
    "clean_report",
    "lightning_state",
    "merge_word_pieces",
    "tokenise",
    "tokenizer",
]

TOKENIZER_FILES = "vocab.txt (with tokenizer_config.json, special_tokens_map.json)"
_POINTS = re.compile(r"[0-9]+\.")
_WORDS = re.compile(r"\w+", re.UNICODE | re.MULTILINE | re.DOTALL)


def clean_report(text: str) -> str:
    """Their report cleaning (module docstring); a report of one-word pieces only becomes ""."""
    pieces = [piece for point in _POINTS.split(text.replace("\n", " ")) for piece in point.split(".")]
    kept = []
    for piece in pieces:
        words = _WORDS.findall(piece.replace("\ufffd\ufffd", " ").lower())
        if len(words) <= 1:
            continue
        ascii_words = [w.encode("ascii", "ignore").decode("ascii") for w in words]
        ascii_words = [w for w in ascii_words if w]
        if ascii_words:
            kept.append(" ".join(ascii_words))
    return " ".join(kept)


def merge_word_pieces(states: torch.Tensor, ids: torch.Tensor, vocab: dict[int, str]) -> tuple[torch.Tensor, list]:
    """``[B, L, ...]`` token states -> word states ``[B, L, ...]`` (zero-padded) and each text's words."""
    out, sentences = torch.zeros_like(states), []
    for b in range(states.shape[0]):
        words: list[str] = []
        row = 0
        bank: list[torch.Tensor] = []
        pieces: list[str] = []
        for position, token_id in enumerate(ids[b].tolist()):
            token = vocab[token_id]
            if token == "[SEP]":
                out[b, row] = torch.stack(bank).sum(0)
                words.append("".join(pieces))
                out[b, row + 1] = states[b, position]
                words.append(token)
                break
            if token.startswith("##"):
                bank.append(states[b, position])
                pieces.append(token[2:])
                continue
            if bank:
                out[b, row] = torch.stack(bank).sum(0)
                words.append("".join(pieces))
                row += 1
            bank, pieces = [states[b, position]], [token]
        sentences.append(words + ["[PAD]"] * (states.shape[1] - len(words)))
    return out, sentences


def tokenizer(folder: str | Path | None, family: str) -> BertTokenizerFast:
    """The Bio_ClinicalBERT tokenizer files the authors load (``emilyalsentzer/Bio_ClinicalBERT``), offline."""
    if folder is None or not (Path(folder) / "vocab.txt").is_file():
        raise ConfigError(
            f"the {family} family needs the Bio_ClinicalBERT tokenizer files ({TOKENIZER_FILES}) of Hugging Face "
            f"emilyalsentzer/Bio_ClinicalBERT; {'none was given' if folder is None else f'{folder} has no vocab.txt'}"
            ": pass tokenizer=FOLDER"
        )
    return BertTokenizerFast.from_pretrained(str(folder), local_files_only=True)


def build_bert(state: dict[str, torch.Tensor], prefix: str, path: Path, family: str) -> BertModel:
    """A BertModel from the tensors under ``prefix``, loaded strictly.

    Heads are not in the tensors: Bio_ClinicalBERT's rule hidden // 64 (12 for 768). A pooler is built when
    its tensors are there (GLoRIA's ``AutoModel``) and left out otherwise (MGCA's ``add_pooling_layer=False``).
    A missing token-type table (MGCA's BLIP ``med.py`` embeddings have none) becomes one zero row, which adds
    nothing, as theirs does. The ``position_ids`` buffer old transformers saved is not a weight and is skipped.
    """
    own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    own.pop("embeddings.position_ids", None)
    words = tensor(own, "embeddings.word_embeddings.weight", path, family)
    hidden = words.shape[1]
    if "embeddings.token_type_embeddings.weight" not in own:
        own["embeddings.token_type_embeddings.weight"] = torch.zeros(1, hidden)
    config = BertConfig(
        vocab_size=words.shape[0],
        hidden_size=hidden,
        num_hidden_layers=count(own, "encoder.layer.{}.attention.self.query.weight"),
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=tensor(own, "encoder.layer.0.intermediate.dense.weight", path, family).shape[0],
        max_position_embeddings=tensor(own, "embeddings.position_embeddings.weight", path, family).shape[0],
        type_vocab_size=own["embeddings.token_type_embeddings.weight"].shape[0],
        layer_norm_eps=1e-12,
        hidden_act="gelu",
        pad_token_id=0,
        attn_implementation="eager",
    )
    bert = BertModel(config, add_pooling_layer="pooler.dense.weight" in own)
    load_strict(bert, own, path, family)
    return bert.eval()


def tokenise(
    tokens: BertTokenizerFast, texts: Sequence[str], length: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Cleaned texts padded to ``length`` as the authors tokenise them (``padding="max_length"``, truncation)."""
    batch = tokens(
        [clean_report(t) for t in texts], padding="max_length", truncation=True, max_length=length, return_tensors="pt"
    )
    return {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")}


class _Opaque:
    """Stands in for any non-tensor class a Lightning checkpoint pickles (omegaconf's DictConfig hyper-parameters,
    callback states): built and filled without running any of that class's code."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.args = args

    def __setstate__(self, state: object) -> None:
        self.state = state

    def __setitem__(self, key: object, value: object) -> None:
        pass

    def append(self, value: object) -> None:
        pass

    def extend(self, values: object) -> None:
        pass


_TENSOR_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
}


class _TensorsOnly(pickle.Unpickler):
    """Unpickles tensors and plain containers; every other global becomes :class:`_Opaque` (never imported)."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _TENSOR_GLOBALS or (module == "builtins" and name in ("set", "frozenset", "slice")):
            return super().find_class(module, name)
        return _Opaque


_PICKLE = SimpleNamespace(Unpickler=_TensorsOnly, load=lambda f, **kw: _TensorsOnly(f, **kw).load(), __name__="pickle")


def lightning_state(path: Path, family: str) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a PyTorch Lightning ``.ckpt`` (a plain state dict is taken as it is).

    GLoRIA's checkpoints pickle their omegaconf ``DictConfig`` as ``hyper_parameters`` (Lightning 1.1 keeps a config
    object as it is), which ``weights_only`` loading refuses; such a file is re-read with an unpickler that builds
    tensors and containers only and stands a placeholder in for every other class, so no class of the file's runs
    and omegaconf is not needed. The hyper-parameters are not read: every size comes from the tensors.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; give a {family} checkpoint (.ckpt)")
    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            loaded = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PICKLE)
    except Exception as err:  # noqa: BLE001 - any reader failure is one answer: not a readable checkpoint
        raise CheckpointError(f"{path}: cannot read it as a {family} checkpoint (a Lightning .ckpt): {err}") from err
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: a {family} checkpoint is a Lightning .ckpt with a state_dict of tensors")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
