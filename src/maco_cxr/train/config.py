"""Pre-training configuration: one dataclass per concern, YAML files and ``key=value`` overrides.

The defaults are the paper recipe (PROTOCOLS.md section 1) except for the data, which must be
named. A file looks like::

    model: {preset: base, mask_ratio: 0.5}      # a preset, then any MacoConfig field
    data: {source: store, path: /data/mimic-448}
    optim: {lr: 2.5e-4, epochs: 51, warmup_epochs: 2, batch_size: 512, accum_steps: 2}
    augment: {flip_p: 0.5}
    runtime: {precision: bf16, output_dir: runs/maco-base}

Command-line overrides use dotted keys (``optim.lr=1e-4``, ``model.vision.depth=6``,
``model.preset=small``); an unknown key anywhere is a :class:`ConfigError` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from maco_cxr.config import MacoConfig, from_dict, preset, to_dict
from maco_cxr.errors import ConfigError

Source = Literal["manifest", "store", "synthetic"]
Precision = Literal["bf16", "fp32"]
OnError = Literal["raise", "skip"]
TextMode = Literal["sentences", "full"]


def _require(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{name}: {message}")


def _coerce(section: Any, prefix: str) -> None:
    """Give YAML/CLI values the field's type: ``1e-4`` (a string to YAML) -> float, ``null`` ->
    None where allowed, ``2020`` -> ``"2020"`` for text fields; a value that does not convert is
    a :class:`ConfigError` naming the key."""
    hints = get_type_hints(type(section))
    for item in fields(section):
        value = getattr(section, item.name)
        hint = hints[item.name]
        kinds = set(get_args(hint)) if get_origin(hint) in (Union, UnionType) else {hint}
        name = prefix + item.name
        if bool in kinds:
            if not isinstance(value, bool):
                raise ConfigError(f"{name}: expected true or false, got {value!r}")
            continue
        if not isinstance(value, str):
            if str in kinds and isinstance(value, (int, float)) and not kinds & {int, float}:
                setattr(section, item.name, str(value))
            elif float in kinds and isinstance(value, int):
                setattr(section, item.name, float(value))
            continue
        if type(None) in kinds and value.strip().lower() in ("null", "none", "~", ""):
            setattr(section, item.name, None)
            continue
        for kind, what in ((float, "a number"), (int, "an integer")):
            if kind in kinds:
                try:
                    setattr(section, item.name, kind(value))
                except ValueError:
                    raise ConfigError(f"{name}: {value!r} is not {what}") from None
                break


@dataclass
class DataConfig:
    """Where image-report pairs come from.

    ``source``: ``store`` (a folder written by ``maco-cxr prepare``, read by memory map; the
    fast path), ``manifest`` (any dataset kind of :func:`maco_cxr.data.datasets.build_dataset`,
    ``kind``, read and letterboxed on the fly) or ``synthetic`` (``synthetic_count`` phantoms
    written to ``path``, default ``<output_dir>/synthetic``, then read as a manifest).
    ``split``: keep only records of this split (None = all). ``on_error``: ``raise`` stops at a
    bad sample naming file and field; ``skip`` replaces it, counts it and lists it in
    ``<output_dir>/skipped.json``. ``sections``: report sections to keep before sentence
    sampling (``[findings, impression]`` for raw MIMIC-CXR reports; None = the text as given).
    ``text``: ``sentences`` = the official draw of a random 1..n of the shuffled sentences each
    time a report is seen; ``full`` = the whole report, sentences in order (the demo uses it:
    its short template reports lose the one sentence naming a finding to the draw too often).
    ``options``: extra keyword arguments of the dataset adapter.
    """

    source: Source = "store"
    path: str | None = None
    kind: str = "manifest"
    split: str | None = "train"
    on_error: OnError = "raise"
    workers: int = 4
    sections: tuple[str, ...] | None = None
    text: TextMode = "sentences"
    synthetic_count: int = 64
    synthetic_seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _coerce(self, "data.")
        _require(self.source in ("manifest", "store", "synthetic"), "data.source",
                 f"{self.source!r} is not one of manifest, store, synthetic")
        _require(self.on_error in ("raise", "skip"), "data.on_error",
                 f"{self.on_error!r} is not 'raise' or 'skip'")
        _require(self.workers >= 0, "data.workers", "must be >= 0")
        _require(self.text in ("sentences", "full"), "data.text", f"{self.text!r} is not 'sentences' or 'full'")
        _require(self.synthetic_count >= 1, "data.synthetic_count", "must be >= 1")
        if isinstance(self.sections, (list, str)):
            self.sections = (self.sections,) if isinstance(self.sections, str) else tuple(self.sections)
        if self.sections is not None:
            bad = [s for s in self.sections if s not in ("findings", "impression")]
            _require(bool(self.sections) and not bad, "data.sections",
                     f"{list(self.sections)} must be a non-empty list of findings, impression")
        _require(isinstance(self.options, dict), "data.options", "must be a mapping")


@dataclass
class OptimConfig:
    """AdamW with per-iteration linear warm-up then half-cycle cosine to 0.

    The schedule length is ``max_steps`` optimizer steps when set, else ``epochs`` passes over
    the data; the warm-up is ``warmup_steps`` when set, else ``warmup_epochs``. ``lr`` is
    absolute (not scaled by the batch). ``batch_size`` is per process and per micro-step; one
    optimizer step sees ``batch_size x processes x accum_steps`` samples, and the contrastive
    loss contrasts ``batch_size x processes`` pairs.
    """

    lr: float = 2.5e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    epochs: int = 51
    warmup_epochs: float = 2.0
    max_steps: int | None = None
    warmup_steps: int | None = None
    batch_size: int = 512
    accum_steps: int = 2
    clip_grad: float | None = None

    def __post_init__(self) -> None:
        _coerce(self, "optim.")
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        _require(self.lr > 0, "optim.lr", "must be > 0")
        _require(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
                 f"{list(self.betas)} must be two numbers in [0, 1)")
        _require(self.epochs >= 1, "optim.epochs", "must be >= 1")
        _require(self.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0")
        _require(self.max_steps is None or self.max_steps >= 1, "optim.max_steps", "must be >= 1")
        _require(self.warmup_steps is None or self.warmup_steps >= 0, "optim.warmup_steps",
                 "must be >= 0")
        _require(self.batch_size >= 1, "optim.batch_size", "must be >= 1")
        _require(self.accum_steps >= 1, "optim.accum_steps", "must be >= 1")
        _require(self.clip_grad is None or self.clip_grad > 0, "optim.clip_grad", "must be > 0 or null")


@dataclass
class AugmentSection:
    """On-device augmentation (the official recipe); ``enabled: false`` only normalises."""

    enabled: bool = True
    flip_p: float = 0.5
    degrees: float = 20.0
    scale: tuple[float, float] = (0.8, 1.2)

    def __post_init__(self) -> None:
        _coerce(self, "augment.")
        self.scale = tuple(self.scale)  # type: ignore[assignment]
        _require(0.0 <= self.flip_p <= 1.0, "augment.flip_p", "must be in [0, 1]")
        _require(self.degrees >= 0, "augment.degrees", "must be >= 0")
        _require(len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1], "augment.scale",
                 f"{list(self.scale)} must be [low, high] with 0 < low <= high")


@dataclass
class RuntimeConfig:
    """Devices, precision, logging, checkpoints and initialisation.

    ``device``: ``auto`` (the process's GPU under torchrun, else CPU), ``cpu`` or ``cuda``.
    ``precision``: ``bf16`` autocast on CUDA (fp32 on CPU either way). ``save_every`` and
    ``log_every`` count optimizer steps. ``resume``: ``auto`` continues from the newest complete
    checkpoint in ``output_dir`` (a fresh run when there is none), a path resumes from that
    checkpoint, null always starts afresh. ``stop_at_step`` ends the run early (after saving)
    without changing the schedule, for jobs split over time-limited allocations.
    ``init_mae``: MAE ViT weights for the image encoder (the paper starts from MAE ImageNet);
    ``init_from``: a MaCo model (package directory or official ``maco.pth``) to continue from.
    """

    device: str = "auto"
    precision: Precision = "bf16"
    compile: bool = False
    grad_checkpointing: bool = False
    seed: int = 0
    output_dir: str = "runs/pretrain"
    log_every: int = 10
    save_every: int = 1000
    keep_last: int = 3
    tensorboard: bool = False
    resume: str | None = "auto"
    stop_at_step: int | None = None
    init_mae: str | None = None
    init_from: str | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        _coerce(self, "runtime.")
        _require(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"), "runtime.device",
                 f"{self.device!r} is not auto, cpu, cuda or cuda:N")
        _require(self.precision in ("bf16", "fp32"), "runtime.precision",
                 f"{self.precision!r} is not bf16 or fp32")
        _require(self.seed >= 0, "runtime.seed", "must be >= 0")
        _require(self.log_every >= 1, "runtime.log_every", "must be >= 1")
        _require(self.save_every >= 1, "runtime.save_every", "must be >= 1")
        _require(self.keep_last >= 1, "runtime.keep_last", "must be >= 1")
        _require(self.stop_at_step is None or self.stop_at_step >= 1, "runtime.stop_at_step",
                 "must be >= 1 or null")


@dataclass
class PretrainConfig:
    """Everything a pre-training run needs; ``model`` is the resolved :class:`MacoConfig`."""

    model: MacoConfig = field(default_factory=MacoConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentSection = field(default_factory=AugmentSection)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


_SECTIONS: dict[str, type] = {"data": DataConfig, "optim": OptimConfig, "augment": AugmentSection,
                              "runtime": RuntimeConfig}


def _merge(base: dict[str, Any], values: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``values`` merged into a copy of ``base`` (nested dicts recurse); unknown keys raise."""
    merged = dict(base)
    for key, value in values.items():
        if key not in base:
            raise ConfigError(f"unknown config key {prefix + key!r}; valid keys here: "
                              f"{', '.join(prefix + k for k in sorted(base))}")
        if isinstance(base[key], dict) and isinstance(value, dict) and key != "options":
            merged[key] = _merge(base[key], value, f"{prefix}{key}.")
        else:
            merged[key] = _like(base[key], value, prefix + key)
    return merged


def _like(current: Any, value: Any, key: str) -> Any:
    """A numeric string as a number where the current value is one (YAML reads ``3e-2`` as text)."""
    if isinstance(value, str) and not isinstance(current, bool) and isinstance(current, (int, float)):
        what = "an integer" if isinstance(current, int) else "a number"
        try:
            return type(current)(value)
        except ValueError:
            raise ConfigError(f"{key}: {value!r} is not {what}") from None
    return value


def _set_path(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for name in parents:
        child = node.get(name)
        if child is None:
            child = node[name] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {name!r} is a value, not a section")
        node = child
    node[leaf] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``a.b=value`` strings -> (dotted key, YAML-parsed value)."""
    parsed = []
    for text in overrides:
        if "=" not in text:
            raise ConfigError(f"override {text!r} is not of the form key=value (e.g. optim.lr=1e-4)")
        key, raw = (part.strip() for part in text.split("=", 1))
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError as err:
            raise ConfigError(f"{key}: cannot parse {raw!r}: {err}") from err
        parsed.append((key, value))
    return parsed


def _model_config(values: dict[str, Any]) -> MacoConfig:
    values = dict(values)
    name = values.pop("preset", None)
    try:
        base = preset(str(name)) if name else MacoConfig()
        return from_dict(MacoConfig, _merge(to_dict(base), values, "model."))
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if "model." in message else f"model.{message}") from err


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> PretrainConfig:
    """Build a :class:`PretrainConfig` from a nested dict plus ``key=value`` overrides.

    ``model`` holds an optional ``preset`` (tiny, small, base; default base) and any
    :class:`MacoConfig` field on top of it. All overrides are merged before anything is
    validated, so changing two coupled keys (a width and its head count) works.
    """
    if not isinstance(data, dict):
        raise ConfigError("the pre-training config must be a mapping of sections to keys")
    tree = {name: dict(value) if isinstance(value, dict) else value for name, value in data.items()}
    for key, value in parse_overrides(list(overrides or [])):
        _set_path(tree, key, value)
    unknown = sorted(set(tree) - {"model", *_SECTIONS})
    if unknown:
        raise ConfigError(f"unknown config section(s) {unknown}; valid sections: model, "
                          f"{', '.join(_SECTIONS)}")
    sections: dict[str, Any] = {}
    for name in ("model", *_SECTIONS):
        values = tree.get(name) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{name}: expected a mapping of keys to values")
        sections[name] = (_model_config(values) if name == "model"
                          else from_dict(_SECTIONS[name], values, prefix=f"{name}."))
    return PretrainConfig(**sections)


def check_config(config: PretrainConfig) -> None:
    """Checks that involve several keys (run once all overrides are applied)."""
    data, runtime = config.data, config.runtime
    _require(data.source == "synthetic" or bool(data.path), "data.path",
             f"is required for data.source={data.source}; give the store, manifest or dataset root")
    _require(runtime.init_mae is None or runtime.init_from is None, "runtime.init_mae",
             "set runtime.init_mae or runtime.init_from, not both")


def load_pretrain_config(path: str | Path | None = None, overrides: list[str] | None = None
                         ) -> PretrainConfig:
    """Read a YAML file (or start from the defaults when ``path`` is None) and apply overrides."""
    data: Any = {}
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError as err:
            raise ConfigError(f"{path}: config file not found") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
    try:
        return config_from_dict(data, overrides)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path is not None else str(err)) from err


def config_to_dict(config: PretrainConfig) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) that :func:`config_from_dict` reads back."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(to_dict(config))


def save_pretrain_config(config: PretrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def replace(config: PretrainConfig, overrides: list[str] | None = None, **sections: dict[str, Any]
            ) -> PretrainConfig:
    """Copy with fields changed: ``replace(cfg, optim={"lr": 1e-4})`` or ``replace(cfg, ["optim.lr=1e-4"])``."""
    data = config_to_dict(config)
    for name, values in sections.items():
        if name not in data:
            raise ConfigError(f"unknown config section {name!r}")
        data[name] = _merge(data[name], values, f"{name}.")
    return config_from_dict(data, overrides)
