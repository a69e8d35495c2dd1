"""The text encoder every REALM tower is built on: a fairseq encoder plus BERT's segment embeddings.

REALM's query embedder, document embedder and knowledge-augmented encoder are all BERT-style
Transformers (paper, section 3.2). We build each on a fairseq encoder chosen by name: ``transformer``
is fairseq's ``TransformerEncoder`` set up as BERT (post-LayerNorm, learned positions, embedding
LayerNorm, exact GELU or, for Google's and REALM's weights, its tanh approximation ``gelu_accurate``,
LayerNorm epsilon 1e-12); any other ``FairseqEncoder`` that takes ``(args, dictionary, embed_tokens)``
and returns ``{"encoder_out": [T x B x C]}`` can be named as ``package.module:Class``, its own options
given as JSON (``encoder_options``) and the rest filled by a registered fairseq architecture
(``encoder_arch``). fairseq's Transformer runs by default through the fused forward pass of
:mod:`realm_fairseq.models.fast_encoder` (scaled_dot_product_attention, same parameters, same outputs
within rounding); ``encoder_attention=fairseq`` runs fairseq's own forward. Segment embeddings
(``[CLS] x [SEP] z [SEP]`` in the reader) are added to the token embeddings when the encoder accepts
``token_embeddings``, as fairseq's Transformer does.
"""
import argparse
import importlib
import inspect
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
import torch.nn as nn
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import ARCH_CONFIG_REGISTRY, FairseqEncoder
from fairseq.models.transformer import TransformerEncoder

from realm_fairseq.models import fast_encoder

ENCODER_CLASSES = {"transformer": TransformerEncoder}
#: activations BERT checkpoints use, by fairseq's name: exact GELU, and its tanh approximation
ACTIVATIONS = ("gelu", "gelu_accurate")


@dataclass
class EncoderConfig(FairseqDataclass):
    encoder_class: str = field(
        default="transformer",
        metadata={"help": "fairseq encoder: 'transformer', or 'package.module:Class' for any "
                  "FairseqEncoder taking (args, dictionary, embed_tokens)"},
    )
    encoder_arch: Optional[str] = field(
        default=None,
        metadata={"help": "registered fairseq architecture whose defaults fill the options of a "
                  "swapped-in encoder class (e.g. lightconv)"},
    )
    encoder_options: str = field(
        default="{}",
        metadata={"help": "JSON object of further options for a swapped-in encoder class, e.g. "
                  "'{\"encoder_kernel_size_list\": [3, 7]}' for lightconv"},
    )
    encoder_layers: int = field(default=12, metadata={"help": "layers per encoder"})
    encoder_embed_dim: int = field(default=768, metadata={"help": "hidden size"})
    encoder_ffn_embed_dim: int = field(default=3072, metadata={"help": "feed-forward inner size"})
    encoder_attention_heads: int = field(default=12, metadata={"help": "attention heads"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on hidden states"})
    attention_dropout: float = field(default=0.1, metadata={"help": "dropout on attention weights"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the activation"})
    max_positions: int = field(default=512, metadata={"help": "longest input in tokens"})
    num_segments: int = field(
        default=2, metadata={"help": "segment (token type) embeddings, as BERT; 0 for none"}
    )
    layernorm_eps: float = field(default=1e-12, metadata={"help": "LayerNorm epsilon (BERT: 1e-12)"})
    activation_fn: Optional[ChoiceEnum(list(ACTIVATIONS))] = field(
        default=None,
        metadata={"help": "feed-forward (and masked-LM head) activation: gelu (exact, HF BERT's 'gelu') or "
                  "gelu_accurate (tanh approximation, Google BERT's and REALM's, HF 'gelu_new'); default: as "
                  "recorded with the weights the model starts from, else gelu"},
    )
    encoder_attention: ChoiceEnum(list(fast_encoder.ATTENTION)) = field(
        default="sdpa",
        metadata={"help": "forward pass of fairseq's transformer encoder: sdpa (fused: one query-key-value "
                  "product, torch's scaled_dot_product_attention, no host sync; the same weights and outputs) "
                  "or fairseq (its own MultiheadAttention path); other encoder classes always run their own"},
    )
    checkpoint_activations: bool = field(
        default=False,
        metadata={"help": "recompute each layer's activations in the backward pass instead of keeping them "
                  "(fairseq's option, for every tower): training keeps one hidden state a layer, for about one "
                  "more forward pass of compute; the same gradients"},
    )


#: environment variable: comma-separated ``package.module:Class`` names checkpoints may name as encoder_class
TRUSTED_ENV = "REALM_TRUSTED_ENCODER_CLASSES"


def untrusted_encoder_class(name: str, trusted=()) -> bool:
    """Whether a checkpoint's ``encoder_class`` would import code nobody chose: it is none of
    :data:`ENCODER_CLASSES`, its module is not imported yet (fairseq's own encoders, a ``--user-dir``'s
    and the command line's model are), and neither ``trusted`` (names the user gave) nor
    ``$REALM_TRUSTED_ENCODER_CLASSES`` names it."""
    if name in ENCODER_CLASSES or name in trusted:
        return False
    if name in os.environ.get(TRUSTED_ENV, "").replace(" ", "").split(","):
        return False
    return name.partition(":")[0] not in sys.modules


def resolve_encoder_class(name: str) -> type:
    if name in ENCODER_CLASSES:
        return ENCODER_CLASSES[name]
    module_name, sep, class_name = name.partition(":")
    if not sep:
        raise ValueError(
            f"encoder_class {name!r}: expected one of {sorted(ENCODER_CLASSES)} or 'package.module:Class'"
        )
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, FairseqEncoder)):
        raise ValueError(f"encoder_class {name!r} is not a fairseq FairseqEncoder class")
    return cls


def activation(cfg) -> str:
    """The activation an encoder config names (gelu when it names none)."""
    return getattr(cfg, "activation_fn", None) or "gelu"


def json_options(text: str, flag: str) -> dict:
    """Encoder options given as a JSON object (``encoder_options``, ``--reader-encoder``); a ValueError naming
    ``flag`` otherwise."""
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{flag} {text!r}: invalid JSON ({e.msg})") from None
    if not isinstance(options, dict):
        raise ValueError(f"{flag} {text!r}: expected a JSON object of encoder options")
    return options


def encoder_args(cfg: EncoderConfig) -> argparse.Namespace:
    """The legacy argparse options fairseq encoders are built from, BERT-style."""
    args = argparse.Namespace(
        encoder_layers=cfg.encoder_layers,
        encoder_embed_dim=cfg.encoder_embed_dim,
        encoder_ffn_embed_dim=cfg.encoder_ffn_embed_dim,
        encoder_attention_heads=cfg.encoder_attention_heads,
        dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        activation_dropout=cfg.activation_dropout,
        activation_fn=activation(cfg),
        encoder_normalize_before=False,
        encoder_learned_pos=True,
        layernorm_embedding=True,
        no_scale_embedding=True,
        max_source_positions=cfg.max_positions,
        encoder_layerdrop=0.0,
        checkpoint_activations=bool(getattr(cfg, "checkpoint_activations", False)),
    )
    vars(args).update(json_options(cfg.encoder_options, "encoder_options"))
    if cfg.encoder_arch is not None:
        if cfg.encoder_arch not in ARCH_CONFIG_REGISTRY:
            raise ValueError(f"encoder_arch {cfg.encoder_arch!r} is not a registered fairseq architecture")
        ARCH_CONFIG_REGISTRY[cfg.encoder_arch](args)  # fills only what is not set yet
    return args


class TextEncoder(nn.Module):
    """Tokens (B, T) and segments (B, T) -> hidden states (B, T, C) and padding mask (B, T)."""

    def __init__(self, cfg: EncoderConfig, dictionary):
        super().__init__()
        self.padding_idx = dictionary.pad()
        embed_tokens = nn.Embedding(len(dictionary), cfg.encoder_embed_dim, self.padding_idx)
        nn.init.normal_(embed_tokens.weight, std=0.02)
        nn.init.zeros_(embed_tokens.weight[self.padding_idx])
        args = encoder_args(cfg)
        self.encoder = resolve_encoder_class(cfg.encoder_class)(args, dictionary, embed_tokens)
        self.segment_embeddings = None
        if cfg.num_segments > 0:
            if "token_embeddings" not in inspect.signature(self.encoder.forward).parameters:
                raise ValueError(
                    f"encoder_class {cfg.encoder_class!r} takes no token_embeddings, so it cannot add "
                    f"segment embeddings; set num_segments to 0"
                )
            self.segment_embeddings = nn.Embedding(cfg.num_segments, cfg.encoder_embed_dim)
            nn.init.normal_(self.segment_embeddings.weight, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm) or type(module).__name__ == "FusedLayerNorm":
                module.eps = cfg.layernorm_eps
        #: "sdpa" or "fairseq" (see EncoderConfig.encoder_attention); may be changed on a built encoder
        self.attention = str(getattr(cfg, "encoder_attention", None) or "sdpa")
        if self.attention not in fast_encoder.ATTENTION:
            raise ValueError(f"encoder_attention {self.attention!r}: expected one of "
                             f"{', '.join(fast_encoder.ATTENTION)}")
        self.fast = fast_encoder.supported(self.encoder)  # fairseq's TransformerEncoder as built here
        if args.checkpoint_activations and not fast_encoder.checkpointed(self.encoder):
            raise ValueError(f"encoder_class {cfg.encoder_class!r} does not checkpoint its layers' activations "
                             f"(fairseq's checkpoint_activations option); drop --checkpoint-activations")

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def forward(
        self, tokens: torch.Tensor, segments: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        padding_mask = tokens.eq(self.padding_idx)  # (B, T)
        embedded = None
        if self.segment_embeddings is not None:
            if segments is None:
                segments = torch.zeros_like(tokens)
            embedded = self.embed_tokens(tokens) + self.segment_embeddings(segments)  # (B, T, C)
        if self.fast and self.attention == "sdpa":
            return fast_encoder.encoder_forward(self.encoder, tokens, embedded), padding_mask  # (B, T, C)
        out = self.encoder(tokens) if embedded is None else self.encoder(tokens, token_embeddings=embedded)
        hidden = out["encoder_out"][0].transpose(0, 1)  # (T, B, C) -> (B, T, C)
        return hidden, padding_mask
