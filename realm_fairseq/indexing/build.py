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
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch

from realm_fairseq.data.corpus import BlockCorpus
from realm_fairseq.indexing.embed import embed_blocks
from realm_fairseq.models.loading import EmbedderSource, doc_embedder_from_bert, doc_embedder_from_checkpoint
from realm_fairseq.retrieval.mips import APPLIES, DEFAULT_INDEX_TYPE, resolve_options
from realm_fairseq.retrieval.versions import IndexStore, min_version_bytes, shard_range

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
        store.check_writable(min_version_bytes(index_type, count, dim, options))


def build_index(
    corpus: BlockCorpus,
    index_dir: str,
    source: EmbedderSource,
    index_type: str = DEFAULT_INDEX_TYPE,
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
        return store.merge_shards(tag, num_shards, corpus.checksum, source.info, index_type, count=len(corpus),
                                  **index_options)
    if store.has_shard(tag, shard_id, num_shards):
        logger.info("shard %d of %d (%s) is already written: skipped", shard_id, num_shards, tag)
        return None
    start, end = shard_range(len(corpus), shard_id, num_shards)
    store.write_shard(tag, shard_id, num_shards, embed_blocks(source, corpus, start, end, **embed_options),
                      source=source.info["path"])
    logger.info("wrote shard %d of %d (blocks %d..%d, tag %s)", shard_id, num_shards, start, end, tag)
    return None


@dataclass
class BuildRequest:
    """One build, as ``realm-build-index`` flags name it: the whole index, shard ``shard_id`` of
    ``num_shards``, or (``merge``) the commit of the stored shards. Exactly one of ``checkpoint`` (a realm
    checkpoint or refresh snapshot) and ``hf`` (converted or Hugging Face weights) gives the embedder."""

    corpus: str
    out: str
    checkpoint: Optional[str] = None
    hf: Optional[str] = None
    pooling: Optional[str] = None  # with ``hf``: default as the weights were trained
    score: Optional[str] = None  # default: the checkpoint's, or the one ``hf`` weights were trained for
    index_type: str = DEFAULT_INDEX_TYPE
    index_options: Dict[str, int] = field(default_factory=dict)
    max_tokens: int = 16384
    device: str = "cpu"
    dtype: Optional[str] = None  # default: bf16 on a GPU, fp32 on CPU
    shard_id: int = 0
    num_shards: int = 1
    merge: bool = False
    progress: bool = True

    def check(self) -> None:
        """Refuse what cannot work before anything is loaded or embedded (errors name the flag)."""
        if (self.checkpoint is None) == (self.hf is None):
            raise ValueError("expected exactly one of --checkpoint and --hf")
        check_index_options(self.index_type, self.index_options)
        if self.num_shards < 1:
            raise ValueError(f"--num-shards {self.num_shards}: expected at least 1")
        if not 0 <= self.shard_id < self.num_shards:
            raise ValueError(f"--shard-id {self.shard_id} is not in 0..{self.num_shards - 1}")
        if self.merge and self.num_shards == 1:
            raise ValueError("--merge commits the shards of a sharded build: give their --num-shards (at least 2)")
        if self.max_tokens < 1:
            raise ValueError(f"--max-tokens {self.max_tokens}: expected a positive number of tokens")
        check_device(self.device)


def check_index_options(index_type: str, options: Dict[str, int]) -> None:
    """Every option applies to ``index_type`` and is a positive integer (errors name the flag)."""
    takes = APPLIES[index_type]
    for name, value in options.items():
        flag = f"--{name.replace('_', '-')}"
        if name not in takes:
            listed = ", ".join(f"--{t.replace('_', '-')}" for t in takes) or "none"
            raise ValueError(f"{flag} does not apply to --index-type {index_type} (its options: {listed})")
        if value < 1:
            raise ValueError(f"{flag} {value}: expected a positive integer")


def check_device(name: str) -> None:
    """``name`` is a torch device this process can use."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no GPU is visible to torch")


def run_build(request: BuildRequest) -> Optional[int]:
    """Run one build (see :class:`BuildRequest`); returns the committed version, or None for a shard. The
    one function ``realm-build-index`` and every index refresh call, so that a refresh commits exactly what
    ``realm-build-index --checkpoint SNAPSHOT`` would."""
    request.check()
    corpus = BlockCorpus(request.corpus)
    source = (doc_embedder_from_checkpoint(request.checkpoint, corpus, score=request.score) if request.checkpoint
              else doc_embedder_from_bert(request.hf, corpus, request.pooling, request.score))
    dtype = request.dtype or ("bf16" if request.device.startswith("cuda") else "fp32")
    embed_options = dict(max_tokens=request.max_tokens, device=request.device, dtype=dtype,
                         progress=request.progress)
    return build_index(corpus, request.out, source, request.index_type, shard=(request.shard_id, request.num_shards),
                       merge=request.merge, embed_options=embed_options, **request.index_options)
