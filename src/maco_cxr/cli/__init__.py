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
    "demo",
    "ablate",
    "serve",
)


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from maco_cxr.errors import MacoError

    try:
        return int(args.func(args) or 0)
    except MacoError as err:
        print(f"maco-cxr {args.command}: error: {err}", file=sys.stderr)
        return 2
