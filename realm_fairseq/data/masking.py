"""Masked pre-training examples for REALM: the x of p(y | x) whose masked tokens y the model predicts.

REALM masks one salient span per sentence (section 3.4, "Salient span masking"): a named entity or a
date, all of its wordpieces replaced by ``[MASK]``, so that filling it in needs world knowledge that
retrieval can bring. Sentences without a salient span are left out. Two alternatives from the paper's
ablation (Table 2) are options: BERT's random-token masking (15% of the tokens; of those 80% become
``[MASK]``, 10% a random wordpiece, 10% stay) and random spans (contiguous spans of geometric length,
up to 15% of the tokens, all ``[MASK]``).

Each item is ``[CLS] x [SEP]`` with its masks, the targets (the original ids where masked, padding
elsewhere) and the id of the block the sentence came from, which retrieval must exclude. The masks of
an item are drawn from ``(seed, epoch, index)``, so a resumed run sees the same ones.
"""
import re
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from fairseq.data import Dictionary, data_utils

from realm_fairseq.data.corpus import PretrainingExamples
from realm_fairseq.data.epoch_dataset import SeededEpochDataset

MASKINGS = ("salient_span", "random_token", "random_span")
MASK_PROB = 0.15  # share of the tokens random_token and random_span mask (BERT)
SPAN_LENGTH_P = 0.2  # geometric distribution of random span lengths (mean 5), as SpanBERT
MAX_SPAN_LENGTH = 10


def random_token_ids(dictionary: Dictionary) -> np.ndarray:
    """Ids a random replacement may take: real wordpieces, not ``[unusedN]``, ``[CLS]`` and the like."""
    special = re.compile(r"^\[.*\]$|^<.*>$|^madeupword")
    return np.array([i for i, s in enumerate(dictionary.symbols)
                     if i >= dictionary.nspecial and not special.match(s)], dtype=np.int64)


def choose_masked_positions(
    length: int, spans: Sequence[Tuple[int, int]], how: str, rng: np.random.RandomState
) -> np.ndarray:
    """Sorted positions (m,) of ``length`` tokens to mask."""
    if how == "salient_span":
        start, end = spans[rng.randint(len(spans))]
        return np.arange(start, end)
    budget = max(1, int(round(MASK_PROB * length)))
    if how == "random_token":
        return np.sort(rng.choice(length, size=min(budget, length), replace=False))
    if how == "random_span":
        chosen = np.zeros(length, dtype=bool)
        while chosen.sum() < budget:
            span = min(rng.geometric(SPAN_LENGTH_P), MAX_SPAN_LENGTH, budget - int(chosen.sum()))
            start = rng.randint(0, length - span + 1)
            chosen[start : start + span] = True
        return np.flatnonzero(chosen)
    raise ValueError(f"masking {how!r}: expected one of {', '.join(MASKINGS)}")


class MaskedExamplesDataset(SeededEpochDataset):
    """Items ``{"id", "source", "target", "block"}`` from the pre-training examples of a CORPUS."""

    def __init__(self, examples: PretrainingExamples, example_ids: np.ndarray, dictionary: Dictionary,
                 masking: str = "salient_span", seed: int = 1):
        if masking not in MASKINGS:
            raise ValueError(f"masking {masking!r}: expected one of {', '.join(MASKINGS)}")
        if masking == "salient_span":  # REALM trains on sentences that have one
            example_ids = example_ids[examples.spans_per_example[example_ids] > 0]
        super().__init__(examples.sizes[example_ids].astype(np.int64) + 2, seed)  # [CLS] x [SEP]
        self.examples = examples
        self.example_ids = example_ids
        self.dictionary = dictionary
        self.masking = masking
        self.mask_id = dictionary.index("[MASK]")
        self.replacements = random_token_ids(dictionary)

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return True  # the order is drawn in ordered_indices; only the masks change with the epoch

    def __getitem__(self, index: int) -> Dict:
        example = int(self.example_ids[index])
        tokens = self.examples.tokens(example)  # (L,)
        with data_utils.numpy_seed(self.seed, self.epoch, index):
            rng = np.random.RandomState(np.random.randint(2**31))
        spans = self.examples.salient_spans(example)
        positions = choose_masked_positions(len(tokens), spans, self.masking, rng)
        masked = tokens.clone()
        masked[positions] = self.mask_id
        if self.masking == "random_token":  # BERT: of the chosen, 10% random and 10% unchanged
            draw = rng.rand(len(positions))
            replaced, kept = positions[draw < 0.1], positions[(draw >= 0.1) & (draw < 0.2)]
            masked[replaced] = torch.from_numpy(rng.choice(self.replacements, size=len(replaced)))
            masked[kept] = tokens[kept]
        target = torch.full_like(tokens, self.dictionary.pad())
        target[positions] = tokens[positions]
        d = self.dictionary
        bos, eos, pad = tokens.new([d.bos()]), tokens.new([d.eos()]), tokens.new([d.pad()])
        return {
            "id": index,
            "source": torch.cat([bos, masked, eos]),  # (L + 2,) [CLS] x [SEP]
            "target": torch.cat([pad, target, pad]),  # (L + 2,) aligned with source
            "block": int(self.examples.source_block[example]),
        }

    def ordered_indices(self) -> np.ndarray:
        with data_utils.numpy_seed(self.seed, self.epoch):
            order = np.random.permutation(len(self))
        return order[np.argsort(self._sizes[order], kind="stable")]  # by length, as fairseq's masked_lm

    def collater(self, samples: List[Dict]) -> Dict:
        if not samples:
            return {}
        pad = self.dictionary.pad()
        source = data_utils.collate_tokens([s["source"] for s in samples], pad)  # (B, T)
        target = data_utils.collate_tokens([s["target"] for s in samples], pad)  # (B, T)
        return {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "nsentences": len(samples),
            "ntokens": int(target.ne(pad).sum()),
            "net_input": {"src_tokens": source, "src_lengths": source.ne(pad).sum(1)},
            "target": target,
            "exclude_blocks": torch.LongTensor([s["block"] for s in samples]),  # (B,)
        }
