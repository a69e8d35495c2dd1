"""Build an index version: embed every block of a CORPUS and commit the result (REALM, sections 3.2, 3.3).

This is what ``realm-build-index`` runs and what every index refresh runs with a snapshot of the
training weights. A corpus can be embedded in shards (job arrays) that a merge step commits as one
version (:class:`~realm_fairseq.retrieval.versions.IndexStore`).

The embedder comes from a ``realm`` checkpoint (its ``doc_embedder``) or from BERT weights: a Hugging
Face BERT or sentence-transformers directory or a ``realm-convert-hf`` file, pooled and scored as the
weights were trained (:mod:`realm_fairseq.models.similarity`) unless told otherwise, L2-normalised for
models that score with the cosine (:mod:`realm_fairseq.models.loading`). The manifest records the score
the embeddings were made for.
"""
import hashlib
import logging
import os
from typing import Optional, Tuple

from realm_fairseq.data.corpus import BlockCorpus
from realm_fairseq.indexing.embed import embed_blocks
from realm_fairseq.models.loading import EmbedderSource
from realm_fairseq.retrieval.mips import min_index_bytes, resolve_options
from realm_fairseq.retrieval.versions import IndexStore, shard_range

logger = logging.getLogger(__name__)


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
