"""Answers against blocks: where in a retrieved block an answer occurs.

REALM fine-tunes and evaluates open-domain QA as ORQA does (paper, sections 3.3 and 4.1-4.2); the metrics,
exact match and recall@k, are :mod:`realm_fairseq.data.qa_metrics`.

- **Answer spans** of a block: every span of the block's wordpieces (``title [SEP] body``) that spells
  a gold answer: the answer's wordpieces, or those of its normalised form, found at word boundaries
  (BERT's tokenizer has already lower-cased and stripped accents on both sides); a regular expression
  matches the block's text, and the wordpieces its match covers form the span. These are the spans S(z, y)
  of the reader's marginal likelihood.
- **The block contains the answer** (the retriever's training signal): it has an answer span of any
  length, or the regular expression matches somewhere in its text.
- **A hit** of recall@k (``realm-evaluate``) is a block that holds an answer by DPR's rule (Karpukhin et
  al. 2020), the one open-domain QA papers report: the text of the block's body, NFD-normalised,
  lower-cased and cut into words and single symbols, contains the same cut of an answer as a run of whole
  tokens; a regular expression answer is searched in the NFD-normalised text, ignoring case.

Predicted spans are shown as the block's original text, through the character offsets of its wordpieces.
"""
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import List, Sequence, Tuple, Union

import numpy as np
import regex

from realm_fairseq.data.corpus import BlockCorpus
from realm_fairseq.data.qa_metrics import normalize_answer
from realm_fairseq.data.questions import compile_answer_regex
from realm_fairseq.data.vocab import FAIRSEQ_NSPECIAL

TITLE, BODY, NO_PART = 0, 1, -1  # which part of a block a wordpiece belongs to

#: DPR's tokens: runs of letters, digits and marks, or any other single symbol that is not white space
_DPR_TOKEN = regex.compile(r"[\p{L}\p{N}\p{M}]+|[^\p{Z}\p{C}]")


def dpr_tokens(text: str) -> List[str]:
    """The lower-cased tokens DPR compares answers and passages by."""
    return _DPR_TOKEN.findall(unicodedata.normalize("NFD", text).lower())


class PassageMatcher:
    """Whether a passage holds an answer by DPR's rule (see the module docstring). Prepare each passage
    once with :meth:`passage` and each question's answers once with :meth:`answers`, then :meth:`holds`."""

    def __init__(self, answer_type: str = "text"):
        if answer_type not in ("text", "regex"):
            raise ValueError(f"answer type {answer_type!r}: expected text or regex")
        self.answer_type = answer_type

    def passage(self, text: str) -> str:
        """The form of a passage answers are looked for in."""
        if self.answer_type == "regex":
            return unicodedata.normalize("NFD", text)
        return " " + " ".join(dpr_tokens(text)) + " "  # tokens hold no spaces: runs of tokens are substrings

    def answers(self, answers: Sequence[str]) -> list:
        """What to look for: compiled patterns, or the token runs of the answers (answers with no token dropped)."""
        if self.answer_type == "regex":
            return [compile_answer_regex(unicodedata.normalize("NFD", a)) for a in answers]
        runs = (" ".join(dpr_tokens(a)) for a in answers)
        return [f" {run} " for run in runs if run]

    def holds(self, passage: str, answers: list) -> bool:
        if self.answer_type == "regex":
            return any(p.search(passage) is not None for p in answers)
        return any(run in passage for run in answers)


class BlockHits:
    """Which blocks of a corpus hold a question's answers by DPR's rule, each block's text prepared once."""

    def __init__(self, corpus: BlockCorpus, answer_type: str = "text", cache_size: int = 1 << 20):
        self.corpus = corpus
        self.matcher = PassageMatcher(answer_type)
        self.passage = lru_cache(maxsize=cache_size)(self._passage)

    def _passage(self, block_id: int) -> str:
        return self.matcher.passage(self.corpus.block(block_id).text)

    def holds(self, answers: Sequence[str], block_ids: Sequence[int]) -> List[bool]:
        """For each block of ``block_ids``: whether it holds one of ``answers``."""
        targets = self.matcher.answers(answers)
        return [self.matcher.holds(self.passage(int(i)), targets) for i in block_ids]

    def first(self, answers: Sequence[str], block_ids: Sequence[int]) -> int:
        """The rank of the first block of ``block_ids`` that holds an answer, or -1."""
        targets = self.matcher.answers(answers)
        found = (r for r, i in enumerate(block_ids) if i >= 0 and self.matcher.holds(self.passage(int(i)), targets))
        return next(found, -1)


@dataclass
class BlockPieces:
    """A block's wordpieces (``title [SEP] body``) and where words and parts begin."""

    tokens: np.ndarray  # (n,) fairseq ids
    part: np.ndarray  # (n,) TITLE, BODY, or NO_PART for the [SEP] between them
    starts_word: np.ndarray  # (n,) bool: not a ## continuation

    @property
    def ends_word(self) -> np.ndarray:
        """(n,) bool: the next wordpiece starts a new word or another part (or there is none)."""
        return np.append(self.starts_word[1:] | (self.part[1:] != self.part[:-1]), True)


@dataclass
class BlockText:
    """A block's text, ``title\nbody``, and the character range of each of its wordpieces."""

    text: str
    offsets: np.ndarray  # (n, 2)

    def span_text(self, start: int, end: int) -> str:
        """The original text of wordpieces ``start..end`` (inclusive)."""
        return self.text[int(self.offsets[start, 0]) : int(self.offsets[end, 1])]


Targets = Union[List[np.ndarray], List["re.Pattern"]]


class AnswerFinder:
    """Finds the answers of a question in the blocks of a corpus."""

    def __init__(self, corpus: BlockCorpus, answer_type: str = "text", cache_size: int = 65536):
        if answer_type not in ("text", "regex"):
            raise ValueError(f"answer type {answer_type!r}: expected text or regex")
        self.corpus = corpus
        self.answer_type = answer_type
        self.continuation = corpus.vocab.continuation_mask()
        self.pieces = lru_cache(maxsize=cache_size)(self._pieces)
        self.block_text = lru_cache(maxsize=cache_size)(self._block_text)

    def _encode(self, text: str):
        return self.corpus.tokenizer.encode(text, add_special_tokens=False)

    def _pieces(self, i: int) -> BlockPieces:
        tokens = self.corpus.tokens(i).numpy()
        head = int(self.corpus.meta[i, 3])  # title wordpieces + [SEP], or 0 without a title
        part = np.full(len(tokens), BODY)
        part[: max(head - 1, 0)] = TITLE
        if head:
            part[head - 1] = NO_PART
        starts_word = ~self.continuation[np.maximum(tokens - FAIRSEQ_NSPECIAL, 0)]
        return BlockPieces(tokens, part, starts_word)

    def _block_text(self, i: int) -> BlockText:
        block, tokens = self.corpus.block(i), self.corpus.tokens(i).numpy()
        head = int(self.corpus.meta[i, 3])
        shift = len(block.title) + 1  # the body's characters start after "title\n"
        title = self._encode(block.title) if head else None
        body = self._encode(block.text)
        ids = ([*title.ids[: head - 1], -1] if head else []) + body.ids
        offsets = ([*title.offsets[: head - 1], (shift - 1, shift)] if head else []) + [
            (s + shift, e + shift) for s, e in body.offsets]
        ours = np.asarray(ids, dtype=np.int64) + FAIRSEQ_NSPECIAL
        if head:
            ours[head - 1] = tokens[head - 1]  # the [SEP]
        if len(ours) != len(tokens) or (ours != tokens).any():
            raise ValueError(f"block {i} of {self.corpus.path}: its text does not tokenize to its wordpieces; "
                             f"was the corpus built with another vocab?")
        return BlockText(f"{block.title}\n{block.text}", np.asarray(offsets, dtype=np.int64).reshape(-1, 2))

    def targets(self, answers: Sequence[str]) -> Targets:
        """What to look for: the wordpiece sequences of every answer and its normalised form (fairseq ids),
        or the compiled patterns of regex answers."""
        if self.answer_type == "regex":
            return [compile_answer_regex(a) for a in answers]
        seqs = {}
        for answer in answers:
            for form in (answer, normalize_answer(answer)):
                ids = tuple(t + FAIRSEQ_NSPECIAL for t in self._encode(form).ids)
                if ids:
                    seqs[ids] = None
        return [np.array(s, dtype=np.int64) for s in seqs]

    def spans(self, block_id: int, targets: Targets, max_len: int = 0) -> List[Tuple[int, int]]:
        """Answer spans ``(start, end)`` (inclusive wordpiece positions in ``title [SEP] body``) of a
        block, at most ``max_len`` wordpieces long (0: any length), sorted and without repeats."""
        pieces = self.pieces(int(block_id))
        found = set()
        if self.answer_type == "regex":
            view = self.block_text(int(block_id))
            for pattern in targets:
                for m in pattern.finditer(view.text):
                    span = self._covered(view, pieces, m.start(), m.end())
                    if span is not None:
                        found.add(span)
        else:
            ends_word = pieces.ends_word
            tokens = pieces.tokens
            for seq in targets:
                n = len(seq)
                for start in np.flatnonzero(tokens[: max(len(tokens) - n + 1, 0)] == seq[0]).tolist():
                    end = start + n - 1
                    if (tokens[start:end + 1] == seq).all() and pieces.starts_word[start] and ends_word[end] \
                            and pieces.part[start] == pieces.part[end]:
                        found.add((start, end))
        return sorted(s for s in found if max_len <= 0 or s[1] - s[0] < max_len)

    @staticmethod
    def _covered(view: BlockText, pieces: BlockPieces, char_start: int, char_end: int):
        """The wordpieces a regex match covers exactly (up to white space at its ends), or None."""
        inside = np.flatnonzero((view.offsets[:, 0] >= char_start) & (view.offsets[:, 1] <= char_end)
                                & (pieces.part != NO_PART))
        if not len(inside):
            return None
        start, end = int(inside[0]), int(inside[-1])
        covered = view.text[char_start : view.offsets[start, 0]] + view.text[view.offsets[end, 1] : char_end]
        if covered.strip() or pieces.part[start] != pieces.part[end]:
            return None
        return start, end

    def contains(self, block_id: int, targets: Targets) -> bool:
        """Whether a block holds an answer: an answer span of any length, or a regex match in its text."""
        if self.answer_type == "regex":
            text = self.block_text(int(block_id)).text
            return any(p.search(text) is not None for p in targets)
        return bool(self.spans(block_id, targets))
