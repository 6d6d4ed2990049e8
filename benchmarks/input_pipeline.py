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

First, on the first ``--prepare-images`` files, it prints what ``prepare`` costs per image
next to a bare PIL decode + BOX resize of the same files (stages interleaved, median of
``--repeats``): ``read_image``, ``Letterbox.apply_image`` alone (on decoded arrays), the float64
cumulative-sum resampler it replaced, and ``prepare_dataset`` in one process (``workers=0``,
fresh store, fsync included), with the ratio prepare / (decode + BOX). A prepare run also has
a fixed cost (~10 ms: folders, five fsyncs, JSON) spread over the images, so time at least ~64.
``--prepare-only`` stops there.
"""

from __future__ import annotations

import argparse
import os
import platform
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
from maco_cxr.data.io import read_image
from maco_cxr.data.letterbox import Letterbox
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
    sampler = RandomSampler(store, replacement=True, num_samples=samples, generator=torch.Generator().manual_seed(seed))
    loader = make_loader(store, 64, shuffle=False, seed=seed, workers=workers, drop_last=False, sampler=sampler)

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
    recipe = transforms.Compose(
        steps
        + [
            transforms.RandomHorizontalFlip(),
            transforms.RandomAffine(20, scale=(0.8, 1.2)),
            transforms.Grayscale(3),
            transforms.ToTensor(),
            transforms.Normalize([0.4978] * 3, [0.2449] * 3),
        ]
    )

    def one_pass() -> None:
        for path in paths:
            with Image.open(path) as image:
                recipe(image.convert("L"))

    return len(paths) / timed(one_pass, repeats=1)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _legacy_resample(values: np.ndarray, axis: int, n_out: int, step: float, stop: int) -> np.ndarray:
    """The letterbox resampler before the fast path: a float64 cumulative sum of the whole axis
    for area, gathers for bilinear (kept here only as a timing reference)."""
    source = np.ascontiguousarray(np.moveaxis(values, axis, -1))
    edges = np.arange(n_out + 1, dtype=np.float64) * step
    if step <= 1.0:
        centres = np.clip((edges[:-1] + edges[1:]) / 2 - 0.5, 0, stop - 1)
        lower = np.floor(centres).astype(np.int64)
        upper = np.minimum(lower + 1, stop - 1)
        weight = centres - lower
        out = source[..., lower] * (1.0 - weight) + source[..., upper] * weight
    else:
        integral = np.zeros(source.shape[:-1] + (stop + 1,), dtype=np.float64)
        np.cumsum(source, axis=-1, dtype=np.float64, out=integral[..., 1:])
        clipped = np.clip(edges, 0, stop)
        cell = np.minimum(np.floor(clipped).astype(np.int64), stop - 1)
        frac = clipped - cell
        at_edges = integral[..., cell] * (1.0 - frac) + integral[..., cell + 1] * frac
        out = np.diff(at_edges, axis=-1) / np.diff(clipped)
    return np.moveaxis(out, -1, axis)


def legacy_letterbox(box: Letterbox, image: np.ndarray) -> np.ndarray:
    """``box.apply_image`` as it was computed before (float64, columns then rows)."""
    step = 1.0 / box.scale
    columns = _legacy_resample(image, 1, box.new_width, step, box.src_width)
    content = _legacy_resample(columns, 0, box.new_height, step, box.src_height)
    canvas = np.zeros((box.size, box.size), dtype=np.uint8)
    canvas[box.pad_top : box.pad_top + box.new_height, box.pad_left : box.pad_left + box.new_width] = np.rint(
        np.clip(content, 0, 255)
    )
    return canvas


def prepare_cost(paths: list[Path], size: int, work: Path, repeats: int) -> list[tuple[str, float]]:
    """Seconds per image of each stage, median over ``repeats`` interleaved passes."""
    dataset = ChestXrayDataset([Record(image_path=p, report="x") for p in paths])
    arrays = [read_image(p) for p in paths]
    boxes = [Letterbox.fit(*a.shape, size) for a in arrays]

    def pil_decode_box() -> None:
        for path, box in zip(paths, boxes):
            with Image.open(path) as image:
                np.asarray(image.resize((box.new_width, box.new_height), Image.BOX))

    def decode() -> None:
        for path in paths:
            read_image(path)

    def apply() -> None:
        for box, array in zip(boxes, arrays):
            box.apply_image(array)

    def legacy() -> None:
        for box, array in zip(boxes, arrays):
            legacy_letterbox(box, array)

    def prepare() -> None:
        shutil.rmtree(work / "store_serial", ignore_errors=True)
        prepare_dataset(dataset, work / "store_serial", size, workers=0, shard_size=256)

    stages = [
        ("PIL decode + BOX resize (+ asarray)", pil_decode_box),
        ("read_image (decode as prepare does)", decode),
        ("Letterbox.apply_image (decoded input)", apply),
        ("float64 cumsum letterbox (before)", legacy),
        ("prepare_dataset, workers=0", prepare),
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in stages}
    for _name, fn in stages:  # warm-up: page cache, imports, first-call costs
        fn()
    for _ in range(repeats):
        for name, fn in stages:
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / len(paths))
    shutil.rmtree(work / "store_serial", ignore_errors=True)
    return [(name, statistics.median(times[name])) for name, _ in stages]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="folder of images (default: synthetic)")
    parser.add_argument("--n", type=int, default=256, help="synthetic images to write")
    parser.add_argument("--side", type=int, default=1024, help="synthetic image side")
    parser.add_argument("--size", type=int, default=448, help="store resolution")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--batch", type=int, default=256, help="augmentation batch")
    parser.add_argument("--loader-samples", type=int, default=2048)
    parser.add_argument("--pil-images", type=int, default=48, help="images timed through the PIL recipe")
    parser.add_argument("--workdir", type=Path, help="keep PNGs and store here (default: tmp)")
    parser.add_argument("--prepare-images", type=int, default=64, help="images timed in the prepare-cost comparison")
    parser.add_argument("--repeats", type=int, default=5, help="passes of that comparison")
    parser.add_argument("--prepare-only", action="store_true", help="print only the prepare-cost comparison")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        if args.source:
            paths = sorted(p for p in args.source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            paths = write_synthetic_pngs(work / "png", args.n, args.side, seed=0)
        cost = prepare_cost(paths[: args.prepare_images], args.size, work, args.repeats)
        side = Image.open(paths[0]).size
        print(
            f"prepare cost per image: {len(paths[: args.prepare_images])} images, "
            f"{side[0]}x{side[1]} -> {args.size}, median of {args.repeats} passes, "
            f"{cpu_model()}"
        )
        print(f"| {'stage':<40} | {'ms/image':>9} | {'img/s':>7} |")
        print(f"|{'-' * 42}|{'-' * 10}:|{'-' * 8}:|")
        for stage, seconds in cost:
            print(f"| {stage:<40} | {seconds * 1e3:>9.2f} | {1 / seconds:>7,.0f} |")
        print(f"prepare / (PIL decode + BOX) = {cost[-1][1] / cost[0][1]:.2f}")
        if args.prepare_only:
            return
        report_text = "The lungs are clear. No pleural effusion. Heart size is normal."
        dataset = ChestXrayDataset(
            [Record(image_path=p, report=report_text, labels=np.zeros(14, np.float32)) for p in paths]
        )
        shutil.rmtree(work / "store", ignore_errors=True)  # time a full prepare, not a resume
        start = time.perf_counter()
        report = prepare_dataset(dataset, work / "store", args.size, workers=args.workers, shard_size=256)
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
        rows.append(
            (
                f"prepare (decode + letterbox {args.size} + write)",
                f"{args.workers} proc",
                report.n_ok / prepare_s,
                report.n_ok / prepare_s / max(1, args.workers),
            )
        )
        for workers in sorted({0, args.workers}):
            rate = loader_rate(store, workers, args.loader_samples, seed=0)
            rows.append(
                (
                    "store -> uint8 batch (DataLoader)",
                    "1 proc" if workers == 0 else f"{workers} workers",
                    rate,
                    rate / max(1, workers),
                )
            )
        batch = torch.stack([store[i % len(store)]["image"] for i in range(args.batch)])
        threads = torch.get_num_threads()
        aug, norm = augment_rate(batch, torch.device("cpu"), repeats=3)
        rows.append((f"augment_batch B={args.batch}", f"cpu {threads} thr", aug, aug / threads))
        rows.append((f"normalize_batch B={args.batch} (eval)", f"cpu {threads} thr", norm, norm / threads))
        if torch.cuda.is_available():
            aug, norm = augment_rate(batch, torch.device("cuda"), repeats=10)
            name = torch.cuda.get_device_name()
            rows.append((f"augment_batch B={args.batch}", name, aug, float("nan")))
            rows.append((f"normalize_batch B={args.batch} (eval)", name, norm, float("nan")))
        pil_full = pil_recipe_rate(paths[: args.pil_images], args.size, resize=True)
        side = Image.open(paths[0]).size
        rows.append((f"PIL recipe from {side[0]}x{side[1]} PNG (+resize)", "1 proc", pil_full, pil_full))
        pil_small = pil_recipe_rate(small_paths, args.size, resize=False)
        rows.append((f"PIL recipe from {args.size} px PNG", "1 proc", pil_small, pil_small))

    print(
        f"images: {len(paths)} ({'synthetic' if not args.source else args.source}), "
        f"store {args.size}px = {args.size * args.size / 1024:.0f} KiB/image, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    print(f"| {'stage':<44} | {'where':<24} | {'img/s':>9} | {'img/s per core':>14} |")
    print(f"|{'-' * 46}|{'-' * 26}|{'-' * 10}:|{'-' * 15}:|")
    for stage, where, rate, per_core in rows:
        per = "-" if np.isnan(per_core) else f"{per_core:,.0f}"
        print(f"| {stage:<44} | {where:<24} | {rate:>9,.0f} | {per:>14} |")


if __name__ == "__main__":
    main()
