"""The one config grammar of maco-cxr: YAML files and ``key=value`` overrides into dataclasses.

Every configurable thing (the model, pre-training, each fine-tuning task) is a tree of
dataclasses: a field whose type is a dataclass is a *section*, any other field a *value*.
This module turns nested mappings (a YAML file) plus dotted overrides (``optim.lr=1e-4``,
from the command line or Python) into such a tree, with one set of rules everywhere:

- a value takes its field's type from the type hint: ``1e-4`` (text to YAML 1.1) becomes a
  float, ``10`` a float where a float is asked, ``1e4`` an int where an int is asked (when
  whole), lists become tuples, ``null``/``none`` become None where None is allowed. A bool
  field takes only ``true``/``false``: ``yes``, ``1`` or ``1.5`` are errors. ``Literal``
  fields take one of their choices;
- a section given in a file or an override is merged on top of that field's default (a file
  sets only what differs); a section class may name a base to start from
  (``MacoConfig``'s ``preset`` key, see :func:`from_dict`);
- an unknown key is an error that names it, the nearest valid key and where it came from
  (the file, or the command line); so is a wrong type (naming the expected type);
- all overrides are applied first and the tree is validated once, so coupled keys (a width
  and its head count) can change together. Range checks live in each dataclass's
  ``__post_init__`` (via :func:`require`) and name the field.

Why hand-written rather than OmegaConf/pydantic/dacite: the configs are plain dataclasses
that checkpoints store and tests build directly; OmegaConf's structured configs reject
``Literal`` and non-Optional unions and return its own container types, pydantic's lax mode
accepts ``"yes"`` for a bool and its strict mode rejects YAML's ``"1e-4"`` floats, and
dacite has no override syntax. The rules above are ~250 lines.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import inspect
import json
import operator
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields, is_dataclass
from importlib.resources import files
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, NamedTuple, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from maco_cxr._atomic import write_text
from maco_cxr.errors import ConfigError

__all__ = [
    "RECIPE_FOLDERS",
    "Override",
    "apply_overrides",
    "coerce_arguments",
    "config_to_dict",
    "from_dict",
    "load_config",
    "parse_options",
    "parse_overrides",
    "read_yaml",
    "recipe_folder",
    "recipe_names",
    "require",
    "resolve_recipe",
    "save_config",
]

T = TypeVar("T")

_NULLS = ("null", "none", "~", "")


class _Loader(yaml.SafeLoader):
    """YAML with the 1.2 core schema's scalars: only ``true``/``false`` are bools (YAML 1.1 also
    reads ``yes``, ``no``, ``on``, ``off`` as bools, which would let ``flag: yes`` through) and
    ``1e-4`` is a float (YAML 1.1 wants a dot)."""


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|[-+]\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML (or JSON) text with the scalar rules above."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


_RESET_KEYS = "CONFIG_BASE_KEYS"  # class attribute: keys that pick the section's starting point


class Override(NamedTuple):
    """One ``key=value`` setting and where it came from (for error messages)."""

    key: str
    value: Any
    source: str = "command line"


def require(condition: bool, key: str, message: str) -> None:
    """Raise :class:`ConfigError` for ``key`` (relative to its dataclass) unless ``condition``."""
    if not condition:
        raise ConfigError(message, key=key)


def require_at_least(section: Any, **minimums: int | float) -> None:
    """``require(getattr(section, name) >= low)`` for every ``name=low`` of a dataclass section;
    None passes where the field's type allows it (and the message then says "or null")."""
    nullable = {f.name for f in fields(section) if "None" in str(f.type)}
    for name, low in minimums.items():
        value = getattr(section, name)
        require(value is None or value >= low, name, f"must be >= {low}" + (" or null" if name in nullable else ""))


# ----------------------------------------------------------------------------- values


def _describe(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return f"a list of {len(args)} values"
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "text",
        NoneType: "null",
        dict: "a mapping",
    }
    return names.get(origin or hint, getattr(hint, "__name__", str(hint)))


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` as the type ``hint`` asks for, or a :class:`ConfigError` naming ``key``."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, UnionType):
        if NoneType in args and (value is None or (isinstance(value, str) and value.strip().lower() in _NULLS)):
            return None
        for option in args:
            if option is NoneType:
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{value!r} is not {_describe(hint)}", key=key)
    if origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return choice
        near = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint_text = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(f"{value!r} is not {_describe(hint)}{hint_text}", key=key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"expected true or false, got {value!r}", key=key)
    if hint in (int, float):
        return _number(value, hint, key)
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"expected text, got {value!r}", key=key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected {_describe(hint)}, got {value!r}", key=key)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"expected {_describe(hint)}, got {len(value)}: {list(value)}", key=key)
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a mapping, got {value!r}", key=key)
        return dict(value)
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"expected {_describe(hint)}, got {value!r}", key=key)


def _number(value: Any, kind: type, key: str) -> int | float:
    if isinstance(value, bool):
        raise ConfigError(f"expected {_describe(kind)}, got {value!r}", key=key)
    if isinstance(value, str):
        try:
            value = (
                float(value)
                if kind is float
                else (int(value) if value.strip().lstrip("+-").isdigit() else float(value))
            )
        except ValueError:
            raise ConfigError(f"{value!r} is not {_describe(kind)}", key=key) from None
    if kind is float and isinstance(value, (int, float)):
        return float(value)
    if kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    raise ConfigError(f"{value!r} is not {_describe(kind)}", key=key)


# ----------------------------------------------------------------------------- sections


@functools.cache
def _config_keys(kind: type) -> tuple[str, ...]:
    """Every dotted key of the config class ``kind``: its values, its sections and their keys,
    and the keys a section starts from (``model.preset``)."""
    keys: list[str] = [*getattr(kind, _RESET_KEYS, ())]
    for item in fields(kind):
        if not item.init:
            continue
        keys.append(item.name)
        default = _section_default(item)
        if is_dataclass(default) and not isinstance(default, type):
            keys += [f"{item.name}.{sub}" for sub in _config_keys(type(default))]
    return tuple(keys)


def _closest(word: str, choices: Sequence[str]) -> str:
    return difflib.get_close_matches(word, choices, n=1, cutoff=0.0)[0]


def _similarity(word: str, other: str) -> float:
    return difflib.SequenceMatcher(None, word, other).ratio()


def _nearest_key(key: str, name: str, known: Sequence[str], prefix: str, everywhere: Sequence[str]) -> str | None:
    """The valid key a mistyped ``key`` (``name`` in the section ``prefix``) most likely meant.

    Searched in every section (``everywhere``: all dotted keys, with the same base as ``key``),
    because a key is often put in the wrong section: first the same name in another section
    (``runtime.batch_size`` -> ``optim.batch_size``), then a section name run into the key
    (``runtime.eval_every`` -> ``evaluation.every``), then the nearest name in this section
    (``optim.lrr`` -> ``optim.lr``) unless a name elsewhere is much nearer
    (``runtime.warmup_step`` -> ``optim.warmup_steps``)."""
    elsewhere = [k for k in everywhere if not (k.startswith(prefix) and "." not in k[len(prefix) :])]
    same_name = [k for k in elsewhere if k.rsplit(".", 1)[-1] == name]
    if same_name:
        return _closest(key, same_name)
    run_in = []
    for candidate in elsewhere:
        section, _, leaf = candidate.rpartition(".")
        head = name[: -len(leaf) - 1] if name.endswith(f"_{leaf}") else ""
        if section and head and section.rsplit(".", 1)[-1].startswith(head):
            run_in.append(candidate)
    if run_in:
        return _closest(key, run_in)
    score = functools.partial(_similarity, name)
    here = max(known, key=score, default=None)
    leaves = {k.rsplit(".", 1)[-1]: k for k in reversed(elsewhere)}
    there = max(leaves, key=score, default=None)
    if there is not None and score(there) >= 0.75 and (here is None or score(there) > score(here) + 0.1):
        return leaves[there]
    return prefix + here if here is not None and score(here) >= 0.5 else None


def _unknown_key(key: str, name: str, known: Iterable[str], prefix: str, everywhere: Sequence[str] = ()) -> ConfigError:
    known = sorted(set(known))
    near = _nearest_key(key, name, known, prefix, everywhere)
    suggestion = f"did you mean {near}? " if near else ""
    return ConfigError(f"unknown key; {suggestion}valid keys here: {', '.join(prefix + k for k in known)}", key=key)


def _section_default(item: dataclasses.Field) -> Any:
    if item.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return item.default_factory()  # type: ignore[misc]
    if item.default is not dataclasses.MISSING:
        return copy.deepcopy(item.default)
    return None


def from_dict(kind: type[T], data: Mapping[str, Any], *, prefix: str = "", base: Any = None) -> T:
    """Build dataclass ``kind`` from a nested mapping, on top of ``base`` (an instance) or the
    field defaults. A class may define ``config_base(data) -> (instance | None, rest)``
    (a classmethod) to choose its starting point from special keys listed in its
    ``CONFIG_BASE_KEYS`` (``MacoConfig`` starts from ``preset(data["preset"])``).
    Errors carry the dotted key (``prefix`` + field); an unknown key's nearest valid key is
    searched in every section of ``kind``."""
    return _from_dict(kind, data, prefix, base, [prefix + k for k in _config_keys(kind)])


def _from_dict(kind: type[T], data: Mapping[str, Any], prefix: str, base: Any, everywhere: Sequence[str]) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping of keys to values, got {data!r}", key=prefix.rstrip(".") or None)
    if hasattr(kind, "config_base") and (base is None or any(k in data for k in getattr(kind, _RESET_KEYS, ()))):
        try:
            chosen, data = kind.config_base(dict(data))  # type: ignore[attr-defined]
        except ConfigError as err:
            raise err.within(prefix) from None
        base = chosen if chosen is not None else base
    hints = get_type_hints(kind)
    known = {item.name: item for item in fields(kind) if item.init}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in known:
            raise _unknown_key(key, str(name), [*known, *getattr(kind, _RESET_KEYS, ())], prefix, everywhere)
        current = getattr(base, name) if base is not None else _section_default(known[name])
        if is_dataclass(current) and not isinstance(current, type):
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"is a section; set its keys (e.g. {key}.<name>=...) or give a mapping, not {value!r}", key=key
                )
            values[name] = _from_dict(type(current), value, f"{key}.", current, everywhere)
        else:
            values[name] = _coerce(value, hints[name], key)
    if base is not None:
        for name in known:
            values.setdefault(name, copy.deepcopy(getattr(base, name)))
    try:
        return kind(**values)
    except ConfigError as err:
        raise err.within(prefix) from None


def config_to_dict(config: Any) -> Any:
    """Plain nested dict of a config (tuples as lists), which :func:`from_dict` reads back."""
    if is_dataclass(config) and not isinstance(config, type):
        return {item.name: config_to_dict(getattr(config, item.name)) for item in fields(config) if item.init}
    if isinstance(config, Mapping):
        return {k: config_to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    return config


# ----------------------------------------------------------------------------- overrides


def parse_overrides(texts: Iterable[str], source: str = "command line") -> list[Override]:
    """``a.b=value`` strings -> :class:`Override` (value parsed as YAML; empty -> None)."""
    parsed = []
    for text in texts:
        if "=" not in text:
            raise ConfigError(f"{text!r} is not of the form key=value (e.g. optim.lr=1e-4)", source=source)
        key, raw = (part.strip() for part in text.split("=", 1))
        try:
            value = yaml_load(raw) if raw else None
        except yaml.YAMLError as err:
            raise ConfigError(f"cannot parse {raw!r}: {err}", key=key, source=source) from None
        parsed.append(Override(key, value, f"{source} ({text})"))
    return parsed


def _as_overrides(overrides: Sequence[str | Override] | Mapping[str, Any], source: str) -> list[Override]:
    if isinstance(overrides, Mapping):
        return [Override(k, v, source) for k, v in overrides.items()]
    return [o if isinstance(o, Override) else parse_overrides([o], source)[0] for o in overrides]


def _set_path(tree: dict[str, Any], kind: type, override: Override) -> None:
    """Set ``override`` in the raw ``tree`` of dataclass ``kind``; unknown keys raise."""
    names = override.key.split(".")
    node, node_kind, walked = tree, kind, ""
    for depth, name in enumerate(names):
        leaf = depth == len(names) - 1
        key = walked + name
        child_kind = None
        if node_kind is not None:
            base_keys = getattr(node_kind, _RESET_KEYS, ())
            known = {item.name: item for item in fields(node_kind) if item.init}
            if name not in known and name not in base_keys:
                raise _unknown_key(key, name, [*known, *base_keys], walked, _config_keys(kind)).from_source(
                    override.source
                )
            if name in base_keys:
                if leaf:
                    node.clear()  # choosing a preset starts the section from it
            else:
                default = _section_default(known[name])
                child_kind = type(default) if is_dataclass(default) else None
                if leaf and child_kind is not None:
                    if not isinstance(override.value, Mapping):
                        raise ConfigError(
                            f"is a section; set one of its keys, e.g. {key}.<name>=...", key=key, source=override.source
                        )
                    for sub, value in override.value.items():  # a mapping merges into the section
                        _set_path(tree, kind, Override(f"{key}.{sub}", value, override.source))
                    return
        if leaf:
            node[name] = override.value
            return
        child = node.get(name)
        if child is None:
            child = node[name] = {}
        if not isinstance(child, dict):
            raise ConfigError(
                f"{walked + name!r} holds a value, not a section", key=override.key, source=override.source
            )
        node, node_kind, walked = child, child_kind, key + "."


def _source_of(key: str | None, sources: Mapping[str, str]) -> str | None:
    """Where ``key`` (or its closest set parent or child) got its value."""
    if key is None:
        return None
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        found = sources.get(".".join(parts[:end]))
        if found:
            return found
    below = [s for k, s in sources.items() if k.startswith(key + ".")]
    return below[0] if below else None


def _leaf_sources(tree: Mapping[str, Any], source: str, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        out[key] = source
        if isinstance(value, Mapping):
            out.update(_leaf_sources(value, source, key + "."))
    return out


def _build(kind: type[T], tree: dict[str, Any], sources: Mapping[str, str]) -> T:
    try:
        return from_dict(kind, tree)
    except ConfigError as err:
        raise err.from_source(_source_of(err.key, sources)) from None


def load_config(
    kind: type[T], path: str | Path | None = None, overrides: Sequence[str | Override] | Mapping[str, Any] = ()
) -> T:
    """Config ``kind`` from a YAML/JSON file (the defaults when ``path`` is None) plus overrides.

    ``overrides``: ``"a.b=value"`` strings (from the command line), :class:`Override` items,
    or a mapping of dotted keys to values. They are applied to the file's tree in order, then
    the whole tree is built and validated once.
    """
    tree: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path is not None:
        path = Path(path)
        loaded = read_yaml(path, "config file")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("expected a mapping of sections to keys at the top level", source=str(path))
        tree = copy.deepcopy(loaded or {})
        sources = _leaf_sources(tree, str(path))
    for override in _as_overrides(overrides, "command line"):
        _set_path(tree, kind, override)
        sources[override.key] = override.source
    return _build(kind, tree, sources)


def apply_overrides(config: T, overrides: Sequence[str | Override] | Mapping[str, Any], source: str = "override") -> T:
    """A copy of ``config`` with dotted overrides applied (all set first, validated once).

    Setting a key a section starts from (``model.preset``) starts that section afresh from it.
    """
    kind = type(config)
    tree = config_to_dict(config)
    sources: dict[str, str] = {}
    for override in _as_overrides(overrides, source):
        _set_path(tree, kind, override)
        sources[override.key] = override.source
    return _build(kind, tree, sources)


def save_config(config: Any, path: str | Path) -> Path:
    """Write ``config`` atomically as YAML (JSON when ``path`` ends in ``.json``)."""
    data = config_to_dict(config)
    path = Path(path)
    text = json.dumps(data, indent=2) + "\n" if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
    return write_text(path, text)


# ----------------------------------------------------------------------------- files and adapter options


def read_yaml(path: str | Path, what: str = "file") -> Any:
    """The YAML/JSON file at ``path`` parsed with the scalar rules above. Configs, recipes and
    prompt files are read here (other YAML text goes through :func:`yaml_load`), so ``yes``
    means the same everywhere. Errors name the file; ``what`` says which kind of file it is."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} not found", source=str(path)) from None
    except OSError as err:
        raise ConfigError(f"cannot read the {what}: {err}", source=str(path)) from None
    try:
        return yaml_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML/JSON: {err}", source=str(path)) from None


def parse_options(texts: Iterable[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings of a command-line ``flag`` (``-o``, ``--dataset-arg``) as a mapping,
    each value read as an override is (``yes`` stays text, ``1e-4`` is a number)."""
    options: dict[str, Any] = {}
    for text in texts:
        key, sep, _ = text.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"{text!r} is not of the form KEY=VALUE (e.g. annotations=ms_cxr.csv)", source=flag)
        override = parse_overrides([text], flag)[0]
        options[override.key] = override.value
    return options


def _argument_hint(hint: Any) -> Any:
    """The part of a parameter's type this grammar reads text into (None: none of it).

    ``Literal`` choices are left to the function (its own message names them); paths are text;
    sequences are lists."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any or hint in (bool, int, float, str, NoneType, dict):
        return hint
    if origin is Literal:
        return functools.reduce(operator.or_, dict.fromkeys(type(choice) for choice in args))
    if origin in (Union, UnionType):
        kept = [part for part in map(_argument_hint, args) if part is not None]
        return functools.reduce(operator.or_, kept) if kept else None
    if origin is os.PathLike or (isinstance(hint, type) and issubclass(hint, os.PathLike)):
        return str
    if origin is tuple:
        parts = [a if a is Ellipsis else _argument_hint(a) for a in args]
        return None if not parts or None in parts else tuple[tuple(parts)]
    if origin in (list, Sequence) or hint is list:
        item = _argument_hint(args[0]) if args else Any
        return None if item is None else tuple[item, ...]
    if origin in (dict, Mapping):
        return dict
    return None


def coerce_arguments(
    function: Callable[..., Any], values: Mapping[str, Any], *, given: Iterable[str] = (), source: str | None = None
) -> dict[str, Any]:
    """``values`` as keyword arguments of ``function`` (a dataset adapter class), by the rules of
    a config value: text and numbers take the parameter's type (a bool only ``true``/``false``),
    a list stays a list; an unknown name is an error naming the nearest parameter (``given``:
    parameters the caller passes itself, not valid here). None and other Python objects (paths,
    arrays, callables) pass as given."""
    parameters = inspect.signature(function).parameters
    hints = get_type_hints(function.__init__ if isinstance(function, type) else function)
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    known = [
        name
        for name, p in parameters.items()
        if name not in set(given)
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name not in known and not open_ended:
            raise _unknown_key(name, name, known, "").from_source(source)
        hint = _argument_hint(hints.get(name, Any))
        if value is None or hint is None or not isinstance(value, (str, int, float, list, tuple, dict)):
            out[name] = value
            continue
        try:
            coerced = _coerce(value, hint, name)
        except ConfigError as err:
            raise err.from_source(source) from None
        out[name] = list(coerced) if isinstance(value, list) and isinstance(coerced, tuple) else coerced
    return out


# ----------------------------------------------------------------------------- shipped recipes

RECIPE_FOLDERS = ("pretrain", "finetune", "segment", "detect")
"""The subfolders of ``maco_cxr/recipes``: one per command that takes ``--config``."""

_RECIPE_SUFFIXES = (".yaml", ".yml", ".json")


def recipe_folder(root: str | Path | None = None) -> Path:
    """The folder of recipes: ``root`` (a folder with the same subfolders) or the one shipped as
    package data (``maco_cxr/recipes``), which an installed wheel holds too."""
    if root is None:
        return Path(os.fspath(files("maco_cxr") / "recipes"))
    path = Path(root)
    if not path.is_dir():
        raise ConfigError(f"not a folder of recipes (subfolders {', '.join(RECIPE_FOLDERS)})", source=str(path))
    return path


def _recipes(root: str | Path | None) -> dict[str, Path]:
    return {
        f"{p.parent.name}/{p.stem}": p
        for p in sorted(recipe_folder(root).glob("*/*"))
        if p.suffix in _RECIPE_SUFFIXES and p.is_file()
    }


def recipe_names(folder: str | None = None, *, root: str | Path | None = None) -> list[str]:
    """The recipe names (``finetune/nih_1``, ...), all or those of one ``folder``."""
    return [name for name in _recipes(root) if folder is None or name.startswith(f"{folder}/")]


def resolve_recipe(name: str | os.PathLike[str], folder: str | None = None, *, root: str | Path | None = None) -> Path:
    """The config file that ``--config NAME`` (and every shipped default) means.

    In order: an existing file path; a recipe named with its folder (``segment/siim_10``, or
    the old checkout path ``configs/segment/siim_10.yaml``); a bare name (``siim_10``,
    ``base-paper``) among the recipes of ``folder`` (the command's: one of
    :data:`RECIPE_FOLDERS`), or of every folder when ``folder`` is None and one holds it.
    ``root``: a folder of recipes to use instead of the shipped one. Anything else is an error
    listing the nearest names, so a typo never reaches the config loader as a missing file.
    """
    path = Path(name)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError("is a folder; give a config file or a recipe name", source=str(path))
    recipes = _recipes(root)
    parts = list((path.with_suffix("") if path.suffix in _RECIPE_SUFFIXES else path).parts)
    if parts[:1] in (["configs"], ["recipes"]):
        parts = parts[1:]
    wanted = "/".join(parts)
    if wanted in recipes:
        return recipes[wanted]
    scope = [n for n in recipes if folder is None or n.startswith(f"{folder}/")]
    matches = [n for n in scope if n.split("/", 1)[1] == wanted]
    if len(matches) == 1:
        return recipes[matches[0]]
    if matches:
        raise ConfigError(
            f"recipe {wanted!r} is in several folders ({', '.join(matches)}); name one, e.g. --config {matches[0]}"
        )
    stems = [n.split("/", 1)[1] for n in scope]
    elsewhere = [n for n in recipes if n.split("/", 1)[1] == parts[-1] and n != wanted] if parts else []
    close = difflib.get_close_matches(wanted, [*stems, *recipes], n=3, cutoff=0.5)
    near = [n for n in dict.fromkeys([*elsewhere, *close]) if not (n in scope and n.split("/", 1)[1] in close)][:3]
    suggestion = f"did you mean {' or '.join(near)}? " if near else ""
    listed = ", ".join(stems) if folder else ", ".join(scope)
    kind = f"{folder} recipe" if folder else "recipe"
    raise ConfigError(
        f"{str(name)!r} is neither a config file nor a shipped {kind} name; {suggestion}shipped {kind}s: {listed}"
    )
