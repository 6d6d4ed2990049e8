"""MAE decoder: reconstructs the removed patches from the visible tokens (pre-training only).

In super-resolution mode (the paper setting) each of the encoder's ``g x g`` patches predicts
a ``2p x 2p x 3`` patch of the 448 px image, so ``pred`` has ``(2p)^2 * 3`` values per patch.
Parameter names follow the official checkpoints once ``decoder.`` is replaced by ``decoder_``
(see :mod:`maco_cxr.hub`).
"""

from __future__ import annotations

import torch
from torch import nn

from maco_cxr.models.config import DecoderConfig
from maco_cxr.models.layers import Block
from maco_cxr.models.vit import sincos_pos_embed


class MaeDecoder(nn.Module):
    def __init__(self, config: DecoderConfig, encoder_dim: int, grid_size: int, target_patch: int) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Linear(encoder_dim, config.embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid_size**2 + 1, config.embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            [Block(config.embed_dim, config.num_heads, config.mlp_ratio) for _ in range(config.depth)]
        )
        self.norm = nn.LayerNorm(config.embed_dim, eps=1e-6)
        self.pred = nn.Linear(config.embed_dim, target_patch**2 * 3)
        self.grad_checkpointing = False
        self.pos_embed.data.copy_(sincos_pos_embed(config.embed_dim, grid_size)[None])
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "mask_token"}

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent ``[N, 1 + L_keep, D_enc]`` -> predictions ``[N, L, (2p)^2 * 3]`` (CLS dropped)."""
        x = self.embed(latent)
        n, length = ids_restore.shape
        mask_tokens = self.mask_token.expand(n, length + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.pred(self.norm(x))[:, 1:]
