"""Producers of index versions: everything that embeds the corpus and commits a version of an INDEX.

REALM retrieves by maximum inner product search over Embed_doc(z) for every block z, and re-embeds the
corpus asynchronously while pre-training goes on (paper, sections 3.2 and 3.3). This package writes those
versions; :mod:`realm_fairseq.retrieval` reads them and searches.

- :mod:`.embed`: Embed_doc(z) for every block of a CORPUS, in batches sorted by length.
- :mod:`.build`: :func:`~.build.build_index` (embed and commit a version, or one shard of it, or the merge
  of the shards) and :func:`~.build.run_build`, the one function ``realm-build-index`` and every refresh call.
- :mod:`.config`: the ``--refresh-*`` options of pre-training.
- :mod:`.refresh`: every rank's part of a refresh during training: launch (rank 0), load the new version in
  the background, swap it in on all ranks after the same update.
- :mod:`.scheduler`: rank 0's part: snapshot the document embedder, launch a refresh, watch it, count failures.
- :mod:`.launchers`: where a refresh runs (a background process on this machine, or submitit jobs) and the
  :class:`~.launchers.RefreshPlan` that describes it.
- :mod:`.worker`: the local launcher's background process (``python -m realm_fairseq.indexing.worker``).
- :mod:`.block_emb`: REALM's released block embeddings (``block_emb``) committed as a version, without
  re-embedding (``realm-convert-hf --index``).
- :mod:`.retrievers`: dense retrievers from any weights (``realm-evaluate --retrieval-only``), over a committed
  version or an exact index of the corpus embedded now.
"""
