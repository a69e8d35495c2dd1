"""The knowledge-augmented encoder for open-domain QA: REALM's span reader (paper, section 3.3).

It reads ``[CLS] x [SEP] z [SEP]`` (the question x, a retrieved block z) with a BERT-style encoder and
scores every span s of z up to ``max_span_len`` wordpieces with an MLP over the states of its start and
end, MLP([h_START(s); h_END(s)]). p(s | z, x) is the softmax over the spans that may answer: inside z,
within its title or its body, and starting and ending at word boundaries. The first layer of the MLP
is split into a start and an end projection, so the cost is one projection per position plus one
addition per span. Its output layer starts at zero: before fine-tuning every allowed span is equally likely.

Two heads (``span_head``): ``mlp`` is the MLP above (ReLU between the layers); ``orqa`` is the span head
of ORQA and REALM's released open-QA readers, which adds a LayerNorm (epsilon 1e-3, Keras' default)
after the ReLU. :func:`orqa_best_span` decodes as ORQA does: the span of highest retrieval score plus
span score over every span of wordpieces inside z (:func:`orqa_log_probs`, the softmax of that sum over
those spans, is ORQA's p(s, z | x)).
"""
from typing import Tuple

import torch
import torch.nn as nn

from realm_fairseq.models.encoder import EncoderConfig, TextEncoder


SPAN_HEADS = ("mlp", "orqa")
ORQA_LAYER_NORM_EPS = 1e-3  # tf.keras.layers.LayerNormalization's default, ORQA's span head


class SpanReader(nn.Module):
    """Joined sequences (N, T) with segments (N, T) -> span scores (N, T, L): entry (n, t, l) scores the
    span of row n from position t to t + l."""

    def __init__(self, cfg: EncoderConfig, dictionary, hidden_dim: int, head: str = "mlp"):
        super().__init__()
        if cfg.num_segments < 2:
            raise ValueError("the span reader needs two segments (x and z); set num_segments to 2")
        if head not in SPAN_HEADS:
            raise ValueError(f"span head {head!r}: expected one of {', '.join(SPAN_HEADS)}")
        self.encoder = TextEncoder(cfg, dictionary)
        self.start_proj = nn.Linear(cfg.encoder_embed_dim, hidden_dim)
        self.end_proj = nn.Linear(cfg.encoder_embed_dim, hidden_dim, bias=False)
        self.span_norm = nn.LayerNorm(hidden_dim, eps=ORQA_LAYER_NORM_EPS) if head == "orqa" else None
        self.score = nn.Linear(hidden_dim, 1)
        nn.init.zeros_(self.score.weight)  # every span starts equally likely: no lucky guesses at the start
        nn.init.zeros_(self.score.bias)

    def forward(self, tokens: torch.Tensor, segments: torch.Tensor, max_span_len: int) -> torch.Tensor:
        hidden, _ = self.encoder(tokens, segments)  # (N, T, C)
        starts = self.start_proj(hidden)  # (N, T, H)
        ends = shifted_windows(self.end_proj(hidden), max_span_len)  # (N, T, L, H): end state of t + l
        spans = torch.relu(starts.unsqueeze(2) + ends)  # (N, T, L, H)
        if self.span_norm is not None:
            spans = self.span_norm(spans)
        return self.score(spans).squeeze(-1)  # (N, T, L)


def shifted_windows(x: torch.Tensor, width: int) -> torch.Tensor:
    """(N, T, ...) -> (N, T, width, ...): entry (n, t, l) is x[n, t + l], zero past the end."""
    padded = torch.cat([x, x.new_zeros(x.shape[0], width - 1, *x.shape[2:])], dim=1)  # (N, T + width - 1, ...)
    return torch.stack([padded[:, l : l + x.shape[1]] for l in range(width)], dim=2)


def allowed_spans(starts_word: torch.Tensor, ends_word: torch.Tensor, part: torch.Tensor,
                  max_span_len: int) -> torch.Tensor:
    """Which spans may answer, (N, T, L) bool, from per-position flags (N, T): the span of t to t + l
    starts a word at t, ends one at t + l, and both lie in the same part (title or body) of z, where
    ``part`` is -1 outside z."""
    same_part = shifted_windows(part + 1, max_span_len) == (part + 1).unsqueeze(2)  # (N, T, L)
    return (starts_word & (part >= 0)).unsqueeze(2) & shifted_windows(ends_word, max_span_len) & same_part


def span_log_probs(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """log p(s | z, x) (N, T, L) over the allowed spans of each row; a very negative number elsewhere (every
    span of a row that allows none)."""
    never = torch.finfo(torch.float32).min / 4
    masked = scores.float().masked_fill(~allowed, never)
    flat = torch.log_softmax(masked.flatten(1), dim=-1)  # (N, T * L)
    return flat.view_as(scores).masked_fill(~allowed, never)


def best_span(log_probs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The highest-scoring span of each row of (N, T, L) scores: (start, length - 1, score), each (N,)."""
    top, where = log_probs.flatten(1).max(-1)
    width = log_probs.shape[2]
    return where // width, where % width, top


def orqa_log_probs(span_scores: torch.Tensor, retrieval_scores: torch.Tensor, in_block: torch.Tensor
                   ) -> torch.Tensor:
    """ORQA's log p(s, z | x) (B, K, T, L): the log-softmax of retrieval score + span score over every span of
    the K blocks read that lies inside z, from span scores (B, K, T, L), retrieval scores (B, K) and which
    positions (B, K, T) are wordpieces of z; a very negative number elsewhere."""
    batch, span_len = span_scores.shape[0], span_scores.shape[3]
    inside = in_block.unsqueeze(-1) & shifted_windows(in_block.flatten(0, 1), span_len).view_as(span_scores)
    total = span_scores.float() + retrieval_scores.float()[:, :, None, None]  # (B, K, T, L)
    masked = total.masked_fill(~inside, torch.finfo(torch.float32).min / 4)  # as span_log_probs: never nan
    flat = torch.log_softmax(masked.view(batch, -1), dim=-1)  # (B, K * T * L)
    return flat.view_as(span_scores)


def orqa_best_span(span_scores: torch.Tensor, retrieval_scores: torch.Tensor, in_block: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ORQA's prediction (arguments as :func:`orqa_log_probs`): the block (B,), start (B,) and length - 1 (B,)
    of the span maximising retrieval score + span score among the spans inside z."""
    joint = orqa_log_probs(span_scores, retrieval_scores, in_block)  # (B, K, T, L)
    where, length, _ = best_span(joint.flatten(1, 2))  # (B,) each: where = block * T + start
    return where // joint.shape[2], where % joint.shape[2], length
