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
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, NamedTuple, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from maco_cxr._atomic import write_text
from maco_cxr.errors import ConfigError

__all__ = [
    "Override",
    "apply_overrides",
    "config_to_dict",
    "from_dict",
    "load_config",
    "parse_overrides",
    "require",
    "save_config",
]

T = TypeVar("T")

_NULLS = ("null", "none", "~", "")


class _Loader(yaml.SafeLoader):
    """YAML with the 1.2 core schema's scalars: only ``true``/``false`` are bools (YAML 1.1 also
    reads ``yes``, ``no``, ``on``, ``off`` as bools, which would let ``flag: yes`` through) and
    ``1e-4`` is a float (YAML 1.1 wants a dot)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|[-+]\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


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
    names = {bool: "true or false", int: "an integer", float: "a number", str: "text", NoneType: "null",
             dict: "a mapping"}
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
            value = float(value) if kind is float else (int(value) if value.strip().lstrip("+-").isdigit()
                                                         else float(value))
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


def _unknown_key(key: str, name: str, known: Iterable[str], prefix: str) -> ConfigError:
    known = sorted(set(known))
    near = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    suggestion = f"did you mean {prefix}{near[0]}? " if near else ""
    return ConfigError(f"unknown key; {suggestion}valid keys here: {', '.join(prefix + k for k in known)}",
                       key=key)


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
    Errors carry the dotted key (``prefix`` + field)."""
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
            raise _unknown_key(key, str(name), [*known, *getattr(kind, _RESET_KEYS, ())], prefix)
        current = getattr(base, name) if base is not None else _section_default(known[name])
        if is_dataclass(current) and not isinstance(current, type):
            if not isinstance(value, Mapping):
                raise ConfigError(f"is a section; set its keys (e.g. {key}.<name>=...) or give a mapping, "
                                  f"not {value!r}", key=key)
            values[name] = from_dict(type(current), value, prefix=f"{key}.", base=current)
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
                raise _unknown_key(key, name, [*known, *base_keys], walked).from_source(override.source)
            if name in base_keys:
                if leaf:
                    node.clear()  # choosing a preset starts the section from it
            else:
                default = _section_default(known[name])
                child_kind = type(default) if is_dataclass(default) else None
                if leaf and child_kind is not None:
                    if not isinstance(override.value, Mapping):
                        raise ConfigError(f"is a section; set one of its keys, e.g. {key}.<name>=...", key=key,
                                          source=override.source)
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
            raise ConfigError(f"{walked + name!r} holds a value, not a section", key=override.key,
                              source=override.source)
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


def load_config(kind: type[T], path: str | Path | None = None,
                overrides: Sequence[str | Override] | Mapping[str, Any] = ()) -> T:
    """Config ``kind`` from a YAML/JSON file (the defaults when ``path`` is None) plus overrides.

    ``overrides``: ``"a.b=value"`` strings (from the command line), :class:`Override` items,
    or a mapping of dotted keys to values. They are applied to the file's tree in order, then
    the whole tree is built and validated once.
    """
    tree: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError("config file not found", source=str(path)) from None
        except yaml.YAMLError as err:
            raise ConfigError(f"not valid YAML/JSON: {err}", source=str(path)) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("expected a mapping of sections to keys at the top level", source=str(path))
        tree = copy.deepcopy(loaded or {})
        sources = _leaf_sources(tree, str(path))
    for override in _as_overrides(overrides, "command line"):
        _set_path(tree, kind, override)
        sources[override.key] = override.source
    return _build(kind, tree, sources)


def apply_overrides(config: T, overrides: Sequence[str | Override] | Mapping[str, Any],
                    source: str = "override") -> T:
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
