"""End-to-end pre-training rate against the bare step, with the rate of every input stage.

In one run, on a prepared store of phantoms (448 px by default, the paper's input):

1. decode + collate: the pre-training DataLoader (memory-mapped store -> uint8 batch, report
   sentence draw, tokenising) with ``--workers`` processes, images/s;
2. host -> device copy of a pinned uint8 batch (CUDA only);
3. on-device augmentation + normalisation (``augment_batch``), images/s;
4. the bare optimizer step on an on-device batch (what ``benchmarks/pretrain_throughput.py``
   times);
5. ``maco_cxr.pretraining.pretrain`` itself from the store for ``--steps`` steps (its logged
   images/s over the last half of the run, after compilation and worker start-up),
   and the ratio 5 / 4 (the target: >= 90 % at batch 256 on one GPU: the input pipeline never
   binds).

It prints figures and never asserts.

    python benchmarks/pretrain_end_to_end.py --preset tiny --batch 16 --images 256 --steps 30
    python benchmarks/pretrain_end_to_end.py --preset base --batch 256 --device cuda --workers 12 --steps 40
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_throughput import _inputs, _ours_step, _sync, _time  # noqa: E402

from maco_cxr.config import load_config  # noqa: E402
from maco_cxr.data.augment import AugmentConfig, augment_batch  # noqa: E402
from maco_cxr.data.datasets import build_dataset  # noqa: E402
from maco_cxr.data.prepare import prepare_dataset  # noqa: E402
from maco_cxr.data.synthetic import write_synthetic_dataset  # noqa: E402
from maco_cxr.data.tokenizer import ReportTokenizer  # noqa: E402
from maco_cxr.hub import create_model  # noqa: E402
from maco_cxr.models.config import preset  # noqa: E402
from maco_cxr.pretraining.config import PretrainConfig  # noqa: E402
from maco_cxr.pretraining.data import PairDataset, ResumableSampler, StoreSource, make_loader  # noqa: E402
from maco_cxr.pretraining.pretrain import pretrain  # noqa: E402


def _store(folder: Path, n: int, size: int, workers: int) -> Path:
    write_synthetic_dataset(folder / "phantoms", n, seed=0, size=size, split_fractions=(1.0, 0.0, 0.0), workers=workers)
    prepare_dataset(build_dataset("manifest", folder / "phantoms"), folder / "store", size=size, workers=workers)
    return folder / "store"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--batch", type=int, default=16, help="images per step (one process)")
    parser.add_argument("--images", type=int, default=512, help="phantoms in the store")
    parser.add_argument("--steps", type=int, default=30, help="steps of the end-to-end run")
    parser.add_argument("--workers", type=int, default=2, help="loader processes")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", choices=("auto", "true", "false"), default="auto")
    args = parser.parse_args(argv)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    config = preset(args.preset)
    size = config.input_size
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(
        f"preset {args.preset}: {size} px input, batch {args.batch}, {args.workers} loader workers, "
        f"device {device} ({where})",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = _store(Path(tmp), args.images, size, max(1, args.workers))
        from maco_cxr.data.store import PreparedStore

        source = StoreSource(PreparedStore(store), range(args.images))
        dataset = PairDataset(source, size, seed=0)
        batches = len(dataset) // args.batch
        sampler = ResumableSampler(len(dataset), args.batch, batches, seed=0)
        tokenizer = ReportTokenizer.from_file(None, config.text.max_length)
        loader = make_loader(
            dataset, sampler, tokenizer, workers=args.workers, pin_memory=device.type == "cuda", seed=0
        )
        for _ in loader:  # warm the page cache and the workers
            pass
        start = time.perf_counter()
        pinned = None
        for batch in loader:
            pinned = batch["image"]
        decode = batches * args.batch / (time.perf_counter() - start)
        print(f"1. store -> uint8 batch + tokens, {args.workers} workers          {decode:10.1f} images/s")
        if device.type == "cuda":
            copy = args.batch / _time(lambda: pinned.to(device, non_blocking=True), 20, 3, device)
            print(f"2. pinned host -> device copy                          {copy:10.1f} images/s")
        images = pinned.to(device)
        generator = torch.Generator(device).manual_seed(0)
        augment = AugmentConfig()
        rate = args.batch / _time(lambda: augment_batch(images, augment, generator), 10, 2, device)
        print(f"3. on-device augmentation + normalisation             {rate:10.1f} images/s")
        torch.manual_seed(0)
        model = create_model(config).to(device).train()
        fake_images, tokens = _inputs(config, args.batch, device)
        compiled = args.compile == "true" or (args.compile == "auto" and device.type == "cuda")
        bare = args.batch / _time(_ours_step(model, fake_images, tokens, device, compiled), 8, 3, device)
        print(
            f"4. bare optimizer step{' (compiled)' if compiled else ''}                          {bare:10.1f} images/s"
        )
        del model
        _sync(device)
        run = Path(tmp) / "run"
        overrides = [
            f"model.preset={args.preset}",
            "data.source=store",
            f"data.path={store}",
            "data.split=null",
            f"data.workers={args.workers}",
            f"optim.batch_size={args.batch}",
            "optim.accum_steps=1",
            f"optim.max_steps={args.steps}",
            "optim.warmup_steps=1",
            f"runtime.device={device.type}",
            f"runtime.output_dir={run}",
            "runtime.log_every=1",
            f"runtime.save_every={args.steps}",
            f"runtime.compile={args.compile}",
            "runtime.resume=never",
        ]
        pretrain(load_config(PretrainConfig, None, overrides))
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        steady = [r["images_per_s"] for r in rows[len(rows) // 2 :]]
        end_to_end = float(np.median(steady))
        print(
            f"5. maco_cxr.pretraining.pretrain from the store (steady state) {end_to_end:10.1f} images/s   "
            f"= {100 * end_to_end / bare:.0f} % of the bare step"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
