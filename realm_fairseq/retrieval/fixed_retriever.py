"""Retrieval from a fixed index for open-domain QA fine-tuning and inference (REALM, section 3.3 and
appendix: the document embedder and the index are not updated while fine-tuning, as in ORQA).

The index proposes the top blocks of each question; their relevance f(x, z) = Embed_input(x) . Embed_doc(z)
is then recomputed from the stored block embeddings of the same index version, so the scores carry
gradient into the query embedder while Embed_doc(z) stays what the index holds.
"""
import logging
from typing import Optional, Tuple

import numpy as np
import torch

from realm_fairseq.data.corpus import BlockCorpus
from realm_fairseq.retrieval.torch_search import DEFAULT_PRECISION
from realm_fairseq.retrieval.versions import IndexStore

logger = logging.getLogger(__name__)


class FixedIndexRetriever:
    """Top-k blocks and differentiable retrieval scores for a batch of query embeddings."""

    def __init__(self, corpus: BlockCorpus, index_dir: str, version: Optional[int] = None, devices: str = "cpu",
                 precision: str = DEFAULT_PRECISION):
        store = IndexStore(index_dir)
        self.corpus = corpus
        self.index, self.manifest = store.load(version, corpus=corpus, devices=devices,  # devices: resolved
                                               precision=precision)
        self.embeddings = store.embeddings(self.manifest["version"])  # (blocks, D) float16, memory-mapped
        m = self.manifest
        logger.info("retrieving from %s: %d blocks, %s index, embedded by %s", store.version_dir(m["version"]),
                    m["count"], m["index_type"], m["encoder"])

    @property
    def dim(self) -> int:
        return self.index.dim

    def search(self, queries: torch.Tensor, k: int, exclude=None) -> Tuple[np.ndarray, torch.Tensor]:
        """(B, D) query embeddings -> block ids (B, k') int64 and scores (B, k') float32 best first,
        k' = min(k, blocks), never ``exclude[b]`` for query b (:mod:`realm_fairseq.retrieval.contract`); the
        scores are differentiable with respect to ``queries``, -inf where an id is -1."""
        ids, _ = self.index.search(queries.detach(), min(k, self.index.ntotal), exclude)  # (B, k')
        docs = torch.from_numpy(self.embeddings[np.maximum(ids, 0).reshape(-1)].astype(np.float32))  # (B * k', D)
        docs = docs.view(*ids.shape, -1).to(queries.device)  # (B, k', D)
        scores = torch.einsum("bd,bkd->bk", queries.float(), docs)  # (B, k')
        return ids, scores.masked_fill(torch.from_numpy(ids < 0).to(scores.device), float("-inf"))
