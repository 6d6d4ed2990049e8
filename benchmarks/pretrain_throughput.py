"""Pre-training throughput: one optimizer step of maco-cxr against an official-style baseline.

Both variants train the same model (same preset, batch, 448 px input, 100-token reports,
mask ratio) on random uint8 images for ``--steps`` timed steps after ``--warmup`` untimed ones:

- maco-cxr: attention through ``scaled_dot_product_attention`` (flash / memory-efficient
  kernels), bf16 autocast on CUDA, fused AdamW, on-device augmentation + normalisation of the
  uint8 batch included in the timing, optional ``--compile``.
- official style: eager softmax attention (``fused_attn=False`` in the ViT and BERT layers), fp16
  autocast with a GradScaler, foreach AdamW; its input arrives already augmented and normalised
  (the official code does that on the CPU in the loader), so this side of the comparison is
  generous to the baseline.

On CUDA it also prints model TFLOP/s (FLOPs of forward + backward counted with
``torch.utils.flop_counter``) and MFU against a measured bf16 matmul peak. On CPU both variants
run in fp32. The script only prints; it never asserts and exits 0 (out-of-memory is reported).

    python benchmarks/pretrain_throughput.py --preset tiny --batch 16
    python benchmarks/pretrain_throughput.py --preset base --batch 256 --device cuda [--compile]
"""

from __future__ import annotations

import argparse
import functools
import gc
import resource
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from maco_cxr.data.augment import AugmentConfig, augment_batch, normalize_batch
from maco_cxr.hub import create_model
from maco_cxr.models.config import MacoConfig, preset
from maco_cxr.models.maco import MacoModel
from maco_cxr.runtime.optim import build_adamw, param_groups


@dataclass
class Result:
    name: str
    images_per_s: float | None
    step_ms: float | None
    peak_mem_gb: float | None
    note: str = ""


def _inputs(
    config: MacoConfig, batch: int, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Random uint8 images ``[B, 1, S, S]`` and token batches with 30..100 real tokens."""
    g = torch.Generator().manual_seed(seed)
    size, length = config.input_size, config.text.max_length
    images = torch.randint(0, 256, (batch, 1, size, size), generator=g, dtype=torch.uint8)
    lengths = torch.randint(min(30, length), length + 1, (batch,), generator=g)
    ids = torch.randint(4, min(config.text.vocab_size, 30000), (batch, length), generator=g)
    ids[:, 0] = 2
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    tokens = {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return images.to(device), {k: v.to(device) for k, v in tokens.items()}


def _official_style(model: MacoModel) -> MacoModel:
    for block in [*model.visual.blocks, *model.decoder.blocks]:
        block.attn.fused_attn = False
    for layer in model.text.bert.encoder.layer:
        layer.attention.self.fused_attn = False
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def _ours_step(
    model: MacoModel, images: torch.Tensor, tokens: dict[str, torch.Tensor], device: torch.device, compile_model: bool
) -> Callable[[], None]:
    optimizer = build_adamw(
        param_groups(model, 0.05, no_decay_names=model.no_weight_decay()), 2.5e-4, (0.9, 0.95), device
    )
    if compile_model:
        model.compile()
    augment = AugmentConfig()
    generator = torch.Generator(device).manual_seed(0)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext
    num_patches = model.config.vision.num_patches

    def step() -> None:
        with torch.no_grad():
            pixels = augment_batch(images, augment, generator)
            noise = torch.rand(images.shape[0], num_patches, device=device, generator=generator)
        with autocast():
            out = model(pixels, tokens, noise)
        out["total"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _baseline_step(
    model: MacoModel, images: torch.Tensor, tokens: dict[str, torch.Tensor], device: torch.device
) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(
        param_groups(model, 0.05, no_decay_names=model.no_weight_decay()), lr=2.5e-4, betas=(0.9, 0.95), foreach=True
    )
    cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    pixels = normalize_batch(images).contiguous()
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if cuda else nullcontext
    num_patches = model.config.vision.num_patches

    def step() -> None:
        noise = torch.rand(images.shape[0], num_patches, device=device)
        with autocast():
            out = model(pixels, tokens, noise)
        scaler.scale(out["total"]).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def _run(
    name: str, build: Callable[[], Callable[[], None]], batch: int, steps: int, warmup: int, device: torch.device
) -> Result:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        seconds = _time(build(), steps, warmup, device)
    except torch.cuda.OutOfMemoryError:
        return Result(name, None, None, None, "out of memory")
    memory = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return Result(name, batch / seconds, seconds * 1e3, memory)


def model_flops(config: MacoConfig, batch: int, device: torch.device) -> float:
    """FLOPs of one forward + backward at ``batch`` (counted at a small batch, scaled)."""
    from torch.utils.flop_counter import FlopCounterMode

    small = min(batch, 4)
    model = create_model(config).to(device)
    images, tokens = _inputs(config, small, device)
    counter = FlopCounterMode(display=False)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    with counter, autocast:
        model(normalize_batch(images), tokens)["total"].backward()
    del model
    return counter.get_total_flops() * batch / small


def bf16_matmul_peak(device: torch.device, n: int = 8192, repeats: int = 20) -> float:
    """Measured dense bf16 matmul FLOP/s on this GPU."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    seconds = _time(lambda: torch.mm(a, b), repeats, 3, device)
    return 2 * n**3 / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--batch", type=int, default=16, help="images per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--compile", action="store_true", help="torch.compile the maco-cxr model")
    parser.add_argument(
        "--grad-checkpointing",
        action="store_true",
        help="activation checkpointing in the maco-cxr model (memory for compute)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="time maco-cxr only")
    args = parser.parse_args(argv)

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    config = preset(args.preset)
    print(
        f"preset {args.preset}: input {config.input_size} px, encoder {config.vision.img_size} px, "
        f"mask {config.mask_ratio}, text {config.text.max_length} tokens; batch {args.batch}; "
        f"{args.steps} timed steps after {args.warmup}; device {device}"
        + (
            f" ({torch.cuda.get_device_name(device)})"
            if device.type == "cuda"
            else f" ({torch.get_num_threads()} CPU threads)"
        ),
        flush=True,
    )

    results = []
    torch.manual_seed(0)
    model = create_model(config).to(device).train()
    model.set_grad_checkpointing(args.grad_checkpointing)
    images, tokens = _inputs(config, args.batch, device)
    name = (
        "maco-cxr (SDPA, "
        + ("bf16, fused AdamW" if device.type == "cuda" else "fp32, foreach AdamW")
        + (", compiled" if args.compile else "")
        + (", activation checkpointing" if args.grad_checkpointing else "")
        + ")"
    )
    results.append(
        _run(
            name,
            functools.partial(_ours_step, model, images, tokens, device, args.compile),
            args.batch,
            args.steps,
            args.warmup,
            device,
        )
    )
    del model
    gc.collect()
    if not args.no_baseline:
        torch.manual_seed(0)
        baseline = _official_style(create_model(config).to(device).train())
        results.append(
            _run(
                "official style (eager attention, "
                + ("fp16 + GradScaler" if device.type == "cuda" else "fp32")
                + ", foreach AdamW)",
                functools.partial(_baseline_step, baseline, images, tokens, device),
                args.batch,
                args.steps,
                args.warmup,
                device,
            )
        )
        del baseline
        gc.collect()

    flops = peak = None
    if device.type == "cuda":
        try:
            flops = model_flops(config, args.batch, device)
            peak = bf16_matmul_peak(device)
        except torch.cuda.OutOfMemoryError:
            print("FLOP count / matmul peak: out of memory, skipped")
    for result in results:
        if result.images_per_s is None:
            print(f"{result.name:60s} {result.note}")
            continue
        line = f"{result.name:60s} {result.images_per_s:9.1f} images/s  {result.step_ms:9.1f} ms/step"
        if result.peak_mem_gb is not None:
            line += f"  peak {result.peak_mem_gb:6.2f} GB"
        if flops is not None and peak is not None:
            achieved = flops / (result.step_ms / 1e3)
            line += f"  {achieved / 1e12:7.1f} TFLOP/s  MFU {achieved / peak:6.1%}"
        print(line)
    if flops is not None and peak is not None:
        print(
            f"model FLOPs per step (fwd+bwd, counted): {flops / 1e12:.2f} TFLOP; measured bf16 matmul "
            f"peak: {peak / 1e12:.0f} TFLOP/s"
        )
    if len(results) == 2 and all(r.images_per_s for r in results):
        print(f"speed-up maco-cxr / official style: {results[0].images_per_s / results[1].images_per_s:.2f}x")
    if device.type == "cpu":
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        print(f"peak resident memory of the whole process (both variants): {peak_rss:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
