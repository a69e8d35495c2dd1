"""The ``realm`` fairseq model: REALM's retriever towers (paper, section 3.2).

The model holds the query embedder Embed_input and the document embedder Embed_doc; the relevance of
block z to input x is f(x, z) = Embed_input(x) . Embed_doc(z). Architectures:

- ``realm_base``: BERT-base towers (12 layers, 768 wide, 12 heads, 3072 feed-forward), ``[CLS]``
  pooling projected to 128 dimensions, as the paper;
- ``realm_minilm``: the sizes of the offline MiniLM weights (6 layers, 384, 12 heads, 1536), mean
  pooling and no projection, so that the converted sentence embedder retrieves well from the start;
- ``realm_tiny``: 2 layers of 64 for tests.

``--encoder-init WEIGHTS.pt`` (from ``realm-convert-hf``) warm-starts every tower.
"""
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.dataclass import ChoiceEnum
from fairseq.models import BaseFairseqModel, register_model, register_model_architecture
from fairseq.utils import safe_getattr

from realm_fairseq.models.embedder import POOLINGS, Embedder
from realm_fairseq.models.encoder import EncoderConfig
from realm_fairseq.models.hf_convert import load_into_encoder, load_weights


@dataclass
class RealmConfig(EncoderConfig):
    retriever_pooling: ChoiceEnum(list(POOLINGS)) = field(
        default="cls", metadata={"help": "how an embedder pools its states: cls (REALM) or mean"}
    )
    retriever_projection_dim: int = field(
        default=128, metadata={"help": "retrieval embedding size after a linear projection (REALM: "
                               "128); 0 keeps the encoder's width"}
    )
    encoder_init: Optional[str] = field(
        default=None, metadata={"help": "weights from realm-convert-hf to start every tower from"}
    )


@register_model("realm", dataclass=RealmConfig)
class RealmModel(BaseFairseqModel):
    def __init__(self, cfg: RealmConfig, query_embedder: Embedder, doc_embedder: Embedder):
        super().__init__()
        self.cfg = cfg
        self.query_embedder = query_embedder
        self.doc_embedder = doc_embedder

    @classmethod
    def build_model(cls, cfg: RealmConfig, task):
        dictionary = task.source_dictionary
        towers = [
            Embedder(cfg, dictionary, cfg.retriever_pooling, cfg.retriever_projection_dim)
            for _ in range(2)
        ]
        if cfg.encoder_init:
            weights = load_weights(cfg.encoder_init)
            for tower in towers:
                load_into_encoder(tower.encoder, weights, dictionary, cfg.encoder_init)
        return cls(cfg, *towers)

    def embed_queries(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) query tokens -> (B, D) Embed_input(x)."""
        return self.query_embedder(tokens)

    def embed_blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) block tokens -> (B, D) Embed_doc(z)."""
        return self.doc_embedder(tokens)


def _set_defaults(args, **defaults) -> None:
    for name, value in defaults.items():
        setattr(args, name, safe_getattr(args, name, value))


@register_model_architecture("realm", "realm_base")
def realm_base(args):
    _set_defaults(args, encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072,
                  encoder_attention_heads=12, retriever_pooling="cls", retriever_projection_dim=128)


@register_model_architecture("realm", "realm_minilm")
def realm_minilm(args):
    _set_defaults(args, encoder_layers=6, encoder_embed_dim=384, encoder_ffn_embed_dim=1536,
                  encoder_attention_heads=12, retriever_pooling="mean", retriever_projection_dim=0)


@register_model_architecture("realm", "realm_tiny")
def realm_tiny(args):
    _set_defaults(args, encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
                  encoder_attention_heads=2, max_positions=320, retriever_pooling="cls",
                  retriever_projection_dim=32)
