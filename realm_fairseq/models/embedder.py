"""The retriever's embedders: Embed_input and Embed_doc of REALM (section 3.2).

An embedder encodes a sequence with a :class:`~realm_fairseq.models.encoder.TextEncoder`, pools it to
one vector and projects it: REALM pools the ``[CLS]`` state and projects to 128 dimensions
(``pooling=cls``, ``projection_dim=128``); a sentence-embedding model such as MiniLM averages the
tokens and keeps its width (``pooling=mean``, ``projection_dim=0``). The relevance score is the inner
product of a query and a block embedding, f(x, z) = Embed_input(x) . Embed_doc(z). With the cosine
score (``retriever_score=cosine``, how sentence embedders such as MiniLM are trained) both towers
L2-normalise their vectors and the query tower multiplies by ``retriever_scale``, so the inner product
is scale * cos(x, z): the MIPS index and every caller keep using plain inner products.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from realm_fairseq.models.encoder import EncoderConfig, TextEncoder
from realm_fairseq.models.similarity import POOLINGS, SCORES

TOWERS = ("query_embedder", "doc_embedder")


def pool(hidden: torch.Tensor, padding_mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, C) hidden states -> (B, C): the first token's state, or the mean over non-padding tokens."""
    if how == "cls":
        return hidden[:, 0]
    if how == "mean":
        keep = (~padding_mask).unsqueeze(-1).type_as(hidden)  # (B, T, 1)
        return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1.0)
    raise ValueError(f"pooling {how!r}: expected one of {', '.join(POOLINGS)}")


class Embedder(nn.Module):
    """Tokens (B, T) -> embeddings (B, D), D = projection_dim or the encoder's width; with ``norm`` > 0
    every embedding is L2-normalised to length ``norm``."""

    def __init__(self, cfg: EncoderConfig, dictionary, pooling: str, projection_dim: int, norm: float = 0.0):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
        self.encoder = TextEncoder(cfg, dictionary)
        self.pooling = pooling
        self.projection = nn.Linear(cfg.encoder_embed_dim, projection_dim) if projection_dim > 0 else None
        self.dim = projection_dim if projection_dim > 0 else cfg.encoder_embed_dim
        self.norm = norm

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, padding_mask = self.encoder(tokens)  # (B, T, C), (B, T)
        pooled = pool(hidden, padding_mask, self.pooling)  # (B, C)
        out = self.projection(pooled) if self.projection is not None else pooled  # (B, D)
        return F.normalize(out.float(), dim=-1).mul(self.norm).type_as(out) if self.norm > 0 else out


def tower_norm(score: str, scale: float, tower: str) -> float:
    """The length an embedder of ``tower`` normalises to: 0 (not at all) for the dot score; for the
    cosine score, ``scale`` for the query embedder and 1 for the document embedder."""
    if score not in SCORES:
        raise ValueError(f"retriever score {score!r}: expected one of {', '.join(SCORES)}")
    if tower not in TOWERS:
        raise ValueError(f"tower {tower!r}: expected one of {', '.join(TOWERS)}")
    if score == "dot":
        return 0.0
    return scale if tower == "query_embedder" else 1.0


def retriever_tower(cfg, dictionary, tower: str) -> Embedder:
    """The query or document embedder a ``realm`` model config (``retriever_*`` fields, pooling and score
    resolved: :func:`~realm_fairseq.models.similarity.resolve_retriever_config`) describes."""
    norm = tower_norm(cfg.retriever_score, cfg.retriever_scale, tower)
    return Embedder(cfg, dictionary, cfg.retriever_pooling, cfg.retriever_projection_dim, norm)
