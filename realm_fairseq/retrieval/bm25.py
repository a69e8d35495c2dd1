"""BM25 over the blocks of a CORPUS: the sparse baseline every dense retriever is measured against.

DPR (Karpukhin et al. 2020) and the REALM/ORQA line report BM25 beside their retrievers; REALM's Table 2
compares retrievers by recall@5. Blocks are ranked with the ``bm25s`` library (extra ``bm25``) over
``title\\ntext`` as Pyserini indexes DPR's passages, with DPR's parameters k1=0.9 and b=0.4, English
stop words removed and Snowball's English stemmer (PyStemmer).
"""
import logging
import time
from typing import List, Tuple

import numpy as np
from tqdm import tqdm

from realm_fairseq.data.corpus import BlockCorpus

logger = logging.getLogger(__name__)

K1, B = 0.9, 0.4  # DPR's BM25 parameters (Pyserini's defaults for its DPR indexes)
STOPWORDS = "en"
STEMMER = "english"


def _require_bm25s():
    try:
        import bm25s
        import Stemmer
    except ImportError as e:
        raise ImportError(f"BM25 needs the bm25 extra ({e.name} is missing): pip install 'realm-fairseq[bm25]'") \
            from None
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every empty query at INFO
    return bm25s, Stemmer.Stemmer(STEMMER)


def block_texts(corpus: BlockCorpus, progress: bool = False) -> List[str]:
    """``title\\ntext`` of every block, in block order."""
    blocks = (corpus.block(i) for i in range(len(corpus)))
    return [f"{b.title}\n{b.text}" for b in tqdm(blocks, total=len(corpus), desc="read blocks", unit=" blocks",
                                                  disable=not progress, mininterval=1.0)]


class Bm25Retriever:
    """The top blocks of a CORPUS for questions, by BM25."""

    def __init__(self, texts: List[str], k1: float = K1, b: float = B, progress: bool = False):
        if not texts:
            raise ValueError("BM25 needs at least one block")
        self.bm25s, self.stemmer = _require_bm25s()
        self.count = len(texts)
        self.progress = progress
        started = time.perf_counter()
        self.model = self.bm25s.BM25(k1=k1, b=b)
        self.model.index(self._tokenize(texts), show_progress=progress)
        logger.info("BM25 (k1=%g, b=%g) indexed %d blocks in %.1fs", k1, b, self.count,
                    time.perf_counter() - started)

    @classmethod
    def for_corpus(cls, corpus: BlockCorpus, progress: bool = False, **params) -> "Bm25Retriever":
        return cls(block_texts(corpus, progress), progress=progress, **params)

    def _tokenize(self, texts: List[str]):
        return self.bm25s.tokenize(texts, stopwords=STOPWORDS, stemmer=self.stemmer, show_progress=False)

    def search(self, questions: List[str], k: int) -> Tuple[np.ndarray, np.ndarray]:
        """Question strings -> block ids (Q, k') int64 and BM25 scores (Q, k') float32, best first, k' = min(k,
        blocks) (:mod:`realm_fairseq.retrieval.contract`, without ``exclude``)."""
        k = min(k, self.count)
        ids, scores = self.model.retrieve(self._tokenize(questions), k=k, show_progress=False, n_threads=1)
        return np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32)
