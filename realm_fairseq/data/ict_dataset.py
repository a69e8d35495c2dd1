"""Inverse Cloze Task examples: a sentence as the pseudo-query, its block as the evidence to find.

REALM warm-starts its retriever with ICT (paper, section 3.4; Lee et al. 2019, ORQA): a sentence is
taken from a block and used as a query; the block with that sentence removed is the positive, and
the other blocks of the batch are the negatives. As ORQA, the sentence is left in the block with
probability 0.1, so that the retriever still learns to value exact matches.

One item per block that has at least one pre-training example (sentence) in the CORPUS; the sentence
and whether it stays are drawn anew each epoch from ``(seed, epoch, block)``.
"""
from typing import Dict, List

import numpy as np
import torch
from fairseq.data import data_utils

from realm_fairseq.data.corpus import BlockCorpus, with_cls_sep
from realm_fairseq.data.epoch_dataset import SeededEpochDataset


class IctDataset(SeededEpochDataset):
    """Items ``{"id", "query", "block"}``: ``[CLS] sentence [SEP]`` and ``[CLS] block [SEP]`` token ids."""

    def __init__(
        self,
        corpus: BlockCorpus,
        block_ids: np.ndarray,
        query_max_len: int,
        keep_sentence_prob: float,
        seed: int,
    ):
        self.corpus = corpus
        self.examples = corpus.examples
        self.dictionary = corpus.dictionary
        # the examples of every block, as a range of example ids (examples are ordered by block)
        first = np.searchsorted(self.examples.source_block, block_ids, side="left")
        last = np.searchsorted(self.examples.source_block, block_ids, side="right")
        has_sentence = last > first
        self.block_ids = block_ids[has_sentence]
        self.first_example, self.num_examples = first[has_sentence], (last - first)[has_sentence]
        self.query_max_len = query_max_len
        self.keep_sentence_prob = keep_sentence_prob
        # block plus [CLS]/[SEP], and the longest a query can be
        super().__init__(corpus.sizes[self.block_ids].astype(np.int64) + 2 + query_max_len, seed)

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return False  # the sentence of each block changes every epoch

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        with data_utils.numpy_seed(self.seed, self.epoch, index):
            example = self.first_example[index] + np.random.randint(self.num_examples[index])
            keep = np.random.rand() < self.keep_sentence_prob
        block = self.corpus.tokens(int(self.block_ids[index]))
        sentence = self.examples.tokens(int(example))
        if not keep:
            start = int(self.examples.block_offset[example])
            block = torch.cat([block[:start], block[start + len(sentence):]])
        return {
            "id": index,
            "query": with_cls_sep(sentence[: self.query_max_len - 2], self.dictionary),
            "block": with_cls_sep(block, self.dictionary),
        }

    def ordered_indices(self) -> np.ndarray:
        with data_utils.numpy_seed(self.seed, self.epoch):
            return np.random.permutation(len(self))

    def collater(self, samples: List[Dict[str, torch.Tensor]]) -> Dict:
        if not samples:
            return {}
        pad = self.dictionary.pad()
        queries = data_utils.collate_tokens([s["query"] for s in samples], pad)  # (B, Tq)
        blocks = data_utils.collate_tokens([s["block"] for s in samples], pad)  # (B, Tb)
        return {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "nsentences": len(samples),
            "ntokens": int(queries.ne(pad).sum() + blocks.ne(pad).sum()),
            "net_input": {"query_tokens": queries, "block_tokens": blocks},
        }
