"""The open-domain QA metrics, in one place: exact match, F1 and recall@k (REALM, sections 4.1-4.2; ORQA).

- **Exact match** (EM) of a predicted string: SQuAD's normalisation (lower case, no punctuation, no
  articles a/an/the, single spaces) of the prediction equals that of a gold answer; a regular expression
  answer (CuratedTREC) matches the prediction from its start, ignoring case, as DrQA and ORQA score them.
- **F1** (SQuAD's, which REALM does not report: partial credit): the harmonic mean of the precision and
  recall of the words the normalised prediction and a normalised gold answer share (counted as a bag), the
  best over the gold answers; where either has no word, 1 if both have none, else 0. Regular expression
  answers have no words to share, so they get no F1.
- **A paired comparison** of two models on the same questions (:func:`paired_difference`): the mean of the
  per-question differences of a score (EM, F1) with a 95% percentile bootstrap interval, resampling the
  questions, so that "(b) beats (a)" on a few hundred questions comes with how sure it is.
- **Recall@k**: the share of questions with a block holding an answer among their best k (which block
  holds one is :class:`~realm_fairseq.data.answers.BlockHits`' or the reader's rule), for every k of
  :data:`RECALL_AT` up to the number retrieved. Each question is summarised by the rank of its first hit
  (-1: none), so counts add up over batches and workers.

The ``realm_qa`` criterion logs these during fine-tuning, ``realm-evaluate`` prints them.
"""
import re
import string
from collections import Counter
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from realm_fairseq.data.questions import compile_answer_regex

RECALL_AT = (1, 5, 20, 100)  # the k of the recall@k every evaluation reports

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, punctuation and articles removed, spaces collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Sequence[str], answer_type: str = "text") -> bool:
    """Whether ``prediction`` matches one of ``answers`` (strings, or patterns with ``answer_type`` regex)."""
    if answer_type == "regex":
        return any(compile_answer_regex(a).match(prediction) is not None for a in answers)
    predicted = normalize_answer(prediction)
    return any(predicted == normalize_answer(a) for a in answers)


def f1(prediction: str, answers: Sequence[str], answer_type: str = "text") -> Optional[float]:
    """SQuAD's F1 of ``prediction`` against the best of ``answers`` in [0, 1]; None for regex answers."""
    if answer_type == "regex":
        return None
    predicted = normalize_answer(prediction).split()
    return max((_f1(predicted, normalize_answer(a).split()) for a in answers), default=0.0)


def _f1(predicted: Sequence[str], gold: Sequence[str]) -> float:
    if not predicted or not gold:
        return float(predicted == gold)
    shared = sum((Counter(predicted) & Counter(gold)).values())
    if not shared:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(gold)
    return 2 * precision * recall / (precision + recall)


def paired_difference(b: Sequence[float], a: Sequence[float], resamples: int = 10000, seed: int = 1
                      ) -> Tuple[float, float, float]:
    """Mean of ``b - a`` over questions scored by two models (the same questions, in the same order), and the
    2.5th and 97.5th percentiles of that mean over ``resamples`` bootstrap resamples of the questions."""
    b, a = np.asarray(b, dtype=np.float64), np.asarray(a, dtype=np.float64)
    if b.ndim != 1 or b.shape != a.shape or not len(b):
        raise ValueError(f"expected two equally long, non-empty lists of scores (got {len(b)} and {len(a)})")
    diff = b - a  # (Q,)
    rng = np.random.default_rng(seed)
    means = np.concatenate([diff[rng.integers(0, len(diff), (min(1000, resamples - i), len(diff)))].mean(1)
                            for i in range(0, resamples, 1000)])  # (R,), 1000 resamples of (Q,) at a time
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def first_hits(holds: np.ndarray) -> np.ndarray:
    """(Q, k) bool, whether each retrieved block holds an answer -> (Q,) int64 rank of the first that does, or -1."""
    holds = np.asarray(holds, dtype=bool).reshape(len(holds), -1)
    return np.where(holds.any(1), holds.argmax(1), -1).astype(np.int64)


def recall_counts(ranks: np.ndarray, depth: int) -> Dict[str, int]:
    """``recall@k``: how many questions have their first hit within the best k, from each question's first-hit
    rank (-1: none), for every k of :data:`RECALL_AT` up to ``depth`` blocks retrieved."""
    ranks = np.asarray(ranks)
    return {f"recall@{k}": int(((ranks >= 0) & (ranks < k)).sum()) for k in RECALL_AT if k <= depth}


def percent(count: float, total: int) -> float:
    """``count`` out of ``total`` in percent, rounded to 2 decimals as every metric is reported."""
    return round(100.0 * float(count) / max(total, 1), 2)


def recall_at(ranks: np.ndarray, depth: int, prefix: str = "") -> Dict[str, float]:
    """``{prefix}recall@k`` in percent (:func:`recall_counts` over the questions of ``ranks``)."""
    return {prefix + name: percent(count, len(ranks)) for name, count in recall_counts(ranks, depth).items()}
