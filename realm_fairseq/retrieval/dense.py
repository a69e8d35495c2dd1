"""Dense retrieval of blocks for question strings, as REALM's retriever ranks them (paper, section 3.2).

A question x is embedded by a query embedder and the blocks with the highest f(x, z) = Embed_input(x) .
Embed_doc(z) are looked up in a MIPS index: a committed version of an INDEX (:func:`open_index`, checked
against the corpus and the query embedder's score), or one made now (:mod:`realm_fairseq.indexing.retrievers`
builds both from any weights). The query embedder is handed in: this module never builds a model.
"""
import logging
from typing import List, Optional, Tuple

import numpy as np
import torch

from realm_fairseq.data.corpus import BlockCorpus
from realm_fairseq.data.question_dataset import MAX_QUESTION_LEN, collate_questions, encode_question
from realm_fairseq.retrieval.contract import Searcher
from realm_fairseq.retrieval.versions import IndexStore, check_serves

logger = logging.getLogger(__name__)


class DenseRetriever:
    """The top blocks of a corpus for questions, by the inner product of their embeddings."""

    def __init__(self, corpus: BlockCorpus, query_embedder: torch.nn.Module, index: Searcher, device: str = "cpu",
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

    def search(self, questions: List[str], k: int, exclude=None) -> Tuple[np.ndarray, np.ndarray]:
        """Question strings -> block ids (Q, k') int64 and scores (Q, k') float32, best first, k' = min(k,
        blocks), never ``exclude[q]`` for question q (:mod:`realm_fairseq.retrieval.contract`)."""
        return self.index.search(self.embed(questions), min(k, self.index.ntotal), exclude)


def open_index(index_dir: str, version: Optional[int], corpus: BlockCorpus, query_embedder: torch.nn.Module,
               devices: str = "cpu") -> Searcher:
    """A committed index version of ``corpus`` that serves ``query_embedder`` (an
    :class:`~realm_fairseq.models.embedder.Embedder`: same dimension and score), searched on ``devices``."""
    store = IndexStore(index_dir)
    index, manifest = store.load(version, corpus=corpus, devices=devices)
    check_serves(manifest, index_dir, query_embedder)
    logger.info("retrieving from %s: %d blocks, %s index, embedded by %s", store.version_dir(manifest["version"]),
                manifest["count"], manifest["index_type"], manifest["encoder"])
    return index
