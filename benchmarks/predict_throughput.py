"""`predict` throughput with and without grounding phrases, on real radiographs.

Copies the shipped real radiographs (``tests/assets/cxr-real/images``, 400-512 px PNGs), or
``--size`` px upscales of them, ``--n`` times in all under distinct names, and times
:func:`maco_cxr.tasks.predict.predict` with a tiny random model (workers 0, the CPU):
``--classes nih --embeddings`` alone, with one phrase, and with one phrase and overlays. Each
configuration runs ``--repeats`` times (interleaved, after one warm-up run) into a fresh folder;
the best images/s is printed (the machine is shared: the best run is the least disturbed one).
It prints and never asserts.

    python benchmarks/predict_throughput.py --n 64
    python benchmarks/predict_throughput.py --n 64 --size 1024
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from maco_cxr.hub import create_model, save_pretrained
from maco_cxr.models.config import preset
from maco_cxr.tasks.predict import predict

ASSETS = Path(__file__).resolve().parent.parent / "tests" / "assets" / "cxr-real" / "images"


def _cpu() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")]
    name = names[0] if names else "unknown CPU"
    return f"{name}, avx512f {'yes' if 'avx512f' in text.split() else 'no'}"


def _images(folder: Path, n: int, size: int | None) -> None:
    sources = sorted(ASSETS.glob("*.png"))
    folder.mkdir(parents=True)
    for i in range(n):
        image = Image.open(sources[i % len(sources)])
        if size is not None:
            scale = size / max(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
        image.save(folder / f"{i:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64, help="images (default 64)")
    parser.add_argument("--size", type=int, default=None, help="longer side in px (default: as shipped)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"CPU: {_cpu()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_pretrained(create_model(preset("tiny")), root / "model")
        _images(root / "images", args.n, args.size)
        configurations = {
            "--classes nih --embeddings": {},
            "+ one --phrase": {"phrases": ["pleural effusion"]},
            "+ one --phrase --overlays": {"phrases": ["pleural effusion"], "overlays": True},
        }
        run = 0

        def once(extra: dict) -> float:
            nonlocal run
            run += 1
            return predict(
                root / "model",
                [root / "images"],
                root / f"out{run}",
                classes="nih",
                embeddings=True,
                batch_size=args.batch,
                **extra,
            ).images_per_second

        once({})  # warm-up: the first forward of a process initialises the CPU kernels
        rates = {label: 0.0 for label in configurations}
        for _ in range(args.repeats):  # interleaved, so that a busy moment of the machine hits all alike
            for label, extra in configurations.items():
                rates[label] = max(rates[label], once(extra))
        for label, rate in rates.items():
            print(f"{label:32s} {rate:7.1f} images/s (best of {args.repeats}, {args.n} images)")
        base = rates["--classes nih --embeddings"]
        for label, rate in list(rates.items())[1:]:
            print(f"{label}: {base / rate:.2f}x the time of the run without phrases")
        sizes = [Image.open(p).size for p in (root / "images").glob("*.png")]
        print(f"mean size (width, height) {np.mean(sizes, axis=0).round(1).tolist()} px")


if __name__ == "__main__":
    main()
