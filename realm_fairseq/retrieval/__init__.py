"""Retrieval: READS index versions and searches them (REALM, sections 3.2 and 3.3).

Versions are produced by :mod:`realm_fairseq.indexing`; nothing here embeds a corpus or writes a version
but :class:`~.versions.IndexStore`, the on-disk protocol both sides share.

- :mod:`.mips`: the MIPS index of block embeddings (faiss flat, IVF, HNSW, ...), saved and loaded.
- :mod:`.torch_search`: exact search with torch matmul + top-k (block embeddings on the GPU).
- :mod:`.placement`: where a version is searched (``--retrieval-devices``): faiss on the CPU, memory-mapped,
  or the GPUs (faiss-gpu, else :mod:`.torch_search`).
- :mod:`.versions`: INDEX/vN on disk: commit, shards, manifests, the checks that a version serves a corpus
  and a query embedder, pruning.
- :mod:`.version_loader`: loads a newly committed version in a background thread during training.
- :mod:`.contract`: the one search contract, ``search(queries, k, exclude=None) -> (ids, scores)``.
- :mod:`.retriever` (pre-training: the index swapped by refreshes), :mod:`.fixed_retriever` (QA: a fixed
  index), :mod:`.dense` (questions as strings), :mod:`.bm25` (the sparse baseline), :mod:`.recall` (recall@k
  of any retriever).
"""
