"""The knowledge-augmented encoder: REALM's reader for pre-training (paper, section 3.2).

It reads the input x joined with one retrieved block z, ``[CLS] x [SEP] z [SEP]`` (segment 0 for x,
segment 1 for z), and predicts the masked tokens of x with BERT's masked-LM head (fairseq's
``RobertaLMHead``: dense, GELU, LayerNorm, output tied to the word embeddings). Every candidate block
of an input gives one such sequence; the null document is an empty z.
"""
from typing import List

import torch
import torch.nn as nn
from fairseq.data import data_utils
from fairseq.models.roberta.model import RobertaLMHead

from realm_fairseq.models.encoder import EncoderConfig, TextEncoder


def join_query_and_blocks(
    queries: List[torch.Tensor], blocks: List[List[torch.Tensor]], pad: int, eos: int, max_positions: int
) -> (torch.Tensor, torch.Tensor):
    """Queries ``[CLS] x [SEP]`` (B of them) and K blocks each (bare ``title [SEP] body`` token ids, or
    empty for the null document) -> tokens and segments (B * K, T) of ``[CLS] x [SEP] z [SEP]``,
    the block cut so that every sequence fits ``max_positions``. Row ``b * K + k`` is query b, block k."""
    sequences, segments = [], []
    for query, candidates in zip(queries, blocks):
        room = max_positions - len(query) - 1  # tokens left for z and its closing [SEP]
        if room < 0:
            raise ValueError(f"a query of {len(query)} tokens does not fit --max-positions {max_positions}")
        for block in candidates:
            z = block[:room]
            sequences.append(torch.cat([query, z, query.new([eos])]))
            segments.append(torch.cat([query.new_zeros(len(query)), query.new_ones(len(z) + 1)]))
    return data_utils.collate_tokens(sequences, pad), data_utils.collate_tokens(segments, 0)


class Reader(nn.Module):
    """Joined sequences (N, T) with segments (N, T) -> masked-LM logits (N, T, V), or at ``masked``
    positions only (number of masked positions, V)."""

    def __init__(self, cfg: EncoderConfig, dictionary):
        super().__init__()
        if cfg.num_segments < 2:
            raise ValueError("the reader needs two segments (x and z); set num_segments to 2")
        self.encoder = TextEncoder(cfg, dictionary)
        self.lm_head = RobertaLMHead(cfg.encoder_embed_dim, len(dictionary), "gelu",
                                     weight=self.encoder.embed_tokens.weight)
        self.lm_head.layer_norm.eps = cfg.layernorm_eps

    def forward(self, tokens: torch.Tensor, segments: torch.Tensor, masked: torch.Tensor = None) -> torch.Tensor:
        hidden, _ = self.encoder(tokens, segments)  # (N, T, C)
        return self.lm_head(hidden, masked_tokens=masked)  # (N, T, V) or (masked, V)
