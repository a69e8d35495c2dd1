"""Export the towers of a ``realm`` checkpoint as Hugging Face BERT and sentence-transformers directories.

The inverse of :mod:`realm_fairseq.models.hf_convert`, so that a retriever and a reader trained here
(ICT, section 3.4; REALM pre-training, sections 2-3; open-QA fine-tuning, section 3.3) can be used where
fairseq is not. Each tower the checkpoint holds becomes a directory:

- ``query_embedder/``, ``doc_embedder/`` (Embed_input, Embed_doc, section 3.2): a sentence-transformers
  model, the BERT at its top (``Transformer``), then ``Pooling`` (``cls`` or ``mean``) and the head:
  for ``retriever_head=realm`` a ``Dense`` with tanh (BERT's pooler), a ``Dense`` to the projection and a
  ``LayerNorm``; for ``linear`` a ``Dense`` without activation when the tower projects, for ``tanh`` one with
  tanh; ``Normalize`` for the cosine score. ``SentenceTransformer(dir).encode`` gives the tower's embeddings,
  which rank blocks as ours do (the cosine tower's ``retriever_scale``, a temperature of p(z|x), is not
  exported). ``realm_tower.json`` records how the tower reads a block, for ``realm-convert-hf`` to read the
  directory back (:mod:`realm_fairseq.models.st_import`).
- ``reader/`` (realm_pretrain's knowledge-augmented encoder): ``BertForMaskedLM``, masked-LM head included.
- ``span_reader/`` (realm_open_qa's reader): the encoder as a ``BertModel``; the span head, which has no
  counterpart in transformers, beside it in our names (``span_head.safetensors``, ``span_head.json``), for
  ``realm-convert-hf`` to read back.

The rows of our word embeddings are fairseq's four specials ``<s> <pad> </s> <unk>`` and then the vocab
(:mod:`realm_fairseq.data.vocab`); BERT has one row a vocab entry. ``[CLS]``, ``[PAD]`` and ``[SEP]`` take
the rows our sequences use for them (``<s>``, ``<pad>``, ``</s>``); ``[UNK]`` keeps the vocab's row, which
our tokenizer emits. A block's title separator is the vocab's ``[SEP]`` row here and ``</s>``'s row in the
export; the two start equal and training may move them apart, so the export reports how far
(:attr:`Exported.sep_row_difference`). Positions: our row ``i + 2`` is BERT's ``i``. A tower without
segment embeddings exports two token types of zeros. Only fairseq's Transformer as we set it up (BERT's
layout) exports, in the readers' own sizes where ``reader_encoder`` gives them some; a swapped-in encoder
class or ``encoder_options`` is refused.
"""
import os
from types import SimpleNamespace
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from fairseq.data import Dictionary
from omegaconf import OmegaConf

from realm_fairseq.atomic_io import atomic_directory, write_json
from realm_fairseq.data.vocab import FAIRSEQ_NSPECIAL
from realm_fairseq.errors import InputError
from realm_fairseq.models.config import FORM_DEFAULTS, reader_config
from realm_fairseq.models.embedder import TOWERS, tower_norm
from realm_fairseq.models.encoder import EncoderConfig, json_options
from realm_fairseq.models.hf_convert import LM_HEAD_MAP, LM_HEAD_PREFIX, SPECIAL_ALIASES, config_dict, copied_keys
from realm_fairseq.models.loading import checkpoint_state, state_part
from realm_fairseq.models.st_import import IDENTITY, SPAN_HEAD_FILE, TANH, TOWER_FILE, tower_file

#: fairseq activation -> HF ``hidden_act`` (both of ours compute as these do)
FAIRSEQ_ACTIVATIONS = {"gelu": "gelu", "gelu_accurate": "gelu_new"}
#: fairseq special row -> the BERT symbol whose row it becomes (``<unk>`` aside: our tokenizer emits the vocab's)
SPECIAL_ROWS = {row: symbol for row, symbol in enumerate(SPECIAL_ALIASES) if symbol != "[UNK]"}
EOS_ROW = SPECIAL_ALIASES.index("[SEP]")
#: where each tower's weights are in a checkpoint, and what it becomes
READERS = {"reader": ("reader.", "BertForMaskedLM"), "span_reader": ("span_reader.", "BertModel")}
ST_MODULE = "sentence_transformers.models."


@dataclass
class Exported:
    """What :func:`export_checkpoint` wrote."""

    out: str
    towers: Dict[str, str] = field(default_factory=dict)  # tower -> what it became
    #: per tower, max |row difference| between the vocab's [SEP] (a block's title separator) and </s>
    sep_row_difference: Dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- reading a checkpoint


def checkpoint_parts(path: str) -> Tuple[dict, dict, dict]:
    """The model config, task config and model state of a ``realm`` checkpoint."""
    state = checkpoint_state(path)
    cfg = state.get("cfg") or {}
    if "model" not in state or not cfg.get("model"):
        raise InputError(f"{path}: not a fairseq checkpoint of the realm model (no cfg.model or model weights)")
    model_cfg, task_cfg = (OmegaConf.to_container(c) if OmegaConf.is_config(c) else dict(c or {})
                           for c in (cfg["model"], cfg.get("task")))
    return model_cfg, task_cfg, state["model"]


def check_exportable(model_cfg: dict, path: str) -> None:
    """Only fairseq's Transformer, set up as BERT by :func:`~realm_fairseq.models.encoder.encoder_args`, has a
    BERT to export to."""
    if model_cfg.get("encoder_class", "transformer") != "transformer":
        raise InputError(f"{path}: its towers are {model_cfg['encoder_class']}; only fairseq's transformer "
                         f"(encoder_class transformer, BERT's layout) exports to BERT")
    if json_options(model_cfg.get("encoder_options") or "{}", f"{path}: encoder_options"):
        raise InputError(f"{path}: encoder_options {model_cfg['encoder_options']} change the transformer's "
                         f"layout; only BERT's (no encoder_options) exports")


def readers_config(model_cfg: dict, path: str) -> dict:
    """A saved model config with the readers' own encoder options (``reader_encoder``) in place."""
    try:
        readers = reader_config(SimpleNamespace(**{**config_dict(EncoderConfig()), **model_cfg}))
    except ValueError as e:
        raise InputError(f"{path}: {e}") from None
    return {**model_cfg, **config_dict(readers)}


def read_vocab(corpus: str) -> List[str]:
    """The vocab a CORPUS was tokenised with: its fairseq dictionary (``dict.txt``) after fairseq's specials."""
    path = os.path.join(corpus, "dict.txt")
    if not os.path.isfile(path):
        raise InputError(f"{corpus}: no dict.txt; expected the CORPUS directory the checkpoint was trained on "
                         f"(--corpus)")
    return Dictionary.load(path).symbols[FAIRSEQ_NSPECIAL:]


def checkpoint_corpus(task_cfg: dict, path: str) -> str:
    """The CORPUS a checkpoint's task read: ``corpus`` (realm_open_qa) or ``data`` (realm_ict, realm_pretrain)."""
    corpus = task_cfg.get("corpus") or (task_cfg.get("data") if task_cfg.get("_name") != "realm_open_qa" else None)
    if not corpus:
        raise InputError(f"{path}: its task names no CORPUS; give --corpus")
    return corpus


# ---------------------------------------------------------------- our weights -> BERT's


def word_rows(ours: torch.Tensor, vocab: List[str]) -> Tuple[torch.Tensor, float]:
    """Our (4 + V', C) word embeddings (or output bias, (4 + V',)) -> BERT's (V, ...) rows, and the largest
    difference between the vocab's [SEP] row and ``</s>``'s (see the module docstring)."""
    if len(ours) < FAIRSEQ_NSPECIAL + len(vocab):
        raise InputError(f"the checkpoint has {len(ours)} rows of word embeddings, fewer than the {len(vocab)} of "
                         f"the vocab plus fairseq's {FAIRSEQ_NSPECIAL} specials: give the CORPUS it was trained on "
                         f"(--corpus)")
    rows = ours[FAIRSEQ_NSPECIAL : FAIRSEQ_NSPECIAL + len(vocab)].clone()  # symbols a task added are dropped
    for special, symbol in SPECIAL_ROWS.items():
        rows[vocab.index(symbol)] = ours[special]
    sep = FAIRSEQ_NSPECIAL + vocab.index("[SEP]")
    return rows, float((ours[sep].float() - ours[EOS_ROW].float()).abs().max())


def bert_encoder(state: Dict[str, torch.Tensor], num_layers: int, vocab: List[str]) -> Tuple[dict, float]:
    """A :class:`~realm_fairseq.models.encoder.TextEncoder` state dict -> BERT's (HF names, no model prefix),
    and the [SEP] row difference of :func:`word_rows`."""
    words, sep_difference = word_rows(state["encoder.embed_tokens.weight"], vocab)  # (V, C)
    width = words.shape[1]
    segments = state.get("segment_embeddings.weight", torch.zeros(2, width))  # (S, C); none: both types add 0
    hf = {
        "embeddings.word_embeddings.weight": words,
        "embeddings.position_embeddings.weight": state["encoder.embed_positions.weight"][2:],  # (P, C)
        "embeddings.token_type_embeddings.weight": segments,
    }
    hf.update({hf_key: state[our_key] for hf_key, our_key in copied_keys(num_layers)})
    return hf, sep_difference


def bert_lm_head(head: Dict[str, torch.Tensor], vocab: List[str]) -> Dict[str, torch.Tensor]:
    """Our masked-LM head (fairseq's ``RobertaLMHead``) -> BERT's ``cls.predictions.*``, its output weights
    tied to the word embeddings (transformers ties them on loading)."""
    hf = {LM_HEAD_PREFIX + theirs: head[ours] for theirs, ours in LM_HEAD_MAP.items()}
    hf[LM_HEAD_PREFIX + "bias"], _ = word_rows(head["bias"], vocab)  # (V,)
    return hf


def max_positions(state: Dict[str, torch.Tensor]) -> int:
    """The positions an encoder state dict (our names) has: fairseq's learned positions start at row 2."""
    return state["encoder.embed_positions.weight"].shape[0] - 2


def doc_segments(model_cfg: dict) -> str:
    """How a saved model config's document embedder reads a block (as one text when unrecorded)."""
    return model_cfg.get("doc_segments") or FORM_DEFAULTS["doc_segments"]


def retriever_score(model_cfg: dict) -> str:
    """The score a saved model config's retriever was trained with (REALM's inner product when unrecorded)."""
    return model_cfg.get("retriever_score") or "dot"


def bert_config(model_cfg: dict, state: Dict[str, torch.Tensor], vocab: List[str], architecture: str) -> dict:
    """``config.json`` of the BERT an encoder state dict (our names) is."""
    activation = model_cfg.get("activation_fn") or FORM_DEFAULTS["activation_fn"]
    return {
        "architectures": [architecture],
        "model_type": "bert",
        "vocab_size": len(vocab),
        "hidden_size": model_cfg["encoder_embed_dim"],
        "num_hidden_layers": model_cfg["encoder_layers"],
        "num_attention_heads": model_cfg["encoder_attention_heads"],
        "intermediate_size": model_cfg["encoder_ffn_embed_dim"],
        "hidden_act": FAIRSEQ_ACTIVATIONS[activation],
        "hidden_dropout_prob": model_cfg.get("dropout", 0.1),
        "attention_probs_dropout_prob": model_cfg.get("attention_dropout", 0.1),
        "max_position_embeddings": max_positions(state),
        "type_vocab_size": state["segment_embeddings.weight"].shape[0] if "segment_embeddings.weight" in state
        else 2,
        "layer_norm_eps": model_cfg.get("layernorm_eps", 1e-12),
        "initializer_range": 0.02,
        "pad_token_id": vocab.index("[PAD]"),
        "position_embedding_type": "absolute",
    }


# ---------------------------------------------------------------- writing directories


def save_tensors(tensors: Dict[str, torch.Tensor], path: str) -> None:
    """``tensors`` as a safetensors file, float32 (each its own contiguous copy: safetensors stores no views)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().float().contiguous().clone() for k, v in tensors.items()}, path)


def write_bert(out: str, model_cfg: dict, encoder_state: dict, vocab: List[str], architecture: str,
               head: Optional[dict] = None) -> float:
    """A HF BERT directory (config, weights, vocab, tokenizer config) at ``out`` from our encoder state (and
    masked-LM head); returns the [SEP] row difference."""
    hf, sep_difference = bert_encoder(encoder_state, model_cfg["encoder_layers"], vocab)
    if head is not None:
        hf = {**{"bert." + k: v for k, v in hf.items()}, **bert_lm_head(head, vocab)}
    config = bert_config(model_cfg, encoder_state, vocab, architecture)
    os.makedirs(out, exist_ok=True)
    save_tensors(hf, os.path.join(out, "model.safetensors"))
    write_json(os.path.join(out, "config.json"), config)
    with open(os.path.join(out, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("".join(token + "\n" for token in vocab))
    write_json(os.path.join(out, "tokenizer_config.json"), {
        "tokenizer_class": "BertTokenizer", "do_lower_case": True, "strip_accents": None,
        "tokenize_chinese_chars": True, "model_max_length": config["max_position_embeddings"],
        "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
        "mask_token": "[MASK]"})
    return sep_difference


def embedder_head(model_cfg: dict, tower_state: dict, tower: str) -> List[tuple]:
    """The sentence-transformers modules after Pooling, as (type, config, weights) for a tower's head."""
    width = model_cfg["encoder_embed_dim"]
    modules = []
    if "pooler.weight" in tower_state:  # retriever_head=realm: BERT's pooler, tanh
        modules.append(("Dense", dense_config(width, width, TANH),
                        {"linear.weight": tower_state["pooler.weight"], "linear.bias": tower_state["pooler.bias"]}))
    if "projection.weight" in tower_state:
        dim = tower_state["projection.weight"].shape[0]
        activation = TANH if model_cfg.get("retriever_head") == "tanh" else IDENTITY
        modules.append(("Dense", dense_config(width, dim, activation),
                        {"linear.weight": tower_state["projection.weight"],
                         "linear.bias": tower_state["projection.bias"]}))
        width = dim
    if "projection_norm.weight" in tower_state:
        modules.append(("LayerNorm", {"dimension": width}, {"norm.weight": tower_state["projection_norm.weight"],
                                                           "norm.bias": tower_state["projection_norm.bias"]}))
    if tower_norm(retriever_score(model_cfg), 1.0, tower) > 0:
        modules.append(("Normalize", {}, None))
    return modules


def dense_config(in_features: int, out_features: int, activation: str) -> dict:
    return {"in_features": in_features, "out_features": out_features, "bias": True,
            "activation_function": activation}


def write_sentence_transformer(out: str, model_cfg: dict, tower_state: dict, tower: str, vocab: List[str]) -> float:
    """A sentence-transformers directory at ``out`` for the embedder ``tower``; returns the [SEP] row
    difference."""
    encoder_state = {k[len("encoder."):]: v for k, v in tower_state.items() if k.startswith("encoder.")}
    sep_difference = write_bert(out, model_cfg, encoder_state, vocab, "BertModel")
    write_json(os.path.join(out, "sentence_bert_config.json"),
               {"max_seq_length": max_positions(encoder_state), "do_lower_case": False})
    pooling = model_cfg.get("retriever_pooling") or "cls"
    modules = [{"idx": 0, "name": "0", "path": "", "type": ST_MODULE + "Transformer"}]
    heads = [("Pooling", pooling_config(pooling, model_cfg["encoder_embed_dim"]), None)]
    for i, (kind, config, weights) in enumerate(heads + embedder_head(model_cfg, tower_state, tower), start=1):
        path = f"{i}_{kind}"
        modules.append({"idx": i, "name": str(i), "path": path, "type": ST_MODULE + kind})
        os.makedirs(os.path.join(out, path))
        write_json(os.path.join(out, path, "config.json"), config)
        if weights is not None:
            save_tensors(weights, os.path.join(out, path, "model.safetensors"))
    write_json(os.path.join(out, "modules.json"), modules)
    write_json(os.path.join(out, "config_sentence_transformers.json"),
               {"similarity_fn_name": retriever_score(model_cfg)})
    write_json(os.path.join(out, TOWER_FILE), tower_file(tower, doc_segments(model_cfg)))
    return sep_difference


def write_span_head(out: str, model_cfg: dict, span_reader_state: dict) -> None:
    """The open-QA span head, which transformers has no class for, beside the span reader's BERT in ``out``:
    its weights in our names (``span_head.safetensors``) and its form (:data:`SPAN_HEAD_FILE`)."""
    head = {k: v for k, v in span_reader_state.items() if not k.startswith("encoder.")}
    save_tensors(head, os.path.join(out, "span_head.safetensors"))
    write_json(os.path.join(out, SPAN_HEAD_FILE), {
        "span_head": model_cfg.get("span_head") or FORM_DEFAULTS["span_head"],
        "span_hidden_dim": head["start_proj.weight"].shape[0]})


def pooling_config(pooling: str, width: int) -> dict:
    return {"word_embedding_dimension": width, "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False}


def export_checkpoint(path: str, out: str, corpus: Optional[str] = None, force: bool = False) -> Exported:
    """Every tower of the ``realm`` checkpoint ``path`` as a directory under ``out`` (see the module
    docstring), written to a temporary directory and renamed: ``out`` is complete or absent."""
    model_cfg, task_cfg, state = checkpoint_parts(path)
    reader_cfg = readers_config(model_cfg, path)
    check_exportable(model_cfg, path)
    check_exportable(reader_cfg, path)
    vocab = read_vocab(corpus or checkpoint_corpus(task_cfg, path))
    exported = Exported(os.path.abspath(out))
    with atomic_directory(out, force=force) as tmp:
        for tower in TOWERS:
            weights = state_part(state, tower + ".")
            if weights:
                exported.sep_row_difference[tower] = write_sentence_transformer(
                    os.path.join(tmp, tower), model_cfg, weights, tower, vocab)
                exported.towers[tower] = "sentence-transformers"
        for reader, (prefix, architecture) in READERS.items():
            weights = state_part(state, prefix)
            if weights:
                head = state_part(weights, "lm_head.") or None
                exported.sep_row_difference[reader] = write_bert(
                    os.path.join(tmp, reader), reader_cfg, state_part(weights, "encoder."), vocab, architecture, head)
                exported.towers[reader] = architecture
                if reader == "span_reader":
                    write_span_head(os.path.join(tmp, reader), model_cfg, weights)
        if not exported.towers:
            raise InputError(f"{path}: holds no tower of the realm model (query_embedder, doc_embedder, reader, "
                             f"span_reader)")
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(usage(path, task_cfg.get("_name"), model_cfg, exported))
    return exported


def usage(path: str, task: Optional[str], model_cfg: dict, exported: Exported) -> str:
    """The README of an export: what each directory is and how to feed it text as our towers read it."""
    pair = doc_segments(model_cfg) == "title_body"
    score = "the cosine" if retriever_score(model_cfg) == "cosine" else "the inner product"
    lines = [f"# Exported by realm-export-hf from {os.path.abspath(path)} ({task or 'realm'})", ""]
    described = {
        "query_embedder": "sentence-transformers, Embed_input: `SentenceTransformer(DIR).encode(questions)`",
        "doc_embedder": "sentence-transformers, Embed_doc: `encode(" + (
            "[(title, body), ...])`: title and body as a pair (REALM's segments)" if pair else
            "[\"title [SEP] body\", ...])`: the block as one text, its title first"),
        "reader": "transformers `BertForMaskedLM`, the knowledge-augmented encoder: `tokenizer(x, block)` with the "
                  "block as `title [SEP] body`",
        "span_reader": "transformers `BertModel`, the open-QA reader's encoder; its span head, which transformers "
                       "has no class for, is `span_head.safetensors` in realm-fairseq's names",
    }
    lines += [f"- `{tower}/`: {described[tower]}" for tower in exported.towers]
    lines += ["", f"A block's score is {score} of the two embeddings. BertModel's pooler is not exported "
              f"(sentence-transformers does not use it; transformers starts it anew and says so)."]
    if any(tower in exported.towers for tower in TOWERS):
        lines += ["", "Back to realm-fairseq: `realm-convert-hf DIR --out realm.pt` converts the embedders with "
                      "their heads, and the readers of their size, for `--realm-init` and `--retriever-init` "
                      "(`--hf DIR` reads the embedders as they are); a reader of another size converts apart for "
                      "`--reader-init` (`realm-convert-hf DIR/reader --out reader.pt`)."]
    return "\n".join(lines) + "\n"
