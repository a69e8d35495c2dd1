"""Every way to fill a tower: our checkpoints, converted HF/REALM weights, and refresh snapshots.

REALM's retriever is two towers, Embed_input and Embed_doc (paper, section 3.2), warm-started from ICT or
BERT (section 3.4) and re-read from newer weights for every index refresh (section 3.3). This module is
the one reader of our checkpoint layout (``cfg.model`` and ``model`` keys ``query_embedder.*``,
``doc_embedder.*``, ``reader.encoder.*``, ``span_reader.encoder.*``) and the one writer of a refresh
snapshot, a checkpoint that holds only the document embedder in that same layout. Converted weights come
through :mod:`realm_fairseq.models.hf_convert` (BERT, sentence-transformers) and
:mod:`realm_fairseq.models.realm_hf` (REALM's released checkpoints).

- Resolving a config: :func:`resolve_similarity` (and :func:`resolve_form`) set the fields a ``realm``
  config leaves unset from the weights it starts from (:func:`checkpoint_similarity`,
  :func:`checkpoint_form`, :func:`checkpoint_model_cfg`, :func:`encoder_init_weights`).
- Building the ``realm`` model: :func:`start_towers` fills its embedders and :func:`start_heads` the head
  a task registers, from ``--encoder-init``, ``--retriever-init`` and ``--realm-init``.
- Embedding a corpus: :func:`doc_embedder_from_checkpoint`, :func:`doc_embedder_from_bert` and
  :func:`weights_embedders` build embedders on their own; :func:`snapshot_state` writes a refresh snapshot.
"""
import contextlib
import functools
import json
import logging
import os
from dataclasses import astuple, dataclass
from enum import Enum
from typing import List, Optional, Sequence, Tuple

from fairseq import checkpoint_utils
from omegaconf import DictConfig, OmegaConf, open_dict

from realm_fairseq.data.corpus import BlockCorpus
from realm_fairseq.errors import InputError
from realm_fairseq.models import realm_hf, st_import
from realm_fairseq.models.config import (FORM_DEFAULTS, NO_INIT, READER_SHAPE, SHAPE_CHECKED, RealmConfig,
                                        fill_missing_options, reader_config)
from realm_fairseq.models.embedder import Embedder, retriever_tower, tower_norm
from realm_fairseq.models.encoder import EncoderConfig
from realm_fairseq.models.hf_convert import (config_dict, convert_hf_bert, load_into_encoder, load_lm_head,
                                               load_weights, weights_similarity)
from realm_fairseq.models.similarity import Similarity, resolve_retriever_config

logger = logging.getLogger(__name__)


@dataclass
class EmbedderSource:
    """An embedder and what to record about where its weights came from."""

    embedder: Embedder
    info: dict  # stored in the index manifest: source kind, path, update number


def _realm_cfg(model_cfg) -> RealmConfig:
    names = {f for f in RealmConfig.__dataclass_fields__ if not f.startswith("_")}
    return RealmConfig(**{k: v for k, v in dict(model_cfg).items() if k in names})


def state_part(state: dict, prefix: str) -> dict:
    """The weights under ``prefix`` of a checkpoint's ``model`` state, with the prefix dropped."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# ---------------------------------------------------------------- resolving a config from its weights

def resolve_similarity(cfg) -> Similarity:
    """Set the retriever pooling and score a ``realm`` model config leaves unset (None) to those of the
    weights its towers start from: the ``--realm-init``/``--retriever-init`` checkpoint's (or REALM
    weights'), else those recorded with the ``--encoder-init`` weights, else REALM's (cls, dot). A flag that
    contradicts the checkpoint the retriever starts from is refused. The fields that say how the towers
    compute are resolved the same way (:func:`resolve_form`). Tasks call this on the training config before
    building the model, so that checkpoints record what the model uses."""
    with open_dict(cfg) if OmegaConf.is_config(cfg) else contextlib.nullcontext():
        fill_missing_options(cfg)
        if cfg.reader_init and cfg.realm_init:
            raise ValueError(f"--reader-init {cfg.reader_init} and --realm-init {cfg.realm_init} both start the "
                             f"readers; give one")
        resolve_form(cfg)
        reader_config(cfg)  # a bad --reader-encoder is named before any tower is built
        return _resolve_similarity(cfg)


def _resolve_similarity(cfg) -> Similarity:
    init = cfg.realm_init or cfg.retriever_init
    if cfg.retriever_pooling and cfg.retriever_score and not init:
        return Similarity(cfg.retriever_pooling, cfg.retriever_score)
    recorded = checkpoint_similarity(init) if init else (
        weights_similarity(encoder_init_weights(cfg.encoder_init)) if cfg.encoder_init else None)
    if init:
        for name, given in (("pooling", cfg.retriever_pooling), ("score", cfg.retriever_score)):
            _refuse_contradicting_flag(f"--retriever-{name}", given, init, getattr(recorded, name))
    return resolve_retriever_config(cfg, recorded)


def checkpoint_similarity(path: str) -> Similarity:
    """The retriever pooling and score a ``realm`` checkpoint (or REALM weights file) was trained with."""
    if realm_hf.is_realm_weights(path):
        return Similarity(**realm_hf.load_realm_weights(path)["retriever"])
    model = checkpoint_model_cfg(path)
    return Similarity(model.get("retriever_pooling") or "cls", model.get("retriever_score") or "dot")


def checkpoint_form(path: str) -> dict:
    """How the towers of a ``realm`` checkpoint (or of a model starting from REALM weights) compute: the
    :data:`~realm_fairseq.models.config.FORM_DEFAULTS` fields."""
    if realm_hf.is_realm_weights(path):
        return dict(realm_hf.load_realm_weights(path)["form"])
    model = checkpoint_model_cfg(path)
    return {name: model.get(name) or default for name, default in FORM_DEFAULTS.items()}


def checkpoint_state(path: str) -> dict:
    """A ``realm`` checkpoint as fairseq loads it, its tensors memory-mapped: only those used are read from
    the file (a tower's weights, not the optimizer's state). Not kept: a mapping would hold the disk space of
    a checkpoint replaced meanwhile."""
    return checkpoint_utils.load_checkpoint_to_cpu(path, mmap=True)


def checkpoint_model_cfg(path: str) -> dict:
    """The model config of a ``realm`` checkpoint. Building a model consults it several times (similarity,
    form, once for the task's config and once for the model's), so it is read once per version of the file."""
    stat = os.stat(path)
    return _checkpoint_model_cfg(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _checkpoint_model_cfg(path: str, mtime_ns: int, size: int) -> dict:
    model = checkpoint_state(path)["cfg"]["model"]
    return OmegaConf.to_container(model) if OmegaConf.is_config(model) else dict(model)


def encoder_init_weights(path: str) -> dict:
    """The ``--encoder-init`` weights (:func:`~realm_fairseq.models.hf_convert.load_weights`, memory-mapped).
    Building a model reads them for its config (similarity, activation), its towers and then the head its
    task registers, so they are loaded once per version of the file; callers must not change what it
    returns."""
    stat = os.stat(path)
    return _encoder_init_weights(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _encoder_init_weights(path: str, mtime_ns: int, size: int) -> dict:
    return load_weights(path)


def resolve_form(cfg) -> None:
    """Set the :data:`~realm_fairseq.models.config.FORM_DEFAULTS` fields ``cfg`` leaves unset (None): from
    the ``--realm-init`` weights, else the ``--retriever-init`` ones (retriever fields and activation), else
    the activation recorded with the ``--encoder-init`` weights, else the defaults. The towers share one
    activation: starting parts from weights that disagree on it is refused."""
    if all(getattr(cfg, name, None) is not None for name in FORM_DEFAULTS):
        return
    sources = []  # (path, the fields it decides)
    if cfg.realm_init:
        sources.append((cfg.realm_init, checkpoint_form(cfg.realm_init)))
    if cfg.retriever_init:
        form = checkpoint_form(cfg.retriever_init)
        sources.append((cfg.retriever_init, {k: form[k] for k in ("retriever_head", "doc_segments", "activation_fn")}))
    if cfg.encoder_init:
        activation = encoder_init_weights(cfg.encoder_init)["config"].get("activation_fn") or "gelu"
        sources.append((cfg.encoder_init, {"activation_fn": activation}))
    _check_retriever_flags(cfg, sources)
    activations = {path: form["activation_fn"] for path, form in sources if "activation_fn" in form}
    if len(set(activations.values())) > 1 and getattr(cfg, "activation_fn", None) is None:
        raise ValueError(f"the weights the towers start from disagree on the activation ({activations}); one "
                         f"--activation-fn serves every tower (the readers' own: --reader-init)")
    reader_init = getattr(cfg, "reader_init", None)
    for name, default in FORM_DEFAULTS.items():
        if getattr(cfg, name, None) is None and not (name == "reader_encoder" and reader_init):
            decided = next((form[name] for _, form in sources if name in form), default)
            setattr(cfg, name, decided)
    if reader_init and getattr(cfg, "reader_encoder", None) is None:  # against the retriever's options, resolved above
        cfg.reader_encoder = json.dumps(reader_shape(reader_init, cfg), sort_keys=True)


#: the flags of how the towers compute that the weights they start from decide (:func:`resolve_form`)
RETRIEVER_FORM_FLAGS = {"retriever_head": "--retriever-head", "doc_segments": "--doc-segments"}


def _refuse_contradicting_flag(flag: str, given, path: str, recorded) -> None:
    """Raise a ValueError if the retriever flag ``flag`` was given (not None) a value other than the one the
    weights at ``path``, which the retriever starts from, were trained with."""
    if given is not None and given != recorded:
        raise ValueError(f"{flag} {given}: the retriever starts from {path}, trained with {flag} {recorded}; "
                         f"leave {flag} unset to keep it")


def _check_retriever_flags(cfg, sources) -> None:
    """A ``--retriever-head`` or ``--doc-segments`` that contradicts the weights the retriever starts from is
    refused, as a contradicting pooling or score is: a ``linear`` and a ``tanh`` head hold the same weights, and
    so do towers that read a block as one text or as title and body, so loading them would not tell."""
    for name, flag in RETRIEVER_FORM_FLAGS.items():
        recorded = next(((path, form[name]) for path, form in sources if name in form), None)
        if recorded is not None:
            _refuse_contradicting_flag(flag, getattr(cfg, name, None), *recorded)


def weights_shape(path: str) -> dict:
    """The :data:`~realm_fairseq.models.config.READER_SHAPE` options of converted weights (``--encoder-init``,
    ``--reader-init``), as the encoder they were converted for has them."""
    config = {**config_dict(EncoderConfig()), **encoder_init_weights(path)["config"]}
    config["activation_fn"] = config["activation_fn"] or FORM_DEFAULTS["activation_fn"]
    return {name: config[name] for name in READER_SHAPE}


def reader_shape(path: str, cfg) -> dict:
    """``--reader-encoder`` for readers started from the converted weights ``path`` (``--reader-init``): the
    options of their shape that differ from the retriever's."""
    return {name: value for name, value in weights_shape(path).items() if value != getattr(cfg, name, None)}


def check_reader_shape(path: str, cfg) -> None:
    """Refuse to start the readers from weights of another shape than ``--reader-encoder`` gives them, with
    the options that differ (rather than a tensor size mismatch)."""
    readers = reader_config(cfg)
    wrong = [f"{name} {getattr(readers, name)} (the weights: {value})" for name, value in weights_shape(path).items()
             if name in SHAPE_CHECKED and value != getattr(readers, name)]
    if wrong:
        raise ValueError(f"{path} does not fit the readers: {'; '.join(wrong)}; --reader-encoder "
                         f"{cfg.reader_encoder} gives them their shape: start them with --reader-init WEIGHTS of "
                         f"that shape, or leave --reader-encoder unset to take these weights' shape with "
                         f"--reader-init {path}")


# ---------------------------------------------------------------- building the realm model

def start_towers(cfg, towers: Sequence[Embedder], dictionary) -> None:
    """Fill the query and document embedders (``towers``, in that order) of a model built from ``cfg``:
    every encoder from ``--encoder-init``, then both embedders from ``--retriever-init``, then from
    ``--realm-init`` (each later source replaces what the earlier loaded)."""
    if cfg.encoder_init:
        load_encoder_init(cfg.encoder_init, towers, None, None, dictionary)
    if cfg.retriever_init:
        load_retriever(towers, cfg.retriever_init, cfg, dictionary)
    if cfg.realm_init:
        load_retriever(towers, cfg.realm_init, cfg, dictionary)


def start_heads(cfg, dictionary, reader=None, span_reader=None) -> None:
    """Fill the reader (masked-LM) or span reader a task registers on a model built from ``cfg``: its encoder
    (and masked-LM head) from ``--reader-init``, else ``--encoder-init``, then from ``--realm-init``."""
    init = getattr(cfg, "reader_init", None) or cfg.encoder_init
    if init:
        check_reader_shape(init, cfg)
        load_encoder_init(init, [], reader, span_reader, dictionary)
    if cfg.realm_init:
        load_reader(reader, span_reader, cfg.realm_init, cfg, dictionary)


def load_encoder_init(path: str, towers, reader, span_reader, dictionary) -> None:
    """Start every tower's encoder from converted BERT weights, and the reader's masked-LM head from BERT's
    when the weights hold it."""
    weights = encoder_init_weights(path)
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


def load_retriever(towers, path: str, cfg=None, dictionary=None) -> None:
    """Load the query and document embedders of a realm checkpoint (or REALM weights) into ``towers``."""
    if realm_hf.is_realm_weights(path):
        weights = realm_hf.load_realm_weights(path)
        realm_hf.check_fits(weights, cfg, path)
        realm_hf.load_towers(towers, weights, dictionary, path)
        return
    state = checkpoint_state(path)["model"]
    for tower, prefix in zip(towers, ("query_embedder.", "doc_embedder.")):
        weights = state_part(state, prefix)
        if not weights:
            raise ValueError(f"{path}: no {prefix[:-1]} weights; expected a checkpoint of the realm model")
        tower.load_state_dict(weights)


def load_reader(reader, span_reader, path: str, cfg=None, dictionary=None) -> None:
    """Load the reader's encoder of a realm checkpoint (masked-LM or span reader) into the reader and span
    reader the model has; from REALM weights, their heads too."""
    if realm_hf.is_realm_weights(path):
        weights = realm_hf.load_realm_weights(path)
        realm_hf.check_fits(weights, cfg, path)
        realm_hf.load_readers(reader, span_reader, weights, dictionary, path)
        return
    encoders = [r.encoder for r in (reader, span_reader) if r is not None]
    state = checkpoint_state(path)["model"]
    for prefix in ("reader.encoder.", "span_reader.encoder."):
        weights = state_part(state, prefix)
        if weights:
            for encoder in encoders:
                encoder.load_state_dict(weights)
            return
    raise ValueError(f"{path}: no reader weights; expected a checkpoint of realm_pretrain or realm_open_qa")


# ---------------------------------------------------------------- embedders on their own, snapshots

def doc_embedder_from_checkpoint(path: str, corpus: BlockCorpus, tower: str = "doc_embedder",
                                 score: Optional[str] = None) -> EmbedderSource:
    """The document embedder (or the ``query_embedder``, by ``tower``) of a ``realm`` model checkpoint
    (ICT, REALM pre-training or open QA), for the checkpoint's retriever score or for ``score`` (e.g. an
    ICT retriever trained with dot that starts a model scoring with the cosine)."""
    return embedder_from_state(checkpoint_state(path), path, corpus, tower, score)


def embedder_from_state(state: dict, path: str, corpus: BlockCorpus, tower: str = "doc_embedder",
                        score: Optional[str] = None) -> EmbedderSource:
    """:func:`doc_embedder_from_checkpoint` for a checkpoint already loaded (``state``) from ``path``. The
    towers' weights are the checkpoint's own: the files it was started from are neither read nor needed."""
    cfg = _realm_cfg({**state["cfg"]["model"], **NO_INIT})
    cfg.retriever_score = score or cfg.retriever_score
    resolve_similarity(cfg)
    embedder = retriever_tower(cfg, corpus.dictionary, tower)
    weights = state_part(state["model"], tower + ".")
    if not weights:
        raise ValueError(f"{path}: no {tower} weights; expected a checkpoint of the realm model")
    embedder.load_state_dict(weights)
    update = state.get("optimizer_history", [{}])[-1].get("num_updates")
    return EmbedderSource(embedder, {"kind": "checkpoint", "path": os.path.abspath(path), "update": update,
                                     "score": cfg.retriever_score})


def load_bert_weights(path: str) -> dict:
    """Converted weights from a HF BERT (or sentence-transformers) directory or a ``realm-convert-hf`` file."""
    return convert_hf_bert(path) if os.path.isdir(path) else load_weights(path)


def weights_embedders(path: str, corpus: BlockCorpus, towers: Sequence[str] = ("doc_embedder",),
                      pooling: Optional[str] = None, score: Optional[str] = None) -> Tuple[List[Embedder], Similarity]:
    """The embedders of ``towers`` from converted weights, read once, and the similarity they score with:
    towers with their heads (``realm-convert-hf`` of REALM's embedder or open-QA checkpoints, a
    ``realm-export-hf`` directory, a sentence-transformers embedder with a head) as they were trained; BERT or
    sentence-transformers weights (a directory or a ``realm-convert-hf`` file) as one encoder for every tower,
    pooled and scored as the weights record unless ``pooling``/``score`` say otherwise."""
    towers_weights = towers_weights_at(path)
    if towers_weights is not None:
        recorded = Similarity(**towers_weights["retriever"])
        if (pooling or recorded.pooling, score or recorded.score) != astuple(recorded):
            raise InputError(f"{path}: these towers pool and score as they were trained ({recorded.pooling}, "
                             f"{recorded.score}); drop the other --pooling/--score")
        return [realm_hf.embedder_from_weights(path, corpus.dictionary, t, towers_weights) for t in towers], recorded
    weights = load_bert_weights(path)
    recorded = weights_similarity(weights)
    similarity = Similarity(pooling or recorded.pooling, score or recorded.score)
    embedders = []
    for tower in towers:
        embedder = Embedder(EncoderConfig(**weights["config"]), corpus.dictionary, similarity.pooling,
                            projection_dim=0, norm=tower_norm(similarity.score, 1.0, tower))
        load_into_encoder(embedder.encoder, weights, corpus.dictionary, path)
        embedders.append(embedder)
    return embedders, similarity


def towers_weights_at(path: str) -> Optional[dict]:
    """The REALM weights file contents of ``path`` when it holds towers with their heads (a REALM weights file,
    a ``realm-export-hf`` directory, a sentence-transformers embedder with a head); None otherwise."""
    if os.path.isfile(path) and realm_hf.is_realm_weights(path):
        return realm_hf.load_realm_weights(path)
    if st_import.is_retriever_dir(path):
        return st_import.convert_towers(path, with_readers=False)  # embedding reads the embedders alone
    return None


def weights_source(embedder: Embedder, path: str, similarity: Similarity) -> EmbedderSource:
    """A document embedder of converted weights, with what an index manifest records about it."""
    return EmbedderSource(embedder, {"kind": "bert", "path": os.path.abspath(path), "pooling": similarity.pooling,
                                     "update": 0, "score": similarity.score})


def doc_embedder_from_bert(path: str, corpus: BlockCorpus, pooling: Optional[str] = None,
                           score: Optional[str] = None) -> EmbedderSource:
    """A document embedder from converted weights (:func:`weights_embedders`): a HF BERT or
    sentence-transformers directory, or a ``realm-convert-hf`` file of BERT or REALM weights."""
    (embedder,), similarity = weights_embedders(path, corpus, ("doc_embedder",), pooling, score)
    return weights_source(embedder, path, similarity)


def unwrap(model):
    """The realm model inside fairseq's distributed wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def snapshot_state(model, num_updates: int) -> dict:
    """A checkpoint of the document embedder alone, on CPU, in the layout :func:`doc_embedder_from_checkpoint`
    (and so ``realm-build-index --checkpoint``) reads."""
    model = unwrap(model)
    if isinstance(model.cfg, DictConfig):
        cfg = OmegaConf.to_container(model.cfg, resolve=True, enum_to_str=True)
    else:
        cfg = {k: v.value if isinstance(v, Enum) else v for k, v in vars(model.cfg).items()}
    weights = {f"doc_embedder.{k}": v.detach().to("cpu", copy=True)
               for k, v in model.doc_embedder.state_dict().items()}
    return {
        "cfg": {"model": cfg},
        "model": weights,
        "optimizer_history": [{"num_updates": num_updates, "optimizer_name": "none", "lr_scheduler_state": {}}],
        "extra_state": {},
    }
