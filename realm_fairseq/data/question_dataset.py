"""Questions as fairseq batches for open-domain QA: ``[CLS] x [SEP]`` token ids and the gold answers.

The question x is what the query embedder reads and what the reader reads before each block (REALM,
section 3.3). Answers travel with the batch as strings: which spans of which retrieved block match them
is only known after retrieval (:mod:`realm_fairseq.data.answers`).
"""
from typing import Dict, List, Sequence

import numpy as np
import torch
from fairseq.data import data_utils

from realm_fairseq.data.corpus import BlockCorpus, with_cls_sep
from realm_fairseq.data.epoch_dataset import SeededEpochDataset
from realm_fairseq.data.questions import Question
from realm_fairseq.data.vocab import FAIRSEQ_NSPECIAL

MAX_QUESTION_LEN = 64  # wordpieces of a question the query embedder and the reader read


def encode_question(corpus: BlockCorpus, text: str, max_len: int) -> torch.Tensor:
    """``[CLS] x [SEP]`` (fairseq ids) of a question, x cut to ``max_len`` wordpieces."""
    ids = corpus.tokenizer.encode(text, add_special_tokens=False).ids[:max_len]
    return with_cls_sep(torch.tensor(ids, dtype=torch.long) + FAIRSEQ_NSPECIAL, corpus.dictionary)


def collate_questions(tokens: Sequence[torch.Tensor], pad: int) -> Dict:
    """The ``net_input`` of a batch of encoded questions: src_tokens (B, T) and src_lengths (B,)."""
    source = data_utils.collate_tokens(list(tokens), pad)  # (B, T)
    return {"src_tokens": source, "src_lengths": source.ne(pad).sum(1)}


class QuestionsDataset(SeededEpochDataset):
    """Items ``{"id", "source", "answers"}`` for a list of questions, in a new order every epoch."""

    def __init__(self, questions: List[Question], corpus: BlockCorpus, max_question_len: int, seed: int = 1):
        self.questions = questions
        self.tokens = [encode_question(corpus, q.question, max_question_len) for q in questions]
        super().__init__(np.array([len(t) for t in self.tokens], dtype=np.int64), seed)
        self.pad = corpus.dictionary.pad()

    def __getitem__(self, index: int) -> Dict:
        question = self.questions[index]
        return {"id": index, "source": self.tokens[index], "question": question.question, "answers": question.answers}

    def ordered_indices(self) -> np.ndarray:
        with data_utils.numpy_seed(self.seed, self.epoch):
            return np.random.permutation(len(self))

    def collater(self, samples: List[Dict]) -> Dict:
        if not samples:
            return {}
        net_input = collate_questions([s["source"] for s in samples], self.pad)
        return {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "nsentences": len(samples),
            "ntokens": int(net_input["src_lengths"].sum()),
            "net_input": net_input,
            "questions": [s["question"] for s in samples],  # the texts, for a retriever that reads words (BM25)
            "answers": [s["answers"] for s in samples],
        }
