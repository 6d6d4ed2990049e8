"""Reproduce the paper's evaluation protocol on the datasets at hand, as one table.

:func:`reproduce` runs *cells*, each one evaluation of the paper (``docs/protocols.md``):

- ``zeroshot-{nih,rsna,siim,chexpert}``: zero-shot classification of the official test
  split with the official prompts (section 2; SIIM with its own set), macro AUC / F1 / ACC;
- ``grounding-ms-cxr``: MS-CXR phrase grounding (section 3), CNR and mIoU;
- ``linear-{nih,chexpert,rsna}-F`` and ``finetune-...-F``: the shipped classification recipe
  recipe ``finetune/<dataset>_F`` (section 4), linear probe = ``model.mode=linear_probe``;
- ``segment-{siim,covid-rural}-F``: recipe ``segment/{siim,covid}_F`` (section 5);
- ``detect-rsna-F``: recipe ``detect/rsna_F`` (section 6);

with F the label fraction in % (1, 10, 100). Each cell calls the task function its CLI
command calls (:func:`~maco_cxr.tasks.zeroshot.run_zeroshot`,
:func:`~maco_cxr.tasks.grounding.run_grounding`,
:func:`~maco_cxr.tasks.finetune.finetune_classifier`, :func:`~maco_cxr.tasks.finetune.segment`,
:func:`~maco_cxr.tasks.finetune.detect`) and records that command line, which writes the same
files with the same numbers. Its outputs go to ``OUT/<cell>/`` with ``cell.json`` (status,
metrics, command, what it was computed from); a failing cell is recorded with its error and
the run goes on; a rerun reuses every cell whose ``cell.json`` says done with the same
result-determining settings (a killed fine-tuning cell resumes from its checkpoint). How a
run is watched or where it runs (device, workers, batch size, overlays, progress) never
invalidates a finished cell, nor does ``skip_bad`` unless the finished cell left inputs out
and the rerun would not. Every path of the data file that the selected cells read is
checked before any cell runs: missing ones fail the run once, each named with its key.
``OUT/reproduce.json`` and ``OUT/reproduce.md`` hold the table: our number,
the published one (:func:`load_published`, each with its table and row), the difference and
the command, rewritten after every cell.

The data file (``data.yaml``, read with the one config grammar) names the dataset roots;
datasets left out are skipped and listed::

    nih: {root: /data/nih}
    chexpert: {root: /data/CheXpert-v1.0-small}
    rsna: {root: /data/rsna}
    siim: {root: /data/siim}
    ms_cxr: {root: /data/mimic-cxr-jpg, annotations: /data/ms-cxr/MS_CXR_Local_Alignment_v1.0.0.csv}
    covid_rural: {root: /data/covid-rural, train_split: train.txt, val_split: val.txt, test_split: test.txt}
    mimic: {root: /data/mimic-cxr-jpg}   # MS-CXR's image root when ms_cxr.root is not given

``options`` (adapter keyword arguments) and the split keys apply to every cell of a dataset.
``quick`` runs tiny schedules (2 steps, 32-64 px inputs, small heads) for tests and smoke
runs; the outputs say so in every cell and at the top of the table: not comparable.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from maco_cxr._atomic import claim_output_folder, run_folder_kind, write_json, write_text
from maco_cxr.config import Override, load_config, recipe_folder, require, resolve_recipe, yaml_load
from maco_cxr.errors import ConfigError, DataError

if TYPE_CHECKING:
    from maco_cxr.models.maco import MacoModel

__all__ = [
    "DATASETS",
    "FRACTIONS",
    "TASKS",
    "Cell",
    "CellResult",
    "DatasetPaths",
    "PublishedResult",
    "ReproduceData",
    "ReproduceOptions",
    "ReproduceReport",
    "load_published",
    "load_reproduce_data",
    "plan_cells",
    "reproduce",
]

logger = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("zeroshot", "grounding", "linear", "finetune", "segment", "detect")
_CELL_FOLDER_KIND = {
    "zeroshot": "zeroshot",
    "grounding": "grounding",
    "linear": run_folder_kind("classification"),
    "finetune": run_folder_kind("classification"),
    "segment": run_folder_kind("segmentation"),
    "detect": run_folder_kind("detection"),
}
"""The output-folder kind each cell's command claims (a cell folder is that command's output)."""
DATASETS: tuple[str, ...] = ("nih", "chexpert", "rsna", "siim", "ms-cxr", "covid-rural")
FRACTIONS: tuple[int, ...] = (1, 10, 100)
TASK_DATASETS: dict[str, tuple[str, ...]] = {
    "zeroshot": ("nih", "rsna", "siim", "chexpert"),
    "grounding": ("ms-cxr",),
    "linear": ("nih", "chexpert", "rsna"),
    "finetune": ("nih", "chexpert", "rsna"),
    "segment": ("siim", "covid-rural"),
    "detect": ("rsna",),
}
_WITH_FRACTION = ("linear", "finetune", "segment", "detect")
_CONFIG_FOLDER = {"linear": "finetune", "finetune": "finetune", "segment": "segment", "detect": "detect"}
_CONFIG_STEM = {"covid-rural": "covid"}
_COMMAND = {"linear": "finetune", "finetune": "finetune", "segment": "segment", "detect": "detect"}
# display: label, factor from the library's value, unit
METRICS: dict[str, tuple[str, float, str]] = {
    "auc": ("AUC", 100.0, "%"),
    "f1": ("F1 (weighted)", 100.0, "%"),
    "acc": ("ACC", 100.0, "%"),
    "cnr": ("CNR", 1.0, ""),
    "miou": ("mIoU", 1.0, ""),
    "pointing": ("pointing game", 100.0, "%"),
    "dice": ("Dice (per image, all images)", 100.0, "%"),
    "dice_fg": ("Dice (foreground, pooled)", 100.0, "%"),
    "mdice": ("mDice (background + foreground)", 100.0, "%"),
    "ap": ("AP@[.5:.95]", 100.0, "%"),
    "ap50": ("AP50", 100.0, "%"),
    "ap75": ("AP75", 100.0, "%"),
}
PRIMARY: dict[str, tuple[str, ...]] = {
    "zeroshot": ("auc",),
    "grounding": ("cnr", "miou"),
    "linear": ("auc",),
    "finetune": ("auc",),
    "segment": ("dice",),
    "detect": ("ap",),
}
# zero-shot: adapter split and options holding the official test list's images, and the prompts
_ZEROSHOT: dict[str, tuple[str | None, dict[str, Any], str]] = {
    "nih": (None, {}, "default"),
    "chexpert": ("valid", {"frontal_only": False}, "default"),  # the test list is valid.csv, laterals included
    "rsna": ("test", {}, "default"),  # stage_2_test_images
    "siim": ("train", {}, "siim"),  # the SIIM test list names dicom-images-train images (labelled by the RLE)
}
# quick mode: the schedule and sizes of a smoke run (never comparable to the paper)
_QUICK: dict[str, tuple[str, ...]] = {
    "classify": (
        "optim.steps=2",
        "optim.warmup_steps=1",
        "optim.batch_size=2",
        "model.img_size=32",
        "evaluation.batch_size=8",
        "evaluation.bootstrap=0",
        "runtime.log_every=1",
    ),
    "segment": (
        "optim.steps=2",
        "optim.warmup_steps=1",
        "optim.batch_size=2",
        "input.image_size=64",
        "head.channels=16",
        "head.aux_channels=8",
        "head.pool_scales=[1, 2]",
        "evaluation.every=0",
        "evaluation.overlays=0",
        "evaluation.bootstrap=0",
        "evaluation.batch_size=4",
        "runtime.log_every=1",
    ),
    "detect": (
        "optim.steps=2",
        "optim.warmup_steps=1",
        "optim.batch_size=2",
        "input.image_size=64",
        "detector.out_channels=16",
        "detector.box_head_convs=1",
        "detector.box_head_fc=32",
        "detector.rpn_pre_nms_top_n_train=200",
        "detector.rpn_post_nms_top_n_train=50",
        "detector.rpn_pre_nms_top_n_test=200",
        "detector.rpn_post_nms_top_n_test=50",
        "detector.box_batch_size_per_image=32",
        "model.grad_checkpointing=false",
        "evaluation.every=0",
        "evaluation.overlays=0",
        "evaluation.batch_size=4",
        "runtime.log_every=1",
    ),
}
QUICK_NOTE = (
    "QUICK MODE: tiny schedules (2 optimisation steps, 32-64 px inputs, small heads) for tests and "
    "smoke runs; these numbers are NOT comparable to the paper's"
)
CELL_FILE = "cell.json"
JSON_NAME = "reproduce.json"
MARKDOWN_NAME = "reproduce.md"


# ----------------------------------------------------------------------------------- config


@dataclass
class DatasetPaths:
    """One dataset of the data file.

    ``root``: the dataset folder (absent: the dataset is skipped). ``options``: keyword
    arguments of its adapter, for every cell. ``annotations``: MS-CXR's annotation file
    (``ms_cxr`` only). ``train_split``/``val_split``/``test_split``: split files replacing the
    recipes' lists (COVID rural has no official lists and needs all three).
    """

    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    annotations: str | None = None
    train_split: str | None = None
    val_split: str | None = None
    test_split: str | None = None


@dataclass
class ReproduceData:
    """The data file of ``maco-cxr reproduce --data``: one section per dataset (see the module
    docstring). ``mimic``: the MIMIC-CXR-JPG root, MS-CXR's images when ``ms_cxr.root`` is absent."""

    nih: DatasetPaths = field(default_factory=DatasetPaths)
    chexpert: DatasetPaths = field(default_factory=DatasetPaths)
    rsna: DatasetPaths = field(default_factory=DatasetPaths)
    siim: DatasetPaths = field(default_factory=DatasetPaths)
    ms_cxr: DatasetPaths = field(default_factory=DatasetPaths)
    covid_rural: DatasetPaths = field(default_factory=DatasetPaths)
    mimic: DatasetPaths = field(default_factory=DatasetPaths)

    def entry(self, dataset: str) -> DatasetPaths:
        return getattr(self, dataset.replace("-", "_"))

    def root_of(self, dataset: str) -> str | None:
        if dataset == "ms-cxr":
            return self.ms_cxr.root or self.mimic.root
        return self.entry(dataset).root


def load_reproduce_data(path: str | Path | None, overrides: Sequence[str | Override] = ()) -> ReproduceData:
    """The data file (YAML) plus ``key=value`` overrides (``nih.root=/data/nih``)."""
    return load_config(ReproduceData, path, overrides)


@dataclass
class ReproduceOptions:
    """What to run and how (the ``maco-cxr reproduce`` flags).

    ``tasks``/``fractions``/``datasets``: the cells to run (``datasets`` None = all).
    ``quick``: tiny schedules, labelled not comparable. ``device``: torch device (None: cuda
    if available, else cpu; fine-tuning cells: their ``runtime.device``). ``workers``: loader
    processes. ``batch_size``: images per forward pass of the zero-shot and grounding cells.
    ``skip_bad``: skip (and count) rows, files and split entries that are missing or unreadable
    instead of failing the cell. ``configs``: a folder of recipes to use instead of the shipped
    ``maco_cxr/recipes`` (same subfolders). ``overlays``: grounding overlays per cell.
    ``device``, ``workers``, ``batch_size``, ``overlays``, ``progress`` and ``skip_bad`` are run
    control: a finished cell is reused whatever they are (``skip_bad`` unless the cell left
    inputs out and this run would not); ``quick``, the recipes, the model and the data file
    decide a cell's numbers.
    """

    tasks: tuple[str, ...] = TASKS
    fractions: tuple[int, ...] = FRACTIONS
    datasets: tuple[str, ...] | None = None
    quick: bool = False
    device: str | None = None
    workers: int = 0
    batch_size: int = 32
    skip_bad: bool = False
    configs: str | None = None
    overlays: int = 8
    progress: bool = False

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        self.fractions = tuple(int(f) for f in self.fractions)
        if self.datasets is not None:
            self.datasets = tuple(d.replace("_", "-") for d in self.datasets)
        bad = [t for t in self.tasks if t not in TASKS]
        require(not bad, "tasks", f"{bad} are not tasks; choose from {list(TASKS)}")
        bad = [f for f in self.fractions if f not in FRACTIONS]
        require(not bad, "fractions", f"{bad} are not label fractions of the paper; choose from {list(FRACTIONS)}")
        bad = [d for d in self.datasets or () if d not in DATASETS]
        require(not bad, "datasets", f"{bad} are not datasets; choose from {list(DATASETS)}")
        require(self.workers >= 0, "workers", "must be >= 0")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.overlays >= 0, "overlays", "must be >= 0")


# -------------------------------------------------------------------------------- published


@dataclass(frozen=True)
class PublishedResult:
    """One published number: the cell and metric it belongs to, its value in display units,
    and where in the paper it was read."""

    cell: str
    metric: str
    value: float
    unit: str
    source: str


def load_published(path: str | Path | None = None) -> tuple[dict[tuple[str, str], PublishedResult], dict[str, Any]]:
    """The shipped table of published results (``assets/published/maco_paper.yaml``):
    ``{(cell, metric): PublishedResult}`` and the file's other keys (paper, doi, not_found)."""
    source = (
        Path(path)
        if path is not None
        else Path(str(files("maco_cxr").joinpath("assets", "published", "maco_paper.yaml")))
    )
    try:
        data = yaml_load(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{source}: cannot read the published results ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise DataError(f"{source}: expected a mapping with 'results' (cell -> metric, value, unit, source)")
    table: dict[tuple[str, str], PublishedResult] = {}
    for cell, entry in data["results"].items():
        where = f"{source}: results.{cell}"
        if not isinstance(entry, dict) or set(entry) != {"metric", "value", "unit", "source"}:
            raise DataError(f"{where}: expected exactly metric, value, unit and source")
        if entry["metric"] not in METRICS or not isinstance(entry["value"], (int, float)):
            raise DataError(
                f"{where}: metric {entry['metric']!r} must be one of {sorted(METRICS)} with a numeric value"
            )
        if not str(entry["source"]).strip():
            raise DataError(f"{where}: every published number needs its source (table, row, column)")
        table[(str(cell), entry["metric"])] = PublishedResult(
            str(cell), entry["metric"], float(entry["value"]), str(entry["unit"]), str(entry["source"])
        )
    return table, {k: v for k, v in data.items() if k != "results"}


# ------------------------------------------------------------------------------------ cells


@dataclass(frozen=True)
class Cell:
    """One evaluation of the protocol: a task on a dataset (at a label fraction in %)."""

    task: str
    dataset: str
    fraction: int | None = None

    @property
    def id(self) -> str:
        return f"{self.task}-{self.dataset}" + ("" if self.fraction is None else f"-{self.fraction}")


def plan_cells(data: ReproduceData, options: ReproduceOptions) -> tuple[list[Cell], dict[str, str]]:
    """The selected cells whose dataset has a root, and the selected datasets skipped (why)."""
    wanted = options.datasets or DATASETS
    skipped = {
        d: (
            f"{d.replace('-', '_')}.root is not set in the data file"
            if d != "ms-cxr"
            else "ms_cxr.root (or mimic.root) is not set in the data file"
        )
        for d in wanted
        if data.root_of(d) is None and any(d in TASK_DATASETS[t] for t in options.tasks)
    }
    cells = []
    for task in options.tasks:
        for dataset in TASK_DATASETS[task]:
            if dataset not in wanted or dataset in skipped:
                continue
            fractions: Sequence[int | None] = options.fractions if task in _WITH_FRACTION else (None,)
            cells += [Cell(task, dataset, fraction) for fraction in fractions]
    return cells, skipped


@dataclass
class CellResult:
    """What one cell produced; ``status``: done (run now), reused (done by an earlier run),
    failed (``error`` says why, ``traceback`` where) or unsupported (a peer family that cannot do the
    task: ``error`` says so). ``settings``: what its numbers depend on
    (a rerun reuses the cell only when they are equal); ``skip_bad``: whether unusable inputs
    could be left out (``metrics["n_left_out"]`` counts them where the task reports it)."""

    id: str
    task: str
    dataset: str
    fraction: int | None
    status: Literal["done", "reused", "failed", "unsupported"]
    command: str
    out: str
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    quick: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    traceback: str | None = None
    skip_bad: bool = False


@dataclass
class ReproduceReport:
    """All cells of a run, the datasets skipped, and the two files written."""

    cells: list[CellResult]
    skipped_datasets: dict[str, str]
    quick: bool
    json_path: Path
    markdown_path: Path
    #: peer model spec -> its cells, in the order of ``cells``
    peers: dict[str, list[CellResult]] = field(default_factory=dict)

    @property
    def failed(self) -> list[CellResult]:
        return [c for c in [*self.cells, *(c for cells in self.peers.values() for c in cells)] if c.status == "failed"]


# ------------------------------------------------------------------------------ rendering


def _yaml_text(value: Any) -> str:
    """``value`` as the text of a ``key=value`` argument that reads back as ``value``."""
    if isinstance(value, str):
        try:
            if yaml_load(value) == value:
                return value
        except Exception:  # any YAML error: quote it
            pass
    return json.dumps(value)


def _option_args(options: dict[str, Any]) -> list[str]:
    """Adapter options as the ``-o KEY=VALUE`` arguments of zeroshot / ground."""
    return [arg for key, value in options.items() for arg in ("-o", f"{key}={_yaml_text(value)}")]


class _Context:
    """What every cell of one run shares: the model (loaded once, on first use), the data,
    the options and the output folder."""

    def __init__(
        self,
        model: str | Path,
        data: ReproduceData,
        out: Path,
        options: ReproduceOptions,
        tokenizer: str | Path | None = None,
    ) -> None:
        from maco_cxr.families import split_model_spec
        from maco_cxr.hub import resolve_model_path

        self.family, path = split_model_spec(str(model))
        # a peer family's spec keeps its prefix, with an absolute path: it is what --model takes
        self.model_path = (
            str(resolve_model_path(model)) if self.family == "maco" else f"{self.family}:{Path(path).resolve()}"
        )
        self.tokenizer = None if tokenizer is None else str(tokenizer)
        self.data, self.out, self.options = data, out, options
        self._model: MacoModel | None = None
        self._configs: Path | None = None

    @property
    def device(self) -> str:
        import torch

        return self.options.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def run_options(self) -> dict[str, Any]:
        """What every evaluation cell passes its task function: no bootstrap (the table reports
        point estimates beside the paper's), and this run's batch size, workers and progress bar."""
        return {
            "n_bootstrap": 0,
            "batch_size": self.options.batch_size,
            "num_workers": self.options.workers,
            "progress": self.options.progress,
        }

    def model(self) -> MacoModel:
        if self._model is None:
            from maco_cxr.families import load_family, split_model_spec
            from maco_cxr.hub import load

            if self.family == "maco":
                self._model = load(self.model_path, map_location=self.device)
            else:
                path = split_model_spec(self.model_path)[1]
                self._model = load_family(path, self.family, tokenizer=self.tokenizer).to(self.device)
        return self._model

    def cannot(self, task: str) -> str | None:
        """Why this context's family cannot run a cell of ``task`` (None when it can)."""
        from maco_cxr.families import family_info

        if self.family == "maco":
            return None
        if task in ("segment", "detect"):
            return f"segmentation and detection build on MaCo's ViT; the {self.family} family is classification only"
        need = {"zeroshot": "zeroshot", "grounding": "grounding"}.get(task, "finetune")
        if need in family_info(self.family).capabilities:
            return None
        return f"the {self.family} family cannot do {task}"

    def configs(self) -> Path:
        if self._configs is None:
            self._configs = recipe_folder(self.options.configs).resolve()
        return self._configs

    def common_args(self) -> list[str]:
        """--batch-size/--workers/--device/--skip-bad of the zeroshot and ground commands."""
        args = ["--batch-size", str(self.options.batch_size), "--workers", str(self.options.workers)]
        if self.options.device:
            args += ["--device", self.options.device]
        return args + (["--skip-bad"] if self.options.skip_bad else [])


# ------------------------------------------------------------------------------------ runners


@dataclass
class _Runner:
    """A cell's deferred computation with its command line and settings (compared with an
    earlier run's before anything is computed)."""

    run: Callable[[], dict[str, Any]]
    command: list[str]
    settings: dict[str, Any]


def _adapter_kwargs(entry: DatasetPaths, split: str | None, extra: dict[str, Any], skip_bad: bool) -> dict[str, Any]:
    kwargs = {**extra, **entry.options}
    if split is not None:
        kwargs["split"] = split
    if skip_bad:
        kwargs["on_error"] = "skip"
    return kwargs


def _text_path(value: str | Path | None) -> str | None:
    """A path as the command line records it (``str(Path(text))``), so a cell and its command agree."""
    return None if value is None else str(Path(value))


def _zeroshot(cell: Cell, ctx: _Context, out: Path) -> _Runner:
    from maco_cxr.data.datasets import build_dataset
    from maco_cxr.data.splits import official_split_path, read_split_file, subset_by_split_file
    from maco_cxr.tasks.results import RunSource
    from maco_cxr.tasks.zeroshot import run_zeroshot

    entry, root = ctx.data.entry(cell.dataset), ctx.data.root_of(cell.dataset)
    split, extra, prompts = _ZEROSHOT[cell.dataset]
    options = {**extra, **entry.options}
    chosen = ["--split-file", entry.test_split] if entry.test_split else ["--official-split", "test"]
    command = [
        "maco-cxr",
        "zeroshot",
        "--model",
        ctx.model_path,
        "--dataset",
        cell.dataset,
        "--root",
        str(root),
        *(["--split", split] if split else []),
        *chosen,
        *_option_args(options),
        "--prompts",
        prompts,
        *ctx.common_args(),
        "--bootstrap",
        "0",
        "--out",
        str(out),
    ]
    settings = {
        "root": root,
        "split": split,
        "options": options,
        "test": entry.test_split or "official test",
        "prompts": prompts,
    }
    source = RunSource(
        model=_text_path(ctx.model_path),
        dataset=cell.dataset,
        root=_text_path(root),
        split=split,
        official_split=None if entry.test_split else "test",
        split_file=_text_path(entry.test_split),
    )

    def run() -> dict[str, Any]:
        dataset = build_dataset(cell.dataset, root, **_adapter_kwargs(entry, split, extra, ctx.options.skip_bad))
        entries = read_split_file(entry.test_split or official_split_path(cell.dataset, "test"))
        dataset = subset_by_split_file(
            dataset,
            entries,
            use_file_labels=bool(entries and len(entries[0].labels)),
            on_error="skip" if ctx.options.skip_bad else "raise",
        )
        result = run_zeroshot(
            ctx.model(),
            dataset,
            out,
            prompts=prompts,
            **ctx.run_options(),
            source=source,
        )
        metrics = result.metrics
        return {
            "auc": metrics["macro_auc"].value,
            "f1": metrics["mean_f1_weighted"].value,
            "acc": metrics["macro_acc"].value,
            "n_images": result.n_images,
            "n_left_out": result.n_skipped + result.n_unreadable,
        }

    return _Runner(run, command, settings)


def _grounding(cell: Cell, ctx: _Context, out: Path) -> _Runner:
    from maco_cxr.data.datasets import build_dataset
    from maco_cxr.tasks.grounding import run_grounding
    from maco_cxr.tasks.results import RunSource

    entry, root = ctx.data.ms_cxr, ctx.data.root_of("ms-cxr")
    command = [
        "maco-cxr",
        "ground",
        "--model",
        ctx.model_path,
        "--dataset",
        "ms-cxr",
        "--root",
        str(root),
        "--annotations",
        str(entry.annotations),
        *_option_args(entry.options),
        "--overlays",
        str(ctx.options.overlays),
        *ctx.common_args(),
        "--bootstrap",
        "0",
        "--out",
        str(out),
    ]
    settings = {"root": root, "annotations": entry.annotations, "options": entry.options}
    source = RunSource(
        model=_text_path(ctx.model_path),
        dataset="ms-cxr",
        root=_text_path(root),
        annotations=_text_path(entry.annotations),
    )

    def run() -> dict[str, Any]:
        if not entry.annotations:
            raise ConfigError("is required: MS-CXR's annotation file (CSV or COCO JSON)", key="ms_cxr.annotations")
        dataset = build_dataset(
            "ms-cxr", root, annotations=entry.annotations, **_adapter_kwargs(entry, None, {}, ctx.options.skip_bad)
        )
        result = run_grounding(
            ctx.model(),
            dataset,
            out,
            overlays=ctx.options.overlays,
            **ctx.run_options(),
            source=source,
        )
        metrics = result.metrics
        return {
            "cnr": metrics["cnr"].value,
            "miou": metrics["miou"].value,
            "pointing": metrics["pointing"].value,
            "n_items": result.n_items,
            "n_left_out": result.n_skipped + result.n_unreadable,
        }

    return _Runner(run, command, settings)


def _recipe(cell: Cell, ctx: _Context, out: Path) -> _Runner:
    """A fine-tuning cell (classification, linear probe, segmentation, detection) on its recipe."""
    from maco_cxr.tasks.finetune import (
        ClassifyConfig,
        DetectConfig,
        SegmentConfig,
        finetune_classifier,
        train_detector,
        train_segmenter,
    )

    entry, root = ctx.data.entry(cell.dataset), ctx.data.root_of(cell.dataset)
    recipe = f"{_CONFIG_FOLDER[cell.task]}/{_CONFIG_STEM.get(cell.dataset, cell.dataset)}_{cell.fraction}"
    config_path = resolve_recipe(recipe, root=ctx.configs())
    shown = recipe if ctx.options.configs is None else str(config_path)  # a name works from any install
    keys: list[tuple[str, Any]] = [(f"data.options.{k}", v) for k, v in entry.options.items()]
    keys += [
        (f"data.{role}_split", getattr(entry, f"{role}_split"))
        for role in ("train", "val", "test")
        if getattr(entry, f"{role}_split") is not None
    ]
    kind = {"linear": "classify", "finetune": "classify"}.get(cell.task, cell.task)
    quick = [tuple(item.split("=", 1)) for item in _QUICK[kind]] if ctx.options.quick else []
    # run control, left out of the settings a finished cell is compared on (see _refusal)
    watch = [("data.on_error", "skip")] if ctx.options.skip_bad else []
    watch += [("data.workers", ctx.options.workers)]
    watch += [("runtime.device", ctx.options.device)] if ctx.options.device else []
    overrides = [
        Override("model.source", ctx.model_path, "--model"),
        Override("data.root", str(root), "--root"),
        Override("runtime.out", str(out), "--out"),
    ]
    if ctx.tokenizer is not None:
        overrides.append(Override("model.tokenizer", ctx.tokenizer, "--tokenizer"))
    command = [
        "maco-cxr",
        _COMMAND[cell.task],
        "--config",
        shown,
        "--model",
        ctx.model_path,
        "--root",
        str(root),
        "--out",
        str(out),
    ]
    if cell.task == "linear":
        overrides.append(Override("model.mode", "linear_probe", "--mode"))
        command += ["--mode", "linear_probe"]
    for key, value in [*keys, *watch]:
        overrides.append(Override(key, value, "reproduce"))
        command.append(f"{key}={_yaml_text(value)}")
    text_overrides = [f"{key}={value}" for key, value in quick]
    command += text_overrides
    settings = {
        "root": root,
        "config": shown,
        "mode": "linear_probe" if cell.task == "linear" else None,
        "overrides": [f"{k}={_yaml_text(v)}" for k, v in keys] + text_overrides,
    }
    kinds: dict[str, tuple[type, Callable[[Any], Any]]] = {
        "classify": (ClassifyConfig, finetune_classifier),
        "segment": (SegmentConfig, train_segmenter),
        "detect": (DetectConfig, train_detector),
    }
    config_kind, train = kinds[kind]

    def run() -> dict[str, Any]:
        config = load_config(config_kind, config_path, [*overrides, *text_overrides])
        result = train(config)
        if result.stopped_at_step is not None:
            raise DataError(
                f"the run stopped at step {result.stopped_at_step} (runtime.stop_at_step); rerun to continue it"
            )
        metrics = result.summary
        test = metrics["test"]
        if kind == "classify":
            return {
                "auc": test["mean_auc"],
                "n_test": test["n_images"],
                "best_step": metrics.get("best_step"),
                "steps": metrics.get("steps"),
            }
        if kind == "segment":
            return {
                "dice": test["dice_per_image_mean"],
                "dice_fg": test["dice_foreground_dataset"],
                "mdice": test["dice_mean_over_classes"],
                "n_test": test["n_images"],
            }
        return {"ap": test["AP"], "ap50": test["AP50"], "ap75": test["AP75"], "n_test": test["n_images"]}

    return _Runner(run, command, settings)


_RUNNERS: dict[str, Callable[[Cell, _Context, Path], _Runner]] = {
    "zeroshot": _zeroshot,
    "grounding": _grounding,
    "linear": _recipe,
    "finetune": _recipe,
    "segment": _recipe,
    "detect": _recipe,
}


# ------------------------------------------------------------------------------------ the run


def _identity(cell: Cell, ctx: _Context, settings: dict[str, Any]) -> dict[str, Any]:
    """What a cell's numbers depend on, not how the run was watched or where it ran (device,
    workers, batch size, overlays, progress, skip_bad: see :func:`_refusal`); reuse needs equality."""
    return json.loads(
        json.dumps(
            {
                "cell": cell.id,
                "model": str(Path(ctx.model_path).resolve()) if ctx.family == "maco" else ctx.model_path,
                "quick": ctx.options.quick,
                **settings,
            },
            default=str,
        )
    )


def _refusal(previous: dict[str, Any], identity: dict[str, Any], skip_bad: bool, out: Path) -> str | None:
    """Why the finished cell ``previous`` cannot be reused by this run; None when it can.

    Its settings must equal ``identity``. ``skip_bad`` changes a result only through what it
    leaves out, so a cell finished without it (nothing was left out) is reused by a run with it,
    and one finished with it by a run without it only when it left nothing out.
    """
    saved = dict(previous.get("settings") or {})
    # cell.json files of earlier versions held skip_bad (and its data.on_error override) in the settings
    saved.pop("skip_bad", None)
    if "overrides" in saved:
        saved["overrides"] = [o for o in saved["overrides"] if not str(o).startswith("data.on_error=")]
    changed = sorted(k for k in {*identity, *saved} if identity.get(k) != saved.get(k))
    if changed:
        return (
            f"{out} holds a finished result computed with other settings (differing: "
            f"{', '.join(changed)}); remove the folder or choose another --out"
        )
    left_out = (previous.get("metrics") or {}).get("n_left_out")
    if _finished_with_skip_bad(previous) and not skip_bad and left_out != 0:
        count = "an unknown number of" if left_out is None else str(left_out)
        return (
            f"{out} holds a result computed with --skip-bad (skip_bad=True) that left out {count} "
            "unusable inputs (rows, files or split entries), which a run without it refuses: pass "
            "--skip-bad to reuse it, or remove the folder"
        )
    return None


def _finished_with_skip_bad(previous: dict[str, Any]) -> bool:
    return bool(previous.get("skip_bad") or (previous.get("settings") or {}).get("skip_bad"))


def _run_cell(cell: Cell, ctx: _Context) -> CellResult:
    out = ctx.out / cell.id
    refused = ctx.cannot(cell.task)
    if refused is not None:
        return CellResult(cell.id, cell.task, cell.dataset, cell.fraction, "unsupported", "", "", error=refused)
    runner = _RUNNERS[cell.task](cell, ctx, out)
    command = shlex.join(runner.command)
    identity = _identity(cell, ctx, runner.settings)
    base = dict(
        id=cell.id,
        task=cell.task,
        dataset=cell.dataset,
        fraction=cell.fraction,
        command=command,
        out=str(out),
        quick=ctx.options.quick,
        settings=identity,
        skip_bad=ctx.options.skip_bad,
    )
    previous = _read_cell(out)
    if previous is not None and previous.get("status") in ("done", "reused"):
        refusal = _refusal(previous, identity, ctx.options.skip_bad, out)
        if refusal is not None:
            return CellResult(**{**base, "status": "failed", "error": refusal})
        logger.info("%s: reusing the result in %s", cell.id, out / CELL_FILE)
        return CellResult(
            **{
                **base,
                "status": "reused",
                "metrics": previous.get("metrics", {}),
                "seconds": float(previous.get("seconds", 0.0)),
                "skip_bad": _finished_with_skip_bad(previous),
            }
        )
    logger.info("%s: running (%s)", cell.id, command)
    start = time.perf_counter()
    try:
        claim_output_folder(out, _CELL_FOLDER_KIND[cell.task])
        metrics = runner.run()
    except Exception as err:  # a failing cell is recorded and the run goes on
        seconds = time.perf_counter() - start
        logger.warning("%s failed after %.1f s: %s: %s", cell.id, seconds, type(err).__name__, err)
        result = CellResult(
            **{
                **base,
                "status": "failed",
                "error": f"{type(err).__name__}: {err}",
                "seconds": seconds,
                "traceback": traceback.format_exc(limit=-8),
            }
        )
    else:
        result = CellResult(**{**base, "status": "done", "metrics": metrics, "seconds": time.perf_counter() - start})
        logger.info("%s done in %.1f s: %s", cell.id, result.seconds, _describe_metrics(cell.task, metrics))
    write_json(out / CELL_FILE, asdict(result))
    return result


def _read_cell(out: Path) -> dict[str, Any] | None:
    path = out / CELL_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        logger.warning("%s is unreadable; the cell runs again", path)
        return None


def _describe_metrics(task: str, metrics: dict[str, Any]) -> str:
    return ", ".join(f"{METRICS[m][0]} {_shown(metrics.get(m), m)}" for m in PRIMARY[task])


def _shown(value: Any, metric: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value * METRICS[metric][1]:.{1 if METRICS[metric][2] == '%' else 3}f}"


def _data_paths(data: ReproduceData, dataset: str) -> list[tuple[str, str | None]]:
    """The paths of the data file that the cells of ``dataset`` read, each with its key."""
    key = dataset.replace("-", "_")
    entry = data.entry(dataset)
    root_key = "mimic.root" if dataset == "ms-cxr" and entry.root is None else f"{key}.root"
    return [
        (root_key, data.root_of(dataset)),
        (f"{key}.annotations", entry.annotations),
        *((f"{key}.{role}_split", getattr(entry, f"{role}_split")) for role in ("train", "val", "test")),
    ]


def _check_data_paths(data: ReproduceData, cells: Sequence[Cell], data_file: str | None) -> None:
    """Fail once, before any cell runs, when a path the selected cells read does not exist."""
    missing = [
        f"{key}: {value}"
        for dataset in dict.fromkeys(cell.dataset for cell in cells)
        for key, value in _data_paths(data, dataset)
        if value is not None and not Path(value).exists()
    ]
    if missing:
        raise ConfigError(
            f"{len(missing)} paths of the data file do not exist ({'; '.join(missing)}); "
            "correct them, or leave those datasets out (--datasets, or drop their entries)",
            source=data_file,
        )


def reproduce(
    model: str | Path,
    data: ReproduceData,
    out: str | Path,
    options: ReproduceOptions | None = None,
    *,
    data_file: str | None = None,
    peers: Sequence[str] = (),
    tokenizers: dict[str, str | Path] | None = None,
) -> ReproduceReport:
    """Run the selected cells of the paper's protocol (see the module docstring) into ``out``.

    ``model``: a MaCo model directory or official ``maco.pth``. ``data``: the dataset roots
    (:func:`load_reproduce_data`); ``data_file`` is only recorded. ``peers``: other models
    (``FAMILY:PATH``, :mod:`maco_cxr.families`; ``tokenizers``: family -> tokenizer folder) run through
    the same cells, the paper's protocol (MaCo's prompts, the same recipes), into ``out/peers/<name>/``;
    their numbers are the table's extra columns, a cell a family cannot do says so. Returns every cell's
    result; ``out/reproduce.json`` and ``out/reproduce.md`` hold the table (rewritten after
    each cell, so a long run can be watched).
    """
    options = options or ReproduceOptions()
    out = Path(out)
    cells, skipped = plan_cells(data, options)
    _check_data_paths(data, cells, data_file)
    out = claim_output_folder(out, "reproduce")
    ctx = _Context(model, data, out, options)
    for dataset, reason in skipped.items():
        logger.warning("reproduce: skipping %s (%s)", dataset, reason)
    if any(cell.task in _WITH_FRACTION for cell in cells):
        ctx.configs()  # a missing recipe folder is one clear error, not one per cell
    published, about = load_published()
    results: list[CellResult] = []
    report = ReproduceReport(results, skipped, options.quick, out / JSON_NAME, out / MARKDOWN_NAME)
    peer_contexts = [
        _Context(spec, data, out / "peers" / _peer_folder(spec), options, (tokenizers or {}).get(_family(spec)))
        for spec in peers
    ]
    logger.info(
        "reproduce: %d cells (%s)%s",
        len(cells),
        ", ".join(c.id for c in cells),
        "; quick mode, not comparable" if options.quick else "",
    )
    for cell in cells:
        results.append(_run_cell(cell, ctx))
        _write_report(report, ctx, published, about, data_file)
    for peer in peer_contexts:
        results_of_peer = report.peers.setdefault(peer.model_path, [])
        for cell in cells:
            results_of_peer.append(_run_cell(cell, peer))
            _write_report(report, ctx, published, about, data_file)
    if not cells:
        _write_report(report, ctx, published, about, data_file)
    return report


def _family(spec: str) -> str:
    from maco_cxr.families import split_model_spec

    return split_model_spec(spec)[0]


def _peer_folder(spec: str) -> str:
    from maco_cxr.families import split_model_spec

    family, path = split_model_spec(spec)
    return f"{family}-{Path(path).name}"


# ------------------------------------------------------------------------------------ outputs


def _rows(result: CellResult, published: dict[tuple[str, str], PublishedResult]) -> list[dict[str, Any]]:
    """One table row per primary metric of a cell: ours, the paper's, the difference."""
    rows = []
    for metric in PRIMARY[result.task]:
        label, factor, unit = METRICS[metric]
        value = result.metrics.get(metric)
        ours = None if value is None or not math.isfinite(float(value)) else round(float(value) * factor, 4)
        paper = published.get((result.id, metric))
        rows.append(
            {
                "cell": result.id,
                "metric": metric,
                "label": label,
                "unit": unit,
                "ours": ours,
                "paper": None if paper is None else paper.value,
                "diff": None if paper is None or ours is None else round(ours - paper.value, 4),
                "source": None if paper is None else paper.source,
            }
        )
    return rows


def _write_report(
    report: ReproduceReport,
    ctx: _Context,
    published: dict[tuple[str, str], PublishedResult],
    about: dict[str, Any],
    data_file: str | None,
) -> None:
    options = ctx.options
    not_found = about.get("not_found") or {}
    payload = {
        "model": ctx.model_path,
        "data": data_file,
        "out": str(ctx.out),
        "quick": options.quick,
        "note": QUICK_NOTE if options.quick else None,
        "options": asdict(options),
        "published": {
            "paper": about.get("paper"),
            "doi": about.get("doi"),
            "read_from": about.get("read_from"),
            "not_found": not_found,
        },
        "skipped_datasets": report.skipped_datasets,
        "cells": [{**asdict(c), "rows": _rows(c, published)} for c in report.cells],
        "peers": {
            spec: [{**asdict(c), "rows": _rows(c, published)} for c in cells] for spec, cells in report.peers.items()
        },
    }
    write_json(report.json_path, payload)
    write_text(report.markdown_path, _markdown(report, ctx, published, about))


def _peer_table(report: ReproduceReport, published: dict[tuple[str, str], PublishedResult]) -> list[str]:
    """The other models' numbers beside MaCo's, cell by cell (the paper's protocol for all)."""
    specs = list(report.peers)
    lines = ["", "## Other models (the same cells and recipes)", ""]
    lines += ["| cell | metric | MaCo | " + " | ".join(f"`{s}`" for s in specs) + " |"]
    lines += ["|---|---|---|" + "---|" * len(specs)]
    for k, result in enumerate(report.cells):
        peers = [report.peers[s][k] if k < len(report.peers[s]) else None for s in specs]
        for row in _rows(result, published):
            digits = 1 if row["unit"] == "%" else 3
            cells = [_fmt(row["ours"], digits) if result.status in ("done", "reused") else result.status]
            for peer in peers:
                if peer is None:
                    cells.append("not run")
                elif peer.status == "unsupported":
                    cells.append(f"n/a ({peer.error})")
                elif peer.status == "failed":
                    cells.append("failed")
                else:
                    value = next(r["ours"] for r in _rows(peer, published) if r["metric"] == row["metric"])
                    cells.append(_fmt(value, digits))
            lines.append(f"| {result.id} | {row['label']} | " + " | ".join(cells) + " |")
    return lines


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _markdown(
    report: ReproduceReport, ctx: _Context, published: dict[tuple[str, str], PublishedResult], about: dict[str, Any]
) -> str:
    lines = [f"# MaCo reproduction: {ctx.model_path}", ""]
    if report.quick:
        lines += [f"> **{QUICK_NOTE}.**", ""]
    lines += [
        f"Published numbers: {' '.join(str(about.get('paper', '')).split())} (doi {about.get('doi')}), "
        "shipped in `maco_cxr/assets/published/maco_paper.yaml`; each row names its table, row and column. "
        "Differences are ours minus the paper's, in the metric's unit.",
        "",
        "| cell | metric | ours | paper | diff | paper source | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in report.cells:
        for row in _rows(result, published):
            digits = 1 if row["unit"] == "%" else 3
            unit = f" ({row['unit']})" if row["unit"] else ""
            paper = _fmt(row["paper"], digits) if row["paper"] is not None else "not found"
            status = result.status + (" (quick)" if result.quick else "")
            ours = _fmt(row["ours"], digits) if result.status in ("done", "reused") else "failed"
            lines.append(
                f"| {result.id} | {row['label']}{unit} | {ours} | {paper} | {_fmt(row['diff'], digits)} | "
                f"{row['source'] or '-'} | {status} |"
            )
    if report.peers:
        lines += _peer_table(report, published)
    failed = [r for r in report.cells if r.status == "failed"]
    if failed:
        lines += ["", "## Failed cells", ""] + [f"- `{r.id}`: {r.error}" for r in failed]
    if report.skipped_datasets:
        lines += ["", "## Skipped datasets", ""] + [f"- {d}: {why}" for d, why in report.skipped_datasets.items()]
    tasks = sorted({r.task for r in report.cells if not any((r.id, m) in published for m in PRIMARY[r.task])})
    not_found = about.get("not_found") or {}
    if tasks:
        lines += ["", "## Published numbers not found", ""]
        lines += [
            f"- {task}: {' '.join(str(not_found.get(task, 'not in the shipped table')).split())}" for task in tasks
        ]
    lines += ["", "## Commands", "", "Each cell ran the library functions of this command (outputs in its folder):", ""]
    lines += [f"- `{r.id}`: `{r.command}`" for r in report.cells]
    return "\n".join(lines) + "\n"
