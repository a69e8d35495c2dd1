"""The retriever's embedders: Embed_input and Embed_doc of REALM (section 3.2).

An embedder encodes a sequence with a :class:`~realm_fairseq.models.encoder.TextEncoder`, pools it to
one vector and projects it: REALM pools the ``[CLS]`` state and projects to 128 dimensions
(``pooling=cls``, ``projection_dim=128``); a sentence-embedding model such as MiniLM averages the
tokens and keeps its width (``pooling=mean``, ``projection_dim=0``). The relevance score is the inner
product of a query and a block embedding, f(x, z) = Embed_input(x) . Embed_doc(z). With the cosine
score (``retriever_score=cosine``, how sentence embedders such as MiniLM are trained) both towers
L2-normalise their vectors and the query tower multiplies by ``retriever_scale``, so the inner product
is scale * cos(x, z): the MIPS index and every caller keep using plain inner products.

Three heads turn the pooled state into the embedding (``retriever_head``):

- ``linear``: one linear projection (or none), as ORQA's ICT retriever;
- ``tanh``: one linear projection, then tanh: a sentence-transformers ``Dense`` module as it is made by
  default (LaBSE's head, and that of many embedders given a projection there);
- ``realm``: the head of REALM's released embedders: BERT's pooler (dense, tanh), a dense layer to the
  projection size, LayerNorm (``RealmEmbedder`` of transformers).

REALM's document embedder reads a block as ``[CLS] title [SEP] body [SEP]`` with segment 0 for
``[CLS] title [SEP]`` and 1 for ``body [SEP]`` (``doc_segments=title_body``; a block without a title reads
as ``[CLS] [SEP] body [SEP]``, REALM's form of an empty title); otherwise every segment is 0.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from realm_fairseq.models.encoder import EncoderConfig, TextEncoder
from realm_fairseq.models.similarity import POOLINGS, SCORES

TOWERS = ("query_embedder", "doc_embedder")
#: the ``param_group`` every embedder parameter carries (fairseq's tag, which its ``composite`` optimizer
#: groups by); ``realm_adam`` trains it at ``--retriever-lr-scale`` times the learning rate
PARAM_GROUP = "retriever"
HEADS = ("linear", "tanh", "realm")
DOC_SEGMENTS = ("none", "title_body")


def pool(hidden: torch.Tensor, padding_mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, T, C) hidden states -> (B, C): the first token's state, or the mean over non-padding tokens."""
    if how == "cls":
        return hidden[:, 0]
    if how == "mean":
        keep = (~padding_mask).unsqueeze(-1).type_as(hidden)  # (B, T, 1)
        return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1.0)
    raise ValueError(f"pooling {how!r}: expected one of {', '.join(POOLINGS)}")


def title_body_segments(tokens: torch.Tensor, sep_ids: torch.Tensor, pad: int):
    """Blocks ``[CLS] title [SEP] body [SEP]`` (B, T), right-padded -> tokens (B, T') and REALM's segments
    (B, T'): 0 up to the first ``[SEP]``, 1 after it. A row with a single ``[SEP]`` (no title) gets an empty
    title, ``[CLS] [SEP] body [SEP]``, and T' = T + 1 if any row does."""
    is_sep = torch.isin(tokens, sep_ids)  # (B, T)
    untitled = is_sep.sum(1) < 2  # (B,)
    if untitled.any():
        sep = tokens.new_full((len(tokens), 1), int(sep_ids[0]))
        shifted = torch.cat([tokens[:, :1], sep, tokens[:, 1:]], dim=1)  # (B, T + 1)
        padded = torch.cat([tokens, tokens.new_full((len(tokens), 1), pad)], dim=1)
        tokens = torch.where(untitled[:, None], shifted, padded)
        is_sep = torch.isin(tokens, sep_ids)
    seps_before = torch.cumsum(is_sep.long(), dim=1) - is_sep.long()  # (B, T')
    return tokens, (seps_before > 0).long()


class Embedder(nn.Module):
    """Tokens (B, T) -> embeddings (B, D), D = projection_dim or the encoder's width; with ``norm`` > 0
    every embedding is L2-normalised to length ``norm``. ``head`` and ``doc_segments``: see the module
    docstring."""

    def __init__(self, cfg: EncoderConfig, dictionary, pooling: str, projection_dim: int, norm: float = 0.0,
                 head: str = "linear", doc_segments: str = "none"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
        if head not in HEADS:
            raise ValueError(f"retriever head {head!r}: expected one of {', '.join(HEADS)}")
        if doc_segments not in DOC_SEGMENTS:
            raise ValueError(f"doc segments {doc_segments!r}: expected one of {', '.join(DOC_SEGMENTS)}")
        if head != "linear" and projection_dim <= 0:
            raise ValueError(f"the {head} embedder head projects to --retriever-projection-dim; it cannot be 0")
        self.encoder = TextEncoder(cfg, dictionary)
        self.pooling = pooling
        width = cfg.encoder_embed_dim
        self.pooler = nn.Linear(width, width) if head == "realm" else None  # BERT's pooler, tanh after it
        self.projection = nn.Linear(width, projection_dim) if projection_dim > 0 else None
        self.projection_norm = nn.LayerNorm(projection_dim, eps=cfg.layernorm_eps) if head == "realm" else None
        self.projection_tanh = head == "tanh"
        self.dim = projection_dim if projection_dim > 0 else width
        self.norm = norm
        self.pad = dictionary.pad()
        if doc_segments == "title_body":  # [SEP] is fairseq's </s> at the end and the vocab's after a title
            self.register_buffer("sep_ids", torch.tensor([dictionary.eos(), dictionary.index("[SEP]")]),
                                 persistent=False)
        else:
            self.sep_ids = None
        for param in self.parameters():
            param.param_group = PARAM_GROUP

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        segments = None
        if self.sep_ids is not None:
            tokens, segments = title_body_segments(tokens, self.sep_ids, self.pad)  # (B, T'), (B, T')
        hidden, padding_mask = self.encoder(tokens, segments)  # (B, T, C), (B, T)
        pooled = pool(hidden, padding_mask, self.pooling)  # (B, C)
        if self.pooler is not None:
            pooled = torch.tanh(self.pooler(pooled))
        out = self.projection(pooled) if self.projection is not None else pooled  # (B, D)
        if self.projection_tanh:
            out = torch.tanh(out)
        if self.projection_norm is not None:
            out = self.projection_norm(out)
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
    """The query or document embedder a ``realm`` model config (``retriever_*`` fields, pooling, score and
    head resolved: :func:`~realm_fairseq.models.loading.resolve_similarity`) describes."""
    norm = tower_norm(cfg.retriever_score, cfg.retriever_scale, tower)
    segments = (getattr(cfg, "doc_segments", None) or "none") if tower == "doc_embedder" else "none"
    return Embedder(cfg, dictionary, cfg.retriever_pooling, cfg.retriever_projection_dim, norm,
                    head=getattr(cfg, "retriever_head", None) or "linear", doc_segments=segments)
