"""The retrieval step of a REALM training batch (paper, sections 3.1-3.4).

For each query embedding, search the MIPS index for the top-k blocks, never the block the masked
sentence came from ("prohibiting trivial retrievals", section 3.4), and add the null document (an
empty block, section 3.4) unless disabled. The index only proposes candidates: their embeddings are
recomputed with the current document embedder in the model, so p(z | x) is exact for them and its
gradient reaches both embedders (section 3.3).
"""
from typing import Optional, Tuple

import numpy as np
import torch

from realm_fairseq.data.corpus import BlockCorpus
from realm_fairseq.retrieval.contract import Searcher
from realm_fairseq.retrieval.torch_search import DEFAULT_PRECISION


class Retriever:
    """Candidate blocks (as token ids) for a batch of query embeddings."""

    def __init__(self, corpus: BlockCorpus, index: Optional[Searcher], topk: int, null_document: bool,
                 version: Optional[int] = None, version_update: Optional[int] = None, devices: str = "cpu",
                 precision: str = DEFAULT_PRECISION):
        if topk > 0 and index is None:
            raise ValueError("retrieval needs an index when topk > 0")
        if topk == 0 and not null_document:
            raise ValueError("with topk 0 the null document is the only candidate; it cannot be disabled")
        self.corpus = corpus
        self.index = index
        self.topk = topk
        self.null_document = null_document
        self.version = version  # index version in use, and the update its embeddings came from
        self.version_update = version_update
        self.devices = devices  # where every version is searched (resolved --retrieval-devices)
        self.precision = precision  # how torch multiplies there (--retrieval-precision)

    def use(self, index: Searcher, version: int, version_update: int) -> None:
        """Retrieve from ``index`` (index version ``version``, embedded at update ``version_update``) from now on."""
        self.index, self.version, self.version_update = index, version, version_update

    @property
    def num_candidates(self) -> int:
        return self.topk + int(self.null_document)

    def search(self, queries: torch.Tensor, k: int, exclude=None) -> Tuple[np.ndarray, np.ndarray]:
        """(B, D) query embeddings -> block ids (B, k) int64 and the index's scores (B, k) float32, best
        first, never ``exclude[b]`` for query b (:mod:`realm_fairseq.retrieval.contract`). The model
        recomputes the scores of the candidates with its own document embedder."""
        if k == 0:
            return np.zeros((len(queries), 0), dtype=np.int64), np.zeros((len(queries), 0), dtype=np.float32)
        return self.index.search(queries.detach(), k, exclude=exclude)  # on the index's devices

    def candidate_tokens(self, block_ids: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, topk) block ids -> the K candidates of every query as tokens (B * K, L), padded, and
        lengths (B * K,); row b * K + k is candidate k of query b, the null document (empty) last."""
        ids = np.asarray(block_ids, dtype=np.int64)  # (B, topk)
        if self.null_document:
            ids = np.concatenate([ids, np.full((len(ids), 1), -1, dtype=np.int64)], axis=1)  # (B, K)
        return self.corpus.padded_tokens(ids.reshape(-1).tolist())
