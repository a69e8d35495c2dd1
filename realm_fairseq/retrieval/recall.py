"""Zero-shot retrieval quality: recall@k of any retriever on open-domain questions (REALM, Table 2).

REALM reports how often the top 5 retrieved blocks hold the answer, before and after pre-training, with
no fine-tuning ("zero-shot Recall@5"). Here any retriever that searches question strings by the one
contract, ``search(questions, k) -> (ids, scores)`` (:mod:`realm_fairseq.retrieval.contract`:
:class:`~realm_fairseq.retrieval.dense.DenseRetriever`, :class:`~realm_fairseq.retrieval.bm25.Bm25Retriever`),
is measured the same way:

- ``recall@k``: the share of questions (in percent) with a top-k block that holds an answer by DPR's
  rule (:class:`~realm_fairseq.data.answers.BlockHits`);
- ``gold_recall@k``, where question lines carry a ``doc_id``: the share of those questions with a top-k
  block from the gold document. A ``doc_id`` the corpus lacks is counted (``gold_missing``), logged
  with its file and line, and left out of ``gold_recall@k``, never counted as a miss.
"""
import logging
from collections import defaultdict
from typing import List, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from realm_fairseq.data.answers import BlockHits
from realm_fairseq.data.corpus import BlockCorpus
from realm_fairseq.data.qa_metrics import RECALL_AT, recall_at
from realm_fairseq.data.questions import Question
from realm_fairseq.retrieval.contract import Searcher

logger = logging.getLogger(__name__)

SHOWN = 5  # blocks of each question written to the predictions file


def retrieve(retriever: Searcher, questions: Sequence[Question], k: int, batch_size: int = 256,
             progress: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Block ids (Q, k') and scores (Q, k') of every question, ``batch_size`` questions at a time."""
    ids, scores = [], []
    bar = tqdm(total=len(questions), unit=" questions", desc="retrieve", disable=not progress, mininterval=1.0)
    for start in range(0, len(questions), batch_size):
        batch = [q.question for q in questions[start : start + batch_size]]
        found_ids, found_scores = retriever.search(batch, k)  # (B, k'), (B, k')
        ids.append(found_ids)
        scores.append(found_scores)
        bar.update(len(batch))
    bar.close()
    return np.concatenate(ids), np.concatenate(scores)


def gold_ranks(corpus: BlockCorpus, questions: Sequence[Question], ids: np.ndarray, source: str
               ) -> Tuple[np.ndarray, np.ndarray]:
    """For each question, the rank of the first block from its gold document (-1: none retrieved) and
    whether its ``doc_id`` is a document of the corpus (False also where it has none)."""
    documents = defaultdict(list)
    for index, doc_id in enumerate(corpus.document_ids):
        documents[doc_id].append(index)
    block_docs = corpus.meta[:, 0]  # (blocks,) the document each block comes from
    ranks, known, missing = np.full(len(questions), -1), np.zeros(len(questions), dtype=bool), []
    for q, question in enumerate(questions):
        if question.doc_id is None:
            continue
        if question.doc_id not in documents:
            missing.append(question)
            continue
        known[q] = True
        hits = np.flatnonzero(np.isin(block_docs[np.maximum(ids[q], 0)], documents[question.doc_id]) & (ids[q] >= 0))
        ranks[q] = hits[0] if len(hits) else -1
    if missing:
        shown = "; ".join(f"{source}, line {m.line}: doc_id {m.doc_id!r}" for m in missing[:3])
        logger.warning("%d questions name a doc_id that %s does not hold, left out of gold_recall@k: %s%s",
                       len(missing), corpus.path, shown, " ..." if len(missing) > 3 else "")
    return ranks, known


def evaluate_retrieval(retriever: Searcher, corpus: BlockCorpus, questions: Sequence[Question],
                       answer_type: str = "text", source: str = "questions", progress: bool = False,
                       records: bool = False) -> Tuple[dict, List[dict]]:
    """Metrics (see the module docstring) and, with ``records``, one record per question: its top blocks,
    whether each holds an answer, and the rank of the first that does. ``source`` names the question file
    in messages."""
    depth = min(max(RECALL_AT), len(corpus))
    ids, scores = retrieve(retriever, questions, depth, progress=progress)
    hits = BlockHits(corpus, answer_type)
    first = np.array([hits.first(q.answers, row) for q, row in zip(questions, ids)], dtype=np.int64)
    metrics = {"questions": len(questions), "blocks": len(corpus), **recall_at(first, depth)}
    gold, known = gold_ranks(corpus, questions, ids, source)
    with_doc_id = sum(q.doc_id is not None for q in questions)
    if with_doc_id:
        metrics.update({"gold_questions": int(known.sum()), "gold_missing": with_doc_id - int(known.sum()),
                        **recall_at(gold[known], depth, "gold_")})
    if not records:
        return metrics, []
    return metrics, [_record(corpus, hits, *row) for row in zip(questions, ids, scores, first, gold)]


def _record(corpus: BlockCorpus, hits: BlockHits, question: Question, ids: np.ndarray, scores: np.ndarray,
            first: int, gold: int) -> dict:
    top = [int(i) for i in ids[:SHOWN] if i >= 0]
    holds = hits.holds(question.answers, top)
    blocks = [corpus.block(i) for i in top]
    return {"id": question.id, "question": question.question, "answers": question.answers,
            "doc_id": question.doc_id, "first_hit_rank": None if first < 0 else int(first),
            "gold_rank": None if gold < 0 else int(gold),
            "retrieved": [{"block": b.index, "doc_id": b.doc_id, "title": b.title, "score": float(sc),
                           "has_answer": h} for b, sc, h in zip(blocks, scores, holds)]}
