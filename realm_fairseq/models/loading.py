"""Every way to fill a tower: our checkpoints, converted HF/REALM weights, and refresh snapshots.

REALM's retriever is two towers, Embed_input and Embed_doc (paper, section 3.2), warm-started from ICT or
BERT (section 3.4) and re-read from newer weights for every index refresh (section 3.3). This module is
the one reader of our checkpoint layout (``cfg.model`` and ``model`` keys ``query_embedder.*``,
``doc_embedder.*``, ``reader.encoder.*``, ``span_reader.encoder.*``) and the one writer of a refresh
snapshot, a checkpoint that holds only the document embedder in that same layout. Converted weights come
through :mod:`realm_fairseq.models.hf_convert` (BERT, sentence-transformers) and
:mod:`realm_fairseq.models.realm_hf` (REALM's released checkpoints).
"""
import os
from dataclasses import astuple, dataclass
from enum import Enum
from typing import List, Optional, Sequence, Tuple

from fairseq import checkpoint_utils
from omegaconf import DictConfig, OmegaConf

from realm_fairseq.data.corpus import BlockCorpus
from realm_fairseq.errors import InputError
from realm_fairseq.models import realm_hf
from realm_fairseq.models.embedder import Embedder, retriever_tower, tower_norm
from realm_fairseq.models.encoder import EncoderConfig
from realm_fairseq.models.hf_convert import convert_hf_bert, load_into_encoder, load_weights, weights_similarity
from realm_fairseq.models.realm import NO_INIT, RealmConfig, resolve_similarity
from realm_fairseq.models.similarity import REALM_SIMILARITY, Similarity


@dataclass
class EmbedderSource:
    """An embedder and what to record about where its weights came from."""

    embedder: Embedder
    info: dict  # stored in the index manifest: source kind, path, update number


def _realm_cfg(model_cfg) -> RealmConfig:
    names = {f for f in RealmConfig.__dataclass_fields__ if not f.startswith("_")}
    return RealmConfig(**{k: v for k, v in dict(model_cfg).items() if k in names})


def doc_embedder_from_checkpoint(path: str, corpus: BlockCorpus, tower: str = "doc_embedder",
                                 score: Optional[str] = None) -> EmbedderSource:
    """The document embedder (or the ``query_embedder``, by ``tower``) of a ``realm`` model checkpoint
    (ICT, REALM pre-training or open QA), for the checkpoint's retriever score or for ``score`` (e.g. an
    ICT retriever trained with dot that starts a model scoring with the cosine)."""
    return embedder_from_state(checkpoint_utils.load_checkpoint_to_cpu(path), path, corpus, tower, score)


def embedder_from_state(state: dict, path: str, corpus: BlockCorpus, tower: str = "doc_embedder",
                        score: Optional[str] = None) -> EmbedderSource:
    """:func:`doc_embedder_from_checkpoint` for a checkpoint already loaded (``state``) from ``path``. The
    towers' weights are the checkpoint's own: the files it was started from are neither read nor needed."""
    cfg = _realm_cfg({**state["cfg"]["model"], **NO_INIT})
    cfg.retriever_score = score or cfg.retriever_score
    resolve_similarity(cfg)
    embedder = retriever_tower(cfg, corpus.dictionary, tower)
    prefix = tower + "."
    weights = {k[len(prefix):]: v for k, v in state["model"].items() if k.startswith(prefix)}
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
    REALM weights (``realm-convert-hf`` of REALM's embedder or open-QA checkpoints) as REALM computes them;
    BERT or sentence-transformers weights (a directory or a ``realm-convert-hf`` file) as one encoder for
    every tower, pooled and scored as the weights record unless ``pooling``/``score`` say otherwise."""
    if os.path.isfile(path) and realm_hf.is_realm_weights(path):
        if (pooling or REALM_SIMILARITY.pooling, score or REALM_SIMILARITY.score) != astuple(REALM_SIMILARITY):
            raise InputError(f"{path}: REALM weights pool and score as REALM does ([CLS], dot); drop the other "
                             f"--pooling/--score")
        return [realm_hf.embedder_from_weights(path, corpus.dictionary, t) for t in towers], REALM_SIMILARITY
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
