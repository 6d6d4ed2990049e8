"""Pre-training configuration: one dataclass per concern, read with the one grammar of
:mod:`maco_cxr.config`.

The defaults are the paper recipe (``docs/protocols.md`` section 1) except for the data,
which must be named. A file looks like::

    model: {preset: base, mask_ratio: 0.5}      # a preset, then any MacoConfig field
    data: {source: store, path: /data/mimic-448}
    optim: {lr: 2.5e-4, epochs: 51, warmup_epochs: 2, batch_size: 512, accum_steps: 2}
    augment: {flip_p: 0.5}
    runtime: {precision: bf16, output_dir: runs/maco-base}

Command-line overrides use dotted keys (``optim.lr=1e-4``, ``model.vision.depth=6``,
``model.preset=small``); an unknown key anywhere is a :class:`ConfigError` naming it, the
nearest valid key and where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from maco_cxr.config import Override, apply_overrides, load_config, require, save_config
from maco_cxr.errors import ConfigError
from maco_cxr.models.config import MacoConfig

__all__ = [
    "PretrainAugment",
    "PretrainConfig",
    "PretrainData",
    "PretrainOptim",
    "PretrainRuntime",
    "check_config",
    "load_pretrain_config",
    "replace",
    "save_pretrain_config",
]

Source = Literal["manifest", "store", "synthetic"]
Precision = Literal["bf16", "fp32"]
OnError = Literal["raise", "skip"]
TextMode = Literal["sentences", "full"]
Section = Literal["findings", "impression"]


@dataclass
class PretrainData:
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
    ``exclude``: images pre-training must never draw (e.g. the test images of a downstream
    evaluation): id-list files (one image id or path per line; official split files in the
    ``path label...`` format; a CSV with an id column such as MS-CXR's ``dicom_id``; COCO
    JSON) and/or inline ids. An image is excluded when an entry equals its file stem or the
    last components of its path (:func:`maco_cxr.data.splits.find_listed`); the count is
    logged and written to ``<output_dir>/excluded.json``, the metrics and the final model's
    config. ``ms_cxr``: MS-CXR's annotations (or its dicom_id list), read only to count the
    MS-CXR images left in MIMIC-CXR data (a warning when any is); without it a one-line
    warning says the check could not run (see :func:`maco_cxr.data.prepare.apply_exclusions`).
    ``negation_negatives`` (not in the paper; off reproduces it): every image is also contrasted
    against its own training text with one sentence's negation flipped
    (:func:`maco_cxr.data.reports.negation_counterfactual`), a hard negative that only a text
    tower reading "no" can tell apart; see ``maco-cxr ablate`` for what it changes.
    """

    source: Source = "store"
    path: str | None = None
    kind: str = "manifest"
    split: str | None = "train"
    on_error: OnError = "raise"
    workers: int = 4
    sections: tuple[Section, ...] | None = None
    text: TextMode = "sentences"
    synthetic_count: int = 64
    synthetic_seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    exclude: tuple[str, ...] | str = ()
    ms_cxr: str | None = None
    negation_negatives: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.exclude, str):  # one file or id
            self.exclude = (self.exclude,)
        require(all(item.strip() for item in self.exclude), "exclude", "holds an empty entry; give files or ids")
        require(self.workers >= 0, "workers", "must be >= 0")
        require(self.synthetic_count >= 1, "synthetic_count", "must be >= 1")
        require(
            self.sections is None or len(self.sections) > 0,
            "sections",
            "must be a non-empty list of findings, impression (or null for the text as given)",
        )


@dataclass
class PretrainOptim:
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
        require(self.lr > 0, "lr", "must be > 0")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(all(0 <= b < 1 for b in self.betas), "betas", f"{list(self.betas)} must be two numbers in [0, 1)")
        require(self.epochs >= 1, "epochs", "must be >= 1")
        require(self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
        require(self.max_steps is None or self.max_steps >= 1, "max_steps", "must be >= 1")
        require(self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.accum_steps >= 1, "accum_steps", "must be >= 1")
        require(self.clip_grad is None or self.clip_grad > 0, "clip_grad", "must be > 0 or null")


@dataclass
class PretrainAugment:
    """On-device augmentation (the official recipe); ``enabled: false`` only normalises."""

    enabled: bool = True
    flip_p: float = 0.5
    degrees: float = 20.0
    scale: tuple[float, float] = (0.8, 1.2)

    def __post_init__(self) -> None:
        require(0.0 <= self.flip_p <= 1.0, "flip_p", "must be in [0, 1]")
        require(self.degrees >= 0, "degrees", "must be >= 0")
        require(
            0 < self.scale[0] <= self.scale[1], "scale", f"{list(self.scale)} must be [low, high] with 0 < low <= high"
        )


def check_run_control(runtime: Any) -> None:
    """The checks every runtime section shares (device, resume, seed, cadences, stop step)."""
    require(
        runtime.device == "auto" or runtime.device.split(":")[0] in ("cpu", "cuda"),
        "device",
        f"{runtime.device!r} is not auto, cpu, cuda or cuda:N",
    )
    require(bool(runtime.resume.strip()), "resume", "must be auto, never or a checkpoint path")
    require(runtime.seed >= 0, "seed", "must be >= 0")
    for name in ("log_every", "save_every", "keep_last"):
        require(getattr(runtime, name) >= 1, name, "must be >= 1")
    require(runtime.stop_at_step is None or runtime.stop_at_step >= 1, "stop_at_step", "must be >= 1 or null")


@dataclass
class PretrainRuntime:
    """Devices, precision, logging, checkpoints and initialisation.

    ``device``: ``auto`` (the process's GPU under torchrun, else CPU), ``cpu`` or ``cuda``.
    ``precision``: ``bf16`` autocast on CUDA (fp32 on CPU either way). ``compile``: ``auto``
    (the default) compiles the model with ``torch.compile`` on CUDA and not on the CPU, ``true``
    everywhere, ``false`` never; a compilation that fails is reported and the run goes on
    eagerly. ``save_every`` and
    ``log_every`` count optimizer steps. ``resume``: ``auto`` continues from the newest complete
    checkpoint in ``output_dir`` when its config matches this one (a fresh run when there is
    none; an error naming the differing keys when it does not match), ``never`` always starts
    afresh, a path resumes from that checkpoint. ``stop_at_step`` ends the run early (after
    saving) without changing the schedule, for jobs split over time-limited allocations.
    ``init_mae``: MAE ViT weights for the image encoder (the paper starts from MAE ImageNet);
    ``init_from``: a MaCo model (package directory or official ``maco.pth``) to continue from.
    """

    device: str = "auto"
    precision: Precision = "bf16"
    compile: bool | Literal["auto"] = "auto"
    grad_checkpointing: bool = False
    seed: int = 0
    output_dir: str = "runs/pretrain"
    log_every: int = 10
    save_every: int = 1000
    keep_last: int = 3
    tensorboard: bool = False
    resume: str = "auto"
    stop_at_step: int | None = None
    init_mae: str | None = None
    init_from: str | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        check_run_control(self)


@dataclass
class PretrainConfig:
    """Everything a pre-training run needs; ``model`` is the resolved :class:`MacoConfig`."""

    model: MacoConfig = field(default_factory=MacoConfig)
    data: PretrainData = field(default_factory=PretrainData)
    optim: PretrainOptim = field(default_factory=PretrainOptim)
    augment: PretrainAugment = field(default_factory=PretrainAugment)
    runtime: PretrainRuntime = field(default_factory=PretrainRuntime)


# Keys that may differ between a run and its resumption: they change how the run is watched or
# where it executes, not what it computes.
RESUMABLE_CHANGES = (
    "runtime.progress",
    "runtime.log_every",
    "runtime.save_every",
    "runtime.keep_last",
    "runtime.stop_at_step",
    "runtime.resume",
    "runtime.tensorboard",
    "runtime.device",
    "runtime.compile",
    "runtime.grad_checkpointing",
    "data.workers",
    "data.path",
    "data.ms_cxr",
    "runtime.output_dir",
    "runtime.init_mae",
    "runtime.init_from",
)


def check_config(config: PretrainConfig) -> None:
    """Checks that involve several keys (run once all overrides are applied)."""
    data, runtime = config.data, config.runtime
    if data.source != "synthetic" and not data.path:
        raise ConfigError(
            f"is required for data.source={data.source}; give the store, manifest or dataset root", key="data.path"
        )
    if runtime.init_mae is not None and runtime.init_from is not None:
        raise ConfigError("set runtime.init_mae or runtime.init_from, not both", key="runtime.init_mae")


def load_pretrain_config(
    path: str | Path | None = None, overrides: list[str | Override] | None = None
) -> PretrainConfig:
    """Read a YAML file (or start from the defaults when ``path`` is None) and apply overrides."""
    return load_config(PretrainConfig, path, overrides or [])


def save_pretrain_config(config: PretrainConfig, path: str | Path) -> None:
    save_config(config, path)


def replace(config: PretrainConfig, overrides: list[str] | None = None, **sections: dict[str, Any]) -> PretrainConfig:
    """Copy with fields changed: ``replace(cfg, optim={"lr": 1e-4})`` or ``replace(cfg, ["optim.lr=1e-4"])``."""
    flat = {f"{name}.{key}": value for name, values in sections.items() for key, value in values.items()}
    return apply_overrides(apply_overrides(config, flat, source="replace()"), overrides or [])
