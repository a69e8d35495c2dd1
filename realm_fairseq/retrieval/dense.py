"""Dense retrieval of blocks for questions, as REALM's retriever ranks them (paper, section 3.2).

A question x is embedded by a query embedder and the blocks with the highest f(x, z) = Embed_input(x) .
Embed_doc(z) are looked up in a MIPS index: a committed version of an INDEX (checked against the corpus
and the query embedder's score), or one made now by embedding every block with the matching document
embedder, which is exact for the weights at hand (REALM's Table 2 measures a retriever that way, zero
shot). The towers come from any of our checkpoints (ICT, pre-training, open QA) or from converted BERT /
sentence-transformers weights (both towers the same encoder).
"""
import logging
from typing import List, Optional, Tuple

import numpy as np
import torch

from realm_fairseq.data.corpus import BlockCorpus
from realm_fairseq.data.question_dataset import MAX_QUESTION_LEN, collate_questions, encode_question
from realm_fairseq.models.embedder import Embedder
from realm_fairseq.indexing.embed import embed_blocks
from realm_fairseq.models.loading import EmbedderSource, embedder_from_state, weights_embedders, weights_source
from realm_fairseq.retrieval.mips import MipsIndex
from realm_fairseq.retrieval.versions import IndexStore, check_serves

logger = logging.getLogger(__name__)


class DenseRetriever:
    """The top blocks of a corpus for questions, by the inner product of their embeddings."""

    def __init__(self, corpus: BlockCorpus, query_embedder: Embedder, index: MipsIndex, device: str = "cpu",
                 batch_size: int = 64, max_question_len: int = MAX_QUESTION_LEN):
        self.corpus = corpus
        self.query_embedder = query_embedder.to(device).eval()
        self.index = index
        self.device = device
        self.batch_size = batch_size
        self.max_question_len = max_question_len

    @torch.inference_mode()
    def embed(self, questions: List[str]) -> np.ndarray:
        """(Q, D) float32 query embeddings."""
        out = []
        for start in range(0, len(questions), self.batch_size):
            tokens = [encode_question(self.corpus, q, self.max_question_len)
                      for q in questions[start : start + self.batch_size]]
            src = collate_questions(tokens, self.corpus.dictionary.pad())["src_tokens"].to(self.device)  # (B, T)
            out.append(self.query_embedder(src).float().cpu().numpy())  # (B, D)
        return np.concatenate(out) if out else np.zeros((0, self.index.dim), dtype=np.float32)

    def search(self, questions: List[str], k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Block ids (Q, k') and scores (Q, k'), best first, k' = min(k, blocks)."""
        scores, ids = self.index.search(self.embed(questions), min(k, self.index.ntotal))
        return ids, scores


def open_index(index_dir: str, version: Optional[int], corpus: BlockCorpus, query_embedder: Embedder) -> MipsIndex:
    """A committed index version of ``corpus`` that serves ``query_embedder`` (same dimension and score)."""
    store = IndexStore(index_dir)
    index, manifest = store.load(version, corpus=corpus)
    check_serves(manifest, index_dir, query_embedder)
    logger.info("retrieving from %s: %d blocks, %s index, embedded by %s", store.version_dir(manifest["version"]),
                manifest["count"], manifest["index_type"], manifest["encoder"])
    return index


def index_now(source: EmbedderSource, corpus: BlockCorpus, embed_options: dict) -> MipsIndex:
    """An exact index of every block embedded now by ``source`` (nothing written)."""
    logger.info("embedding the %d blocks of %s with %s", len(corpus), corpus.path, source.info)
    return MipsIndex.build(embed_blocks(source, corpus, **embed_options).astype(np.float32), "flat")


def checkpoint_corpus(state: dict) -> Optional[str]:
    """The CORPUS a loaded checkpoint's task was trained on."""
    task = state["cfg"]["task"]
    return task.get("corpus") or task.get("data")


def from_checkpoint(state: dict, path: str, corpus: BlockCorpus, index_dir: Optional[str] = None,
                    version: Optional[int] = None, device: str = "cpu",
                    embed_options: Optional[dict] = None) -> DenseRetriever:
    """The query embedder of any ``realm`` checkpoint (loaded as ``state`` from ``path``), over
    ``index_dir`` or, without one, the index an open-QA checkpoint was fine-tuned with, else the corpus
    embedded now by the checkpoint's document embedder."""
    query = embedder_from_state(state, path, corpus, "query_embedder").embedder
    task = state["cfg"]["task"]
    if index_dir is None and task.get("_name") == "realm_open_qa":
        index_dir, version = task["index"], version if version is not None else task.get("index_version")
    if index_dir is not None:
        return DenseRetriever(corpus, query, open_index(index_dir, version, corpus, query), device)
    doc = embedder_from_state(state, path, corpus, "doc_embedder")
    return DenseRetriever(corpus, query, index_now(doc, corpus, {"device": device, **(embed_options or {})}), device)


def from_weights(path: str, corpus: BlockCorpus, index_dir: Optional[str] = None, version: Optional[int] = None,
                 device: str = "cpu", embed_options: Optional[dict] = None) -> DenseRetriever:
    """Converted weights (BERT, sentence-transformers or REALM's; :func:`weights_embedders`) as both towers,
    over ``index_dir`` or the corpus embedded now."""
    if index_dir is not None:
        (query,), _ = weights_embedders(path, corpus, ("query_embedder",))
        return DenseRetriever(corpus, query, open_index(index_dir, version, corpus, query), device)
    (query, doc), similarity = weights_embedders(path, corpus, ("query_embedder", "doc_embedder"))
    index = index_now(weights_source(doc, path, similarity), corpus, {"device": device, **(embed_options or {})})
    return DenseRetriever(corpus, query, index, device)
