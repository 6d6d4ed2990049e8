"""`maco-cxr <command>`: a thin layer over the Python API.

Each command lives in its own module ``maco_cxr.cli.<name>`` exposing
``register(subparsers) -> None``; the parser it adds sets ``func`` to a handler
``(args) -> int``. Modules are imported only when the CLI starts, never by the library.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

COMMANDS = (
    "pretrain",
    "convert",
    "download",
    "export",
    "tokenizer",
    "synth",
    "prepare",
    "zeroshot",
    "ground",
    "retrieve",
    "predict",
    "finetune",
    "segment",
    "detect",
    "reproduce",
    "compare",
    "demo",
    "ablate",
    "serve",
    "push",
)


RESUMING_COMMANDS = frozenset({"pretrain", "finetune", "segment", "detect", "predict", "reproduce", "ablate"})
"""Commands whose rerun continues where a killed run stopped (checkpoints, journals, cells)."""

INTERRUPTED_EXIT_CODE = 130
"""128 + SIGINT, what a shell reports for a command stopped by Ctrl-C."""


def interrupted_message(command: str, interrupt: KeyboardInterrupt) -> str:
    """The one line Ctrl-C prints instead of a traceback: where the run stopped, when it says
    (:class:`~maco_cxr.errors.RunInterrupted`), and that a rerun resumes, for commands that do."""
    from maco_cxr.errors import RunInterrupted

    if isinstance(interrupt, RunInterrupted):
        return f"maco-cxr {command}: interrupted at {interrupt.where}; rerun the same command to resume"
    resume = "; rerun the same command to resume" if command in RESUMING_COMMANDS else ""
    return f"maco-cxr {command}: interrupted{resume}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maco-cxr",
        description="MaCo chest X-ray vision-language model: pre-training, official weights, "
        "zero-shot classification, phrase grounding, retrieval and fine-tuning.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"maco_cxr.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"maco_cxr.cli.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def _own_info_or_any_warning(record: logging.LogRecord) -> bool:
    """Other libraries' INFO and DEBUG lines only with --verbose: onnx_ir/onnxscript log ~165
    INFO lines per export, which bury the result."""
    return record.levelno >= logging.WARNING or record.name.split(".")[0] == "maco_cxr"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        (handler.removeFilter if args.verbose else handler.addFilter)(_own_info_or_any_warning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from maco_cxr.errors import MacoError

    try:
        return int(args.func(args) or 0)
    except MacoError as err:
        print(f"maco-cxr {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(interrupted_message(args.command, interrupt), file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
