"""Masked ViT image encoder with the official MaCo/MAE parameter names.

Blocks compute what timm's do (pre-norm, qkv bias, GELU MLP, attention through
``scaled_dot_product_attention``; :mod:`maco_cxr.models.layers`), and keys read
``blocks.{i}.attn.qkv.weight`` as in the official checkpoints. The position embedding is a
fixed 2-D sin-cos table stored as a frozen parameter: official checkpoints carry their own
table (computed with a different formula), which must be loaded, not recomputed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from maco_cxr.models.config import VisionConfig
from maco_cxr.models.layers import Block, PatchEmbed


def sincos_pos_embed(dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """MAE's 2-D sin-cos table ``[1 + grid^2, dim]`` (zero row for the CLS token)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    grid_w, grid_h = torch.meshgrid(coords, coords, indexing="xy")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([encode(grid_w), encode(grid_h)], dim=1)
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=torch.float64), table], dim=0)
    return table.float()


def resample_pos_embed(pos_embed: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Bicubically resample a ``[1, 1 + g*g, D]`` table to a new patch grid (CLS row kept)."""
    cls_row, patch_rows = pos_embed[:, :1], pos_embed[:, 1:]
    old = int(math.isqrt(patch_rows.shape[1]))
    if (old, old) == tuple(grid_hw):
        return pos_embed
    grid = patch_rows.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=grid_hw, mode="bicubic", align_corners=False)
    patch_rows = grid.permute(0, 2, 3, 1).reshape(1, grid_hw[0] * grid_hw[1], -1).to(pos_embed.dtype)
    return torch.cat([cls_row, patch_rows], dim=1)


def random_masking(
    num_patches: int, mask_ratio: float, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE masking from uniform noise ``[N, L]``: keep the patches with the smallest noise.

    Returns ``ids_keep [N, L_keep]``, ``mask [N, L]`` (1 = removed) and ``ids_restore [N, L]``.
    """
    len_keep = int(num_patches * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones_like(noise)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore


class MaskedViT(nn.Module):
    """ViT encoder that can drop patches (pre-training) or see all of them (inference)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_size = config.patch_size
        self.patch_embed = PatchEmbed(config.patch_size, 3, config.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.embed_dim), requires_grad=False)
        rates = torch.linspace(0, config.drop_path_rate, config.depth).tolist()
        self.blocks = nn.ModuleList(
            [Block(config.embed_dim, config.num_heads, config.mlp_ratio, drop_path=rate) for rate in rates]
        )
        self.norm = nn.LayerNorm(config.embed_dim, eps=1e-6)
        self.grad_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        self.pos_embed.data.copy_(sincos_pos_embed(self.config.embed_dim, self.config.grid_size)[None])
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch tokens with position embeddings ``[N, L, D]`` (CLS not yet added)."""
        grid_hw = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        pos_embed = resample_pos_embed(self.pos_embed, grid_hw)
        tokens = self.patch_embed(x) + pos_embed[:, 1:]
        return tokens, grid_hw

    def _prepend_cls(self, tokens: torch.Tensor) -> torch.Tensor:
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        return block(x)

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = self._run_block(block, x)
        return self.norm(x)

    def forward_masked(
        self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches. x ``[N, 3, H, W]``, noise ``[N, L]``.

        Returns latent ``[N, 1 + L_keep, D]`` (after the final norm), mask ``[N, L]`` (1 =
        removed) and ids_restore ``[N, L]``.
        """
        tokens, _ = self._embed(x)
        ids_keep, mask, ids_restore = random_masking(tokens.shape[1], mask_ratio, noise)
        tokens = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        return self._blocks(self._prepend_cls(tokens)), mask, ids_restore

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens ``[N, 1 + L, D]`` after the final norm; any input size divisible by the patch."""
        tokens, _ = self._embed(x)
        return self._blocks(self._prepend_cls(tokens))

    def forward_intermediates(
        self, x: torch.Tensor, indices: list[int] | tuple[int, ...], norm: bool = False
    ) -> list[torch.Tensor]:
        """Feature maps ``[N, D, H/p, W/p]`` after the blocks with 0-based ``indices`` (dense heads)."""
        tokens, grid_hw = self._embed(x)
        h = self._prepend_cls(tokens)
        wanted = {i % len(self.blocks) for i in indices}
        outputs: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks):
            h = self._run_block(block, h)
            if i in wanted:
                out = self.norm(h) if norm else h
                outputs[i] = out[:, 1:].transpose(1, 2).reshape(h.shape[0], -1, *grid_hw)
            if len(outputs) == len(wanted):
                break
        return [outputs[i % len(self.blocks)] for i in indices]
