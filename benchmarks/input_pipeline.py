"""Input pipeline throughput: prepared store + on-device augmentation vs the official PIL recipe.

Usage:
    python benchmarks/input_pipeline.py [--source DIR] [--n 256] [--workers N] [--batch 256]

Without ``--source`` it writes ``--n`` synthetic 1024x1024 PNGs (smooth noise plus grain, so
they compress like radiographs rather than like flat images). It then prepares a store at
``--size`` and measures, in one run:
1. decode + collate from the store (DataLoader, batch 64): one process, then N workers;
2. the batched augmentation (flip + affine + normalise, one grid_sample) at ``--batch`` on the
   CPU and, if present, on CUDA;
3. the official per-image PIL recipe (RandomHorizontalFlip, RandomAffine(20, scale=(0.8, 1.2)),
   Grayscale(3), ToTensor, Normalize) on the source PNGs (decoded and resized to ``--size``
   first) and on PNGs already at ``--size`` (what a pre-resized dataset costs).
It prints figures and never asserts; the store is read from the page cache (warm). With CUDA
the loader pins memory, so its figures include the copy into pinned memory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import RandomSampler
from torchvision import transforms

from maco_cxr.data.augment import AugmentConfig, augment_batch, normalize_batch
from maco_cxr.data.datasets.base import ChestXrayDataset, Record
from maco_cxr.data.prepare import prepare_dataset
from maco_cxr.data.store import PreparedStore, make_loader

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}


def write_synthetic_pngs(folder: Path, n: int, side: int, seed: int) -> list[Path]:
    """``n`` grey ``side x side`` PNGs of smooth random structure plus sensor-like grain."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"synthetic_{i:04d}.png"
        if not path.exists():
            coarse = Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8))
            smooth = np.asarray(coarse.resize((side, side), Image.BICUBIC), dtype=np.float32)
            grain = rng.normal(0.0, 3.0, (side, side)).astype(np.float32)
            Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loader_rate(store: PreparedStore, workers: int, samples: int, seed: int) -> float:
    """Images/s of decode + collate through make_loader (second pass, workers warm)."""
    sampler = RandomSampler(store, replacement=True, num_samples=samples,
                            generator=torch.Generator().manual_seed(seed))
    loader = make_loader(store, 64, shuffle=False, seed=seed, workers=workers, drop_last=False,
                         sampler=sampler)

    def one_pass() -> None:
        for _ in loader:  # samples are copied out of the memory map: nothing is left lazy
            pass

    return samples / timed(one_pass, repeats=1)


def augment_rate(images: torch.Tensor, device: torch.device, repeats: int) -> tuple[float, float]:
    """Images/s of augment_batch and of normalize_batch on ``device``."""
    images = images.to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    cfg = AugmentConfig()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run_augment() -> None:
        augment_batch(images, cfg, generator)
        sync()

    def run_normalize() -> None:
        normalize_batch(images).contiguous()  # materialise like a model input would
        sync()

    n = images.shape[0]
    return n / timed(run_augment, repeats), n / timed(run_normalize, repeats)


def pil_recipe_rate(paths: list[Path], size: int, resize: bool) -> float:
    """Images/s of the official per-image recipe in one process, decoding each PNG."""
    steps: list[Callable] = [transforms.Resize((size, size))] if resize else []
    recipe = transforms.Compose(steps + [
        transforms.RandomHorizontalFlip(),
        transforms.RandomAffine(20, scale=(0.8, 1.2)),
        transforms.Grayscale(3),
        transforms.ToTensor(),
        transforms.Normalize([0.4978] * 3, [0.2449] * 3),
    ])

    def one_pass() -> None:
        for path in paths:
            with Image.open(path) as image:
                recipe(image.convert("L"))

    return len(paths) / timed(one_pass, repeats=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="folder of images (default: synthetic)")
    parser.add_argument("--n", type=int, default=256, help="synthetic images to write")
    parser.add_argument("--side", type=int, default=1024, help="synthetic image side")
    parser.add_argument("--size", type=int, default=448, help="store resolution")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--batch", type=int, default=256, help="augmentation batch")
    parser.add_argument("--loader-samples", type=int, default=2048)
    parser.add_argument("--pil-images", type=int, default=48,
                        help="images timed through the PIL recipe")
    parser.add_argument("--workdir", type=Path, help="keep PNGs and store here (default: tmp)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        if args.source:
            paths = sorted(p for p in args.source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths = write_synthetic_pngs(work / "png", args.n, args.side, seed=0)
        report_text = "The lungs are clear. No pleural effusion. Heart size is normal."
        dataset = ChestXrayDataset([Record(image_path=p, report=report_text,
                                           labels=np.zeros(14, np.float32)) for p in paths])
        shutil.rmtree(work / "store", ignore_errors=True)  # time a full prepare, not a resume
        start = time.perf_counter()
        report = prepare_dataset(dataset, work / "store", args.size, workers=args.workers,
                                 shard_size=256)
        prepare_s = time.perf_counter() - start
        store = PreparedStore(work / "store")
        small = work / f"png{args.size}"
        small.mkdir(exist_ok=True)
        small_paths = []
        for i in range(min(args.pil_images, len(store))):
            path = small / f"{i:04d}.png"
            Image.fromarray(store[i]["image"][0].numpy()).save(path)
            small_paths.append(path)

        rows: list[tuple[str, str, float, float]] = []
        rows.append((f"prepare (decode + letterbox {args.size} + write)",
                     f"{args.workers} proc", report.n_ok / prepare_s,
                     report.n_ok / prepare_s / max(1, args.workers)))
        for workers in sorted({0, args.workers}):
            rate = loader_rate(store, workers, args.loader_samples, seed=0)
            rows.append(("store -> uint8 batch (DataLoader)",
                         "1 proc" if workers == 0 else f"{workers} workers", rate,
                         rate / max(1, workers)))
        batch = torch.stack([store[i % len(store)]["image"] for i in range(args.batch)])
        threads = torch.get_num_threads()
        aug, norm = augment_rate(batch, torch.device("cpu"), repeats=3)
        rows.append((f"augment_batch B={args.batch}", f"cpu {threads} thr", aug, aug / threads))
        rows.append((f"normalize_batch B={args.batch} (eval)", f"cpu {threads} thr", norm,
                     norm / threads))
        if torch.cuda.is_available():
            aug, norm = augment_rate(batch, torch.device("cuda"), repeats=10)
            name = torch.cuda.get_device_name()
            rows.append((f"augment_batch B={args.batch}", name, aug, float("nan")))
            rows.append((f"normalize_batch B={args.batch} (eval)", name, norm, float("nan")))
        pil_full = pil_recipe_rate(paths[: args.pil_images], args.size, resize=True)
        side = Image.open(paths[0]).size
        rows.append((f"PIL recipe from {side[0]}x{side[1]} PNG (+resize)", "1 proc", pil_full,
                     pil_full))
        pil_small = pil_recipe_rate(small_paths, args.size, resize=False)
        rows.append((f"PIL recipe from {args.size} px PNG", "1 proc", pil_small, pil_small))

    print(f"images: {len(paths)} ({'synthetic' if not args.source else args.source}), "
          f"store {args.size}px = {args.size * args.size / 1024:.0f} KiB/image, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"| {'stage':<44} | {'where':<24} | {'img/s':>9} | {'img/s per core':>14} |")
    print(f"|{'-' * 46}|{'-' * 26}|{'-' * 10}:|{'-' * 15}:|")
    for stage, where, rate, per_core in rows:
        per = "-" if np.isnan(per_core) else f"{per_core:,.0f}"
        print(f"| {stage:<44} | {where:<24} | {rate:>9,.0f} | {per:>14} |")


if __name__ == "__main__":
    main()
