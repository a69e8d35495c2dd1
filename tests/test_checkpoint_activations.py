"""--checkpoint-activations: every tower's layers recompute their activations in the backward pass instead of
keeping them, on the fused forward and on fairseq's own, with the same outputs and gradients to the bit (the
dropout masks of the forward pass are drawn again); a swapped-in encoder that cannot checkpoint is refused.
The memory it saves in a whole REALM step is measured by bench/activation_memory.py."""
import pytest
import torch

from realm_fairseq.models.embedder import Embedder
from realm_fairseq.models.encoder import EncoderConfig

from test_fast_encoder import TINY, batch, dictionary, encoder  # noqa: F401  (dictionary: a fixture)
from test_models import LIGHTCONV_OPTIONS

DROPOUT = dict(dropout=0.1, attention_dropout=0.1, activation_dropout=0.1)
ATTENTION = ("sdpa", "fairseq")


def train_once(enc, tokens, segments, seed=3):
    """Hidden states (B, T, C) and every parameter's gradient after one forward and backward in training."""
    enc.train().zero_grad()
    torch.manual_seed(seed)  # the dropout masks
    hidden, padding_mask = enc(tokens, segments)
    (hidden[~padding_mask] ** 2).sum().backward()
    return hidden.detach(), {n: p.grad for n, p in enc.named_parameters()}


@pytest.mark.parametrize("attention", ATTENTION)
def test_checkpointed_layers_give_the_same_outputs_and_gradients_to_the_bit(dictionary, attention):
    tokens, segments = batch(dictionary)
    runs = [train_once(encoder(dictionary, encoder_attention=attention, checkpoint_activations=on, **DROPOUT),
                       tokens, segments) for on in (False, True)]
    (plain, plain_grads), (checkpointed, checkpointed_grads) = runs
    assert torch.equal(checkpointed, plain)
    assert [n for n in plain_grads if not torch.equal(checkpointed_grads[n], plain_grads[n])] == []
    other_seed, _ = train_once(encoder(dictionary, encoder_attention=attention, checkpoint_activations=True,
                                       **DROPOUT), tokens, segments, seed=4)
    assert not torch.equal(other_seed, checkpointed)  # dropout is on: the masks were drawn again, not skipped


def bytes_kept_for_backward(enc, tokens, segments) -> int:
    """The bytes autograd keeps from a training forward pass until the backward pass."""
    kept = []

    def pack(tensor):
        kept.append(tensor.untyped_storage().nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        hidden, padding_mask = enc.train()(tokens, segments)
    (hidden[~padding_mask] ** 2).sum().backward()
    return sum(kept)


@pytest.mark.parametrize("attention", ATTENTION)
def test_checkpointed_layers_keep_nothing_of_their_insides_for_the_backward_pass(dictionary, attention):
    """Four layers of 256 on 8 x 64 tokens: without checkpointing autograd keeps every layer's projections,
    attention and feed-forward activations; with it, a layer's input alone (the rest is recomputed)."""
    sizes = dict(encoder_layers=4, encoder_embed_dim=256, encoder_ffn_embed_dim=1024, encoder_attention_heads=4)
    tokens, segments = batch(dictionary, [64] * 8)
    kept = {on: bytes_kept_for_backward(encoder(dictionary, encoder_attention=attention, checkpoint_activations=on,
                                                **sizes, **DROPOUT), tokens, segments)
            for on in (False, True)}
    hidden_state = 64 * 8 * 256 * 4  # one layer's input, float32
    assert kept[False] > 4 * 8 * hidden_state  # each layer keeps several hidden states' worth, and more
    assert kept[True] < 0.2 * kept[False]


def test_an_encoder_that_cannot_checkpoint_is_refused(dictionary):
    with pytest.raises(ValueError, match="does not checkpoint its layers' activations.*drop --checkpoint-activations"):
        Embedder(EncoderConfig(encoder_class="fairseq.models.lightconv:LightConvEncoder", encoder_arch="lightconv",
                               encoder_options=LIGHTCONV_OPTIONS, num_segments=0, checkpoint_activations=True,
                               **TINY), dictionary, "cls", 0)


@pytest.mark.parametrize("attention", ATTENTION)
def test_without_gradients_a_checkpointed_encoder_embeds_as_before(dictionary, attention):
    """Embedding the corpus (build_index, a refresh) runs a checkpoint's towers under inference mode."""
    tokens, segments = batch(dictionary)
    plain, checkpointed = (encoder(dictionary, encoder_attention=attention, checkpoint_activations=on).eval()
                           for on in (False, True))
    with torch.inference_mode():
        assert torch.equal(checkpointed(tokens, segments)[0], plain(tokens, segments)[0])
