"""The options of the ``realm`` model (``RealmConfig``), and the two groups of them that loading reads.

The config is the encoder's (:class:`~realm_fairseq.models.encoder.EncoderConfig`) plus the retriever's
pooling, projection and score (paper, section 3.2), how the towers compute, the span reader's size, and the
weights the model starts from. Fields left None are resolved before the model is built from the weights it
starts from (:func:`realm_fairseq.models.loading.resolve_similarity`), so that a checkpoint records what its
model uses. fairseq registers it under the model's name, ``realm`` (:mod:`realm_fairseq.models.realm`), and
stores it in every checkpoint as a plain dict of these fields.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum

from realm_fairseq.models.embedder import DOC_SEGMENTS, HEADS
from realm_fairseq.models.encoder import EncoderConfig, json_options
from realm_fairseq.models.similarity import POOLINGS, SCORES
from realm_fairseq.models.span_reader import SPAN_HEADS

#: the options that start a model from other weights; a checkpoint's own config drops them when the model is
#: rebuilt from the checkpoint's weights (its resolved fields already say how its towers compute)
NO_INIT = {"encoder_init": None, "retriever_init": None, "realm_init": None, "reader_init": None}
#: how the towers compute (see :mod:`realm_fairseq.models.realm`), each field's value when no weights say
#: otherwise
FORM_DEFAULTS = {"retriever_head": "linear", "doc_segments": "none", "span_head": "mlp", "activation_fn": "gelu",
                 "reader_encoder": "{}"}
#: the encoder options a reader's weights decide (``--reader-init``): its shape, not how it trains
READER_SHAPE = ("encoder_class", "encoder_arch", "encoder_options", "encoder_layers", "encoder_embed_dim",
                "encoder_ffn_embed_dim", "encoder_attention_heads", "max_positions", "num_segments", "layernorm_eps",
                "activation_fn")
#: those of them weights cannot be loaded across (the others change how the same weights compute)
SHAPE_CHECKED = ("encoder_class", "encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim",
                 "encoder_attention_heads", "max_positions", "num_segments")


@dataclass
class RealmConfig(EncoderConfig):
    retriever_pooling: Optional[ChoiceEnum(list(POOLINGS))] = field(
        default=None, metadata={"help": "how an embedder pools its states: cls (REALM) or mean; default: as "
                                "recorded with the --encoder-init weights (mean for a sentence-transformers "
                                "model such as MiniLM), else cls"}
    )
    retriever_projection_dim: int = field(
        default=128, metadata={"help": "retrieval embedding size after a linear projection (REALM: "
                               "128); 0 keeps the encoder's width"}
    )
    retriever_score: Optional[ChoiceEnum(list(SCORES))] = field(
        default=None, metadata={"help": "relevance f(x, z): dot, the inner product of the embeddings (REALM); "
                                "cosine, --retriever-scale times their cosine (keeps p(z|x) from collapsing "
                                "onto one block); default: the score the --encoder-init weights were trained "
                                "for (cosine for MiniLM), else dot"}
    )
    retriever_scale: float = field(
        default=20.0, metadata={"help": "with --retriever-score cosine: f(x, z) = scale * cos, the inverse "
                                "temperature of p(z|x)"}
    )
    retriever_head: Optional[ChoiceEnum(list(HEADS))] = field(
        default=None, metadata={"help": "what turns the pooled state into the embedding: linear (a projection, "
                                "or none), tanh (a projection, then tanh: sentence-transformers' Dense as it is "
                                "made by default) or realm (REALM's released embedders: BERT's pooler, tanh, "
                                "projection, LayerNorm); default: as the weights the retriever starts from, "
                                "else linear"}
    )
    doc_segments: Optional[ChoiceEnum(list(DOC_SEGMENTS))] = field(
        default=None, metadata={"help": "segments of a block for the document embedder: none (all 0) or "
                                "title_body (REALM: 1 for the body); default: as the weights the retriever "
                                "starts from, else none"}
    )
    span_head: Optional[ChoiceEnum(list(SPAN_HEADS))] = field(
        default=None, metadata={"help": "span reader head: mlp, or orqa (a LayerNorm after the ReLU, as "
                                "ORQA's and REALM's open-QA readers); default: orqa when starting from REALM's "
                                "weights, else as the --realm-init checkpoint, else mlp"}
    )
    encoder_init: Optional[str] = field(
        default=None, metadata={"help": "weights from realm-convert-hf to start every tower from (and the "
                                "reader's masked-LM head, when converted from a BERT with one)"}
    )
    retriever_init: Optional[str] = field(
        default=None, metadata={"help": "realm checkpoint (e.g. from realm_ict), or REALM weights from "
                                "realm-convert-hf, whose query and document embedders start the retriever"}
    )
    realm_init: Optional[str] = field(
        default=None, metadata={"help": "realm checkpoint (from realm_pretrain) whose embedders and reader "
                                "encoder start this model (REALM fine-tuning; the reader's head starts anew), "
                                "or REALM weights from realm-convert-hf: every part they hold"}
    )
    reader_init: Optional[str] = field(
        default=None, metadata={"help": "weights from realm-convert-hf (e.g. BERT with its masked-LM head) to start "
                                "the readers from, in their own sizes (recorded as --reader-encoder), while "
                                "--encoder-init or --retriever-init start the retriever: e.g. a small retriever, "
                                "cheap to re-embed the corpus with, beside a large reader"}
    )
    reader_encoder: Optional[str] = field(
        default=None, metadata={"help": "JSON object of the encoder options in which the readers (pre-training's "
                                "knowledge-augmented encoder, the open-QA span reader) differ from the retriever's, "
                                "e.g. '{\"encoder_layers\": 12, \"encoder_embed_dim\": 768, "
                                "\"encoder_ffn_embed_dim\": 3072}' or another --encoder-class; default: the shape "
                                "of the --reader-init weights, else the --realm-init checkpoint's, else {} (the "
                                "readers are built as the retriever)"}
    )
    span_hidden_dim: int = field(
        default=256, metadata={"help": "hidden size of the span reader's MLP over start and end states"}
    )


def reader_config(cfg) -> EncoderConfig:
    """The encoder config of the readers of a ``realm`` config: its encoder options with ``reader_encoder``
    applied (see that field)."""
    names = [f.name for f in dataclasses.fields(EncoderConfig) if not f.name.startswith("_")]
    changes = json_options(getattr(cfg, "reader_encoder", None) or "{}", "--reader-encoder")
    unknown = sorted(set(changes) - set(names))
    if unknown:
        raise ValueError(f"--reader-encoder: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} no encoder "
                         f"option; expected some of {', '.join(names)}")
    defaults = EncoderConfig()
    for name, value in changes.items():
        expected = _option_type(getattr(defaults, name))
        if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
            raise ValueError(f"--reader-encoder: {name} is {value!r}; expected "
                             f"{' or '.join(t.__name__ for t in expected)}")
    return EncoderConfig(**{name: changes.get(name, getattr(cfg, name)) for name in names})


def fill_missing_options(cfg) -> None:
    """Give every ``realm`` option that ``cfg`` lacks its default: a checkpoint written before an option
    existed loads as it was built (an option's default is the behaviour from before it)."""
    defaults = RealmConfig()
    for f in dataclasses.fields(RealmConfig):
        if not hasattr(cfg, f.name):
            setattr(cfg, f.name, getattr(defaults, f.name))


def _option_type(default) -> tuple:
    """The JSON types an encoder option with this default takes (a float option also takes an integer)."""
    if default is None or isinstance(default, str):
        return (str, type(None)) if default is None else (str,)
    if isinstance(default, bool):
        return (bool,)
    return (int, float) if isinstance(default, float) else (int,)
