"""Embed every block of a CORPUS with a document embedder, and commit the result as an index version.

REALM retrieves with maximum inner product search over Embed_doc(z) precomputed for every block z
(paper, sections 3.2 and 3.3); the refresher re-runs this with newer weights while training goes on.
Blocks are embedded in batches sorted by length (little padding), without gradients, in bf16/fp16 on
a GPU, and written back in corpus order as float16. A corpus can be embedded in shards (job arrays)
that a merge step commits as one version (:class:`~realm_fairseq.retrieval.versions.IndexStore`).

The embedder comes from a ``realm`` checkpoint (its ``doc_embedder``) or from BERT weights: a Hugging
Face BERT or sentence-transformers directory or a ``realm-convert-hf`` file, pooled and scored as the
weights were trained (:mod:`realm_fairseq.models.similarity`) unless told otherwise, L2-normalised for
models that score with the cosine. The manifest records the score the embeddings were made for.
"""
import hashlib
import logging
import os
import time
from dataclasses import astuple, dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from fairseq import checkpoint_utils
from fairseq.data import data_utils
from tqdm import tqdm

from realm_fairseq.data.corpus import BlockCorpus, with_cls_sep_batch
from realm_fairseq.data.documents import InputError
from realm_fairseq.models.embedder import Embedder, retriever_tower, tower_norm
from realm_fairseq.models.encoder import EncoderConfig
from realm_fairseq.models.hf_convert import convert_hf_bert, load_into_encoder, load_weights, weights_similarity
from realm_fairseq.models.realm import NO_INIT, RealmConfig, resolve_similarity
from realm_fairseq.models import realm_hf
from realm_fairseq.models.similarity import REALM_SIMILARITY, Similarity
from realm_fairseq.retrieval.mips import min_index_bytes, resolve_options
from realm_fairseq.retrieval.versions import IndexStore, shard_range

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PENDING_BATCHES = 32  # batches a GPU computes ahead of the copy back, while the next are collated


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


def embed_blocks(
    source: EmbedderSource,
    corpus: BlockCorpus,
    start: int = 0,
    end: Optional[int] = None,
    max_tokens: int = 16384,
    device: str = "cpu",
    dtype: str = "fp32",
    progress: bool = True,
) -> np.ndarray:
    """(end - start, D) float16 embeddings of blocks ``start..end``, in corpus order."""
    end = len(corpus) if end is None else end
    embedder = source.embedder.to(device).eval()
    dictionary = corpus.dictionary
    ids = np.arange(start, end)
    order = ids[np.argsort(corpus.sizes[start:end], kind="stable")]  # short blocks first
    batches = data_utils.batch_by_size(order, lambda i: int(corpus.sizes[i]) + 2, max_tokens=max_tokens)
    out = np.zeros((end - start, embedder.dim), dtype=np.float16)
    started = time.time()
    bar = tqdm(total=end - start, unit=" blocks", desc="embed blocks", disable=not progress, mininterval=1.0)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[dtype],
                              enabled=dtype != "fp32")
    pending = []  # (rows, embeddings still on the device): copying them back waits for the device
    with torch.inference_mode(), autocast:
        for batch in batches:
            blocks, lengths = corpus.padded_tokens(batch)  # (B, L), (B,)
            tokens = with_cls_sep_batch(blocks.to(device), lengths.to(device), dictionary)  # (B, L + 2)
            pending.append((np.asarray(batch) - start, embedder(tokens)))  # (B, D)
            if len(pending) == PENDING_BATCHES:
                _copy_back(pending, out)
            bar.update(len(batch))
        _copy_back(pending, out)
    bar.close()
    elapsed = time.time() - started
    logger.info("embedded %d blocks in %.1fs (%.0f blocks/s)", end - start, elapsed,
                (end - start) / max(elapsed, 1e-9))
    return out


def _copy_back(pending: list, out: np.ndarray) -> None:
    """Write the pending (rows, (B, D) embeddings) into ``out`` as float16 and empty the list."""
    for rows, embeddings in pending:
        out[rows] = embeddings.float().cpu().numpy()
    pending.clear()


def shard_tag(source: EmbedderSource, corpus: BlockCorpus) -> str:
    """A name for the shards of one build: the same weights file and corpus give the same tag."""
    path = source.info["path"]
    stamp = os.stat(path).st_mtime_ns if os.path.isfile(path) else 0
    key = f"{path}|{stamp}|{source.info.get('pooling')}|{source.info.get('score')}|{corpus.checksum}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def check_output(store: IndexStore, corpus: BlockCorpus, source: EmbedderSource, index_type: str,
                 shard: Tuple[int, int], merge: bool, index_options: dict) -> None:
    """Before anything is embedded: the index options suit this corpus and embedder, and the INDEX can be
    written, with room for what this step writes (a shard's embeddings, or a version)."""
    count, dim = len(corpus), source.embedder.dim
    options = resolve_options(index_type, count, dim, **index_options)
    shard_id, num_shards = shard
    if num_shards > 1 and not merge:
        start, end = shard_range(count, shard_id, num_shards)
        store.check_writable((end - start) * dim * 2)
    else:
        store.check_writable(count * dim * 2 + min_index_bytes(index_type, count, dim, options))


def build_index(
    corpus: BlockCorpus,
    index_dir: str,
    source: EmbedderSource,
    index_type: str = "flat",
    shard: Tuple[int, int] = (0, 1),
    merge: bool = False,
    embed_options: Optional[dict] = None,
    **index_options,
) -> Optional[int]:
    """Embed ``corpus`` and commit an index version in ``index_dir``; returns the version number.

    With ``shard=(i, n)`` and n > 1, embed only shard i and store it (skipped if already stored;
    returns None); ``merge=True`` then commits the n stored shards as one version. This is the
    function the index refresher calls.
    """
    store = IndexStore(index_dir)
    shard_id, num_shards = shard
    embed_options = embed_options or {}
    check_output(store, corpus, source, index_type, shard, merge, index_options)
    if num_shards == 1:
        embeddings = embed_blocks(source, corpus, **embed_options)
        return store.commit(embeddings, corpus.checksum, source.info, index_type, **index_options)
    tag = shard_tag(source, corpus)
    if merge:
        return store.merge_shards(tag, num_shards, corpus.checksum, source.info, index_type, **index_options)
    if store.has_shard(tag, shard_id, num_shards):
        logger.info("shard %d of %d (%s) is already written: skipped", shard_id, num_shards, tag)
        return None
    start, end = shard_range(len(corpus), shard_id, num_shards)
    store.write_shard(tag, shard_id, num_shards, embed_blocks(source, corpus, start, end, **embed_options),
                      source=source.info["path"])
    logger.info("wrote shard %d of %d (blocks %d..%d, tag %s)", shard_id, num_shards, start, end, tag)
    return None
