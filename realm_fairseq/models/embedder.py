"""The retriever's embedders: Embed_input and Embed_doc of REALM (section 3.2).

An embedder encodes a sequence with a :class:`~realm_fairseq.models.encoder.TextEncoder`, pools it to
one vector and projects it: REALM pools the ``[CLS]`` state and projects to 128 dimensions
(``pooling=cls``, ``projection_dim=128``); a sentence-embedding model such as MiniLM averages the
tokens and keeps its width (``pooling=mean``, ``projection_dim=0``). The relevance score is the inner
product of a query and a block embedding, f(x, z) = Embed_input(x) . Embed_doc(z).
"""
import torch
import torch.nn as nn

from realm_fairseq.models.encoder import EncoderConfig, TextEncoder

POOLINGS = ("cls", "mean")


def pool(hidden: torch.Tensor, padding_mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, C) hidden states -> (B, C): the first token's state, or the mean over non-padding tokens."""
    if how == "cls":
        return hidden[:, 0]
    if how == "mean":
        keep = (~padding_mask).unsqueeze(-1).type_as(hidden)  # (B, T, 1)
        return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1.0)
    raise ValueError(f"pooling {how!r}: expected one of {', '.join(POOLINGS)}")


class Embedder(nn.Module):
    """Tokens (B, T) -> embeddings (B, D), D = projection_dim or the encoder's width."""

    def __init__(self, cfg: EncoderConfig, dictionary, pooling: str, projection_dim: int):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
        self.encoder = TextEncoder(cfg, dictionary)
        self.pooling = pooling
        self.projection = nn.Linear(cfg.encoder_embed_dim, projection_dim) if projection_dim > 0 else None
        self.dim = projection_dim if projection_dim > 0 else cfg.encoder_embed_dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, padding_mask = self.encoder(tokens)  # (B, T, C), (B, T)
        pooled = pool(hidden, padding_mask, self.pooling)  # (B, C)
        return self.projection(pooled) if self.projection is not None else pooled  # (B, D)
