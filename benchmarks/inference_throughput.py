"""Inference throughput: image embeddings through maco-cxr's one inference path.

Measured in one run, on random images (and on files when ``--files`` is given):

1. ``maco_cxr.encode_images`` on normalised ``[B, 3, 224, 224]`` batches (bf16 autocast on
   CUDA) next to a plain forward of the same-shape ViT written with timm (when timm is
   installed: ``pip install timm``), whose ratio should be ~1 (no overhead of ours);
2. :func:`maco_cxr.inference.embed_dataset` from a prepared store (uint8 letterboxed images
   read by memory map, decoded and resized in ``--workers`` loader processes), the path
   ``zeroshot`` / ``retrieve`` / ``predict`` take;
3. with ``--files DIR``: the same from PNG/JPEG/DICOM files, per decoding worker.

It prints images/s and never asserts.

    python benchmarks/inference_throughput.py --preset tiny --batch 64
    python benchmarks/inference_throughput.py --preset base --batch 256 --device cuda --workers 8
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from maco_cxr.hub import create_model
from maco_cxr.inference import autocast, embed_dataset, encode_images
from maco_cxr.models.config import preset


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn: Callable[[], object], images: int, repeats: int, device: torch.device) -> float:
    """Images/s of ``fn`` (median of ``repeats`` after one warm-up call)."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return images / float(np.median(times))


def _timm_vit(config, device: torch.device) -> torch.nn.Module | None:
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        return None
    vision = config.vision
    model = VisionTransformer(
        img_size=vision.img_size,
        patch_size=vision.patch_size,
        embed_dim=vision.embed_dim,
        depth=vision.depth,
        num_heads=vision.num_heads,
        mlp_ratio=vision.mlp_ratio,
        num_classes=0,
        global_pool="avg",
        class_token=True,
        qkv_bias=True,
    )
    return model.to(device).eval()


def _cpu_model() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
        return next(
            (line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), platform.processor()
        )
    except OSError:
        return platform.processor()


def _write_store(folder: Path, n: int, size: int) -> Path:
    """``n`` random grey 1024 px images prepared into a store at ``size``."""
    from PIL import Image

    from maco_cxr.data.datasets import build_dataset
    from maco_cxr.data.prepare import prepare_dataset

    rng = np.random.default_rng(0)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = ["image_path,report"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (1024, 1024), dtype=np.uint8)).save(images / f"{i:05d}.png")
        rows.append(f"images/{i:05d}.png,")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    prepare_dataset(build_dataset("manifest", folder), folder / "store", size=size, workers=0)
    return folder / "store"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes for the store / file runs")
    parser.add_argument("--store-images", type=int, default=512, help="images in the synthetic store")
    parser.add_argument("--files", type=Path, help="a folder of PNG/JPEG/DICOM files to embed as well")
    args = parser.parse_args(argv)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{_cpu_model()}, {torch.get_num_threads()} threads"
    )
    print(f"preset {args.preset}, batch {args.batch}, device {device} ({where}), torch {torch.__version__}")
    torch.manual_seed(0)
    config = preset(args.preset)
    model = create_model(config).to(device).eval()
    x = torch.randn(args.batch, 3, config.vision.img_size, config.vision.img_size)
    ours = _rate(lambda: encode_images(model, x, batch_size=args.batch), args.batch, args.repeats, device)
    print(f"encode_images (normalised input, CPU tensors in and out)   {ours:10.1f} images/s")
    reference = _timm_vit(config, device)
    if reference is None:
        print("plain timm ViT of the same shape                           (pip install timm to compare)")
    else:
        x_device = x.to(device)

        def plain() -> None:
            with torch.inference_mode(), autocast(device):
                reference(x_device).float().cpu()

        theirs = _rate(plain, args.batch, args.repeats, device)
        print(
            f"plain timm ViT of the same shape (input already on device)   {theirs:10.1f} images/s   "
            f"ratio ours/timm {ours / theirs:.2f}"
        )
    with tempfile.TemporaryDirectory() as tmp:
        store = _write_store(Path(tmp), args.store_images, 448)
        from maco_cxr.tasks.finetune.splits import StoreDataset

        dataset = StoreDataset(store)
        start = time.perf_counter()
        embedded = embed_dataset(model, dataset, batch_size=args.batch, workers=args.workers, device=device)
        _sync(device)
        seconds = time.perf_counter() - start
        print(
            f"embed_dataset from a prepared 448 px store, {args.workers} workers  "
            f"{len(embedded.indices) / seconds:10.1f} images/s ({len(embedded.indices)} images, incl. worker start)"
        )
    if args.files is not None:
        from maco_cxr.data.datasets.base import ChestXrayDataset, Record

        paths = sorted(p for p in args.files.rglob("*") if p.is_file())
        files = ChestXrayDataset([Record(image_path=p) for p in paths], on_error="skip")
        for workers in sorted({0, args.workers}):
            start = time.perf_counter()
            embedded = embed_dataset(model, files, batch_size=args.batch, workers=workers, device=device)
            _sync(device)
            rate = len(embedded.indices) / (time.perf_counter() - start)
            per = f", {rate / workers:.1f} per worker" if workers else ""
            print(
                f"embed_dataset from {len(paths)} files, {workers} workers   {rate:10.1f} images/s{per} "
                f"({len(embedded.failures)} unreadable)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
