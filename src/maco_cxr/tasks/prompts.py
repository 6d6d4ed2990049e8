"""Zero-shot prompt sets: the official MaCo templates, named class sets, and user prompt files.

A class is scored against the mean embedding of its positive prompts and the mean embedding of
its negative prompts (see :mod:`maco_cxr.tasks.zeroshot`). Templates contain ``{c}``, replaced
by the class name lower-cased, exactly as the official ``ZeroShot/utils/prompts.py`` does.

Prompt files (YAML or JSON) take one of two shapes::

    # templates for every class
    pos: ["There is {c}. "]
    neg: ["the lung is clear.", "There is no {c}. ", "no {c}. ", "no evidence of {c}. "]

    # or prompts per class ({c} is allowed here too)
    Pneumothorax:
      pos: ["There is pneumothorax. "]
      neg: ["no pneumothorax. "]
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maco_cxr.config import from_dict, read_yaml, require
from maco_cxr.data.datasets.chexpert import CHEXPERT_5
from maco_cxr.data.datasets.nih import NIH_CLASSES
from maco_cxr.data.datasets.rsna import RSNA_CLASSES
from maco_cxr.data.datasets.siim import SIIM_CLASSES
from maco_cxr.errors import ConfigError

__all__ = [
    "CLASS_SETS",
    "DEFAULT_PROMPTS",
    "PROMPT_SETS",
    "SIIM_PROMPTS",
    "ClassPrompts",
    "PromptSpec",
    "PromptTemplates",
    "load_prompt_file",
    "resolve_prompts",
]

_CLASS_TOKEN = "{c}"
_KEYS = ("pos", "neg")


@dataclass(frozen=True)
class ClassPrompts:
    """The positive and negative prompt texts of one class (each non-empty)."""

    positive: tuple[str, ...]
    negative: tuple[str, ...]

    def __post_init__(self) -> None:
        for name, texts in (("positive", self.positive), ("negative", self.negative)):
            if not texts:
                raise ConfigError(f"ClassPrompts.{name}: give at least one prompt")
            if not all(isinstance(t, str) and t.strip() for t in texts):
                raise ConfigError(f"ClassPrompts.{name}: every prompt must be a non-empty string; got {list(texts)!r}")


@dataclass(frozen=True)
class PromptTemplates:
    """Templates applied to every class: ``{c}`` becomes the class name lower-cased."""

    positive: tuple[str, ...]
    negative: tuple[str, ...]

    def for_class(self, name: str) -> ClassPrompts:
        return ClassPrompts(_fill(self.positive, name), _fill(self.negative, name))


DEFAULT_PROMPTS = PromptTemplates(
    positive=("There is {c}. ",),
    negative=("the lung is clear.", "There is no {c}. ", "no {c}. ", "no evidence of {c}. "),
)
"""The official default set (``--text_prompt default``)."""

SIIM_PROMPTS = PromptTemplates(
    positive=(
        "Abnormal collection of air in the pleural space between the lung and the chest wall. ",
        "There is {c}. ",
    ),
    negative=(
        *DEFAULT_PROMPTS.negative,
        "The lung parenchyma is homogeneous, and the lung markings are normal and symmetrical. ",
    ),
)
"""The official SIIM-ACR set (``--text_prompt siim``)."""

PROMPT_SETS: dict[str, PromptTemplates] = {"default": DEFAULT_PROMPTS, "siim": SIIM_PROMPTS}

CLASS_SETS: dict[str, tuple[str, ...]] = {
    "nih": NIH_CLASSES,
    "chexpert": CHEXPERT_5,
    "rsna": RSNA_CLASSES,
    "siim": SIIM_CLASSES,
}
"""Class names of the official zero-shot evaluations, in the dataset adapters' label order."""

PromptSpec = None | str | os.PathLike | PromptTemplates | Mapping[str, Any]


def resolve_prompts(classes: Sequence[str], prompts: PromptSpec = None) -> dict[str, ClassPrompts]:
    """The prompts of each class, in the order of ``classes``.

    ``prompts``: None (the official default), a set name from :data:`PROMPT_SETS`, a prompt
    file path, :class:`PromptTemplates`, or a mapping in the prompt-file shape (which may also
    hold :class:`ClassPrompts` values).
    """
    if isinstance(classes, str) or not classes:
        raise ConfigError(f"classes: give a non-empty list of class names, got {classes!r}")
    empty = [i for i, name in enumerate(classes) if not isinstance(name, str) or not name.strip()]
    if empty:
        raise ConfigError(
            f"classes: class {empty[0]} ({classes[empty[0]]!r}) is empty; every class needs a "
            "name, e.g. 'Pneumothorax' (it is put into the prompts)"
        )
    duplicates = sorted({c for c in classes if list(classes).count(c) > 1})
    if duplicates:
        raise ConfigError(f"classes: {duplicates} appear more than once")
    if prompts is None:
        prompts = DEFAULT_PROMPTS
    if isinstance(prompts, str) and prompts in PROMPT_SETS:
        prompts = PROMPT_SETS[prompts]
    if isinstance(prompts, PromptTemplates):
        return {name: prompts.for_class(name) for name in classes}
    if isinstance(prompts, (str, os.PathLike)):
        path = Path(prompts)
        if not path.is_file():
            raise ConfigError(
                f"prompts: {str(prompts)!r} is neither a prompt set "
                f"({', '.join(PROMPT_SETS)}) nor an existing prompt file"
            )
        return _from_mapping(load_prompt_file(path), classes, str(path))
    if isinstance(prompts, Mapping):
        return _from_mapping(prompts, classes, "prompts")
    raise ConfigError(
        f"prompts: unsupported type {type(prompts).__name__}; give a set name, a "
        "file path, PromptTemplates or a mapping"
    )


def load_prompt_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML or JSON prompt file into a mapping (checked when resolved against classes),
    with the config grammar's scalars (:func:`maco_cxr.config.read_yaml`)."""
    path = Path(path)
    data = read_yaml(path, "prompt file")
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            "expected a mapping at the top level, either {pos: [...], neg: [...]} templates "
            "or {class: {pos: [...], neg: [...]}}",
            source=str(path),
        )
    return data


def _from_mapping(data: Mapping[str, Any], classes: Sequence[str], source: str) -> dict[str, ClassPrompts]:
    if any(key in data for key in _KEYS):  # templates for every class; any other key is a typo
        templates = _entry(data, source, "")
        return {
            name: ClassPrompts(_fill(templates.positive, name), _fill(templates.negative, name)) for name in classes
        }
    by_lower = {str(key).lower(): key for key in data}
    out: dict[str, ClassPrompts] = {}
    for name in classes:
        key = name if name in data else by_lower.get(name.lower())
        if key is None:
            near = difflib.get_close_matches(name, list(map(str, data)), n=1, cutoff=0.6)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(
                f"no prompts for class {name!r}; {hint}the file has classes {sorted(map(str, data))}", source=source
            )
        value = data[key]
        if isinstance(value, ClassPrompts):
            out[name] = value
            continue
        entry = _entry(value, source, f"{key}.")
        out[name] = ClassPrompts(_fill(entry.positive, name), _fill(entry.negative, name))
    return out


@dataclass
class _PromptEntry:
    """One ``{pos: [...], neg: [...]}`` entry of a prompt file, read by the config grammar (so a
    typo key is named with the nearest valid one, like in every other config)."""

    pos: tuple[str, ...] = ()
    neg: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key in _KEYS:
            texts = getattr(self, key)
            require(bool(texts), key, "is missing or empty; give a non-empty list of prompts")
            bad = [text for text in texts if not text.strip()]
            require(not bad, key, f"holds {bad!r}; every prompt must be a non-empty string")


def _entry(value: Any, source: str, prefix: str) -> PromptTemplates:
    """Validate one ``{pos: [...], neg: [...]}`` entry; errors name the file and key."""
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"must map to {{pos: [...], neg: [...]}}, got {type(value).__name__}",
            key=prefix.rstrip(".") or None,
            source=source,
        )
    items = {key: [texts] if isinstance(texts, str) else texts for key, texts in value.items()}
    try:
        entry = from_dict(_PromptEntry, items, prefix=prefix)
    except ConfigError as err:
        raise err.from_source(source) from None
    return PromptTemplates(entry.pos, entry.neg)


def _fill(templates: Sequence[str], name: str) -> tuple[str, ...]:
    return tuple(t.replace(_CLASS_TOKEN, name.lower()) for t in templates)
