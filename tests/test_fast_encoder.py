"""The fused encoder forward (realm_fairseq.models.fast_encoder) computes what fairseq's TransformerEncoder
computes: the same hidden states for padded batches of mixed lengths with segments, the same gradients,
the same dropout masks for a seed in training, and in training the same gradients to the bit, so that
training on either path gives the same model; other encoder classes keep their own forward."""
import json

import pytest
import torch
from fairseq.models.transformer import TransformerEncoder

from realm_fairseq.data import Vocab
from realm_fairseq.models import fast_encoder
from realm_fairseq.models.embedder import Embedder
from realm_fairseq.models.encoder import EncoderConfig, TextEncoder
from realm_fairseq.models.hf_convert import dictionary_for

from conftest import VOCAB

#: realm_tiny's sizes, with heads of 16 dimensions
TINY = dict(encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=4,
            max_positions=64, dropout=0.0, attention_dropout=0.0)
LENGTHS = [17, 3, 9, 17, 1, 12]


@pytest.fixture(scope="module")
def dictionary():
    return dictionary_for(Vocab.load(VOCAB))


def batch(dictionary, lengths=LENGTHS, seed=0):
    """Right-padded tokens (B, T), each row [CLS] ... [SEP], and segments (B, T): 1 after the 4th token."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.full((len(lengths), max(lengths)), dictionary.pad())
    for i, n in enumerate(lengths):
        tokens[i, :n] = torch.randint(1000, 20000, (n,), generator=g)
        tokens[i, 0], tokens[i, n - 1] = dictionary.bos(), dictionary.eos()
    segments = (torch.arange(tokens.shape[1]) >= 4).long().expand_as(tokens).clone()
    return tokens, segments.masked_fill(tokens.eq(dictionary.pad()), 0)


def encoder(dictionary, seed=0, **overrides) -> TextEncoder:
    torch.manual_seed(seed)
    return TextEncoder(EncoderConfig(**{**TINY, **overrides}), dictionary)


def both(enc: TextEncoder, *inputs, seed=1, backward=False):
    """{attention: (hidden (B, T, C), gradients by name)} for fairseq's path and the fused one."""
    out = {}
    for attention in ("fairseq", "sdpa"):
        enc.attention = attention
        enc.zero_grad()
        torch.manual_seed(seed)
        hidden, padding_mask = enc(*inputs)
        if backward:
            (hidden[~padding_mask] ** 2).sum().backward()
        grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
        out[attention] = (hidden.detach(), grads)
    return out


def assert_same(out, atol=1e-5, rtol=1e-5):
    (a, a_grads), (b, b_grads) = out["fairseq"], out["sdpa"]
    assert a.shape == b.shape
    torch.testing.assert_close(b, a, atol=atol, rtol=rtol)
    assert a_grads.keys() == b_grads.keys()
    for name in a_grads:
        torch.testing.assert_close(b_grads[name], a_grads[name], atol=atol, rtol=rtol, msg=name)


@pytest.mark.parametrize("activation", ["gelu", "gelu_accurate"])
def test_eval_outputs_equal_fairseqs_for_padded_mixed_lengths_with_segments(dictionary, activation):
    enc = encoder(dictionary, activation_fn=activation).eval()
    assert enc.fast and enc.attention == "sdpa"  # on by default
    with torch.no_grad():
        out = both(enc, *batch(dictionary))
    assert_same(out, atol=1e-6, rtol=1e-6)
    if activation == "gelu":  # the same operations in the same order: equal to the bit
        assert torch.equal(out["sdpa"][0], out["fairseq"][0])


def test_pre_layernorm_and_final_layernorm_equal_fairseqs(dictionary):
    enc = encoder(dictionary, encoder_options=json.dumps({"encoder_normalize_before": True})).eval()
    assert enc.fast and enc.encoder.layer_norm is not None
    with torch.no_grad():
        assert_same(both(enc, *batch(dictionary)), atol=1e-6, rtol=1e-6)


def assert_identical(out):
    """Hidden states and every gradient equal to the bit."""
    (a, a_grads), (b, b_grads) = out["fairseq"], out["sdpa"]
    assert torch.equal(b, a)
    assert a_grads.keys() == b_grads.keys()
    assert [n for n in a_grads if not torch.equal(b_grads[n], a_grads[n])] == []


@pytest.mark.parametrize("activation", ["gelu", "gelu_accurate"])
@pytest.mark.parametrize("pre_norm", [False, True])
def test_gradients_equal_fairseqs_to_the_bit_in_training(dictionary, activation, pre_norm):
    """Close is not enough in training: the packed query-key-value product gives the same outputs but sums
    gradients in another order, a last-bit difference that grows over hundreds of updates into another
    model (tests/test_realm_learns.py went from 0.960 to 0.869 that way)."""
    options = json.dumps({"encoder_normalize_before": pre_norm})
    for heads in (2, 4):
        enc = encoder(dictionary, activation_fn=activation, encoder_options=options,
                      encoder_attention_heads=heads).train()
        assert_identical(both(enc, *batch(dictionary), backward=True))


def test_training_on_either_path_gives_the_same_model(dictionary):
    """Forty Adam steps on padded batches with segments, from the same start: the same parameters."""
    params = {}
    for attention in ("fairseq", "sdpa"):
        enc = encoder(dictionary, encoder_attention=attention, encoder_attention_heads=2).train()
        optimizer = torch.optim.Adam(enc.parameters(), lr=1e-3)
        for step in range(40):
            tokens, segments = batch(dictionary, LENGTHS[step % 3:], seed=step)
            hidden, padding_mask = enc(tokens, segments)
            optimizer.zero_grad()
            (hidden[~padding_mask] ** 2).sum().backward()
            optimizer.step()
        params[attention] = dict(enc.named_parameters())
    assert [n for n, p in params["fairseq"].items() if not torch.equal(params["sdpa"][n], p)] == []


def test_without_gradients_the_packed_product_gives_the_training_layouts_outputs(dictionary):
    """Without gradients (embedding the corpus) one packed query-key-value product runs; its outputs equal
    those of the training layout to the bit."""
    enc = encoder(dictionary).train()
    tokens, segments = batch(dictionary)
    with torch.no_grad():
        packed, _ = enc(tokens, segments)
    exact, _ = enc(tokens, segments)
    assert torch.equal(packed, exact.detach())


def test_dropout_in_training_draws_the_same_masks_for_a_seed(dictionary):
    """Hidden, activation and attention dropout: the fused path applies each where fairseq does, in the
    same (T, B, C) order, so on the CPU a seed gives the same masks, outputs and gradients (to the bit)."""
    enc = encoder(dictionary, dropout=0.1, attention_dropout=0.1, activation_dropout=0.1).train()
    tokens, segments = batch(dictionary)
    out = both(enc, tokens, segments, backward=True)
    assert_identical(out)
    enc.attention = "sdpa"
    torch.manual_seed(2)
    other_seed, _ = enc(tokens, segments)
    assert not torch.allclose(other_seed, out["sdpa"][0])  # dropout is applied at all
    enc.eval()
    with torch.no_grad():  # and not in evaluation
        assert torch.equal(enc(tokens, segments)[0], enc(tokens, segments)[0])


def test_a_row_alone_equals_the_row_in_a_padded_batch(dictionary):
    enc = encoder(dictionary).eval()
    tokens, segments = batch(dictionary)
    with torch.no_grad():
        together, _ = enc(tokens, segments)
        alone, _ = enc(tokens[2:3, :LENGTHS[2]], segments[2:3, :LENGTHS[2]])
    torch.testing.assert_close(together[2, :LENGTHS[2]], alone[0], atol=1e-5, rtol=1e-5)


def test_bf16_autocast_stays_within_bf16_rounding_of_fairseqs(dictionary):
    enc = encoder(dictionary).eval()
    tokens, segments = batch(dictionary)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = both(enc, tokens, segments)
    keep = tokens.ne(dictionary.pad())
    a, b = out["fairseq"][0][keep].float(), out["sdpa"][0][keep].float()
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.999


def test_realm_doc_embedder_with_title_body_segments_equals_fairseqs(dictionary):
    torch.manual_seed(0)
    embedder = Embedder(EncoderConfig(**TINY), dictionary, pooling="cls", projection_dim=32, head="realm",
                        doc_segments="title_body").eval()
    tokens, _ = batch(dictionary)
    tokens[:3, 2] = dictionary.index("[SEP]")  # three rows have a title
    with torch.no_grad():
        embedder.encoder.attention = "fairseq"
        a = embedder(tokens)
        embedder.encoder.attention = "sdpa"
        b = embedder(tokens)
    torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)


class CountingEncoder(TransformerEncoder):
    """A swapped-in subclass of fairseq's encoder: it must run its own forward."""

    calls = 0

    def forward(self, src_tokens, src_lengths=None, return_all_hiddens=False, token_embeddings=None):
        CountingEncoder.calls += 1
        return super().forward(src_tokens, src_lengths, return_all_hiddens, token_embeddings)


def test_other_encoder_classes_keep_their_own_forward(dictionary):
    enc = encoder(dictionary, encoder_class=f"{__name__}:CountingEncoder").eval()
    assert not enc.fast and not fast_encoder.supported(enc.encoder)
    before = CountingEncoder.calls
    with torch.no_grad():
        enc(*batch(dictionary))
    assert CountingEncoder.calls == before + 1


def test_the_option_turns_it_off_keeps_the_state_dict_and_old_configs_load(dictionary):
    fused, plain = encoder(dictionary), encoder(dictionary, encoder_attention="fairseq")
    assert plain.attention == "fairseq" and fused.attention == "sdpa"
    assert list(fused.state_dict()) == list(plain.state_dict())
    old = {k: v for k, v in EncoderConfig(**TINY).__dict__.items() if k != "encoder_attention"}
    assert EncoderConfig(**old).encoder_attention == "sdpa"  # a config written before the field
    with pytest.raises(ValueError, match="encoder_attention 'flash'"):
        encoder(dictionary, encoder_attention="flash")
