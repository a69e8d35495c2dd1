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
from realm_fairseq.retrieval.versions import IndexStore

logger = logging.getLogger(__name__)


class FixedIndexRetriever:
    """Top-k blocks and differentiable retrieval scores for a batch of query embeddings."""

    def __init__(self, corpus: BlockCorpus, index_dir: str, version: Optional[int] = None):
        store = IndexStore(index_dir)
        self.corpus = corpus
        self.index, self.manifest = store.load(version, corpus=corpus)
        self.embeddings = store.embeddings(self.manifest["version"])  # (blocks, D) float16, memory-mapped
        m = self.manifest
        logger.info("retrieving from %s: %d blocks, %s index, embedded by %s", store.version_dir(m["version"]),
                    m["count"], m["index_type"], m["encoder"])

    @property
    def dim(self) -> int:
        return self.index.dim

    def search(self, queries: torch.Tensor, k: int) -> Tuple[np.ndarray, torch.Tensor]:
        """(B, D) query embeddings -> block ids (B, k') and scores (B, k') best first, k' = min(k, blocks);
        the scores are differentiable with respect to ``queries``."""
        k = min(k, self.index.ntotal)
        _, ids = self.index.search(queries.detach().float().cpu(), k)  # (B, k')
        docs = torch.from_numpy(self.embeddings[ids.reshape(-1)].astype(np.float32))  # (B * k', D)
        docs = docs.view(*ids.shape, -1).to(queries.device)  # (B, k', D)
        return ids, torch.einsum("bd,bkd->bk", queries.float(), docs)
