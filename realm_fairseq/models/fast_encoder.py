"""A fused forward pass for fairseq's TransformerEncoder as REALM's towers use it.

REALM's embedders and knowledge-augmented encoder are BERT Transformers (paper, section 3.2), built in
:mod:`realm_fairseq.models.encoder` on fairseq's ``TransformerEncoder``. Embedding the corpus for the MIPS
index runs the document embedder over every block, so its speed is the index refresh's cost. fairseq's
path spends much of that time outside the matrix products: it waits for the device on
``padding_mask.any()`` in every call, works in (T, B, C) order, projects queries, keys and values with three
products, converts the padding mask to a float mask of (B * H, 1, T) in every layer, and computes GELU by
way of a float32 copy.

:func:`encoder_forward` computes the same function with the same parameters (no new state-dict keys): one
product for the packed query-key-value projection, ``torch.nn.functional.scaled_dot_product_attention``
(flash or memory-efficient kernels on a GPU) with a boolean key mask of (B, 1, 1, T), and no host
synchronisation. Dropout is the encoder's own: the same ``FairseqDropout`` modules on hidden states and
activations in fairseq's (T, B, C) order, and the attention dropout handed to scaled_dot_product_attention
with the probability and training rule fairseq gives ``F.multi_head_attention_forward`` (which itself
calls scaled_dot_product_attention). So training keeps its semantics, and on the CPU a seed draws the same
dropout masks on both paths. Exact GELU is computed on the
input's dtype (the kernels compute it in float32 internally, as fairseq's float32 copy does);
``gelu_accurate`` uses torch's tanh GELU, the same formula computed in one kernel, equal within float32
rounding.

:func:`supported` says whether an encoder is one this path reproduces: exactly fairseq's
``TransformerEncoder`` with fairseq's own layers, no quantisation noise, xformers, key/value biases,
pruned heads or fc-result returns. Any other encoder class runs its own forward.
"""
from typing import Optional

import torch
import torch.nn.functional as F
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


def _attention_dropout(attn) -> float:
    """The attention-weight dropout fairseq's MultiheadAttention applies now (0 in eval unless retained)."""
    module = attn.dropout_module
    return module.p if attn.training or module.apply_during_inference else 0.0


def self_attention(attn, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """fairseq MultiheadAttention's self-attention: x (T, B, C), keep (B, 1, 1, T) bool -> (T, B, C)."""
    length, bsz, width = x.shape
    heads = attn.num_heads
    weight = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])  # (3C, C)
    bias = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])  # (3C,)
    qkv = F.linear(x, weight, bias).view(length, bsz, 3, heads, width // heads)  # (T, B, 3, H, D)
    q, k, v = qkv.permute(2, 1, 3, 0, 4).unbind(0)  # 3 x (B, H, T, D)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=_attention_dropout(attn))
    out = out.permute(2, 0, 1, 3).reshape(length, bsz, width)  # (T, B, C)
    return attn.out_proj(out)


def layer_forward(layer, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """fairseq TransformerEncoderLayer.forward: x (T, B, C), keep (B, 1, 1, T) -> (T, B, C)."""
    residual = x
    if layer.normalize_before:
        x = layer.self_attn_layer_norm(x)
    x = layer.dropout_module(self_attention(layer.self_attn, x, keep))
    x = residual + x
    if not layer.normalize_before:
        x = layer.self_attn_layer_norm(x)
    residual = x
    if layer.normalize_before:
        x = layer.final_layer_norm(x)
    x = layer.activation_dropout_module(ACTIVATIONS[layer.activation_fn](layer.fc1(x)))  # (T, B, F)
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
        x = layer_forward(layer, x, keep)
    if encoder.layer_norm is not None:
        x = encoder.layer_norm(x)
    return x.transpose(0, 1)  # (B, T, C)
