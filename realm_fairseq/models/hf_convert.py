"""Convert a Hugging Face BERT checkpoint into weights for our text encoder.

REALM warm-starts its towers from BERT (paper, section 3.4, "Initialization"). A HF BERT directory
(``config.json``, ``model.safetensors`` or ``pytorch_model.bin``, ``vocab.txt``) becomes a weights file
holding an :class:`~realm_fairseq.models.encoder.EncoderConfig`, a state dict for
:class:`~realm_fairseq.models.encoder.TextEncoder` and the retrieval similarity the weights were trained
for (:mod:`realm_fairseq.models.similarity`): a sentence-transformers directory (``modules.json``) gives
its pooling and, with a Normalize module or a cosine ``similarity_fn_name``, the cosine score; plain BERT
keeps REALM's ``[CLS]`` pooling and inner product. The state dict is mapped as follows:

- word embeddings: row ``i`` of BERT -> row ``i + 4`` (our dictionary, see
  :mod:`realm_fairseq.data.vocab`); rows 0-3 (``<s> <pad> </s> <unk>``) take BERT's
  ``[CLS] [PAD] [SEP] [UNK]`` rows;
- position ``i`` -> row ``i + 2`` of fairseq's learned positions (they start after the padding index);
- token type embeddings -> segment embeddings; embedding LayerNorm -> ``layernorm_embedding``;
- per layer: query/key/value/output -> ``self_attn.{q,k,v,out}_proj``, attention LayerNorm ->
  ``self_attn_layer_norm``, intermediate/output -> ``fc1``/``fc2``, output LayerNorm ->
  ``final_layer_norm``. BERT's pooler and any pre-training heads are not used.
"""
import dataclasses
import json
import os
from typing import Dict, List

import torch
from fairseq.data import Dictionary

from realm_fairseq.atomic_io import atomic_file
from realm_fairseq.data.documents import InputError
from realm_fairseq.data.vocab import FAIRSEQ_NSPECIAL, Vocab
from realm_fairseq.models.encoder import EncoderConfig, TextEncoder
from realm_fairseq.models.similarity import Similarity, similarity_of_hf_dir, transformer_dir

WEIGHTS_FORMAT = "realm-fairseq encoder weights"
#: BERT symbols whose embeddings fairseq's four special symbols take, in fairseq id order
SPECIAL_ALIASES = ("[CLS]", "[PAD]", "[SEP]", "[UNK]")

_LAYER_MAP = {
    "attention.self.query": "self_attn.q_proj",
    "attention.self.key": "self_attn.k_proj",
    "attention.self.value": "self_attn.v_proj",
    "attention.output.dense": "self_attn.out_proj",
    "attention.output.LayerNorm": "self_attn_layer_norm",
    "intermediate.dense": "fc1",
    "output.dense": "fc2",
    "output.LayerNorm": "final_layer_norm",
}


def dictionary_for(vocab: Vocab) -> Dictionary:
    """The fairseq dictionary ``realm-prepare-corpus`` writes for ``vocab`` (fairseq id = vocab id + 4)."""
    d = Dictionary()
    for token in vocab.tokens:
        d.add_symbol(token, n=1, overwrite=True)
    return d


def _read_hf_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise InputError(f"{hf_dir}: no config.json; expected a Hugging Face BERT checkpoint directory")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    expected = {"hidden_act": "gelu", "position_embedding_type": "absolute"}
    for key, value in expected.items():
        if config.get(key, value) != value:
            raise InputError(f"{path}: {key} is {config[key]!r}; only {value!r} BERT models convert")
    if config.get("model_type", "bert") != "bert":
        raise InputError(f"{path}: model_type is {config['model_type']!r}; expected 'bert'")
    return config


def _read_hf_weights(hf_dir: str) -> Dict[str, torch.Tensor]:
    safetensors_path = os.path.join(hf_dir, "model.safetensors")
    bin_path = os.path.join(hf_dir, "pytorch_model.bin")
    if os.path.isfile(safetensors_path):
        from safetensors.torch import load_file

        weights = load_file(safetensors_path)
    elif os.path.isfile(bin_path):
        weights = torch.load(bin_path, map_location="cpu", weights_only=True)
    else:
        raise InputError(f"{hf_dir}: neither model.safetensors nor pytorch_model.bin found")
    # BertForPreTraining and friends prefix the encoder with "bert."; old checkpoints say gamma/beta
    renamed = {}
    for key, value in weights.items():
        key = key[len("bert."):] if key.startswith("bert.") else key
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        renamed[key] = value
    return renamed


def encoder_config_from_hf(config: dict) -> EncoderConfig:
    return EncoderConfig(
        encoder_layers=config["num_hidden_layers"],
        encoder_embed_dim=config["hidden_size"],
        encoder_ffn_embed_dim=config["intermediate_size"],
        encoder_attention_heads=config["num_attention_heads"],
        dropout=config.get("hidden_dropout_prob", 0.1),
        attention_dropout=config.get("attention_probs_dropout_prob", 0.1),
        max_positions=config.get("max_position_embeddings", 512),
        num_segments=config.get("type_vocab_size", 2),
        layernorm_eps=config.get("layer_norm_eps", 1e-12),
    )


def _hf_to_ours(hf: Dict[str, torch.Tensor], vocab: Vocab, num_layers: int) -> Dict[str, torch.Tensor]:
    def take(key: str) -> torch.Tensor:
        if key not in hf:
            raise InputError(f"HF checkpoint lacks {key!r}; expected BERT encoder weights")
        return hf[key].float()

    words = take("embeddings.word_embeddings.weight")  # (V, C)
    if words.shape[0] != len(vocab):
        raise InputError(f"HF checkpoint has {words.shape[0]} word embeddings but vocab.txt {len(vocab)} entries")
    specials = words[[vocab.bert_id(s) for s in SPECIAL_ALIASES]]  # (4, C)
    positions = take("embeddings.position_embeddings.weight")  # (P, C)
    ours = {
        "encoder.embed_tokens.weight": torch.cat([specials, words]),  # (4 + V, C)
        "encoder.embed_positions.weight": torch.cat([positions.new_zeros(2, positions.shape[1]), positions]),
        "encoder.layernorm_embedding.weight": take("embeddings.LayerNorm.weight"),
        "encoder.layernorm_embedding.bias": take("embeddings.LayerNorm.bias"),
        "segment_embeddings.weight": take("embeddings.token_type_embeddings.weight"),
    }
    for i in range(num_layers):
        for hf_name, our_name in _LAYER_MAP.items():
            for param in ("weight", "bias"):
                ours[f"encoder.layers.{i}.{our_name}.{param}"] = take(f"encoder.layer.{i}.{hf_name}.{param}")
    return ours


def convert_hf_bert(hf_dir: str) -> dict:
    """The weights file contents for the HF BERT checkpoint (or sentence-transformers directory) ``hf_dir``."""
    similarity = similarity_of_hf_dir(hf_dir)
    hf_dir = transformer_dir(hf_dir)
    config = _read_hf_config(hf_dir)
    vocab = Vocab.load(os.path.join(hf_dir, "vocab.txt"))
    cfg = encoder_config_from_hf(config)
    state = _hf_to_ours(_read_hf_weights(hf_dir), vocab, cfg.encoder_layers)
    reference = TextEncoder(cfg, dictionary_for(vocab)).state_dict()
    missing = [k for k in reference if k not in state and not k.endswith(".version")]
    if missing:
        raise InputError(f"{hf_dir}: conversion left {len(missing)} weights unset, e.g. {missing[:3]}")
    for key, value in state.items():
        if reference[key].shape != value.shape:
            raise InputError(
                f"{hf_dir}: {key} has shape {tuple(value.shape)}, expected {tuple(reference[key].shape)}"
            )
    return {
        "format": WEIGHTS_FORMAT,
        "source": os.path.abspath(hf_dir),
        "config": {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if not f.name.startswith("_")},
        "vocab": vocab.tokens,
        "vocab_md5": vocab.md5,
        "retriever": similarity.to_dict(),
        "state_dict": state,
    }


def save_weights(weights: dict, path: str, force: bool = False) -> None:
    with atomic_file(path, force=force) as tmp:
        torch.save(weights, tmp)


def load_weights(path: str) -> dict:
    weights = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(weights, dict) or weights.get("format") != WEIGHTS_FORMAT:
        raise InputError(f"{path}: not a weights file from realm-convert-hf")
    if "retriever" not in weights:
        raise InputError(f"{path}: converted by an older realm-convert-hf that did not record the similarity "
                         f"the weights were trained for; convert them again: realm-convert-hf "
                         f"{weights.get('source', 'HF_DIR')} --out {path} --force")
    return weights


def weights_similarity(weights: dict) -> Similarity:
    """The pooling and score recorded with converted weights."""
    return Similarity(**weights["retriever"])


def load_into_encoder(encoder: TextEncoder, weights: dict, dictionary: Dictionary, where: str) -> None:
    """Copy converted weights into ``encoder`` (built for ``dictionary``); rows of the word embedding
    beyond the converted vocabulary (symbols a task added) keep their initialisation."""
    vocab: List[str] = weights["vocab"]
    ours = dictionary.symbols[FAIRSEQ_NSPECIAL : FAIRSEQ_NSPECIAL + len(vocab)]
    if ours != vocab:
        first = next((i for i, (a, b) in enumerate(zip(ours, vocab)) if a != b), min(len(ours), len(vocab)))
        raise ValueError(
            f"{where}: the weights were converted with another vocab than the dictionary's "
            f"(first difference at vocab id {first}); prepare the corpus with the checkpoint's vocab.txt"
        )
    state = dict(weights["state_dict"])
    embed = encoder.state_dict()["encoder.embed_tokens.weight"].clone()
    converted = state["encoder.embed_tokens.weight"]
    embed[: converted.shape[0]] = converted
    state["encoder.embed_tokens.weight"] = embed
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(".version")]
    if missing or unexpected:
        raise ValueError(
            f"{where}: weights do not fit the encoder (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            f"were they converted for another architecture?"
        )
