"""`maco-cxr convert`: official MaCo or MAE weights -> this package's model directory."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert an official maco.pth (or MAE ViT weights) to this package's format",
        description="Convert the official MaCo checkpoint to model.safetensors + config.json + tokenizer.json. "
        "Sizes are read from tensor shapes; head counts are not stored in the file and default to the "
        "released model's (64-dim heads in the ViT and BERT, 128-dim in the decoder).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--official", type=Path, help="official maco.pth ({'model': state_dict})")
    source.add_argument("--mae", type=Path, help="MAE weights ({'model': timm keys}) to initialise a preset")
    parser.add_argument("--out", type=Path, required=True, help="output model directory")
    parser.add_argument("--text-heads", type=int, help="BERT attention heads (default: width / 64)")
    parser.add_argument("--vision-heads", type=int, help="ViT attention heads (default: width / 64)")
    parser.add_argument("--decoder-heads", type=int, help="MAE decoder heads (default: width / 128)")
    parser.add_argument("--preset", default="base", help="preset to initialise with --mae (default: base)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from maco_cxr.models.config import preset
    from maco_cxr.hub import create_model, load_mae_weights, load_official, save_pretrained
    from maco_cxr.models.maco import MacoModel

    if args.official is not None:
        model, report = load_official(args.official, text_heads=args.text_heads,
                                      vision_heads=args.vision_heads, decoder_heads=args.decoder_heads)
    else:
        model = create_model(preset(args.preset))
        report = load_mae_weights(model, args.mae)
    print(report.summary())
    save_pretrained(model, args.out)
    c = model.config
    print(f"wrote {args.out}: ViT {c.vision.embed_dim}x{c.vision.depth} ({c.vision.num_heads} heads), "
          f"decoder {c.decoder.embed_dim}x{c.decoder.depth}, BERT {c.text.hidden_size}x{c.text.num_layers} "
          f"({c.text.num_heads} heads), super-resolution={c.super_resolution}")
    return 0
