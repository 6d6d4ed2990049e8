"""`maco-cxr tokenizer train`: a WordPiece vocabulary from a corpus of reports."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from maco_cxr.cli._paths import existing_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tokenizer", help="train a WordPiece vocabulary on reports")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = actions.add_parser(
        "train",
        help="learn a vocabulary with the official special tokens and normalisation",
        description="Reads report texts from .txt files (one report per file, e.g. MIMIC-CXR's "
        "files/pNN/.../sNNN.txt), from a folder searched recursively for .txt, or from a CSV/JSONL "
        "manifest's 'report' column, and writes a tokenizers JSON usable as text.tokenizer.",
    )
    train.add_argument("sources", nargs="+", type=existing_path, help="folders, .txt files or manifest.csv/.jsonl")
    train.add_argument("--out", type=Path, required=True, help="output tokenizer JSON")
    train.add_argument("--vocab-size", type=int, default=30000)
    train.add_argument("--min-frequency", type=int, default=2)
    train.set_defaults(func=run_train)


def _manifest_reports(path: Path) -> Iterator[str]:
    import csv
    import json

    from maco_cxr.errors import DataError

    if path.suffix == ".jsonl":
        with path.open() as handle:
            for row, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        yield json.loads(line).get("report") or ""
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}: line {row} is not valid JSON: {err}") from err
        return
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if "report" not in (reader.fieldnames or []):
            raise DataError(f"{path}: no 'report' column (columns: {reader.fieldnames})")
        for row in reader:
            yield row["report"] or ""


def iter_reports(sources: list[Path]) -> Iterator[str]:
    from maco_cxr.errors import DataError

    for source in sources:
        if source.is_dir():
            for path in sorted(source.rglob("*.txt")):
                yield path.read_text(errors="replace")
        elif source.suffix in (".csv", ".jsonl"):
            yield from _manifest_reports(source)
        elif source.is_file():
            yield source.read_text(errors="replace")
        else:
            raise DataError(f"{source}: no such file or folder")


def run_train(args: argparse.Namespace) -> int:
    from maco_cxr.data.tokenizer import ReportTokenizer

    texts = [text for text in iter_reports(args.sources) if text.strip()]
    if not texts:
        from maco_cxr.errors import DataError

        raise DataError(f"no report text found in {', '.join(map(str, args.sources))}")
    tokenizer = ReportTokenizer.train(texts, vocab_size=args.vocab_size, min_frequency=args.min_frequency)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(args.out)
    print(f"wrote {args.out}: {tokenizer.vocab_size} tokens from {len(texts)} reports")
    return 0
