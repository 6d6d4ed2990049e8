"""Report tower: a BERT encoder trained from scratch, fed token ids.

The report embedding is BERT's pooler output, ``tanh(dense(h_CLS))``. Tokenising is
:class:`maco_cxr.data.tokenizer.ReportTokenizer`'s job.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel

from maco_cxr.models.config import TextConfig

__all__ = ["TextEncoder"]


class TextEncoder(nn.Module):
    """Hugging Face BERT with pooler; ``forward`` returns the pooled report embedding ``[N, H]``."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        bert_config = BertConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            intermediate_size=config.intermediate_size,
            hidden_dropout_prob=config.dropout,
            attention_probs_dropout_prob=config.dropout,
            max_position_embeddings=config.max_length,
            type_vocab_size=2,
            layer_norm_eps=config.layer_norm_eps,
            pad_token_id=0,
        )
        bert_config._attn_implementation = "sdpa"
        self.bert = BertModel(bert_config, add_pooling_layer=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.pooler_output
