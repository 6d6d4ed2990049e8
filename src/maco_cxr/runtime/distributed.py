"""Process groups for torchrun/DDP, and MaCo's all-gather with gradient.

This module alone reads the rank environment variables (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, set by ``torchrun``). Every process drives the GPU named by ``LOCAL_RANK``
(``torch.cuda.set_device``); unlike the official code, ``CUDA_VISIBLE_DEVICES`` is never
touched, so all GPUs of a node stay visible. Only rank 0 (``DistInfo.is_master``) logs, writes
metrics and saves checkpoints.

Launching (``data.workers`` loader processes per GPU; the global batch is
``optim.batch_size x processes x optim.accum_steps``)::

    # one machine, CPU or one GPU
    maco-cxr pretrain --config base-paper data.path=/data/mimic-448

    # one node, 4 GPUs
    torchrun --standalone --nproc_per_node 4 -m maco_cxr pretrain \\
        --config base-paper data.path=/data/mimic-448

    # two nodes with 4 GPUs each; run on every node, NODE_RANK = 0 on the host named in
    # --rdzv_endpoint (reachable from the other node), 1 on the other one
    torchrun --nnodes 2 --nproc_per_node 4 --node_rank $NODE_RANK \\
        --rdzv_endpoint node0.example.org:29500 -m maco_cxr pretrain \\
        --config base-paper data.path=/data/mimic-448

    # the same with elastic (c10d) rendezvous: ranks are assigned, no --node_rank
    torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_id maco-base \\
        --rdzv_endpoint node0.example.org:29500 -m maco_cxr pretrain --config ...

Every node needs the same data path and a shared ``runtime.output_dir`` (checkpoints are
written by global rank 0 and read by all ranks on resume).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from maco_cxr._atomic import MARKER_NAME
from maco_cxr.errors import ConfigError
from maco_cxr.runtime.rng import isolated_rng


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, rank on its node, number of processes."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    is_master: bool = True

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def world_info_from_env() -> DistInfo:
    """Rank, local rank and world size from torchrun's environment (one process when unset)."""
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", rank)
    if not 0 <= rank < world_size:
        raise ConfigError(f"RANK={rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={world_size})")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, is_master=rank == 0)


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group described by the environment (no-op for one process).

    ``backend``: nccl when CUDA is available, gloo otherwise (and for CPU training on a GPU
    machine pass ``"gloo"``). With nccl the process's device is set from ``LOCAL_RANK``. An
    already initialised group (e.g. set up by the caller) is used as is.
    """
    info = world_info_from_env()
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        return DistInfo(rank=rank, local_rank=info.local_rank, world_size=world, is_master=rank == 0)
    if not info.distributed:
        return info
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend, init_method="env://", rank=info.rank, world_size=info.world_size)
    return info


@contextmanager
def training_run(device: str, seed: int, output_dir: str | Path) -> Iterator[tuple[DistInfo, torch.device]]:
    """The frame every training loop runs in: join the ``torchrun`` process group (gloo for
    ``device="cpu"``), pick this process's device, seed the global generators for the run
    (:func:`~maco_cxr.runtime.rng.isolated_rng`: the caller's states come back afterwards), and
    leave the group at the end if this call joined it. A run that fails before writing
    anything removes the output folder it created, so no empty folder is left behind."""
    joined = not is_initialized()
    info = init_distributed("gloo" if device == "cpu" else None)
    folder = Path(output_dir)
    created = info.is_master and not folder.exists()
    try:
        resolved = resolve_device(device, info)
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        with isolated_rng(seed, resolved):
            yield info, resolved
    except BaseException:
        if created and folder.is_dir() and {p.name for p in folder.iterdir()} <= {MARKER_NAME}:
            (folder / MARKER_NAME).unlink(missing_ok=True)
            folder.rmdir()
        raise
    finally:
        if joined and info.distributed:
            cleanup_distributed()


def cleanup_distributed() -> None:
    """Leave the process group (call once, at the end, if :func:`init_distributed` joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` ``[n, ...]`` from every rank along dim 0, keeping the autograd graph.

    Why this gives exactly the gradient of the global-batch loss: every rank builds the same
    global loss L from the gathered tensors (MaCo gathers z, t and the weight logits). The
    backward of ``torch.distributed.nn.functional.all_gather`` sums, over all ranks, the
    gradients each rank's copy of L sends to this rank's slice, so rank r receives
    ``W * dL/dx_r`` (W = world size). DDP then averages parameter gradients over the W ranks:
    ``(1/W) * sum_r W * dL/dx_r * dx_r/dtheta = dL/dtheta``. Parameters used after the gather
    (the temperature) get ``dL/dtheta`` on every rank, also unchanged by the average. The
    reconstruction loss is local; the average of equal-sized local means is the global mean.
    One process returns ``x`` unchanged.

    Uses the functional collective ``all_gather_single_autograd`` where this PyTorch has it
    (traceable by torch.compile; ``torch.distributed.nn.functional.all_gather`` is deprecated
    there) and ``torch.distributed.nn.functional.all_gather`` otherwise; both sum gradients.
    """
    if not is_initialized():
        return x
    import torch.distributed._functional_collectives as functional

    gather_single = getattr(functional, "all_gather_single_autograd", None)
    if gather_single is not None:
        return gather_single(x.contiguous(), 0, dist.group.WORLD)
    import torch.distributed.nn.functional as dist_nn

    return torch.cat(dist_nn.all_gather(x), dim=0)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (a copy; for logging, no gradient)."""
    x = x.detach().clone()
    if is_initialized():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= dist.get_world_size()
    return x


def all_gather_objects(obj: Any) -> list[Any]:
    """One picklable object from every rank, in rank order (``[obj]`` for one process)."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def resolve_device(requested: str, info: DistInfo) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else CPU; ``cuda`` -> this
    process's GPU; ``cpu`` / ``cuda:N`` as given."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device={requested!r} but CUDA is not available; use auto or cpu")
    if requested == "cuda":
        return torch.device("cuda", info.local_rank % max(1, torch.cuda.device_count()))
    return torch.device(requested)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (a copy, no gradient): global counts for loss normalisers."""
    x = x.detach().clone()
    if is_initialized():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the global batch over all ranks.

    Why not ``torch.nn.SyncBatchNorm``: it runs only on GPUs, and the tests check on CPU (gloo)
    that two processes train exactly what one process with the whole batch trains. The sums
    and sums of squares per channel are gathered with gradient (:func:`gather_with_grad`), so
    the backward pass is that of the global-batch normalisation; running statistics get the
    unbiased global variance, as one process would compute them. In eval mode, or with one
    process, it is a plain BatchNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_initialized()):
            return super().forward(x)
        dims = (0, 2, 3)
        xf = x.float()
        local = torch.stack([xf.sum(dims), (xf * xf).sum(dims)])[None]
        totals = gather_with_grad(local).sum(0)
        count = all_reduce_sum(torch.tensor(float(x.numel() // x.shape[1]), device=x.device))
        mean = totals[0] / count
        var = (totals[1] / count - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.to(self.running_var.dtype))
        shape = (1, -1, 1, 1)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def use_global_batch_norm(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every ``BatchNorm2d`` of ``module`` (in place) by :class:`GlobalBatchNorm2d`,
    keeping its parameters and running statistics; returns ``module``."""
    for name, child in module.named_children():
        if type(child) is torch.nn.BatchNorm2d:
            device = child.weight.device if child.affine else None
            replacement = GlobalBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats, device=device
            )
            replacement.load_state_dict(child.state_dict())
            replacement.train(child.training)
            setattr(module, name, replacement)
        else:
            use_global_batch_norm(child)
    return module
