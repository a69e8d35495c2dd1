"""The one retrieval contract: ``search(queries, k, exclude=None) -> (ids, scores)`` (REALM, sections 3.2-3.4).

Every searcher of the plugin answers the same question, "the top k blocks z of each input x by the
relevance f(x, z), never the blocks in ``exclude``" (section 3.4 excludes the block a pre-training sentence
came from), with the same signature and the same return order, ids first:

- :class:`~realm_fairseq.retrieval.mips.MipsIndex` (faiss) and
  :class:`~realm_fairseq.retrieval.torch_search.TorchMipsSearch` (torch, on GPUs): queries (B, D)
  embeddings, numpy or torch; scores numpy float32.
- :class:`~realm_fairseq.retrieval.retriever.Retriever` (pre-training, the index refreshes swap in): queries
  (B, D) torch; scores the index's, numpy float32 (the model rescores the candidates itself).
- :class:`~realm_fairseq.retrieval.fixed_retriever.FixedIndexRetriever` (open QA, one fixed version):
  queries (B, D) torch; scores torch float32, differentiable with respect to the queries.
- :class:`~realm_fairseq.retrieval.dense.DenseRetriever` and :class:`~realm_fairseq.retrieval.bm25.Bm25Retriever`
  (zero-shot evaluation): queries are B question strings; scores numpy float32. BM25 takes no ``exclude``.

What each returns and takes:

- ``ids``: numpy int64 (B, k'), block ids (rows of the CORPUS), -1 where a query has fewer results than k'
  (fewer blocks than k, or too many excluded). k' = k for the index and the refreshing retriever; the
  retrievers over one fixed index version and BM25 cut k to the number of blocks, k' = min(k, blocks).
- ``scores``: (B, k') f(x, z) of those ids, best first; -inf where the id is -1.
- ``exclude``: ids each query must not get: a (B,) or (B, m) integer array or tensor, or B lists; negative
  entries are padding. None excludes nothing.
"""
from typing import Any, Optional, Protocol, Tuple

import numpy as np


class Searcher(Protocol):
    """Anything that retrieves blocks by the contract of this module."""

    def search(self, queries: Any, k: int, exclude: Optional[Any] = None) -> Tuple[np.ndarray, Any]:
        """``queries`` (B rows) -> ids (B, k') int64 and scores (B, k'), best first (see the module docstring)."""
