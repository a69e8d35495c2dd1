"""Pieces of REALM pre-training: joined reader inputs, the reader's masked-LM head, and the marginal
likelihood over retrieved blocks (per token and joint), checked against direct computation."""
import math

import pytest
import torch

from realm_fairseq.criterions.marginal_likelihood import marginal_log_likelihood
from realm_fairseq.data import Vocab
from realm_fairseq.models.encoder import EncoderConfig
from realm_fairseq.models.hf_convert import dictionary_for
from realm_fairseq.models.reader import Reader, join_query_and_blocks

from conftest import VOCAB

TINY = dict(encoder_layers=1, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
            dropout=0.0, attention_dropout=0.0, max_positions=24)


@pytest.fixture(scope="module")
def dictionary():
    return dictionary_for(Vocab.load(VOCAB))


def padded(rows, pad):
    """Token lists -> (N, L) padded and lengths (N,), as the retriever hands candidates over."""
    lengths = torch.tensor([len(r) for r in rows])
    out = torch.full((len(rows), int(lengths.max())), pad)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out, lengths


def test_joined_inputs_put_each_block_after_its_query_and_fit(dictionary):
    pad, eos = dictionary.pad(), dictionary.eos()
    queries, _ = padded([[0, 10, 11, 2], [0, 20, 2]], pad)
    blocks, lengths = padded([[30, 31], list(range(100, 130)), [], [40]], pad)  # 2 a query; [] the null doc
    tokens, segments = join_query_and_blocks(queries, blocks, lengths, pad, eos, max_positions=12)
    assert tokens.shape == (4, 12)
    assert tokens[0, :7].tolist() == [0, 10, 11, 2, 30, 31, 2] and (tokens[0, 7:] == pad).all()
    assert tokens[1].tolist() == [0, 10, 11, 2, *range(100, 107), 2]  # block cut to fit 12 positions
    assert tokens[2, :4].tolist() == [0, 20, 2, 2] and (tokens[2, 4:] == pad).all()  # the null document
    assert tokens[3, :5].tolist() == [0, 20, 2, 40, 2]
    assert segments[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0] and segments[1].sum() == 8
    assert segments[2].tolist() == [0, 0, 0, 1] + [0] * 8
    with pytest.raises(ValueError, match=r"does not fit the reader.s 3 positions \(--max-positions, or"):
        join_query_and_blocks(queries[:1], *padded([[5]], pad), pad, eos, max_positions=3)


def test_reader_predicts_at_masked_positions_with_tied_embeddings(dictionary):
    reader = Reader(EncoderConfig(**TINY), dictionary).eval()
    assert reader.lm_head.weight is reader.encoder.embed_tokens.weight
    tokens, segments = join_query_and_blocks(torch.tensor([[0, 107, 500, 2]]), torch.tensor([[600, 601]]),
                                             torch.tensor([2]), dictionary.pad(), dictionary.eos(), 24)
    masked = tokens.eq(107)
    with torch.no_grad():
        all_logits = reader(tokens, segments)
        at_masks = reader(tokens, segments, masked)
    assert all_logits.shape == (1, tokens.shape[1], len(dictionary)) and at_masks.shape == (1, len(dictionary))
    assert torch.allclose(all_logits[masked], at_masks, atol=1e-5)


def direct(scores, log_probs, mask, joint):
    """The same quantities in probability space (fine for small values)."""
    p_z = torch.softmax(scores.double(), -1)  # (B, K)
    p = log_probs.double().exp()  # (B, K, M)
    if joint:
        return torch.log((p_z * torch.where(mask[:, None, :], p, torch.ones_like(p)).prod(-1)).sum(-1))
    return torch.log((p_z[:, :, None] * p).sum(1))


def test_per_token_and_joint_marginals_match_direct_computation():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 4, generator=g)
    log_probs = torch.log_softmax(torch.randn(2, 4, 3, 50, generator=g), -1)[..., 0]  # (B, K, M)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    per_token = marginal_log_likelihood(scores, log_probs, mask)
    expected = direct(scores, log_probs, mask, joint=False)
    assert torch.allclose(per_token[mask], expected[mask].float(), atol=1e-6) and per_token[0, 2] == 0
    joint = marginal_log_likelihood(scores, log_probs, mask, joint=True)
    assert torch.allclose(joint, direct(scores, log_probs, mask, joint=True).float(), atol=1e-6)


def test_one_certain_candidate_gives_plain_masked_lm():
    log_probs = torch.log_softmax(torch.randn(2, 1, 5, 30), -1)[..., 3]  # (B, K=1, M)
    mask = torch.ones(2, 5, dtype=torch.bool)
    out = marginal_log_likelihood(torch.zeros(2, 1), log_probs, mask)
    assert torch.allclose(out, log_probs[:, 0], atol=1e-7)


def test_marginal_is_stable_and_trains_the_retriever():
    scores = torch.tensor([[300.0, -300.0, 0.0]], requires_grad=True)
    log_probs = torch.tensor([[[-1e4, -2.0], [-0.1, -0.1], [-5.0, -5.0]]])  # candidate 0 is wrong, 1 right
    out = marginal_log_likelihood(scores, log_probs, torch.ones(1, 2, dtype=torch.bool))
    assert torch.isfinite(out).all()
    (-out.sum()).backward()
    assert torch.isfinite(scores.grad).all()
    assert scores.grad[0, 0] > 0 and scores.grad[0, 1] <= 0  # gradient descent lowers the wrong block's score
    assert math.isclose(float(out.detach()[0, 1]), -2.0, abs_tol=1e-3)
