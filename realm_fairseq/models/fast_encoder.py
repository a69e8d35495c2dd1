"""A fused forward pass for fairseq's TransformerEncoder as REALM's towers use it.

REALM's embedders and knowledge-augmented encoder are BERT Transformers (paper, section 3.2), built in
:mod:`realm_fairseq.models.encoder` on fairseq's ``TransformerEncoder``. Embedding the corpus for the MIPS
index runs the document embedder over every block, so its speed is the index refresh's cost. fairseq's
path spends much of that time outside the matrix products: it waits for the device on
``padding_mask.any()`` in every call, works in (T, B, C) order, projects queries, keys and values with three
products, converts the padding mask to a float mask of (B * H, 1, T) in every layer, and computes GELU by
way of a float32 copy.

:func:`encoder_forward` computes the same function with the same parameters (no new state-dict keys):
``torch.nn.functional.scaled_dot_product_attention`` (flash or memory-efficient kernels on a GPU) with a
boolean key mask of (B, 1, 1, T), and no host synchronisation. Without gradients (embedding the corpus,
evaluation) queries, keys and values come from one packed product and GELU from one kernel, computed on the
input's dtype (the kernels compute it in float32 internally, as fairseq's float32 copy does; ``gelu_accurate``
as torch's tanh GELU, the same formula, equal within float32 rounding). In training (autograd recording) each
layer computes what fairseq's computes to the bit, gradients included: three projections laid out as
``F.multi_head_attention_forward`` lays them out, and the layer's own activation function. Equal outputs are
not enough there: the packed product's backward sums the input's gradient and reduces the bias gradients in
another order, and a last-bit difference per step grows over hundreds of updates into a different model.
Dropout is the encoder's own: the same ``FairseqDropout`` modules on hidden states and activations in
fairseq's (T, B, C) order, and the attention dropout handed to scaled_dot_product_attention with the
probability and training rule fairseq gives ``F.multi_head_attention_forward`` (which itself calls
scaled_dot_product_attention). So on the CPU a seed draws the same dropout masks and trains the same model on
both paths.

With ``checkpoint_activations`` (fairseq's option, which wraps each layer in its ``checkpoint_wrapper``) the
fused path recomputes each layer in the backward pass as fairseq's does (torch's non-reentrant checkpoint,
which draws the forward pass's dropout masks again): autograd keeps one hidden state a layer, and the
gradients stay fairseq's to the bit.

:func:`supported` says whether an encoder is one this path reproduces: exactly fairseq's
``TransformerEncoder`` with fairseq's own layers, no quantisation noise, xformers, key/value biases,
pruned heads or fc-result returns. Any other encoder class runs its own forward.
"""
from typing import Optional

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from fairseq.models.transformer import TransformerEncoder, TransformerEncoderBase
from fairseq.modules.transformer_layer import TransformerEncoderLayer, TransformerEncoderLayerBase
from fairseq.modules.gelu import gelu, gelu_accurate

ENCODER_TYPES = (TransformerEncoder, TransformerEncoderBase)
LAYER_TYPES = (TransformerEncoderLayer, TransformerEncoderLayerBase)
#: fairseq activation functions -> the same function in one kernel
ACTIVATIONS = {gelu: F.gelu, gelu_accurate: lambda x: F.gelu(x, approximate="tanh"),
               torch.relu: torch.relu, F.relu: F.relu}
ATTENTION = ("sdpa", "fairseq")


def _layer_supported(layer) -> bool:
    attn = layer.self_attn
    return (type(layer) in LAYER_TYPES and not layer.return_fc and not layer.quant_noise
            and layer.activation_fn in ACTIVATIONS and attn.self_attention and attn.qkv_same_dim
            and not attn.use_xformers and attn.bias_k is None and not attn.add_zero_attn
            and not attn.skip_embed_dim_check and not attn.onnx_trace)


def supported(encoder) -> bool:
    """Whether :func:`encoder_forward` computes what ``encoder`` itself does (see the module docstring)."""
    return (type(encoder) in ENCODER_TYPES and getattr(encoder, "quant_noise", None) is None
            and all(_layer_supported(layer) for layer in encoder.layers))


def _recomputes(layer) -> bool:
    """Whether fairseq wrapped ``layer`` in its ``checkpoint_wrapper`` (``checkpoint_activations``), which marks
    it with ``precheckpoint_forward``; :func:`encoder_forward` then checkpoints its own layer forward too."""
    return hasattr(layer, "precheckpoint_forward")


def checkpointed(encoder) -> bool:
    """Whether ``encoder``'s layers recompute their activations in the backward pass."""
    layers = getattr(encoder, "layers", None) or ()
    return len(layers) > 0 and all(_recomputes(layer) for layer in layers)


def _attention_dropout(attn) -> float:
    """The attention-weight dropout fairseq's MultiheadAttention applies now (0 in eval unless retained)."""
    module = attn.dropout_module
    return module.p if attn.training or module.apply_during_inference else 0.0


def _differentiable(layer, x: torch.Tensor) -> bool:
    """Whether autograd records this layer's forward (training): then it must give fairseq's gradients."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in layer.parameters()))


def self_attention(attn, x: torch.Tensor, keep: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """fairseq MultiheadAttention's self-attention: x (T, B, C), keep (B, 1, 1, T) bool -> (T, B, C).

    Queries, keys and values come from one product unless ``exact``; then from three, laid out as
    ``F.multi_head_attention_forward`` lays them out (``view(T, B * H, D).transpose(0, 1)``). The forward
    values are the same either way, but the backward pass sums the input's gradient over the three uses and
    reduces the bias gradients in the order of the gradient's memory layout, so only fairseq's layout gives
    fairseq's gradients to the bit."""
    length, bsz, width = x.shape
    heads, dim = attn.num_heads, width // attn.num_heads
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    if exact:
        q, k, v = (F.linear(x, p.weight, p.bias).view(length, bsz * heads, dim).transpose(0, 1)
                   .view(bsz, heads, length, dim) for p in projections)  # 3 x (B, H, T, D)
    else:
        weight = torch.cat([p.weight for p in projections])  # (3C, C)
        bias = torch.cat([p.bias for p in projections])  # (3C,)
        qkv = F.linear(x, weight, bias).view(length, bsz, 3, heads, dim)  # (T, B, 3, H, D)
        q, k, v = qkv.permute(2, 1, 3, 0, 4).unbind(0)  # 3 x (B, H, T, D)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=_attention_dropout(attn))
    out = out.permute(2, 0, 1, 3).reshape(length, bsz, width)  # (T, B, C)
    return attn.out_proj(out)


def layer_forward(layer, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """fairseq TransformerEncoderLayer.forward: x (T, B, C), keep (B, 1, 1, T) -> (T, B, C).

    In training (autograd recording) the layer computes what fairseq computes to the bit, gradients
    included: the query-key-value layout of :func:`self_attention` and the layer's own activation function
    (fairseq's ``gelu_accurate`` differs from torch's tanh GELU in the last bits). A last-bit difference per
    step grows over hundreds of updates into a different model (tests/test_realm_learns.py went from
    0.960 to 0.869 that way), so training on this path follows fairseq's trajectory for a seed."""
    exact = _differentiable(layer, x)
    activation = layer.activation_fn if exact else ACTIVATIONS[layer.activation_fn]
    residual = x
    if layer.normalize_before:
        x = layer.self_attn_layer_norm(x)
    x = layer.dropout_module(self_attention(layer.self_attn, x, keep, exact))
    x = residual + x
    if not layer.normalize_before:
        x = layer.self_attn_layer_norm(x)
    residual = x
    if layer.normalize_before:
        x = layer.final_layer_norm(x)
    x = layer.activation_dropout_module(activation(layer.fc1(x)))  # (T, B, F)
    x = layer.dropout_module(layer.fc2(x))
    x = residual + x
    if not layer.normalize_before:
        x = layer.final_layer_norm(x)
    return x


def encoder_forward(encoder, tokens: torch.Tensor,
                    token_embeddings: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``encoder(tokens, token_embeddings=...)["encoder_out"][0]`` transposed: tokens (B, T) -> (B, T, C).
    Only for encoders :func:`supported` accepts; compiled if :func:`compile_forward` said so."""
    return (_compiled or _encoder_forward)(encoder, tokens, token_embeddings)


_compiled = None


def compile_forward(on: bool = True, **options) -> None:
    """From now on run :func:`encoder_forward` through ``torch.compile`` (dynamic shapes; ``options`` go to
    it), or (``on=False``) eagerly again. Off by default: compiling costs a minute or more per process."""
    global _compiled
    _compiled = torch.compile(_encoder_forward, dynamic=True, **options) if on else None


def _encoder_forward(encoder, tokens: torch.Tensor, token_embeddings: Optional[torch.Tensor]) -> torch.Tensor:
    padding_mask = tokens.eq(encoder.padding_idx)  # (B, T)
    x, _ = encoder.forward_embedding(tokens, token_embeddings)  # (B, T, C)
    x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))  # zero the padding, as fairseq does
    x = x.transpose(0, 1)  # (T, B, C): fairseq's order, so dropout masks fall as in fairseq for a seed
    keep = ~padding_mask[:, None, None, :]  # (B, 1, 1, T): keys each query may attend to
    for layer in encoder.layers:  # a LayerDropModuleList drops layers in training, as in fairseq
        if _recomputes(layer) and _differentiable(layer, x):  # --checkpoint-activations
            # keeps x alone; the backward pass reruns the layer with the dropout masks of this forward
            x = torch.utils.checkpoint.checkpoint(layer_forward, layer, x, keep, use_reentrant=False)
        else:
            x = layer_forward(layer, x, keep)
    if encoder.layer_norm is not None:
        x = encoder.layer_norm(x)
    return x.transpose(0, 1)  # (B, T, C)
