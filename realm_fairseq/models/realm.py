"""The ``realm`` fairseq model: REALM's retriever and knowledge-augmented encoder (paper, section 3.2).

The model holds the query embedder Embed_input and the document embedder Embed_doc; the relevance of
block z to input x is f(x, z) = Embed_input(x) . Embed_doc(z). Tasks that read (``realm_pretrain``)
register the reader, which predicts the masked tokens of x from ``[CLS] x [SEP] z [SEP]`` (``forward``);
open-domain QA (``realm_open_qa``) registers the span reader instead, which scores answer spans of z
(``read``). Either way the retriever is handed in. Architectures:

- ``realm_base``: BERT-base towers (12 layers, 768 wide, 12 heads, 3072 feed-forward) projected to 128
  dimensions, as the paper;
- ``realm_minilm``: the sizes of the offline MiniLM weights (6 layers, 384, 12 heads, 1536) and no
  projection, so that the converted sentence embedder retrieves as it was trained to from the start;
- ``realm_tiny``: 2 layers of 64 for tests.

No architecture sets the pooling or the score: they follow the ``--encoder-init`` weights (mean and
cosine for MiniLM, ``[CLS]`` and the inner product for BERT; :mod:`realm_fairseq.models.similarity`),
REALM's ``[CLS]`` and inner product without weights, unless ``--retriever-pooling``/``--retriever-score``
say otherwise. Nor does any set how the towers compute where REALM's released weights differ from our
defaults (``--retriever-head``, ``--doc-segments``, ``--span-head``, ``--activation-fn``): they follow the
weights the model starts from (:mod:`realm_fairseq.models.realm_hf`), else our defaults.

``--encoder-init WEIGHTS.pt`` (from ``realm-convert-hf``) warm-starts every tower, and the reader's
masked-LM head from BERT's when the weights have it; ``--retriever-init CKPT`` then loads both embedders
from a ``realm_ict`` (or earlier ``realm``) checkpoint, REALM's ICT warm start (section 3.4);
``--realm-init CKPT`` loads both embedders and the reader's encoder from a ``realm_pretrain`` (or
``realm_open_qa``) checkpoint, the start of fine-tuning. Both also take REALM's released weights as
``realm-convert-hf`` converts them: ``--retriever-init`` their embedders, ``--realm-init`` every part
they hold (embedders, the knowledge-augmented encoder with its masked-LM head, an open-QA reader with its
span head).
"""
import contextlib
import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from fairseq import checkpoint_utils
from fairseq.dataclass import ChoiceEnum
from fairseq.models import BaseFairseqModel, register_model, register_model_architecture
from fairseq.utils import safe_getattr
from omegaconf import OmegaConf, open_dict

from realm_fairseq.data.answers import AnswerFinder
from realm_fairseq.data.corpus import with_cls_sep_batch
from realm_fairseq.models import realm_hf
from realm_fairseq.models.embedder import DOC_SEGMENTS, HEADS, TOWERS, Embedder, retriever_tower
from realm_fairseq.models.encoder import EncoderConfig
from realm_fairseq.models.hf_convert import load_into_encoder, load_lm_head, load_weights, weights_similarity
from realm_fairseq.models.open_qa import ReadBatch, Reading, retrieve_and_read
from realm_fairseq.models.similarity import POOLINGS, SCORES, Similarity, resolve_retriever_config
from realm_fairseq.models.reader import Reader, join_query_and_blocks
from realm_fairseq.models.span_reader import SPAN_HEADS, SpanReader
from realm_fairseq.retrieval.fixed_retriever import FixedIndexRetriever
from realm_fairseq.retrieval.retriever import Retriever

logger = logging.getLogger(__name__)
#: the options that start a model from other weights; a checkpoint's own config drops them when the model is
#: rebuilt from the checkpoint's weights (its resolved fields already say how its towers compute)
NO_INIT = {"encoder_init": None, "retriever_init": None, "realm_init": None}
#: how the towers compute (see the module docstring), each field's value when no weights say otherwise
FORM_DEFAULTS = {"retriever_head": "linear", "doc_segments": "none", "span_head": "mlp", "activation_fn": "gelu"}


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
                                "or none) or realm (REALM's released embedders: BERT's pooler, tanh, "
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
    span_hidden_dim: int = field(
        default=256, metadata={"help": "hidden size of the span reader's MLP over start and end states"}
    )


@register_model("realm", dataclass=RealmConfig)
class RealmModel(BaseFairseqModel):
    def __init__(self, cfg: RealmConfig, dictionary, query_embedder: Embedder, doc_embedder: Embedder):
        super().__init__()
        self.cfg = cfg
        self.dictionary = dictionary
        self.query_embedder = query_embedder
        self.doc_embedder = doc_embedder
        self.reader: Optional[Reader] = None  # registered by the task that reads (realm_pretrain)
        self.span_reader: Optional[SpanReader] = None  # registered by realm_open_qa
        self.num_updates = 0  # from fairseq's trainer (set_num_updates), for the retriever's warm-up

    @classmethod
    def build_model(cls, cfg: RealmConfig, task):
        """The query and document embedders; the task then registers the head it reads with
        (:meth:`register_reader`, :meth:`register_span_reader`), as fairseq's sentence_prediction registers
        its classification head."""
        resolve_similarity(cfg)
        dictionary = task.source_dictionary
        towers = [retriever_tower(cfg, dictionary, tower) for tower in TOWERS]  # query, doc
        if cfg.encoder_init:
            _load_encoder_init(cfg.encoder_init, towers, None, None, dictionary)
        if cfg.retriever_init:
            _load_retriever(towers, cfg.retriever_init, cfg, dictionary)
        if cfg.realm_init:
            _load_retriever(towers, cfg.realm_init, cfg, dictionary)
        return cls(cfg, dictionary, *towers)

    def register_reader(self) -> None:
        """Grow the knowledge-augmented encoder (pre-training's reader), started from the ``--encoder-init``
        and ``--realm-init`` weights when given."""
        self.reader = Reader(self.cfg, self.dictionary)
        self._start_head(reader=self.reader)

    def register_span_reader(self) -> None:
        """Grow the span reader (open-domain QA), started from the ``--encoder-init`` and ``--realm-init``
        weights when given."""
        self.span_reader = SpanReader(self.cfg, self.dictionary, self.cfg.span_hidden_dim, self.cfg.span_head)
        self._start_head(span_reader=self.span_reader)

    def _start_head(self, reader: Optional[Reader] = None, span_reader: Optional[SpanReader] = None) -> None:
        if self.cfg.encoder_init:
            _load_encoder_init(self.cfg.encoder_init, [], reader, span_reader, self.dictionary)
        if self.cfg.realm_init:
            _load_reader(reader, span_reader, self.cfg.realm_init, self.cfg, self.dictionary)

    def set_num_updates(self, num_updates: int) -> None:
        """fairseq's ``train_step`` passes the update number before every forward (and its trainer on resume):
        the retriever's warm-up counts it, as wav2vec2's ``freeze_finetune_updates`` does."""
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    def embed_queries(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) query tokens -> (B, D) Embed_input(x)."""
        return self.query_embedder(tokens)

    def embed_blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) block tokens -> (B, D) Embed_doc(z)."""
        return self.doc_embedder(tokens)

    def forward(self, src_tokens, src_lengths, target, exclude_blocks, retriever: Retriever):
        """Retrieve, score and read. ``src_tokens`` (B, T) are ``[CLS] x [SEP]`` with masks, ``target``
        (B, T) the masked tokens (padding elsewhere). Returns retrieval scores (B, K), the reader's
        log p(y_t | x, z_k) at every position (B, K, T; zero where nothing is masked), the target mask
        (B, T) and the retrieved block ids (B, topk)."""
        d, device = self.dictionary, src_tokens.device
        batch = src_tokens.shape[0]
        queries = self.embed_queries(src_tokens)  # (B, D)
        block_ids, _ = retriever.search(queries, retriever.topk, exclude_blocks)  # (B, topk); rescored below
        blocks, block_lengths = retriever.candidate_tokens(block_ids)  # (B*K, L), (B*K,)
        blocks = blocks.to(device, non_blocking=True)
        block_lengths = block_lengths.to(device, non_blocking=True)
        k = retriever.num_candidates
        docs = self.embed_blocks(with_cls_sep_batch(blocks, block_lengths, d))  # (B*K, D)
        scores = torch.einsum("bd,bkd->bk", queries, docs.view(batch, k, -1))  # (B, K)

        joined, segments = join_query_and_blocks(
            src_tokens, blocks, block_lengths, d.pad(), d.eos(), self.cfg.max_positions
        )  # (B*K, Tj) with Tj >= T
        token_mask = target.ne(d.pad())  # (B, T)
        width = src_tokens.shape[1]
        masked = torch.zeros(joined.shape, dtype=torch.bool, device=device)
        masked[:, :width] = token_mask.repeat_interleave(k, dim=0)  # x comes first in every sequence
        logits = self.reader(joined, segments, masked)  # (masked tokens, V)
        targets = target.repeat_interleave(k, dim=0)[masked[:, :width]]  # (masked tokens,)
        picked = torch.log_softmax(logits.float(), -1).gather(1, targets[:, None]).squeeze(1)
        token_log_probs = logits.new_zeros(batch * k, width, dtype=torch.float)
        token_log_probs[masked[:, :width]] = picked
        return {
            "retrieval_scores": scores,
            "token_log_probs": token_log_probs.view(batch, k, width),
            "token_mask": token_mask,
            "block_ids": block_ids,
        }

    def read(self, src_tokens: torch.Tensor, retriever: FixedIndexRetriever, finder: AnswerFinder, reading: Reading,
             answers: Optional[Sequence[Sequence[str]]] = None, gold_only: bool = False) -> ReadBatch:
        """Open-domain QA's retrieve and read (section 3.3): ``src_tokens`` (B, T) are ``[CLS] x [SEP]``
        questions, ``retriever`` the fixed index, ``reading`` how many blocks to retrieve and read; with the
        questions' gold ``answers`` the result carries their gold spans, and with ``gold_only`` only the
        blocks holding one are read (:func:`~realm_fairseq.models.open_qa.retrieve_and_read`)."""
        return retrieve_and_read(self, retriever, finder, src_tokens, reading, answers, gold_only)


def resolve_similarity(cfg) -> Similarity:
    """Set the retriever pooling and score a ``realm`` model config leaves unset (None) to those of the
    weights its towers start from: the ``--realm-init``/``--retriever-init`` checkpoint's (or REALM
    weights'), else those recorded with the ``--encoder-init`` weights, else REALM's (cls, dot). A flag that
    contradicts the checkpoint the retriever starts from is refused. The fields that say how the towers
    compute are resolved the same way (:func:`resolve_form`). Tasks call this on the training config before
    building the model, so that checkpoints record what the model uses."""
    with open_dict(cfg) if OmegaConf.is_config(cfg) else contextlib.nullcontext():
        resolve_form(cfg)
        return _resolve_similarity(cfg)


def _resolve_similarity(cfg) -> Similarity:
    init = cfg.realm_init or cfg.retriever_init
    if cfg.retriever_pooling and cfg.retriever_score and not init:
        return Similarity(cfg.retriever_pooling, cfg.retriever_score)
    recorded = checkpoint_similarity(init) if init else (
        weights_similarity(load_weights(cfg.encoder_init)) if cfg.encoder_init else None)
    for name, flag in (("pooling", cfg.retriever_pooling), ("score", cfg.retriever_score)):
        if init and flag and flag != getattr(recorded, name):
            raise ValueError(f"--retriever-{name} {flag}: the retriever starts from {init}, trained with "
                             f"--retriever-{name} {getattr(recorded, name)}; leave --retriever-{name} unset to "
                             f"keep it")
    return resolve_retriever_config(cfg, recorded)


def checkpoint_similarity(path: str) -> Similarity:
    """The retriever pooling and score a ``realm`` checkpoint (or REALM weights file) was trained with."""
    if realm_hf.is_realm_weights(path):
        return Similarity(**realm_hf.load_realm_weights(path)["retriever"])
    model = checkpoint_model_cfg(path)
    return Similarity(model.get("retriever_pooling") or "cls", model.get("retriever_score") or "dot")


def checkpoint_form(path: str) -> dict:
    """How the towers of a ``realm`` checkpoint (or of a model starting from REALM weights) compute: the
    :data:`FORM_DEFAULTS` fields."""
    if realm_hf.is_realm_weights(path):
        return dict(realm_hf.load_realm_weights(path)["form"])
    model = checkpoint_model_cfg(path)
    return {name: model.get(name) or default for name, default in FORM_DEFAULTS.items()}


def checkpoint_model_cfg(path: str) -> dict:
    """The model config of a ``realm`` checkpoint. Building a model consults it several times (similarity,
    form, once for the task's config and once for the model's), so it is read once per version of the file."""
    stat = os.stat(path)
    return _checkpoint_model_cfg(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _checkpoint_model_cfg(path: str, mtime_ns: int, size: int) -> dict:
    model = checkpoint_utils.load_checkpoint_to_cpu(path)["cfg"]["model"]
    return OmegaConf.to_container(model) if OmegaConf.is_config(model) else dict(model)


def resolve_form(cfg) -> None:
    """Set the :data:`FORM_DEFAULTS` fields ``cfg`` leaves unset (None): from the ``--realm-init`` weights,
    else the ``--retriever-init`` ones (retriever fields and activation), else the activation recorded with
    the ``--encoder-init`` weights, else the defaults. The towers share one activation: starting parts from
    weights that disagree on it is refused."""
    if all(getattr(cfg, name, None) is not None for name in FORM_DEFAULTS):
        return
    sources = []  # (path, the fields it decides)
    if cfg.realm_init:
        sources.append((cfg.realm_init, checkpoint_form(cfg.realm_init)))
    if cfg.retriever_init:
        form = checkpoint_form(cfg.retriever_init)
        sources.append((cfg.retriever_init, {k: form[k] for k in ("retriever_head", "doc_segments", "activation_fn")}))
    if cfg.encoder_init:
        activation = load_weights(cfg.encoder_init)["config"].get("activation_fn") or "gelu"
        sources.append((cfg.encoder_init, {"activation_fn": activation}))
    activations = {path: form["activation_fn"] for path, form in sources}
    if len(set(activations.values())) > 1 and getattr(cfg, "activation_fn", None) is None:
        raise ValueError(f"the weights the towers start from disagree on the activation ({activations}); one "
                         f"--activation-fn serves every tower")
    for name, default in FORM_DEFAULTS.items():
        if getattr(cfg, name, None) is None:
            decided = next((form[name] for _, form in sources if name in form), default)
            setattr(cfg, name, decided)


def _load_encoder_init(path: str, towers, reader, span_reader, dictionary) -> None:
    """Start every tower's encoder from converted BERT weights, and the reader's masked-LM head from BERT's
    when the weights hold it."""
    weights = load_weights(path)
    encoders = [t.encoder for t in towers] + [r.encoder for r in (reader, span_reader) if r is not None]
    for encoder in encoders:
        load_into_encoder(encoder, weights, dictionary, path)
    if reader is None:
        return
    if "lm_head" in weights:
        load_lm_head(reader.lm_head, weights["lm_head"], path)
    else:
        logger.warning("%s holds no masked-LM head (converted from a BERT without cls.predictions.*, or by an "
                       "older realm-convert-hf): the reader's head starts random", path)


def _load_retriever(towers, path: str, cfg=None, dictionary=None) -> None:
    """Load the query and document embedders of a realm checkpoint (or REALM weights) into ``towers``."""
    if realm_hf.is_realm_weights(path):
        weights = realm_hf.load_realm_weights(path)
        realm_hf.check_fits(weights, cfg, path)
        realm_hf.load_towers(towers, weights, dictionary, path)
        return
    state = checkpoint_utils.load_checkpoint_to_cpu(path)["model"]
    for tower, prefix in zip(towers, ("query_embedder.", "doc_embedder.")):
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not weights:
            raise ValueError(f"{path}: no {prefix[:-1]} weights; expected a checkpoint of the realm model")
        tower.load_state_dict(weights)


def _load_reader(reader, span_reader, path: str, cfg=None, dictionary=None) -> None:
    """Load the reader's encoder of a realm checkpoint (masked-LM or span reader) into the reader and span
    reader the model has; from REALM weights, their heads too."""
    if realm_hf.is_realm_weights(path):
        weights = realm_hf.load_realm_weights(path)
        realm_hf.check_fits(weights, cfg, path)
        realm_hf.load_readers(reader, span_reader, weights, dictionary, path)
        return
    encoders = [r.encoder for r in (reader, span_reader) if r is not None]
    state = checkpoint_utils.load_checkpoint_to_cpu(path)["model"]
    for prefix in ("reader.encoder.", "span_reader.encoder."):
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if weights:
            for encoder in encoders:
                encoder.load_state_dict(weights)
            return
    raise ValueError(f"{path}: no reader weights; expected a checkpoint of realm_pretrain or realm_open_qa")


def _set_defaults(args, **defaults) -> None:
    for name, value in defaults.items():
        setattr(args, name, safe_getattr(args, name, value))


@register_model_architecture("realm", "realm_base")
def realm_base(args):
    _set_defaults(args, encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072,
                  encoder_attention_heads=12, retriever_projection_dim=128)


@register_model_architecture("realm", "realm_minilm")
def realm_minilm(args):
    _set_defaults(args, encoder_layers=6, encoder_embed_dim=384, encoder_ffn_embed_dim=1536,
                  encoder_attention_heads=12, retriever_projection_dim=0)


@register_model_architecture("realm", "realm_tiny")
def realm_tiny(args):
    _set_defaults(args, encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
                  encoder_attention_heads=2, max_positions=320, retriever_projection_dim=32)
