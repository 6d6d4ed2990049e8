"""Images per second of each family through the path `maco-cxr compare` runs (per-image preprocessing,
then the encoder), on phantoms, against MaCo in the same run.

Usage:
    python benchmarks/compare_throughput.py [--images 256] [--size 512] [--device cpu|cuda] [--batch 32]

The models are the fidelity fixtures' tiny random models in their authors' layouts (tests/assets/families),
so the figures measure each family's own preprocessing (BioViL's 512 px resize, MGCA's area resize, CheXzero's
Lanczos letterbox, ...) plus a small encoder: the part of a comparison that differs between families apart from
the encoder's size. Prints one line per family: images/s and the ratio to MaCo's rate in this run.
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
from pathlib import Path

import torch

from maco_cxr.data.synthetic import write_synthetic_dataset
from maco_cxr.families import load_family
from maco_cxr.inference import encode_images

ASSETS = Path(__file__).resolve().parents[1] / "tests" / "assets"
FAMILIES = ASSETS / "families"


def specs(work: Path) -> list[tuple[str, str, dict]]:
    chexzero = work / "chexzero_tiny.pt"
    chexzero.write_bytes(gzip.decompress((FAMILIES / "chexzero" / "chexzero_tiny.pt.gz").read_bytes()))
    return [
        ("maco", str(ASSETS / "official-maco-tiny" / "maco.pth"), {}),
        ("chexzero", str(chexzero), {}),
        ("biovil", str(FAMILIES / "biovil" / "biovil"), {"tokenizer": FAMILIES / "biovil" / "tokenizer"}),
        ("biovil-t", str(FAMILIES / "biovil" / "biovil-t"), {"tokenizer": FAMILIES / "biovil" / "tokenizer"}),
        ("mgca", str(FAMILIES / "mgca" / "vit_base.ckpt"), {"tokenizer": FAMILIES / "mgca" / "tokenizer"}),
        ("mrm", str(FAMILIES / "mrm" / "MRM.pth"), {}),
        ("biomedclip", str(FAMILIES / "biomedclip" / "open_clip_pytorch_model.bin"), {}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_synthetic_dataset(work / "phantoms", args.images, seed=0, size=args.size)
        paths = sorted((work / "phantoms" / "images").glob("*.png"))
        print(f"{len(paths)} phantoms of {args.size} px, batch {args.batch}, device {args.device}")
        baseline = None
        for family, path, options in specs(work):
            try:
                model = load_family(path, family, **options).to(args.device)
            except Exception as err:  # noqa: BLE001 - a family whose extra is missing is reported, the rest run
                print(f"{family:<11} skipped: {err}")
                continue
            encode_images(model, paths[: args.batch], batch_size=args.batch, device=args.device)  # warm-up
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            encode_images(model, paths, batch_size=args.batch, device=args.device)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            rate = len(paths) / (time.perf_counter() - start)
            baseline = baseline or rate
            print(f"{family:<11} {rate:8.1f} images/s   x{rate / baseline:5.2f} of maco")


if __name__ == "__main__":
    main()
