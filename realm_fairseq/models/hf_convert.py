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
  ``final_layer_norm``;
- BERT's masked-LM head, when the checkpoint has one (``cls.predictions.*``: ``BertForMaskedLM``,
  ``BertForPreTraining``): transform dense -> ``dense``, its LayerNorm -> ``layer_norm``, output bias ->
  ``bias`` (rows 0-3 the specials' as for the embeddings), output weights tied to the word embeddings as
  BERT's are. ``--encoder-init`` starts the reader's head from it, so that the reader can fill in a mask
  from the first update, as REALM's reader, initialised from BERT, can (section 3.4). BERT's pooler and
  next-sentence head are not used.

The activation follows ``hidden_act``: ``gelu`` (exact) or ``gelu_new``/``gelu_pytorch_tanh`` (the tanh
approximation of Google's BERT and REALM; fairseq's ``gelu_accurate``). The vocab must be uncased, as the
tokenizer of :mod:`realm_fairseq.data.vocab` lower-cases. REALM's own checkpoints are converted by
:mod:`realm_fairseq.models.realm_hf`.
"""
import dataclasses
import json
import os
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from fairseq.data import Dictionary

from realm_fairseq.atomic_io import atomic_file
from realm_fairseq.data.vocab import FAIRSEQ_NSPECIAL, Vocab
from realm_fairseq.errors import InputError
from realm_fairseq.models.encoder import EncoderConfig, TextEncoder
from realm_fairseq.models.similarity import Similarity, similarity_of_hf_dir, transformer_dir

WEIGHTS_FORMAT = "realm-fairseq encoder weights"
#: BERT symbols whose embeddings fairseq's four special symbols take, in fairseq id order
SPECIAL_ALIASES = ("[CLS]", "[PAD]", "[SEP]", "[UNK]")

#: HF ``hidden_act`` -> fairseq activation
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_accurate", "gelu_pytorch_tanh": "gelu_accurate"}
#: BERT's masked-LM head, HF key (after ``cls.predictions.``) -> key of fairseq's ``RobertaLMHead``
LM_HEAD_MAP = {
    "transform.dense.weight": "dense.weight",
    "transform.dense.bias": "dense.bias",
    "transform.LayerNorm.weight": "layer_norm.weight",
    "transform.LayerNorm.bias": "layer_norm.bias",
}
LM_HEAD_PREFIX = "cls.predictions."

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


#: BERT's embedding LayerNorm -> ours
_EMBEDDING_NORM = {"embeddings.LayerNorm.weight": "encoder.layernorm_embedding.weight",
                   "embeddings.LayerNorm.bias": "encoder.layernorm_embedding.bias"}


def copied_keys(num_layers: int) -> Iterator[Tuple[str, str]]:
    """(BERT key, our key) of the encoder weights that convert as they are, either way: the embedding
    LayerNorm and every layer's weights (all but the word, position and segment embeddings)."""
    yield from _EMBEDDING_NORM.items()
    for i in range(num_layers):
        for hf_name, our_name in _LAYER_MAP.items():
            for param in ("weight", "bias"):
                yield f"encoder.layer.{i}.{hf_name}.{param}", f"encoder.layers.{i}.{our_name}.{param}"


def dictionary_for(vocab: Vocab) -> Dictionary:
    """The fairseq dictionary ``realm-prepare-corpus`` writes for ``vocab`` (fairseq id = vocab id + 4)."""
    d = Dictionary()
    for token in vocab.tokens:
        d.add_symbol(token, n=1, overwrite=True)
    return d


def read_hf_config(hf_dir: str, model_type: str = "bert") -> dict:
    """``HF_DIR/config.json``, checked to describe a ``model_type`` model our encoder can compute."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise InputError(f"{hf_dir}: no config.json; expected a Hugging Face {model_type.upper()} checkpoint "
                         f"directory")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}, line {e.lineno}: invalid JSON ({e.msg})") from None
    if config.get("model_type", model_type) != model_type:
        raise InputError(f"{path}: model_type is {config['model_type']!r}; expected {model_type!r}")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise InputError(f"{path}: position_embedding_type is {config['position_embedding_type']!r}; only "
                         f"'absolute' converts")
    act = config.get("hidden_act", "gelu")
    if act not in HF_ACTIVATIONS:
        raise InputError(f"{path}: hidden_act is {act!r}; expected one of {', '.join(HF_ACTIVATIONS)}")
    return config


def read_hf_state_dict(hf_dir: str) -> Dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors`` or ``pytorch_model.bin``, by their HF names, memory-mapped where
    the file allows (a large ``block_emb`` is then read only when used)."""
    safetensors_path = os.path.join(hf_dir, "model.safetensors")
    bin_path = os.path.join(hf_dir, "pytorch_model.bin")
    if os.path.isfile(safetensors_path):
        from safetensors.torch import load_file

        try:
            return load_file(safetensors_path)
        except Exception as e:  # safetensors raises its own error types for a damaged file
            raise InputError(f"{safetensors_path}: not a readable safetensors file ({e})") from None
    if os.path.isfile(bin_path):
        try:
            return torch.load(bin_path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a checkpoint in torch's legacy (non-zip) format cannot be memory-mapped
            try:
                return torch.load(bin_path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise InputError(f"{bin_path}: not a readable PyTorch state dict ({e})") from None
        except Exception as e:
            raise InputError(f"{bin_path}: not a readable PyTorch state dict ({e})") from None
    raise InputError(f"{hf_dir}: neither model.safetensors nor pytorch_model.bin found")


def rename_legacy(key: str) -> str:
    """Old TF-converted checkpoints name LayerNorm parameters gamma and beta."""
    return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def _read_hf_weights(hf_dir: str) -> Dict[str, torch.Tensor]:
    # BertForPreTraining and friends prefix the encoder with "bert."
    weights = read_hf_state_dict(hf_dir)
    return {rename_legacy(k[len("bert."):] if k.startswith("bert.") else k): v for k, v in weights.items()}


def _lower_cases(hf_dir: str) -> Optional[Tuple[str, bool]]:
    """(file, whether it lower-cases) from the tokenizer files of ``hf_dir`` that say; None if none does."""
    for name, read in (("tokenizer_config.json", lambda c: c.get("do_lower_case")),
                       ("tokenizer.json", lambda c: (c.get("normalizer") or {}).get("lowercase"))):
        path = os.path.join(hf_dir, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                lower = read(json.load(f))
            if lower is not None:
                return path, lower
    return None


def check_uncased(vocab: Vocab, hf_dir: str) -> None:
    """Refuse a cased vocab (our tokenizer lower-cases, so its upper-case pieces would never be used)."""
    cased = next((t for t in vocab.tokens if t != t.lower() and not (t[0] == "[" and t[-1] == "]")), None)
    if cased is not None:
        raise InputError(f"{vocab.path}: holds the cased wordpiece {cased!r}; expected an uncased BERT vocab "
                         f"(realm-fairseq lower-cases text as BERT uncased does)")
    said = _lower_cases(hf_dir)
    if said is not None and said[1] is False:
        raise InputError(f"{said[0]}: does not lower-case (do_lower_case or the normalizer's lowercase is "
                         f"false); expected an uncased BERT tokenizer")


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
        activation_fn=HF_ACTIVATIONS[config.get("hidden_act", "gelu")],
    )


def with_specials(rows: torch.Tensor, vocab: Vocab) -> torch.Tensor:
    """(V, ...) rows in vocab order -> (4 + V, ...) in fairseq id order, fairseq's specials taking the rows
    of the BERT symbols they alias."""
    return torch.cat([rows[[vocab.bert_id(s) for s in SPECIAL_ALIASES]], rows])


def bert_encoder_to_ours(hf: Dict[str, torch.Tensor], vocab: Vocab, num_layers: int,
                         where: str = "HF checkpoint") -> Dict[str, torch.Tensor]:
    """BERT encoder weights (HF names, without a model prefix) -> a :class:`TextEncoder` state dict."""
    def take(key: str) -> torch.Tensor:
        if key not in hf:
            raise InputError(f"{where} lacks {key!r}; expected BERT encoder weights")
        return hf[key].float()

    words = take("embeddings.word_embeddings.weight")  # (V, C)
    if words.shape[0] != len(vocab):
        raise InputError(f"{where} has {words.shape[0]} word embeddings but vocab.txt {len(vocab)} entries")
    positions = take("embeddings.position_embeddings.weight")  # (P, C)
    ours = {
        "encoder.embed_tokens.weight": with_specials(words, vocab),  # (4 + V, C)
        "encoder.embed_positions.weight": torch.cat([positions.new_zeros(2, positions.shape[1]), positions]),
        "segment_embeddings.weight": take("embeddings.token_type_embeddings.weight"),
    }
    ours.update({our_key: take(hf_key) for hf_key, our_key in copied_keys(num_layers)})
    return ours


def lm_head_to_ours(hf: Dict[str, torch.Tensor], vocab: Vocab, words: torch.Tensor, where: str
                    ) -> Optional[Dict[str, torch.Tensor]]:
    """BERT's masked-LM head (HF names after ``cls.predictions.``) -> a ``RobertaLMHead`` state dict without
    its output weights (tied to ``words``, the (V, C) word embeddings); None if ``hf`` holds no head."""
    if not any(k.startswith(LM_HEAD_PREFIX) for k in hf):
        return None
    missing = [LM_HEAD_PREFIX + k for k in [*LM_HEAD_MAP, "bias"] if LM_HEAD_PREFIX + k not in hf]
    if missing:
        raise InputError(f"{where}: its masked-LM head lacks {missing[0]!r}; expected BERT's cls.predictions.* "
                         f"({', '.join(['bias', *LM_HEAD_MAP])})")
    decoder = hf.get(LM_HEAD_PREFIX + "decoder.weight")
    if decoder is not None and not torch.equal(decoder.float(), words.float()):
        raise InputError(f"{where}: {LM_HEAD_PREFIX}decoder.weight differs from the word embeddings; only "
                         f"a masked-LM head tied to them (as BERT's) converts")
    head = {ours: hf[LM_HEAD_PREFIX + theirs].float() for theirs, ours in LM_HEAD_MAP.items()}
    bias = hf[LM_HEAD_PREFIX + "bias"].float()  # (V,)
    if bias.shape != (len(vocab),):
        raise InputError(f"{where}: {LM_HEAD_PREFIX}bias has shape {tuple(bias.shape)}, expected "
                         f"({len(vocab)},) (one per vocab.txt entry)")
    head["bias"] = with_specials(bias, vocab)  # (4 + V,)
    return head


def check_shapes(state: Dict[str, torch.Tensor], reference: Dict[str, torch.Tensor], where: str,
                 prefix: str = "") -> None:
    """Every key of ``reference`` is in ``state`` with the same shape (``.version`` buffers aside)."""
    missing = [k for k in reference if k not in state and not k.endswith(".version")]
    if missing:
        raise InputError(f"{where}: conversion left {len(missing)} weights unset, e.g. "
                         f"{[prefix + k for k in missing[:3]]}")
    for key, value in state.items():
        if key in reference and reference[key].shape != value.shape:
            raise InputError(f"{where}: {prefix}{key} has shape {tuple(value.shape)}, expected "
                             f"{tuple(reference[key].shape)}")


def lm_head_reference(cfg: EncoderConfig, vocab: Vocab) -> Dict[str, torch.Tensor]:
    """The state dict (output weights aside) of the masked-LM head our reader builds for ``cfg``."""
    from realm_fairseq.models.reader import build_lm_head

    head = build_lm_head(cfg, dictionary_for(vocab), torch.nn.Embedding(len(vocab) + FAIRSEQ_NSPECIAL, 1).weight)
    return {k: v for k, v in head.state_dict().items() if k != "weight"}


def convert_hf_bert(hf_dir: str, with_head: bool = False) -> dict:
    """The weights file contents for the HF BERT checkpoint (or sentence-transformers directory) ``hf_dir``: its
    encoder, refusing a sentence-transformers head unless ``with_head`` (its reader:
    :mod:`realm_fairseq.models.st_import`)."""
    similarity = similarity_of_hf_dir(hf_dir, with_head)
    hf_dir = transformer_dir(hf_dir)
    config = read_hf_config(hf_dir)
    vocab = Vocab.read(hf_dir)
    check_uncased(vocab, hf_dir)
    cfg = encoder_config_from_hf(config)
    hf = _read_hf_weights(hf_dir)
    state = bert_encoder_to_ours(hf, vocab, cfg.encoder_layers, hf_dir)
    check_shapes(state, TextEncoder(cfg, dictionary_for(vocab)).state_dict(), hf_dir)
    lm_head = lm_head_to_ours(hf, vocab, hf["embeddings.word_embeddings.weight"], hf_dir)
    if lm_head is not None:
        check_shapes(lm_head, lm_head_reference(cfg, vocab), hf_dir, prefix="lm_head.")
    weights = {
        "format": WEIGHTS_FORMAT,
        "source": os.path.abspath(hf_dir),
        "config": config_dict(cfg),
        "vocab": vocab.tokens,
        "vocab_md5": vocab.md5,
        "retriever": similarity.to_dict(),
        "state_dict": state,
    }
    if lm_head is not None:
        weights["lm_head"] = lm_head
    return weights


def config_dict(cfg: EncoderConfig) -> dict:
    """An encoder config as the plain dict a weights file holds."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if not f.name.startswith("_")}


def save_weights(weights: dict, path: str, force: bool = False) -> None:
    with atomic_file(path, force=force) as tmp:
        torch.save(weights, tmp)


#: the format of REALM weights files (:mod:`realm_fairseq.models.realm_hf`), named here to tell them apart
REALM_WEIGHTS_FORMAT = "realm-fairseq REALM weights"


def load_weights(path: str) -> dict:
    """Encoder weights converted from a BERT checkpoint (not REALM's: those load with ``--retriever-init`` or
    ``--realm-init``). Memory-mapped: reading the recorded config and similarity, as resolving a model's
    options does before its weights are loaded, costs no tensor reads."""
    weights = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if isinstance(weights, dict) and weights.get("format") == REALM_WEIGHTS_FORMAT:
        raise InputError(f"{path}: holds REALM weights, which start a model with --retriever-init (embedders) or "
                         f"--realm-init (every part); --encoder-init, --reader-init and --hf take weights "
                         f"converted from BERT")
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


def check_vocab(vocab: List[str], dictionary: Dictionary, where: str) -> None:
    """Raise a ValueError unless ``dictionary`` holds ``vocab`` (the converted weights' rows) in order."""
    ours = dictionary.symbols[FAIRSEQ_NSPECIAL : FAIRSEQ_NSPECIAL + len(vocab)]
    if ours != vocab:
        first = next((i for i, (a, b) in enumerate(zip(ours, vocab)) if a != b), min(len(ours), len(vocab)))
        raise ValueError(
            f"{where}: the weights were converted with another vocab than the dictionary's "
            f"(first difference at vocab id {first}); prepare the corpus with the checkpoint's vocab.txt"
        )


def fit_rows(state: Dict[str, torch.Tensor], current: Dict[str, torch.Tensor], keys) -> Dict[str, torch.Tensor]:
    """``state`` with each of ``keys`` (per-symbol rows: word embeddings, output bias) padded to the rows of
    ``current``: rows beyond the converted vocabulary (symbols a task added) keep their initialisation."""
    state = dict(state)
    for key in keys:
        if key in state and key in current and current[key].shape[0] > state[key].shape[0]:
            rows = current[key].clone()
            rows[: state[key].shape[0]] = state[key]
            state[key] = rows
    return state


def load_into_encoder(encoder: TextEncoder, weights: dict, dictionary: Dictionary, where: str) -> None:
    """Copy converted weights into ``encoder`` (built for ``dictionary``); rows of the word embedding
    beyond the converted vocabulary (symbols a task added) keep their initialisation."""
    check_vocab(weights["vocab"], dictionary, where)
    state = fit_rows(weights["state_dict"], encoder.state_dict(), ["encoder.embed_tokens.weight"])
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(".version")]
    if missing or unexpected:
        raise ValueError(
            f"{where}: weights do not fit the encoder (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            f"were they converted for another architecture?"
        )


def load_lm_head(lm_head: torch.nn.Module, head: Dict[str, torch.Tensor], where: str) -> None:
    """Copy a converted masked-LM head (no output weights: they are the encoder's word embeddings, loaded
    with it) into the reader's ``lm_head``; output bias rows of symbols a task added keep their start."""
    state = fit_rows(head, lm_head.state_dict(), ["bias"])
    missing, unexpected = lm_head.load_state_dict(state, strict=False)
    if [k for k in missing if k != "weight"] or unexpected:
        raise ValueError(f"{where}: the masked-LM head does not fit the reader's (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
