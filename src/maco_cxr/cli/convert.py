"""`maco-cxr convert`: official MaCo or MAE weights -> this package's model directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from maco_cxr.cli._paths import existing_file


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert an official maco.pth (or MAE ViT weights) to this package's format",
        description="Convert the official MaCo checkpoint to model.safetensors + config.json + tokenizer.json. "
        "Sizes are read from tensor shapes. Head counts are not stored in the file: known checkpoints (the "
        "released maco.pth) get theirs from a registry; for any other file pass --vision-heads, --text-heads "
        "and --decoder-heads (else 64-dim ViT/BERT heads and 128-dim decoder heads are assumed, with a "
        "warning). The file's SHA-256 is printed; --sha256 checks it before loading.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--official", type=existing_file, help="official maco.pth ({'model': state_dict})")
    source.add_argument("--mae", type=existing_file, help="MAE weights ({'model': timm keys}) to initialise a preset")
    parser.add_argument("--out", type=Path, required=True, help="output model directory")
    parser.add_argument("--text-heads", type=int, help="BERT attention heads (default: registry, else width / 64)")
    parser.add_argument("--vision-heads", type=int, help="ViT attention heads (default: registry, else width / 64)")
    parser.add_argument("--decoder-heads", type=int, help="MAE decoder heads (default: registry, else width / 128)")
    parser.add_argument("--sha256", metavar="HEX", help="expected SHA-256 of the input file, checked before loading")
    parser.add_argument("--preset", default="base", help="preset to initialise with --mae (default: base)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maco_cxr.hub import (
        KNOWN_CHECKPOINTS,
        create_model,
        load_mae_weights,
        load_official,
        save_pretrained,
        verify_sha256,
    )
    from maco_cxr.models.config import preset

    source = args.official if args.official is not None else args.mae
    digest = verify_sha256(source, args.sha256)
    print(f"sha256 {digest}  {source}" + (" (matches --sha256)" if args.sha256 else ""))
    origin = {"file": source.name, "sha256": digest, "format": "official" if args.official else "mae"}
    if args.official is not None:
        model, report = load_official(
            args.official, text_heads=args.text_heads, vision_heads=args.vision_heads, decoder_heads=args.decoder_heads
        )
        known = next((k for k in KNOWN_CHECKPOINTS if k.name == report.known_checkpoint), None)
        origin["known_checkpoint"] = report.known_checkpoint
        if known is not None:
            origin["training_data"] = known.training_data
    else:
        model = create_model(preset(args.preset))
        report = load_mae_weights(model, args.mae)
    print(report.summary())
    save_pretrained(model, args.out, extra_config={"converted_from": origin})
    c = model.config
    print(
        f"wrote {args.out}: ViT {c.vision.embed_dim}x{c.vision.depth} ({c.vision.num_heads} heads), "
        f"decoder {c.decoder.embed_dim}x{c.decoder.depth} ({c.decoder.num_heads} heads), BERT "
        f"{c.text.hidden_size}x{c.text.num_layers} ({c.text.num_heads} heads), "
        f"super-resolution={c.super_resolution}"
    )
    return 0
