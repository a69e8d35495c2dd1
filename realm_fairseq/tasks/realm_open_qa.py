"""Task ``realm_open_qa``: fine-tune REALM for open-domain QA (paper, section 3.3; ORQA's recipe).

    realm-train QUESTIONS --task realm_open_qa --corpus CORPUS --index INDEX --arch realm_minilm \\
        --realm-init PRETRAINED.pt --criterion realm_qa --best-checkpoint-metric em \\
        --maximize-best-checkpoint-metric ...

QUESTIONS is a directory of question files ``train.jsonl``, ``valid.jsonl`` (and ``test.jsonl``), as
``realm-squad-to-questions`` writes them (:mod:`realm_fairseq.data.questions`). The INDEX (its newest
version or ``--index-version``, checked against the CORPUS) and the document embedder stay fixed, as in
the paper: only the query embedder and the reader train. Each question retrieves ``--retriever-beam``
blocks for the retriever's loss and recall@k, and the reader reads the best ``--retrieval-topk``.

``--retrieval bm25`` is the pipeline baseline instead (BM25 + BERT in REALM's Table 1): BM25 ranks the
CORPUS's blocks for the question's words (:mod:`realm_fairseq.retrieval.bm25`), its score takes the place of
f(x, z), no INDEX is read and only the reader trains. A checkpoint of either kind is evaluated either way
(``realm-evaluate --bm25``).
"""
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from omegaconf import II, MISSING

from realm_fairseq.data.answers import AnswerFinder
from realm_fairseq.data.corpus import BlockCorpus
from realm_fairseq.data.question_dataset import MAX_QUESTION_LEN, QuestionsDataset
from realm_fairseq.data.questions import ANSWER_TYPES, read_questions
from realm_fairseq.models.open_qa import SPAN_RULES, ReadBatch, Reading
from realm_fairseq.retrieval import placement
from realm_fairseq.retrieval.fixed_retriever import FixedIndexRetriever
from realm_fairseq.retrieval.versions import check_serves
from realm_fairseq.tasks.base import RealmTask


RETRIEVALS = ("dense", "bm25")  # what finds the blocks a question's reader reads (--retrieval)


@dataclass
class RealmOpenQAConfig(placement.PlacementConfig):
    data: str = field(default=MISSING, metadata={"help": "directory of question files {split}.jsonl"})
    corpus: Optional[str] = field(default=None, metadata={"help": "CORPUS directory from realm-prepare-corpus"})
    index: Optional[str] = field(default=None, metadata={"help": "INDEX directory from realm-build-index over "
                                                         "the corpus; it is used as it is, never updated"})
    index_version: Optional[int] = field(
        default=None, metadata={"help": "which version of the INDEX to use (default: the newest)"}
    )
    retrieval: ChoiceEnum(list(RETRIEVALS)) = field(
        default="dense", metadata={"help": "dense: the query embedder over the INDEX (REALM); bm25: BM25 over the "
                                   "CORPUS (bm25s, k1=0.9, b=0.4; the bm25 extra), its score as f(x, z), no INDEX "
                                   "and only the reader trains: the pipeline baseline (BM25 + BERT)"}
    )
    answer_type: ChoiceEnum(list(ANSWER_TYPES)) = field(
        default="text", metadata={"help": "answers are strings (NQ-Open, WebQuestions) or regular expressions "
                                  "(CuratedTREC)"}
    )
    retrieval_topk: int = field(default=5, metadata={"help": "blocks the reader reads per question (REALM: 5)"})
    retriever_beam: int = field(
        default=100, metadata={"help": "blocks retrieved per question for the retriever's loss and recall@k "
                               "(ORQA: 5000); at least --retrieval-topk"}
    )
    max_span_len: int = field(default=10, metadata={"help": "longest answer span in wordpieces (REALM: 10)"})
    span_rule: ChoiceEnum(list(SPAN_RULES)) = field(
        default="marginal", metadata={"help": "how the answer is predicted (EM, realm-evaluate, realm-answer; the "
                                      "loss is the same): marginal, the span of highest p(z|x) p(s|z,x) on word "
                                      "boundaries; orqa, ORQA's and REALM's rule, the highest retrieval + span "
                                      "score over every wordpiece span in the blocks read (what realm-convert-hf "
                                      "--qa-checkpoint records for REALM's open-QA models)"}
    )
    max_question_len: int = field(default=MAX_QUESTION_LEN,
                                  metadata={"help": "questions are cut to this many wordpieces"})
    seed: int = II("common.seed")


@register_task("realm_open_qa", dataclass=RealmOpenQAConfig)
class RealmOpenQATask(RealmTask):
    def __init__(self, cfg: RealmOpenQAConfig, corpus: BlockCorpus, retriever: Optional[FixedIndexRetriever],
                 bm25=None):
        super().__init__(cfg, corpus)
        if cfg.retriever_beam < cfg.retrieval_topk:
            raise ValueError(f"--retriever-beam {cfg.retriever_beam} must be at least --retrieval-topk "
                             f"{cfg.retrieval_topk}")
        self.retriever = retriever  # the fixed INDEX (--retrieval dense)
        self.bm25 = bm25  # a Bm25Retriever over the corpus (--retrieval bm25)
        self.finder = AnswerFinder(corpus, cfg.answer_type)

    @classmethod
    def setup_task(cls, cfg: RealmOpenQAConfig, **kwargs):
        needed = ("corpus",) if cfg.retrieval == "bm25" else ("corpus", "index")
        missing = [f"--{name}" for name in needed if not getattr(cfg, name)]
        if missing:
            raise ValueError(f"realm_open_qa needs {' and '.join(missing)} (the CORPUS the questions are "
                             f"answered from and its INDEX from realm-build-index)")
        for name in ("corpus", "index"):  # recorded in checkpoints, which may be used from elsewhere
            if getattr(cfg, name):
                setattr(cfg, name, os.path.abspath(getattr(cfg, name)))
        corpus = BlockCorpus(cfg.corpus)
        if cfg.retrieval == "bm25":
            from realm_fairseq.retrieval.bm25 import Bm25Retriever

            return cls(cfg, corpus, None, Bm25Retriever.for_corpus(corpus))
        devices = placement.resolve(cfg.retrieval_devices, cfg.cpu)
        return cls(cfg, corpus, FixedIndexRetriever(corpus, cfg.index, cfg.index_version, devices,
                                                    cfg.retrieval_precision))

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        path = os.path.join(self.cfg.data, f"{split}.jsonl")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no question file for the {split} split (realm-squad-to-questions "
                                    f"writes train.jsonl, valid.jsonl and test.jsonl)")
        questions = read_questions(path, self.cfg.answer_type)
        self.datasets[split] = QuestionsDataset(questions, self.corpus, self.cfg.max_question_len, self.cfg.seed)

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        model.doc_embedder.requires_grad_(False)  # the index holds its embeddings; both stay fixed
        if self.bm25 is not None:
            model.query_embedder.requires_grad_(False)  # BM25 retrieves: nothing reaches it
        else:
            check_serves(self.retriever.manifest, self.cfg.index, model.query_embedder)
        return model

    def register_heads(self, model) -> None:
        model.register_span_reader()  # scores the answer spans of each retrieved z

    def reading(self, topk: Optional[int] = None, beam: Optional[int] = None) -> Reading:
        """How the model retrieves for and reads questions: this task's settings, ``topk`` blocks read and
        ``beam`` retrieved when given."""
        return Reading(topk or self.cfg.retrieval_topk, beam or self.cfg.retriever_beam, self.cfg.max_span_len,
                       str(self.cfg.span_rule))

    def read(self, model, src_tokens, questions: Sequence[str], topk: Optional[int] = None,
             beam: Optional[int] = None, answers: Optional[Sequence[Sequence[str]]] = None,
             gold_only: bool = False) -> ReadBatch:
        """The model's :meth:`~realm_fairseq.models.realm.RealmModel.read` of a batch of questions,
        ``src_tokens`` (B, T) ``[CLS] x [SEP]`` and their texts ``questions``, from this task's retriever with
        its settings (:meth:`reading`); ``answers`` and ``gold_only`` as that method takes them."""
        reading = self.reading(topk, beam)
        retrieved = None
        if self.bm25 is not None:
            ids, scores = self.bm25.search(list(questions), max(reading.beam, reading.topk))  # (B, beam) each
            retrieved = ids, torch.from_numpy(scores).to(src_tokens.device)
        return model.read(src_tokens, self.retriever, self.finder, reading, answers, gold_only, retrieved)
