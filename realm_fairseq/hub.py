"""Answer questions with a fine-tuned REALM in Python, in the style of fairseq's hub interfaces.

    from realm_fairseq.hub import RealmQA

    qa = RealmQA.from_pretrained("checkpoints/checkpoint_best.pt", index="INDEX")
    answer = qa.answer("Which NFL team won Super Bowl 50?")
    answer.text, answer.score            # 'Denver Broncos', 0.83
    answer.evidence[0].title             # the block the answer came from, with its text and score

The checkpoint is a ``realm_open_qa`` one; the CORPUS and INDEX default to those it was trained with.
Questions are answered in batches (:meth:`RealmQA.answer_all`): retrieve the top blocks from the index,
read the best ``topk`` and take the span of highest p(s, z | x) (REALM, section 3.3), by the checkpoint's
span rule (``span_rule``): ours, or ORQA's for REALM's converted open-QA models
(:mod:`realm_fairseq.models.open_qa`). With ``bm25=True`` the reader reads the blocks BM25 ranks first
instead (:mod:`realm_fairseq.retrieval.bm25`), BM25's score in the place of f(x, z): the baseline of a
retriever-reader pipeline with the same reader.
"""
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator, List, Optional, Union

import numpy as np
import torch
import torch.nn as nn
from fairseq import checkpoint_utils
from tqdm import tqdm

from realm_fairseq.data.question_dataset import collate_questions, encode_question
from realm_fairseq.models.config import NO_INIT
from realm_fairseq.models.open_qa import SPAN_RULES, predict
from realm_fairseq.retrieval import placement


@dataclass
class Evidence:
    rank: int  # among the blocks read, best first
    block: int
    title: str
    text: str
    retrieval_score: float  # f(x, z)


@dataclass
class Answer:
    question: str
    text: str  # the predicted span, as written in its block
    score: float  # p(s, z | x) of the span
    block_rank: int  # which evidence block the span is in
    evidence: List[Evidence]  # the blocks read, best first
    retrieved: List[int] = field(repr=False)  # ids of every block retrieved (the beam), best first

    def to_dict(self) -> dict:
        out = asdict(self)
        del out["retrieved"]
        return out


class RealmQA(nn.Module):
    """A ``realm_open_qa`` model with its task (corpus, fixed index, answer finder)."""

    def __init__(self, cfg, task, model):
        super().__init__()
        self.cfg = cfg
        self.task = task
        self.model = model.eval()

    @classmethod
    def from_pretrained(cls, checkpoint: str, index: Optional[str] = None, corpus: Optional[str] = None,
                        device: Optional[str] = None, span_rule: Optional[str] = None, bm25: bool = False,
                        **overrides) -> "RealmQA":
        """Load a checkpoint; ``index``/``corpus`` replace those it was trained with, ``span_rule``
        (``marginal`` or ``orqa``) the rule it predicts by (default: as trained or converted), ``bm25`` has
        BM25 retrieve for its reader (``retrieval="bm25"``), ``overrides`` any other task option
        (``retrieval_topk``, ``retriever_beam``, ``max_span_len``, ``answer_type``)."""
        if span_rule is not None and span_rule not in SPAN_RULES:
            raise ValueError(f"span rule {span_rule!r}: expected one of {', '.join(SPAN_RULES)}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        overrides = {**NO_INIT, **overrides}  # its weights are its own: never read what it started from
        overrides.setdefault("cpu", torch.device(device).type == "cpu")  # not as the checkpoint was trained
        overrides.setdefault("retrieval_devices", placement.beside(device))  # the search beside the model
        given = (("index", index), ("corpus", corpus), ("span_rule", span_rule),
                 ("retrieval", "bm25" if bm25 else None))
        overrides.update({k: v for k, v in given if v is not None})
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], arg_overrides=overrides)
        if getattr(task, "finder", None) is None:
            raise ValueError(f"{checkpoint}: a checkpoint of task {cfg.task._name}; expected realm_open_qa")
        return cls(cfg, task, models[0]).to(device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def answer(self, question: Union[str, List[str]], **kwargs) -> Union[Answer, List[Answer]]:
        """The answer to one question, or the answers to a list of them (see :meth:`answer_all`)."""
        if isinstance(question, str):
            return next(self.answer_all([question], **kwargs))
        return list(self.answer_all(question, **kwargs))

    def answer_all(self, questions: Iterable[str], batch_size: int = 16, topk: Optional[int] = None,
                   beam: Optional[int] = None, progress: bool = False) -> Iterator[Answer]:
        """Answers in the order of ``questions``, computed ``batch_size`` at a time; ``topk`` blocks read
        and ``beam`` retrieved default to the task's settings."""
        questions = list(questions)
        task, corpus = self.task, self.task.corpus
        bar = tqdm(total=len(questions), unit=" questions", desc="answer", disable=not progress, mininterval=1.0)
        for start in range(0, len(questions), batch_size):
            batch = questions[start : start + batch_size]
            tokens = [encode_question(corpus, q, task.cfg.max_question_len) for q in batch]
            src = collate_questions(tokens, corpus.dictionary.pad())["src_tokens"].to(self.device)
            with torch.inference_mode():
                read = task.read(self.model, src, batch, topk, beam)
            scores = read.retrieval_scores.float().cpu().numpy()
            for b, (question, prediction) in enumerate(zip(batch, predict(read, task.finder))):
                yield Answer(question, prediction.text, prediction.score, prediction.rank,
                             self._evidence(read.block_ids[b, : read.topk], scores[b]),
                             [int(i) for i in read.block_ids[b]])
            bar.update(len(batch))
        bar.close()

    def _evidence(self, block_ids: np.ndarray, scores: np.ndarray) -> List[Evidence]:
        blocks = [self.task.corpus.block(int(i)) for i in block_ids]
        return [Evidence(rank, b.index, b.title, b.text, float(s)) for rank, (b, s) in enumerate(zip(blocks, scores))]
