"""Sentence boundaries, found on the WordPiece tokens of a text with a few vectorised rules.

Blocks break at sentence boundaries where they can (REALM, section 4.3, cuts Wikipedia into chunks of
at most 288 wordpieces), and pre-training examples are sentences. A sentence starts at a token that
follows a line break, or that follows ``.``/``!``/``?`` (and any closing quotes or brackets) and white
space and begins with a capital letter, a digit or an opening quote -- unless the full stop ends a
known abbreviation or an initial (a one-letter word). It is a rule of thumb for English encyclopedic
text, run with numpy over all tokens of a chunk of documents at once: it costs a few percent of
tokenizing, where a regular expression over the text cost ten.
"""
from dataclasses import dataclass

import numpy as np

from realm_fairseq.data.vocab import Vocab

ABBREVIATIONS = (
    "mr mrs ms dr st jr sr prof rev gen col lt sgt capt cmdr gov sen rep pres vs etc no nos vol fig "
    "figs approx ca inc ltd co corp dept est jan feb mar apr jun jul aug sep sept oct nov dec mt ft "
    "op cf al"
).split()
ENDERS = (".", "!", "?")
CLOSING = ('"', "'", ")", "]", "\u2019", "\u201d")
OPENING = '"\'([\u2018\u201c'


@dataclass
class SentenceRules:
    """The token ids the rules look at, for one vocabulary."""

    enders: np.ndarray  # ids of . ! ?
    full_stop: int
    closing: np.ndarray  # ids of closing quotes and brackets
    no_break_before_stop: np.ndarray  # bool per id: abbreviations and one-letter words

    @classmethod
    def for_vocab(cls, vocab: Vocab) -> "SentenceRules":
        index = {t: i for i, t in enumerate(vocab.tokens)}
        no_break = np.zeros(len(vocab), dtype=bool)
        no_break[[index[t] for t in ABBREVIATIONS if t in index]] = True
        no_break[[i for t, i in index.items() if len(t) == 1 and t.isalpha()]] = True
        return cls(
            enders=np.array([index[t] for t in ENDERS if t in index]),
            full_stop=index.get(".", -1),
            closing=np.array([index[t] for t in CLOSING if t in index]),
            no_break_before_stop=no_break,
        )


def _starts_sentence_text(codepoints: np.ndarray) -> np.ndarray:
    """True for characters a sentence may start with: A-Z, 0-9 or an opening quote or bracket."""
    upper = (codepoints >= ord("A")) & (codepoints <= ord("Z"))
    digit = (codepoints >= ord("0")) & (codepoints <= ord("9"))
    return upper | digit | np.isin(codepoints, [ord(c) for c in OPENING])


def sentence_start_tokens(
    ids: np.ndarray, offsets: np.ndarray, text_codepoints: np.ndarray, rules: SentenceRules
) -> np.ndarray:
    """Sorted token indices (n,) -> (s,) where a sentence starts after the first one.

    ``ids`` (n,) are BERT ids, ``offsets`` (n, 2) their character ranges in a text whose code points are
    ``text_codepoints`` (the texts of a chunk laid end to end, separated by a line break).
    """
    n = len(ids)
    if n < 2:
        return np.zeros(0, dtype=np.int64)
    starts, ends = offsets[:, 0], offsets[:, 1]
    newlines = np.concatenate([[0], np.cumsum(text_codepoints == ord("\n"))])  # newlines before char c
    after_newline = newlines[starts[1:]] > newlines[ends[:-1]]  # (n-1,) for tokens 1..n-1

    # token j follows an ender at i (with closing marks glued between them) and white space
    glued = np.append(starts[1:] == ends[:-1], False)  # token i+1 touches token i
    prev = np.arange(n) - 1  # for token j: the token before any closing marks in front of it
    for _ in range(2):  # up to two closing marks: ." or .")
        closing = np.isin(ids[np.maximum(prev, 0)], rules.closing) & glued[np.maximum(prev - 1, 0)]
        prev = np.where((prev > 0) & closing, prev - 1, prev)
    j = np.arange(1, n)
    p = prev[1:]
    ender = np.isin(ids[p], rules.enders) & (starts[j] > ends[j - 1])
    stop_after_abbreviation = (
        (ids[p] == rules.full_stop) & (p > 0) & rules.no_break_before_stop[ids[np.maximum(p - 1, 0)]]
        & glued[np.maximum(p - 1, 0)]
    )
    capital = _starts_sentence_text(text_codepoints[starts[j]])
    breaks = after_newline | (ender & capital & ~stop_after_abbreviation)
    return j[breaks]
