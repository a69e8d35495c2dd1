"""Open-domain QA with REALM: retrieve, read, and the quantities the loss and the metrics need (section 3.3).

This is what :meth:`RealmModel.read <realm_fairseq.models.realm.RealmModel.read>` does, as its ``forward``
does pre-training's retrieve-and-read; the fixed retriever is handed in. For a batch of questions x: embed
them, take the ``beam`` best blocks from the fixed index with their scores f(x, z), and read the first
``topk`` of them as ``[CLS] x [SEP] z [SEP]`` with the span reader:

    log p(z | x)      softmax of f(x, z) over the top k (the reader's marginal) or over the beam
    log p(s | z, x)   softmax of the span scores over the spans that may answer in z
    log p(s, z | x) = log p(z | x) + log p(s | z, x)

The loss (criterion ``realm_qa``) marginalises p(s, z | x) over the gold spans S(z, y) of the top k and
p(z | x) over the answer-holding blocks of the beam; the prediction is the span of highest p(s, z | x).
That is the span rule ``marginal``; the rule ``orqa`` predicts as ORQA and REALM's released open-QA models
do: the span of highest retrieval score + span score over every span of wordpieces inside the blocks read
(:func:`~realm_fairseq.models.span_reader.orqa_log_probs`). The loss is the same under either rule.

In training only the blocks of the top k that hold a gold span need reading (``gold_only``): p(s | z, x) is
normalised per block and the reader's loss sums over gold spans only, so a block without one adds nothing
to the loss or its gradient, while p(z | x) comes from the retrieval scores alone. With REALM's k = 5 a
question then costs the blocks that hold its answer (1.3 on SQuAD) instead of 5.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from realm_fairseq.data.answers import AnswerFinder, Targets
from realm_fairseq.models.reader import join_query_and_blocks
from realm_fairseq.models.span_reader import allowed_spans, best_span, orqa_log_probs, span_log_probs
from realm_fairseq.retrieval.fixed_retriever import FixedIndexRetriever

READ_TOKENS = 4096  # wordpieces the span reader reads at a time (rows of similar length together)
SPAN_RULES = ("marginal", "orqa")  # how predict picks the answer span (see the module's docstring)


@dataclass
class Reading:
    """How questions are retrieved for and read (the ``realm_open_qa`` task's settings)."""

    topk: int  # blocks read per question
    beam: int  # blocks retrieved per question, for the retriever's loss and recall@k (at least topk)
    max_span_len: int  # longest answer span in wordpieces
    span_rule: str = "marginal"  # how the answer span is predicted, one of SPAN_RULES


@dataclass
class ReadBatch:
    block_ids: np.ndarray  # (B, beam) retrieved blocks, best first
    retrieval_scores: torch.Tensor  # (B, beam) f(x, z)
    span_log_probs: torch.Tensor  # (B, K, T, L) log p(s | z, x) of the K blocks read
    span_scores: torch.Tensor  # (B, K, T, L) the span reader's raw scores, for ORQA's rule
    z_start: np.ndarray  # (B, K) position of z's first wordpiece in the joined sequence
    z_len: np.ndarray  # (B, K) wordpieces of z that were read (blocks are cut to fit max_positions)
    span_rule: str = "marginal"  # the rule predict follows, one of SPAN_RULES
    gold: Optional[torch.Tensor] = None  # (B, K, T, L) bool, S(z, y): the spans spelling a gold answer
    holds_answer: Optional[np.ndarray] = None  # (B, beam) bool: the retrieved blocks that hold a gold answer

    @property
    def topk(self) -> int:
        return self.span_log_probs.shape[1]

    def joint_log_probs(self) -> torch.Tensor:
        """log p(s, z | x) (B, K, T, L) with p(z | x) over the K blocks read."""
        log_p_z = torch.log_softmax(self.retrieval_scores[:, : self.topk].float(), dim=-1)  # (B, K)
        return log_p_z[:, :, None, None] + self.span_log_probs

    def in_block(self) -> torch.Tensor:
        """(B, K, T) bool: which positions of the joined sequences are wordpieces of z."""
        positions = torch.arange(self.span_scores.shape[2])  # (T,)
        z_start, z_end = torch.from_numpy(self.z_start), torch.from_numpy(self.z_start + self.z_len)  # (B, K)
        inside = (positions >= z_start[..., None]) & (positions < z_end[..., None])  # (B, K, T)
        return inside.to(self.span_scores.device)

    def prediction_log_probs(self) -> torch.Tensor:
        """log p(s, z | x) (B, K, T, L) as the span rule defines it: :meth:`joint_log_probs` (``marginal``)
        or ORQA's softmax of retrieval + span score over the spans inside z (``orqa``)."""
        if self.span_rule == "orqa":
            return orqa_log_probs(self.span_scores, self.retrieval_scores[:, : self.topk], self.in_block())
        return self.joint_log_probs()


@dataclass
class Prediction:
    text: str
    score: float  # p(s, z | x) of the predicted span, as its span rule defines it
    rank: int  # of its block among those read
    block: int
    start: int  # wordpieces of the block (title [SEP] body), inclusive
    end: int


def retrieve_and_read(model, retriever: Optional[FixedIndexRetriever], finder: AnswerFinder, src_tokens: torch.Tensor,
                      reading: Reading, answers: Optional[Sequence[Sequence[str]]] = None,
                      gold_only: bool = False, retrieved: Optional[Tuple[np.ndarray, torch.Tensor]] = None
                      ) -> ReadBatch:
    """Retrieve ``reading.beam`` blocks per question of ``src_tokens`` (B, T) ``[CLS] x [SEP]`` from
    ``retriever`` (the fixed index; None when ``retrieved`` is given) and read the best ``reading.topk``; their answer spans are to be predicted by ``reading.span_rule``. With the
    questions' gold ``answers`` the batch carries their gold spans and which retrieved blocks hold one, and
    with ``gold_only`` only the blocks holding a gold span are read (training: the loss is the same,
    predictions are not; see the module's docstring). ``retrieved``, blocks another retriever found (ids
    (B, beam) best first and their scores, e.g. BM25's), is read in place of the model's own retrieval, and
    their scores are f(x, z)."""
    d, max_span_len = model.dictionary, reading.max_span_len
    targets = None if answers is None else [finder.targets(a) for a in answers]
    if retrieved is None:
        queries = model.embed_queries(src_tokens)  # (B, D)
        retrieved = retriever.search(queries, max(reading.beam, reading.topk))
    block_ids, scores = retrieved  # (B, beam) each
    topk = min(reading.topk, block_ids.shape[1])
    lengths = src_tokens.ne(d.pad()).sum(1).cpu().numpy()  # (B,)
    blocks, block_lengths = finder.corpus.padded_tokens(block_ids[:, :topk].reshape(-1).tolist())  # (B*K, L)
    joined, segments = join_query_and_blocks(src_tokens, blocks, block_lengths, d.pad(), d.eos(),
                                             model.reader_cfg.max_positions)
    # (B * K, Tj): row b * K + k is question b with its k-th block
    z_start = np.repeat(lengths, topk).reshape(-1, topk)  # (B, K)
    z_len = np.minimum(block_lengths.numpy().reshape(-1, topk), model.reader_cfg.max_positions - z_start - 1)  # (B, K)
    starts_word, ends_word, part = _position_flags(finder, block_ids[:, :topk], z_start, z_len, joined.shape[1])
    allowed = allowed_spans(starts_word, ends_word, part, max_span_len).to(src_tokens.device)  # (B * K, Tj, L)
    gold = None if targets is None else _gold_spans(finder, block_ids[:, :topk], z_start, z_len, targets,
                                                    allowed.shape, max_span_len).to(allowed.device)
    rows = gold.flatten(1).any(1) if gold_only else torch.ones(len(joined), dtype=torch.bool)  # (B * K,)
    span_scores = _read_rows(model.span_reader, joined, segments, rows.to(joined.device), max_span_len, d.pad())
    log_probs = span_log_probs(span_scores, allowed & rows.to(allowed.device)[:, None, None])
    shape = (len(lengths), topk, *span_scores.shape[1:])  # (B, K, Tj, L)
    return ReadBatch(block_ids, scores, log_probs.view(shape), span_scores.view(shape), z_start, z_len,
                     reading.span_rule, None if gold is None else gold.view(shape),
                     None if targets is None else _holds_answer(finder, block_ids, targets))


def _read_rows(span_reader, tokens: torch.Tensor, segments: torch.Tensor, rows: torch.Tensor, max_span_len: int,
               pad: int) -> torch.Tensor:
    """Span scores (N, T, L) of the joined sequences (N, T) where ``rows`` (N,) is true; zero elsewhere."""
    if bool(rows.all()):
        return read_by_length(span_reader, tokens, segments, max_span_len, pad)
    scores = torch.zeros(*tokens.shape, max_span_len, device=tokens.device)  # (N, T, L)
    if bool(rows.any()):
        read = read_by_length(span_reader, tokens[rows], segments[rows], max_span_len, pad)  # (n, T, L)
        scores = scores.to(read.dtype).index_put((rows.nonzero().squeeze(1),), read)
    return scores


def read_by_length(span_reader, tokens: torch.Tensor, segments: torch.Tensor, max_span_len: int, pad: int,
                   max_tokens: int = READ_TOKENS) -> torch.Tensor:
    """Span scores (N, T, L) of joined sequences (N, T), read in chunks of rows of similar length (at most
    ``max_tokens`` wordpieces with padding), so that short blocks are not padded to the longest one."""
    lengths = tokens.ne(pad).sum(1)  # (N,)
    order = torch.argsort(lengths, descending=True)
    chunks, start = [], 0
    while start < len(order):
        width = int(lengths[order[start]])
        rows = order[start : start + max(1, max_tokens // width)]
        scores = span_reader(tokens[rows, :width], segments[rows, :width], max_span_len)  # (n, width, L)
        chunks.append(F.pad(scores, (0, 0, 0, tokens.shape[1] - width)))  # positions past width: never spans
        start += len(rows)
    return torch.cat(chunks)[torch.argsort(order)]


def _position_flags(finder: AnswerFinder, block_ids: np.ndarray, z_start: np.ndarray, z_len: np.ndarray,
                    width: int):
    """Per position of the joined sequences (B * K, Tj): starts a word, ends a word, part of z (-1: not z)."""
    rows = block_ids.size
    starts_word = torch.zeros(rows, width, dtype=torch.bool)
    ends_word = torch.zeros(rows, width, dtype=torch.bool)
    part = torch.full((rows, width), -1, dtype=torch.long)
    for r, (block, start, n) in enumerate(zip(block_ids.ravel(), z_start.ravel(), z_len.ravel())):
        pieces = finder.pieces(int(block))
        starts_word[r, start : start + n] = torch.from_numpy(pieces.starts_word[:n])
        ends_word[r, start : start + n] = torch.from_numpy(pieces.ends_word[:n])
        part[r, start : start + n] = torch.from_numpy(pieces.part[:n])
    return starts_word, ends_word, part


def _gold_spans(finder: AnswerFinder, block_ids: np.ndarray, z_start: np.ndarray, z_len: np.ndarray,
                targets: Sequence[Targets], shape, max_span_len: int) -> torch.Tensor:
    """(B * K, Tj, L) bool: the spans of the blocks read, ``block_ids`` (B, K), that spell a gold answer,
    S(z, y)."""
    gold = torch.zeros(shape, dtype=torch.bool)
    topk = block_ids.shape[1]
    for b, question_targets in enumerate(targets):
        for k in range(topk):
            for start, end in finder.spans(int(block_ids[b, k]), question_targets, max_span_len):
                if end < z_len[b, k]:
                    gold[b * topk + k, z_start[b, k] + start, end - start] = True
    return gold


def _holds_answer(finder: AnswerFinder, block_ids: np.ndarray, targets: Sequence[Targets]) -> np.ndarray:
    """(B, beam) bool: whether each retrieved block of ``block_ids`` (B, beam) holds a gold answer."""
    return np.array([[finder.contains(int(z), t) for z in row] for row, t in zip(block_ids, targets)],
                    dtype=bool).reshape(block_ids.shape)


def predict(read: ReadBatch, finder: AnswerFinder) -> List[Prediction]:
    """The span of highest p(s, z | x) (by ``read.span_rule``) for each question, as the text of its block."""
    joint = read.prediction_log_probs().detach()  # (B, K, T, L)
    batch, topk, width, _ = joint.shape
    position, length, score = best_span(joint.reshape(batch, topk * width, -1))  # (B,) each
    predictions = []
    for b, (p, l, s) in enumerate(zip(position.tolist(), length.tolist(), score.tolist())):
        k, t = divmod(p, width)
        block = int(read.block_ids[b, k])
        start = t - int(read.z_start[b, k])
        text = finder.block_text(block).span_text(start, start + l)
        predictions.append(Prediction(text, float(np.exp(s)), k, block, start, start + l))
    return predictions
