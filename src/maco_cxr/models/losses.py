"""MaCo's two pre-training losses, as pure functions of tensors.

``correlation_weighted_contrastive_loss`` takes an optional ``gather`` that concatenates a
tensor across processes WITH gradient (see :func:`maco_cxr.runtime.distributed.gather_with_grad`);
with it, every rank computes the loss of the global batch, so 2 processes on half batches give
the same loss and gradients as 1 process on the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Gather = Callable[[torch.Tensor], torch.Tensor]


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, (H/p)(W/p), p*p*C]`` with values ordered (row, col, channel)."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def reconstruction_loss(
    pred: torch.Tensor,
    target_images: torch.Tensor,
    mask: torch.Tensor,
    norm_pix_loss: bool,
    num_masked: int | None = None,
) -> torch.Tensor:
    """Mean over removed patches of the per-patch MSE. pred ``[N, L, p*p*3]``, mask ``[N, L]``
    (1 = removed), target ``[N, C, H, W]`` with C = 3, or C = 1 for a grey image (its one
    channel is compared with each of the 3 predicted channels, as the replicated grey the
    official code feeds, without materialising the copies).

    ``num_masked``: how many patches each sample removes (MAE masking removes the same number
    in every sample); given, only those patches are gathered and scored (static shapes, and
    half the memory of the 448 px target and the fp32 prediction), else every patch is scored
    and weighted by the mask. ``norm_pix_loss`` standardises each target patch over its
    ``p*p*3`` values (unbiased variance + 1e-6), as the official code does.
    """
    out_channels = 3
    channels = target_images.shape[1]
    patch = int(round((pred.shape[-1] / out_channels) ** 0.5))
    target = patchify(target_images, patch)
    if num_masked is not None:
        ids = torch.argsort(mask, dim=1, descending=True, stable=True)[:, :num_masked]
        pred = torch.gather(pred, 1, ids[..., None].expand(-1, -1, pred.shape[-1]))
        target = torch.gather(target, 1, ids[..., None].expand(-1, -1, target.shape[-1]))
    n, length = target.shape[:2]
    target = target.float().reshape(n, length, patch * patch, channels)
    pred = pred.float().reshape(n, length, patch * patch, out_channels)
    if norm_pix_loss:
        values = patch * patch * out_channels
        mean = target.mean(dim=(2, 3), keepdim=True)
        squares = (target - mean).pow(2).sum(dim=(2, 3), keepdim=True) * (out_channels // channels)
        target = (target - mean) / (squares / (values - 1) + 1e-6) ** 0.5
    per_patch = (pred - target).pow(2).mean(dim=(2, 3))
    if num_masked is not None:
        return per_patch.mean()
    return (per_patch * mask).sum() / mask.sum()


def correlation_weighted_contrastive_loss(
    image_embed: torch.Tensor,
    text_embed: torch.Tensor,
    weight_logits: torch.Tensor | None,
    inverse_temperature: torch.Tensor,
    gather: Gather | None = None,
    negative_text_embed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MaCo's contrastive loss with per-sample correlation weights.

    image_embed, text_embed ``[N, D]``; weight_logits ``[N, 1]`` (a . v_i + b, before softplus).
    With S = tau * normalize(z) normalize(t)^T and s = softplus(weight_logits):
    L = 1/4 [CE(diag(s) S) + CE(diag(s) S^T) + sum_i sbar_i CE_i(S) / sum sbar
    + sum_i sbar_i CE_i(S^T) / sum sbar], sbar = stop_gradient(s).
    ``weight_logits=None``: every s_i = 1, which is plain symmetric InfoNCE (the ablation of
    the mechanism). ``negative_text_embed`` ``[N, D]`` (not in the paper): extra texts every
    image is contrasted against, e.g. each report with one sentence's negation flipped; they
    widen the image -> text rows of S to ``[N, 2N]`` and leave text -> image as it is.
    Returns the loss and the (global) weights s ``[N_global]``.
    """
    if gather is not None:
        image_embed, text_embed = gather(image_embed), gather(text_embed)
        weight_logits = gather(weight_logits) if weight_logits is not None else None
        negative_text_embed = gather(negative_text_embed) if negative_text_embed is not None else None
    z = F.normalize(image_embed.float(), dim=-1)
    t = F.normalize(text_embed.float(), dim=-1)
    logits_per_image = inverse_temperature * z @ t.t()
    logits_per_text = logits_per_image.t()
    if negative_text_embed is not None:
        hard = F.normalize(negative_text_embed.float(), dim=-1)
        logits_per_image = torch.cat([logits_per_image, inverse_temperature * z @ hard.t()], dim=1)
    weights = (
        F.softplus(weight_logits.float()) if weight_logits is not None else torch.ones(z.shape[0], 1, device=z.device)
    )
    targets = torch.arange(z.shape[0], device=z.device)
    fixed = weights.detach().squeeze(-1)
    # the class weights of the hard-negative columns never apply (no image targets them)
    fixed_wide = F.pad(fixed, (0, logits_per_image.shape[1] - fixed.shape[0]), value=1.0)
    loss = (
        F.cross_entropy(logits_per_image * weights, targets)
        + F.cross_entropy(logits_per_text * weights, targets)
        + F.cross_entropy(logits_per_image, targets, weight=fixed_wide)
        + F.cross_entropy(logits_per_text, targets, weight=fixed)
    ) / 4
    return loss, weights.squeeze(-1)
