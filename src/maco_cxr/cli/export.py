"""`maco-cxr export`: the image and text encoders as ONNX / TorchScript graphs plus their contract."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from maco_cxr.cli._paths import model_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export the image and text encoders as ONNX (or TorchScript) graphs",
        description="Write image_encoder (normalised float [N,3,S,S]), image_encoder_uint8 (grey uint8 "
        "[N,1,H,W] of any size: normalised, resized and cropped inside) and text_encoder (input_ids, "
        "attention_mask int64 [N,L]) graphs with a dynamic batch, plus tokenizer.json, preprocessing.json, "
        "export.json and MODEL_CARD.md, into one folder "
        "written atomically. Every graph is checked against eager PyTorch (max abs difference <= --atol). "
        'ONNX needs onnx, onnxscript and onnxruntime: pip install "maco-cxr[export]".',
    )
    parser.add_argument(
        "--model",
        required=True,
        type=model_path,
        metavar="M",
        help="model directory (config.json + model.safetensors), official maco.pth, or a named checkpoint "
        "(maco-base: see maco-cxr download)",
    )
    parser.add_argument(
        "--format",
        dest="formats",
        action="append",
        choices=("onnx", "torchscript"),
        metavar="{onnx,torchscript}",
        help="graph format; repeat for both (default: onnx)",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17 (default 18)")
    parser.add_argument(
        "--atol", type=float, default=1e-4, help="largest allowed difference from eager PyTorch (default 1e-4)"
    )
    parser.add_argument("--no-check", action="store_true", help="skip running the exported graphs")
    parser.add_argument("--text-heads", type=int, metavar="N", help="BERT heads of an official maco.pth")
    parser.add_argument("--vision-heads", type=int, metavar="N", help="ViT heads of an official maco.pth")
    parser.add_argument("--decoder-heads", type=int, metavar="N", help="MAE decoder heads of an official maco.pth")
    parser.add_argument(
        "--sha256", metavar="HEX", help="expected SHA-256 of the checkpoint (model.safetensors for a directory)"
    )
    parser.set_defaults(func=run)


def _load(args: argparse.Namespace) -> tuple[Any, dict[str, Any] | None]:
    """The model and its recorded metadata (config.json, or what the registry knows of a maco.pth)."""
    import json

    from maco_cxr.hub import CONFIG_NAME, KNOWN_CHECKPOINTS, load, load_official, resolve_model_path

    path: Path = resolve_model_path(args.model)
    if path.is_file() and path.suffix != ".safetensors":
        model, report = load_official(
            path,
            text_heads=args.text_heads,
            vision_heads=args.vision_heads,
            decoder_heads=args.decoder_heads,
            sha256=args.sha256,
        )
        known = next((k for k in KNOWN_CHECKPOINTS if k.name == report.known_checkpoint), None)
        origin = {
            "file": path.name,
            "known_checkpoint": report.known_checkpoint,
            "training_data": known.training_data if known else None,
        }
        return model, {"converted_from": origin}
    model = load(path, sha256=args.sha256)
    config = (path if path.is_dir() else path.parent) / CONFIG_NAME
    return model, json.loads(config.read_text())


def run(args: argparse.Namespace) -> int:
    from maco_cxr.export import ExportError, export

    model, metadata = _load(args)
    try:
        result = export(
            model,
            args.out,
            formats=tuple(args.formats or ("onnx",)),
            opset=args.opset,
            check=not args.no_check,
            atol=args.atol,
            metadata=metadata,
            source=args.model.name,
        )
    except ImportError as err:  # onnx / onnxscript / onnxruntime missing: the message has the install hint
        raise ExportError(str(err)) from err
    for fmt, graphs in result.max_abs_diff.items():
        for graph, diffs in graphs.items():
            shown = ", ".join(f"{name} {value:.2g}" for name, value in diffs.items())
            print(f"{graph} ({fmt}): max abs difference from PyTorch: {shown}")
    print(f"wrote {result.directory}: {', '.join(result.files)}")
    return 0
