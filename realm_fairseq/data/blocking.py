"""Cut one tokenized document into retrieval blocks and pre-training examples.

REALM (section 4.3) retrieves over Wikipedia split into blocks of at most 288 wordpieces,
each read by the document embedder together with its article title: ``[CLS] title [SEP] body [SEP]``.
We store a block as ``title [SEP] body`` (at most ``block_size`` wordpieces; the embedders add the
outer ``[CLS]``/``[SEP]``). Blocks are packed greedily with whole sentences; a sentence longer than a
block is split between words. Every body token belongs to exactly one block.

Pre-training examples are the sentences of each block (windows of at most ``example_max_len``
wordpieces for longer sentences), each with the block it came from and its salient spans as wordpiece
positions, so that masking one span and excluding the source block from retrieval is cheap (REALM,
section 3.4).

All positions here are BERT vocab ids and wordpiece indices; :mod:`realm_fairseq.data.vocab` maps
ids to fairseq's dictionary.
"""
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from realm_fairseq.data.sentences import SentenceRules, sentence_start_tokens

Range = Tuple[int, int]


@dataclass
class TokenizedDocument:
    """One document as a worker sees it: its text, WordPiece ids and character offsets, title ids."""

    text: str
    ids: np.ndarray  # (n,) BERT ids of the text
    offsets: np.ndarray  # (n, 2) character range of each token in ``text``
    title_ids: np.ndarray  # (t,) BERT ids of the title
    salient_spans: Sequence[Range]  # character ranges of salient spans


@dataclass
class BlockedChunk:
    """The blocks and examples of a list of documents: ``nb`` blocks, ``ne`` examples, ``ns`` spans."""

    block_tokens: np.ndarray  # (sum of block sizes,) BERT ids, blocks one after another
    block_sizes: np.ndarray  # (nb,) each <= block_size: title [SEP] body
    block_meta: np.ndarray  # (nb, 4): document, char_start, char_end (in its text), body_start
    example_tokens: np.ndarray  # (sum of example sizes,) BERT ids
    example_sizes: np.ndarray  # (ne,) each <= example_max_len
    example_meta: np.ndarray  # (ne, 2): block, offset in the block
    spans: np.ndarray  # (ns, 3): example, start, end (exclusive), in wordpieces


def gather_ranges(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``values[starts[0]:ends[0]], values[starts[1]:ends[1]], ...`` concatenated, without a loop."""
    lengths = ends - starts
    first = np.cumsum(lengths) - lengths  # where each range starts in the output
    return values[np.arange(lengths.sum()) + np.repeat(starts - first, lengths)]


def split_between_words(start: int, end: int, limit: int, continuation: np.ndarray) -> List[Range]:
    """Split ``[start, end)`` into ranges of at most ``limit`` tokens, cutting before a word's first piece
    where one lies in reach (``continuation[i]`` is True when token ``i`` continues a word)."""
    ranges = []
    while end - start > limit:
        cut = start + limit
        while cut > start + 1 and continuation[cut]:
            cut -= 1
        if continuation[cut]:  # one word longer than the limit: cut inside it
            cut = start + limit
        ranges.append((start, cut))
        start = cut
    ranges.append((start, end))
    return ranges


def pack_sentences(sentences: Sequence[Range], budget: int, continuation: np.ndarray) -> List[Range]:
    """Greedily pack consecutive sentence token ranges into ranges of at most ``budget`` tokens."""
    packed: List[Range] = []
    open_start = None
    for start, end in sentences:
        if end - start > budget:
            if open_start is not None:
                packed.append((open_start, start))
            pieces = split_between_words(start, end, budget, continuation)
            packed.extend(pieces[:-1])
            open_start = pieces[-1][0]
        elif open_start is None:
            open_start = start
        elif end - open_start > budget:
            packed.append((open_start, start))
            open_start = start
    if open_start is not None:
        packed.append((open_start, sentences[-1][1]))
    return packed


def _char_ranges(text: str, offsets: np.ndarray, bodies: List[Range], first_token: int) -> List[Range]:
    """Character ranges of one document's blocks that partition its non-space characters: a block runs
    from its first token to the next block's first token, less trailing white space. ``bodies`` are
    token ranges counted from the chunk's start; ``first_token`` is the document's first token there."""
    ranges = []
    for k, (start, _) in enumerate(bodies):
        char_start = len(text) - len(text.lstrip()) if k == 0 else int(offsets[start - first_token, 0])
        next_start = bodies[k + 1][0] - first_token if k + 1 < len(bodies) else None
        char_end = len(text) if next_start is None else int(offsets[next_start, 0])
        ranges.append((char_start, char_start + len(text[char_start:char_end].rstrip())))
    return ranges


def _example_ranges(cuts: np.ndarray, is_cont: np.ndarray, min_len: int, max_len: int) -> np.ndarray:
    """(ne, 2) token ranges of the examples: the pieces between consecutive ``cuts`` (sentence and block
    starts), split into windows of at most ``max_len``, kept when at least ``min_len`` long."""
    ranges = []
    for s, e in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
        if e - s >= min_len:
            ranges += [r for r in split_between_words(s, e, max_len, is_cont) if r[1] - r[0] >= min_len]
    return np.array(ranges, dtype=np.int64).reshape(-1, 2)


def _salient_rows(starts, ends, char_spans: np.ndarray, examples: np.ndarray) -> np.ndarray:
    """(ns, 3) rows (example, start, end) for the character spans whose tokens lie inside an example."""
    if not len(examples):
        return np.zeros((0, 3), dtype=np.int64)
    first = np.searchsorted(starts, char_spans[:, 0], side="left")  # first token inside the span
    last = np.searchsorted(ends, char_spans[:, 1], side="right")  # one past the last token inside
    which = np.searchsorted(examples[:, 0], first, side="right") - 1
    inside = (last > first) & (which >= 0) & (last <= examples[np.maximum(which, 0), 1])
    which, first, last = which[inside], first[inside], last[inside]
    return np.stack([which, first - examples[which, 0], last - examples[which, 0]], axis=1)


def block_documents(
    docs: List[TokenizedDocument],
    *,
    sep_id: int,
    continuation: np.ndarray,
    sentence_rules: SentenceRules,
    block_size: int,
    max_title_len: int,
    example_min_len: int,
    example_max_len: int,
) -> BlockedChunk:
    """Blocks and examples of ``docs``, all indices counted within this list of documents.

    The documents are laid end to end (their texts joined by line breaks), so that one numpy call
    serves every document; only the greedy packing runs per document.
    """
    sizes = np.array([len(d.ids) for d in docs], dtype=np.int64)
    tok_off = np.concatenate([[0], np.cumsum(sizes)])  # (D+1,) first token of each document
    char_off = np.cumsum([0] + [len(d.text) + 1 for d in docs])  # (D+1,)
    ids = np.concatenate([d.ids for d in docs] + [np.zeros(0, np.int64)])  # (N,)
    offsets = np.concatenate([d.offsets + char_off[k] for k, d in enumerate(docs)] + [np.zeros((0, 2), np.int64)])
    is_cont = np.append(continuation[ids], False)  # (N+1,); a document's first token starts a word

    # sentence boundaries as chunk token indices; document boundaries are boundaries too
    codepoints = np.frombuffer("\n".join(d.text for d in docs).encode("utf-32-le"), dtype=np.uint32)
    bounds = np.union1d(sentence_start_tokens(ids, offsets, codepoints, sentence_rules), tok_off)
    doc_first_bound = np.searchsorted(bounds, tok_off)

    heads, bodies, meta = [], [], []
    for k, doc in enumerate(docs):
        head = doc.title_ids[:max_title_len]
        head = np.append(head, sep_id) if len(head) else head  # title [SEP]
        heads.append(head)
        b = bounds[doc_first_bound[k] : doc_first_bound[k + 1] + 1].tolist()
        packed = pack_sentences(list(zip(b[:-1], b[1:])), block_size - len(head), is_cont) if sizes[k] else []
        bodies += packed
        chars = _char_ranges(doc.text, doc.offsets, packed, int(tok_off[k]))
        meta += [(k, cs, ce, len(head)) for cs, ce in chars]
    body = np.array(bodies, dtype=np.int64).reshape(-1, 2)  # (nb, 2) chunk token ranges
    block_meta = np.array(meta, dtype=np.int64).reshape(-1, 4)
    head_len = block_meta[:, 3]

    # block tokens: the head of its document, then the body, gathered from [ids | all heads]
    head_off = len(ids) + np.cumsum([0] + [len(h) for h in heads])
    source = np.concatenate([ids] + heads)
    head_start = head_off[block_meta[:, 0]]
    starts = np.stack([head_start, body[:, 0]], axis=1).ravel()
    ends = np.stack([head_start + head_len, body[:, 1]], axis=1).ravel()
    block_tokens = gather_ranges(source, starts, ends)

    examples = _example_ranges(np.union1d(bounds, body[:, 0]), is_cont, example_min_len, example_max_len)
    example_block = np.searchsorted(body[:, 0], examples[:, 0], side="right") - 1
    char_spans = np.concatenate(
        [np.asarray(d.salient_spans, np.int64).reshape(-1, 2) + char_off[k] for k, d in enumerate(docs)]
    )
    return BlockedChunk(
        block_tokens=block_tokens,
        block_sizes=body[:, 1] - body[:, 0] + head_len,
        block_meta=block_meta,
        example_tokens=gather_ranges(ids, examples[:, 0], examples[:, 1]),
        example_sizes=examples[:, 1] - examples[:, 0],
        example_meta=np.stack(
            [example_block, examples[:, 0] - body[example_block, 0] + head_len[example_block]], axis=1
        ),
        spans=_salient_rows(offsets[:, 0], offsets[:, 1], char_spans, examples).reshape(-1, 3),
    )
