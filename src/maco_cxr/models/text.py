"""Report tower: a BERT encoder with pooler, trained from scratch, fed token ids.

It computes what Hugging Face's ``BertModel`` (``add_pooling_layer=True``) computes, with the
same parameter names (``embeddings.word_embeddings``, ``encoder.layer.{i}.attention.self.query``,
``...attention.output.LayerNorm``, ``...intermediate.dense``, ``...output.dense``,
``pooler.dense``, under ``bert.``), so the official checkpoints load unchanged; the report
embedding is the pooler output ``tanh(dense(h_CLS))``. Tokenising is
:class:`maco_cxr.data.tokenizer.ReportTokenizer`'s job.

Why not ``transformers``: importing its BERT costs about 3 s on 2 CPU cores, on every
``maco-cxr`` call that touches text, for ~80 lines of well-known arithmetic; the official-code
fixture (``tests/models/test_official_fixture.py``) checks the two agree. ``fused_attn = False``
on a layer's attention selects the explicit softmax path (the official code's "eager" BERT).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from maco_cxr.models.config import TextConfig

__all__ = ["Bert", "TextEncoder", "trim_padding"]

_INIT_STD = 0.02  # BERT's initializer_range


class _Embeddings(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=0)
        self.position_embeddings = nn.Embedding(config.max_length, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(2, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(positions)[None]
        )
        return self.dropout(self.LayerNorm(x))


class _SelfAttention(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_size // config.num_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.dropout
        self.fused_attn = True

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x ``[N, L, H]``, keep ``[N, 1, 1, L]`` (True = a real token)."""
        b, n, h = x.shape

        def heads(layer: nn.Linear) -> torch.Tensor:
            return layer(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.query), heads(self.key), heads(self.value)
        dropout = self.dropout_p if self.training else 0.0
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout)
        else:
            scores = (q @ k.transpose(-2, -1)) / self.head_dim**0.5
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
            out = F.dropout(scores.softmax(dim=-1), dropout, self.training) @ v
        return out.transpose(1, 2).reshape(b, n, h)


class _DenseNorm(nn.Module):
    """``LayerNorm(dropout(dense(x)) + residual)`` (BERT's ``*Output`` modules)."""

    def __init__(self, inputs: int, config: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(inputs, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _Attention(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(config)  # the checkpoints' name: attention.self.query
        self.output = _DenseNorm(config.hidden_size, config)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, keep), x)


class _Intermediate(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.attention = _Attention(config)
        self.intermediate = _Intermediate(config)
        self.output = _DenseNorm(config.intermediate_size, config)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        attended = self.attention(x, keep)
        return self.output(self.intermediate(attended), attended)


class _Encoder(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList([_Layer(config) for _ in range(config.num_layers)])


class _Pooler(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class Bert(nn.Module):
    """BERT with pooler; ``forward`` returns ``(last hidden states [N, L, H], pooled [N, H])``."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)
        self.pooler = _Pooler(config)
        self.grad_checkpointing = False
        self.apply(_init)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        keep = attention_mask.bool()[:, None, None, :]
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.encoder.layer:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, keep, use_reentrant=False)
            else:
                x = layer(x, keep)
        return x, self.pooler(x)


def _init(module: nn.Module) -> None:
    """BERT's initialisation: normal(0, 0.02) weights, zero biases and padding row, unit norms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=_INIT_STD)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class TextEncoder(nn.Module):
    """The report tower: ``forward`` returns the pooled report embedding ``[N, H]``."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = Bert(config)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.bert(input_ids, attention_mask, token_type_ids)[1]


def trim_padding(batch: dict[str, torch.Tensor], multiple: int = 8) -> dict[str, torch.Tensor]:
    """``batch`` without the trailing columns that are padding in every row (kept to a multiple
    of ``multiple``, so a compiled text tower sees few distinct lengths).

    Why: the ids are padded to ``max_length`` (100 officially) but reports are often far
    shorter (the demo's median is 14 ids of 64); padded keys are masked out of attention and
    the embedding is read at [CLS], so the dropped columns never change a result, only cost.
    """
    mask = batch["attention_mask"]
    longest = int(mask.sum(dim=1).max()) if mask.numel() else mask.shape[1]
    keep = min(mask.shape[1], max(multiple, -(-longest // multiple) * multiple))
    if keep == mask.shape[1] or bool(mask[:, keep:].any()):
        return batch
    return {name: value[:, :keep] for name, value in batch.items()}
