"""Cut one tokenized document into retrieval blocks and pre-training examples.

REALM (section 4.2 and appendix) retrieves over Wikipedia split into blocks of at most 288 wordpieces,
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

Range = Tuple[int, int]


@dataclass
class BlockedDocument:
    """The blocks and examples of one document. ``nb`` blocks, ``ne`` examples, ``ns`` salient spans."""

    blocks: List[np.ndarray]  # nb x (<= block_size,) BERT ids: title [SEP] body
    block_meta: np.ndarray  # (nb, 3): char_start, char_end (into the document text), body_start
    examples: List[np.ndarray]  # ne x (<= example_max_len,) BERT ids
    example_meta: np.ndarray  # (ne, 2): block (index within this document), offset in block
    spans: np.ndarray  # (ns, 3): example (index within this document), start, end (exclusive)


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


def _block_char_ranges(text: str, offsets: np.ndarray, bodies: List[Range]) -> List[Range]:
    """Character ranges of the blocks that partition the document's non-space characters: a block runs
    from its first token to the next block's first token, less trailing white space."""
    ranges = []
    for k, (start, _) in enumerate(bodies):
        char_start = len(text) - len(text.lstrip()) if k == 0 else int(offsets[start, 0])
        char_end = int(offsets[bodies[k + 1][0], 0]) if k + 1 < len(bodies) else len(text)
        ranges.append((char_start, len(text[:char_end].rstrip())))
    return ranges


def _token_spans(offsets: np.ndarray, char_spans: Sequence[Range]) -> np.ndarray:
    """(n, 2) token ranges of the tokens lying wholly inside each character span; empty ones dropped."""
    if not len(char_spans):
        return np.zeros((0, 2), dtype=np.int64)
    spans = np.asarray(char_spans, dtype=np.int64)
    first = np.searchsorted(offsets[:, 0], spans[:, 0], side="left")
    last = np.searchsorted(offsets[:, 1], spans[:, 1], side="right")
    keep = last > first
    return np.stack([first[keep], last[keep]], axis=1)


def block_document(
    text: str,
    ids: np.ndarray,
    offsets: np.ndarray,
    title_ids: np.ndarray,
    sentence_char_starts: Sequence[int],
    salient_char_spans: Sequence[Range],
    *,
    sep_id: int,
    continuation: np.ndarray,
    block_size: int,
    max_title_len: int,
    example_min_len: int,
    example_max_len: int,
) -> BlockedDocument:
    """Blocks and examples of one document tokenized as ``ids`` (n,) with character ``offsets`` (n, 2)."""
    n = len(ids)
    head = np.asarray(title_ids[:max_title_len], dtype=np.int64)
    if len(head):
        head = np.append(head, sep_id)  # title [SEP]
    budget = block_size - len(head)
    is_cont = continuation[ids] if n else np.zeros(0, dtype=bool)
    is_cont = np.append(is_cont, False)  # a cut at the end is always between words

    # sentence start characters -> token indices; sentences as token ranges covering [0, n)
    bounds = np.unique(np.searchsorted(offsets[:, 0], sentence_char_starts)) if n else np.zeros(0)
    bounds = np.concatenate([[0], bounds[(bounds > 0) & (bounds < n)], [n]]).astype(np.int64)
    sentences = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]

    bodies = pack_sentences(sentences, budget, is_cont) if n else []
    blocks = [np.concatenate([head, ids[a:b]]) for a, b in bodies]
    chars = _block_char_ranges(text, offsets, bodies)
    block_meta = np.array(
        [(cs, ce, len(head)) for cs, ce in chars], dtype=np.int64
    ).reshape(-1, 3)

    token_spans = _token_spans(offsets, salient_char_spans)
    examples, example_meta, spans = [], [], []
    for k, (a, b) in enumerate(bodies):
        cuts = bounds[(bounds > a) & (bounds < b)]
        for s, e in zip(np.concatenate([[a], cuts]), np.concatenate([cuts, [b]])):
            if e - s < example_min_len:
                continue
            for ws, we in split_between_words(int(s), int(e), example_max_len, is_cont):
                if we - ws < example_min_len:
                    continue
                inside = token_spans[(token_spans[:, 0] >= ws) & (token_spans[:, 1] <= we)]
                for ts, te in inside - ws:
                    spans.append((len(examples), ts, te))
                example_meta.append((k, len(head) + ws - a))
                examples.append(ids[ws:we])
    return BlockedDocument(
        blocks=blocks,
        block_meta=block_meta,
        examples=examples,
        example_meta=np.array(example_meta, dtype=np.int64).reshape(-1, 2),
        spans=np.array(spans, dtype=np.int64).reshape(-1, 3),
    )
