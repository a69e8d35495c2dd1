"""Dense retrievers from any weights, over a committed INDEX version or the corpus embedded now (REALM, 3.2).

``realm-evaluate --retrieval-only`` measures a retriever zero shot as REALM's Table 2 does: the query embedder
of any of our checkpoints (ICT, pre-training, open QA) or converted BERT / sentence-transformers / REALM
weights (both towers the same encoder), over ``--index`` or, without one, an exact index of every block
embedded now by the matching document embedder (nothing written), which is exact for the weights at hand.
The retriever itself is :class:`~realm_fairseq.retrieval.dense.DenseRetriever`.
"""
import logging
from typing import Optional

from realm_fairseq.data.corpus import BlockCorpus
from realm_fairseq.indexing.embed import embed_blocks
from realm_fairseq.models.loading import EmbedderSource, embedder_from_state, weights_embedders, weights_source
from realm_fairseq.retrieval.dense import DenseRetriever, open_index
from realm_fairseq.retrieval.mips import DEFAULT_INDEX_TYPE, MipsIndex
from realm_fairseq.retrieval.placement import beside

logger = logging.getLogger(__name__)


def index_now(source: EmbedderSource, corpus: BlockCorpus, embed_options: dict) -> MipsIndex:
    """An exact index of every block embedded now by ``source`` (nothing written), over the float16
    embeddings an index version would store."""
    logger.info("embedding the %d blocks of %s with %s", len(corpus), corpus.path, source.info)
    return MipsIndex.build(embed_blocks(source, corpus, **embed_options), DEFAULT_INDEX_TYPE)


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
        return DenseRetriever(corpus, query, open_index(index_dir, version, corpus, query, beside(device)), device)
    doc = embedder_from_state(state, path, corpus, "doc_embedder")
    return DenseRetriever(corpus, query, index_now(doc, corpus, {"device": device, **(embed_options or {})}), device)


def from_weights(path: str, corpus: BlockCorpus, index_dir: Optional[str] = None, version: Optional[int] = None,
                 device: str = "cpu", embed_options: Optional[dict] = None) -> DenseRetriever:
    """Converted weights (BERT, sentence-transformers or REALM's;
    :func:`~realm_fairseq.models.loading.weights_embedders`) as both towers, over ``index_dir`` or the corpus
    embedded now."""
    if index_dir is not None:
        (query,), _ = weights_embedders(path, corpus, ("query_embedder",))
        return DenseRetriever(corpus, query, open_index(index_dir, version, corpus, query, beside(device)), device)
    (query, doc), similarity = weights_embedders(path, corpus, ("query_embedder", "doc_embedder"))
    index = index_now(weights_source(doc, path, similarity), corpus, {"device": device, **(embed_options or {})})
    return DenseRetriever(corpus, query, index, device)
