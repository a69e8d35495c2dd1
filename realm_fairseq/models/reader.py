"""The knowledge-augmented encoder: REALM's reader for pre-training (paper, section 3.2).

It reads the input x joined with one retrieved block z, ``[CLS] x [SEP] z [SEP]`` (segment 0 for x,
segment 1 for z), and predicts the masked tokens of x with BERT's masked-LM head (fairseq's
``RobertaLMHead``: dense, GELU, LayerNorm, output tied to the word embeddings, a bias per symbol). Every
candidate block of an input gives one such sequence; the null document is an empty z.

REALM starts this reader from BERT, masked-LM head included (section 3.4), so that it can fill in a mask
before any retrieval-augmented training: weights converted from a BERT checkpoint with its head
(``realm-convert-hf``, ``--encoder-init``) or from REALM's own knowledge-augmented encoder
(:mod:`realm_fairseq.models.realm_hf`) give it that head.
"""
import torch
import torch.nn as nn
from fairseq.models.roberta.model import RobertaLMHead

from realm_fairseq.models.encoder import EncoderConfig, TextEncoder, activation


def join_query_and_blocks(
    queries: torch.Tensor, blocks: torch.Tensor, block_lengths: torch.Tensor, pad: int, eos: int,
    max_positions: int,
) -> (torch.Tensor, torch.Tensor):
    """Queries ``[CLS] x [SEP]`` (B, Tq), padded on the right, and K blocks for each (B * K, L): bare
    ``title [SEP] body`` ids of ``block_lengths`` (B * K,), 0 for the null document -> tokens and
    segments (B * K, T) of ``[CLS] x [SEP] z [SEP]``, the block cut so that every sequence fits
    ``max_positions``. Row ``b * K + k`` is query b, block k. Built with tensor operations on the
    queries' device."""
    device, k = queries.device, len(blocks) // max(len(queries), 1)
    blocks, block_lengths = blocks.to(device), block_lengths.to(device)
    query_lengths = queries.ne(pad).sum(1).repeat_interleave(k)  # (N,)
    block_lengths = torch.minimum(block_lengths, max_positions - query_lengths - 1)  # room for z and [SEP]
    ends = query_lengths + block_lengths  # (N,): where the closing [SEP] goes
    longest, width = torch.stack([query_lengths.max(), ends.max() + 1]).tolist()
    if longest + 1 > max_positions:
        raise ValueError(f"a query of {longest} tokens does not fit the reader's {max_positions} positions "
                         f"(--max-positions, or the readers' own in --reader-encoder)")
    positions = torch.arange(width, device=device).expand(len(ends), width)  # (N, T)
    in_query = positions < query_lengths[:, None]
    from_query = queries.repeat_interleave(k, 0).gather(1, positions.clamp(max=queries.shape[1] - 1))
    if blocks.shape[1] == 0:  # null documents only
        blocks = blocks.new_full((len(blocks), 1), pad)
    from_block = blocks.gather(1, (positions - query_lengths[:, None]).clamp(0, blocks.shape[1] - 1))
    tokens = torch.where(in_query, from_query, from_block)  # (N, T)
    tokens = torch.where(positions == ends[:, None], eos, tokens)
    tokens = torch.where(positions > ends[:, None], pad, tokens)
    segments = (~in_query & (positions <= ends[:, None])).long()  # (N, T): 1 for z and its [SEP]
    return tokens, segments


def build_lm_head(cfg: EncoderConfig, dictionary, weight: torch.Tensor) -> RobertaLMHead:
    """BERT's masked-LM head for ``cfg``: dense, the encoder's activation, LayerNorm, output ``weight``
    (the word embeddings, (V, C)) and a bias per symbol of ``dictionary``."""
    head = RobertaLMHead(cfg.encoder_embed_dim, len(dictionary), activation(cfg), weight=weight)
    head.layer_norm.eps = cfg.layernorm_eps
    return head


class Reader(nn.Module):
    """Joined sequences (N, T) with segments (N, T) -> masked-LM logits (N, T, V), or at ``masked``
    positions only (number of masked positions, V)."""

    def __init__(self, cfg: EncoderConfig, dictionary):
        super().__init__()
        if cfg.num_segments < 2:
            raise ValueError("the reader needs two segments (x and z); set num_segments to 2")
        self.encoder = TextEncoder(cfg, dictionary)
        self.lm_head = build_lm_head(cfg, dictionary, self.encoder.embed_tokens.weight)

    def forward(self, tokens: torch.Tensor, segments: torch.Tensor, masked: torch.Tensor = None) -> torch.Tensor:
        hidden, _ = self.encoder(tokens, segments)  # (N, T, C)
        return self.lm_head(hidden, masked_tokens=masked)  # (N, T, V) or (masked, V)
