"""REALM's released checkpoints, in their Hugging Face form, as weights for the ``realm`` model.

Google released the result of REALM pre-training on CC-News and the open-QA models fine-tuned from it
(paper, sections 4.2-4.4); their Hugging Face copies are what most users start from. Each is a directory
(``config.json`` with ``model_type: realm``, ``pytorch_model.bin`` or ``model.safetensors``, ``vocab.txt``)
holding one of transformers' REALM classes, recognised by its weight names:

====================  ==============================================  ===========================================
checkpoint            transformers class, weights                     parts of our ``realm`` model
====================  ==============================================  ===========================================
``*-embedder``        ``RealmEmbedder``: ``realm.*``, ``cls.dense``,  ``query_embedder`` and ``doc_embedder``
                      ``cls.LayerNorm``                               (REALM shares one embedder for both)
``*-scorer``          ``RealmScorer``: ``embedder.*`` (and            ``doc_embedder`` (and ``query_embedder``)
                      ``query_embedder.*``)
``*-encoder``         ``RealmKnowledgeAugEncoder``: ``realm.*``,      ``reader`` (encoder and masked-LM head)
                      ``cls.predictions.*``
``*-reader``          ``RealmReader``: ``realm.*``, ``qa_outputs.*``  ``span_reader`` (encoder and span head)
``*-openqa``          ``RealmForOpenQA``: ``embedder.*``,             ``query_embedder``, ``span_reader``; its
                      ``reader.*``, ``block_emb``                     ``block_emb`` becomes an index version
====================  ==============================================  ===========================================

Several directories convert into one weights file (e.g. CC-News' embedder and encoder, the start of
fine-tuning). Where REALM computes differently from our defaults, the weights record it and a model that
starts from them is built REALM's way (``form``): the embedder head ``realm`` (BERT's pooler, tanh, dense
to 128, LayerNorm; :mod:`realm_fairseq.models.embedder`), block segments ``title_body`` (segment 1 for the
body), the span head ``orqa`` (a LayerNorm after the ReLU; :mod:`realm_fairseq.models.span_reader`) and
the tanh approximation of GELU (``gelu_new``: fairseq's ``gelu_accurate``). Scores are the inner product
of ``[CLS]``-pooled embeddings (``cls``, ``dot``). ORQA's span head maps exactly onto ours: its dense layer
to 2 x span_hidden splits into the start projection (with both halves' biases, summed) and the end
projection; its LayerNorm and output layer map one to one.

REALM used BERT's uncased vocab; a checkpoint with another vocab is refused.
"""
import functools
import json
import logging
import os
from typing import Dict, List, Optional, Tuple

import torch

from realm_fairseq.atomic_io import atomic_file
from realm_fairseq.data.vocab import Vocab
from realm_fairseq.errors import InputError
from realm_fairseq.models.embedder import Embedder, tower_norm
from realm_fairseq.models.encoder import EncoderConfig
from realm_fairseq.models.hf_convert import (
    LM_HEAD_PREFIX, REALM_WEIGHTS_FORMAT, bert_encoder_to_ours, check_shapes, check_uncased, check_vocab,
    config_dict, dictionary_for, encoder_config_from_hf, fit_rows, lm_head_to_ours, read_hf_config,
    read_hf_state_dict, rename_legacy,
)
from realm_fairseq.models.reader import Reader
from realm_fairseq.models.similarity import REALM_SIMILARITY, Similarity
from realm_fairseq.models.span_reader import ORQA_LAYER_NORM_EPS, SpanReader

logger = logging.getLogger(__name__)

#: md5 of BERT's uncased vocab.txt (bert-base-uncased, 30,522 wordpieces), the vocab of every REALM model
BERT_UNCASED_VOCAB_MD5 = "64800d5d8528ce344256daf115d4965e"
#: how a model that starts from REALM's weights computes (RealmConfig fields; see the module docstring)
REALM_FORM = {"retriever_head": "realm", "doc_segments": "title_body", "span_head": "orqa"}
PARTS = ("query_embedder", "doc_embedder", "reader", "span_reader")
#: the model fields a REALM weights file must agree with, and the flag that sets each
SIZE_FLAGS = {
    "encoder_layers": "--encoder-layers", "encoder_embed_dim": "--encoder-embed-dim",
    "encoder_ffn_embed_dim": "--encoder-ffn-embed-dim", "encoder_attention_heads": "--encoder-attention-heads",
    "max_positions": "--max-positions", "num_segments": "--num-segments",
    "retriever_projection_dim": "--retriever-projection-dim", "span_hidden_dim": "--span-hidden-dim",
}


# ---------------------------------------------------------------------------------------------------
# HF REALM state dict -> our parts


def _sub(hf: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """The tensors under ``prefix``, the prefix removed."""
    return {k[len(prefix):]: v for k, v in hf.items() if k.startswith(prefix)}


def checkpoint_kind(hf: Dict[str, torch.Tensor], where: str) -> str:
    """Which REALM class the weights are: embedder, scorer, encoder, reader or openqa (by weight names)."""
    if any(k.startswith("embedder.") for k in hf):
        return "openqa" if any(k.startswith("reader.") for k in hf) else "scorer"
    if any(k.startswith("realm.") for k in hf):
        if any(k.startswith("qa_outputs.") for k in hf):
            return "reader"
        if "cls.dense.weight" in hf:
            return "embedder"
        if any(k.startswith(LM_HEAD_PREFIX) for k in hf):
            return "encoder"
    found = sorted({k.split(".")[0] for k in hf})[:6]
    raise InputError(f"{where}: not a REALM checkpoint (top-level weights {found}); expected those of "
                     f"RealmEmbedder (realm.*, cls.dense.*), RealmScorer (embedder.*), RealmKnowledgeAugEncoder "
                     f"(realm.*, cls.predictions.*), RealmReader (realm.*, qa_outputs.*) or RealmForOpenQA "
                     f"(embedder.*, reader.*)")


class _Converter:
    """Maps the tensors of one REALM checkpoint onto state dicts of our modules."""

    def __init__(self, hf_dir: str, config: dict, vocab: Vocab):
        self.where = hf_dir
        self.vocab = vocab
        self.cfg = encoder_config_from_hf(config)
        self.projection_dim = int(config.get("retriever_proj_size", 128))
        self.span_hidden_dim = int(config.get("span_hidden_size", 256))

    def take(self, hf: Dict[str, torch.Tensor], key: str, full: str) -> torch.Tensor:
        if key not in hf:
            raise InputError(f"{self.where}: lacks {full!r}; expected REALM weights")
        return hf[key].float()

    def bert(self, hf: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
        """A TextEncoder state dict from the BERT under ``prefix`` (``realm.``)."""
        where = f"{self.where} ({prefix}*)"
        return bert_encoder_to_ours(_sub(hf, prefix), self.vocab, self.cfg.encoder_layers, where)

    def embedder(self, hf: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
        """An Embedder state dict (head ``realm``) from the RealmEmbedder under ``prefix``."""
        state = {f"encoder.{k}": v for k, v in self.bert(hf, prefix + "realm.").items()}
        for theirs, ours in (("realm.pooler.dense", "pooler"), ("cls.dense", "projection"),
                             ("cls.LayerNorm", "projection_norm")):
            for param in ("weight", "bias"):
                key = f"{prefix}{theirs}.{param}"
                state[f"{ours}.{param}"] = self.take(hf, key, key)
        return state

    def reader(self, hf: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A Reader state dict (encoder and masked-LM head) from a RealmKnowledgeAugEncoder."""
        state = {f"encoder.{k}": v for k, v in self.bert(hf, "realm.").items()}
        head = lm_head_to_ours(hf, self.vocab, hf["realm.embeddings.word_embeddings.weight"], self.where)
        if head is None:
            raise InputError(f"{self.where}: lacks {LM_HEAD_PREFIX}*; expected the masked-LM head of "
                             f"RealmKnowledgeAugEncoder")
        state.update({f"lm_head.{k}": v for k, v in head.items()})
        return state

    def span_reader(self, hf: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
        """A SpanReader state dict (head ``orqa``) from the RealmReader under ``prefix``."""
        state = {f"encoder.{k}": v for k, v in self.bert(hf, prefix + "realm.").items()}
        qa = prefix + "qa_outputs."
        weight = self.take(hf, qa + "dense_intermediate.weight", qa + "dense_intermediate.weight")  # (2S, C)
        bias = self.take(hf, qa + "dense_intermediate.bias", qa + "dense_intermediate.bias")  # (2S,)
        if weight.shape[0] != 2 * self.span_hidden_dim:
            raise InputError(f"{self.where}: {qa}dense_intermediate.weight has shape {tuple(weight.shape)}, "
                             f"expected ({2 * self.span_hidden_dim}, {self.cfg.encoder_embed_dim}) "
                             f"(2 x span_hidden_size of config.json)")
        start_w, end_w = weight.chunk(2, dim=0)  # ORQA: the first half scores starts, the second ends
        start_b, end_b = bias.chunk(2, dim=0)
        state.update({"start_proj.weight": start_w, "start_proj.bias": start_b + end_b, "end_proj.weight": end_w})
        for theirs, ours in (("layer_normalization", "span_norm"), ("dense_output", "score")):
            for param in ("weight", "bias"):
                key = f"{qa}{theirs}.{param}"
                state[f"{ours}.{param}"] = self.take(hf, key, key)
        return state

    def parts(self, hf: Dict[str, torch.Tensor], kind: str) -> Dict[str, Dict[str, torch.Tensor]]:
        if kind == "embedder":
            embedder = self.embedder(hf, "")
            return {"query_embedder": embedder, "doc_embedder": embedder}
        if kind == "scorer":
            doc = self.embedder(hf, "embedder.")
            has_query = any(k.startswith("query_embedder.") for k in hf)
            return {"doc_embedder": doc, "query_embedder": self.embedder(hf, "query_embedder.") if has_query else doc}
        if kind == "encoder":
            return {"reader": self.reader(hf)}
        if kind == "reader":
            return {"span_reader": self.span_reader(hf, "")}
        return {"query_embedder": self.embedder(hf, "embedder."), "span_reader": self.span_reader(hf, "reader.")}


def _reference(part: str, cfg: EncoderConfig, vocab: Vocab, projection_dim: int, span_hidden_dim: int):
    """The state dict our module for ``part`` has (shapes only: built on the meta device)."""
    dictionary = dictionary_for(vocab)
    with torch.device("meta"):
        if part in ("query_embedder", "doc_embedder"):
            module = Embedder(cfg, dictionary, "cls", projection_dim, head="realm")
        elif part == "reader":
            module = Reader(cfg, dictionary)
        else:
            module = SpanReader(cfg, dictionary, span_hidden_dim, head="orqa")
    return {k: v for k, v in module.state_dict().items() if k != "lm_head.weight"}


def _read_realm_dir(hf_dir: str) -> Tuple[dict, Vocab]:
    if not os.path.isdir(hf_dir):
        raise InputError(f"{hf_dir}: not a directory; expected a Hugging Face REALM checkpoint directory")
    config = read_hf_config(hf_dir, model_type="realm")
    eps = config.get("reader_layer_norm_eps", ORQA_LAYER_NORM_EPS)
    if abs(eps - ORQA_LAYER_NORM_EPS) > 1e-12:
        raise InputError(f"{hf_dir}/config.json: reader_layer_norm_eps is {eps}; expected {ORQA_LAYER_NORM_EPS} "
                         f"(ORQA's span head)")
    vocab = Vocab.read(hf_dir)
    if vocab.md5 != BERT_UNCASED_VOCAB_MD5:
        check_uncased(vocab, hf_dir)
        raise InputError(f"{vocab.path}: not BERT's uncased vocab (md5 {vocab.md5}, {len(vocab)} entries; expected "
                         f"md5 {BERT_UNCASED_VOCAB_MD5}, 30522 entries), which every REALM checkpoint uses")
    if config.get("vocab_size", len(vocab)) != len(vocab):
        raise InputError(f"{hf_dir}/config.json: vocab_size is {config['vocab_size']}; vocab.txt has {len(vocab)}")
    return config, vocab


def convert_realm_dir(hf_dir: str) -> Tuple[dict, Dict[str, Dict[str, torch.Tensor]], dict]:
    """One HF REALM checkpoint directory -> (header, parts, extras): the header describes sizes and vocab,
    parts are state dicts of our modules by part name, extras hold ``block_emb`` (a tensor, possibly
    memory-mapped) for an open-QA checkpoint."""
    config, vocab = _read_realm_dir(hf_dir)
    hf = {rename_legacy(k): v for k, v in read_hf_state_dict(hf_dir).items()}
    kind = checkpoint_kind(hf, hf_dir)
    converter = _Converter(hf_dir, config, vocab)
    parts = converter.parts(hf, kind)
    for part, state in parts.items():
        check_shapes(state, _reference(part, converter.cfg, vocab, converter.projection_dim,
                                       converter.span_hidden_dim), hf_dir, prefix=f"{part}.")
    header = {
        "config": config_dict(converter.cfg), "retriever_projection_dim": converter.projection_dim,
        "span_hidden_dim": converter.span_hidden_dim, "max_span_width": config.get("max_span_width", 10),
        "vocab": "\n".join(vocab.tokens), "vocab_md5": vocab.md5,  # one string: a list of 30k loads slowly
    }
    extras = {"kind": kind}
    if kind == "openqa":
        extras["block_emb"] = _block_emb(hf, hf_dir, config, converter.projection_dim)
    return header, parts, extras


def _block_emb(hf: Dict[str, torch.Tensor], hf_dir: str, config: dict, dim: int) -> Optional[torch.Tensor]:
    emb = hf.get("block_emb")
    if emb is None:
        return None
    expected = (config.get("num_block_records", emb.shape[0]), dim)
    if tuple(emb.shape) != expected:
        raise InputError(f"{hf_dir}: block_emb has shape {tuple(emb.shape)}, expected {expected} "
                         f"(num_block_records, retriever_proj_size of config.json)")
    return emb


def _merge_header(merged: Optional[dict], header: dict, hf_dir: str, first: str) -> dict:
    if merged is None:
        return dict(header)
    for key in ("config", "retriever_projection_dim", "span_hidden_dim", "vocab_md5"):
        if merged[key] != header[key]:
            raise InputError(f"{hf_dir}: its {key} differs from that of {first}; the checkpoints converted "
                             f"together must be of one REALM model size and vocab")
    return merged


def convert_realm(hf_dirs: List[str]) -> Tuple[dict, Optional[torch.Tensor]]:
    """HF REALM checkpoint directories -> the contents of one REALM weights file, and the ``block_emb``
    (n, d) of an open-QA checkpoint among them (None if there is none)."""
    header, parts, kinds, block_emb = None, {}, {}, None
    for hf_dir in hf_dirs:
        own_header, own_parts, extras = convert_realm_dir(hf_dir)
        header = _merge_header(header, own_header, hf_dir, hf_dirs[0])
        for part, state in own_parts.items():
            if part in parts:
                raise InputError(f"{hf_dir}: holds the {part} that {kinds[part]} holds already; convert one "
                                 f"checkpoint per part")
            parts[part], kinds[part] = state, hf_dir
        if extras.get("block_emb") is not None:
            block_emb = extras["block_emb"]
    weights = realm_weights(kinds, header, REALM_SIMILARITY.to_dict(),
                            {**REALM_FORM, "activation_fn": header["config"]["activation_fn"]}, parts)
    return weights, block_emb


def realm_weights(sources: Dict[str, str], header: dict, similarity: dict, form: dict,
                  parts: Dict[str, Dict[str, torch.Tensor]]) -> dict:
    """The contents of a REALM weights file: ``parts`` (state dicts by part) converted from ``sources`` (the
    directory of each part), with the ``header`` (sizes and vocab), the ``similarity`` and the ``form``
    (:data:`~realm_fairseq.models.config.FORM_DEFAULTS` fields) of the model they start."""
    return {"format": REALM_WEIGHTS_FORMAT, "sources": {part: os.path.abspath(d) for part, d in sources.items()},
            **header, "retriever": similarity, "form": form, "parts": parts}


def save_realm_weights(weights: dict, path: str, force: bool = False) -> None:
    with atomic_file(path, force=force) as tmp:
        torch.save(weights, tmp)


def is_realm_weights(path: str) -> bool:
    """Whether ``path`` is a REALM weights file from ``realm-convert-hf`` (not a fairseq checkpoint)."""
    try:
        load_realm_weights(path)
    except InputError:  # a fairseq checkpoint holds objects weights_only refuses; or not a torch file at all
        return False
    return True


def load_realm_weights(path: str) -> dict:
    """A REALM weights file (memory-mapped: parts are read when used). Loaded once per version of the file;
    callers must not change what it returns."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    return _load_realm_weights(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load_realm_weights(path: str, mtime_ns: int, size: int) -> dict:
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise InputError(f"{path}: not a REALM weights file from realm-convert-hf ({e})") from None
    if not isinstance(weights, dict) or weights.get("format") != REALM_WEIGHTS_FORMAT:
        raise InputError(f"{path}: not a REALM weights file from realm-convert-hf")
    return weights


def weights_vocab(weights: dict) -> List[str]:
    """The vocab REALM ``weights`` were converted with, in order."""
    return weights["vocab"].split("\n")


# ---------------------------------------------------------------------------------------------------
# our parts -> a realm model


def check_fits(weights: dict, cfg, path: str) -> None:
    """Raise a ValueError naming every size where the model config ``cfg`` differs from the weights'."""
    have = {**weights["config"], "retriever_projection_dim": weights["retriever_projection_dim"],
            "span_hidden_dim": weights["span_hidden_dim"]}
    wrong = [f"{flag} {getattr(cfg, name)} (the weights: {have[name]})" for name, flag in SIZE_FLAGS.items()
             if None not in (getattr(cfg, name, None), have[name]) and getattr(cfg, name) != have[name]]
    if wrong:
        raise ValueError(f"{path}: the model does not fit these REALM weights: {'; '.join(wrong)}; set the "
                         f"flags to the weights' values (REALM's released models: --arch realm_base)")


def _load(module: torch.nn.Module, state: Dict[str, torch.Tensor], path: str, part: str) -> None:
    state = fit_rows(state, module.state_dict(), ["encoder.encoder.embed_tokens.weight", "lm_head.bias"])
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(".version") and k != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(f"{path}: its {part} does not fit the model's (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}); the model must be built REALM's way (see realm_fairseq.models."
                         f"realm_hf)")


def load_towers(towers, weights: dict, dictionary, path: str) -> None:
    """Load the query and document embedders of REALM ``weights`` (from ``path``) into ``towers``. REALM's
    open-QA checkpoints hold no document embedder (their index holds its embeddings): the query embedder's
    weights then start the document embedder too, with a warning."""
    check_vocab(weights_vocab(weights), dictionary, path)
    if "query_embedder" in weights["parts"] and "doc_embedder" not in weights["parts"]:
        logger.warning("%s holds no document embedder (REALM's open-QA checkpoints keep only the query "
                       "embedder; their block_emb index holds the blocks): it starts from the query "
                       "embedder's weights", path)
    for tower, name in zip(towers, ("query_embedder", "doc_embedder")):
        _load(tower, _tower_state(weights, name, path), path, name)


def load_readers(reader: Optional[Reader], span_reader: Optional[SpanReader], weights: dict, dictionary,
                 path: str) -> None:
    """Load the reader (encoder and masked-LM head) and the span reader of REALM ``weights``: the span
    reader from an open-QA reader (with ORQA's span head), else its encoder from the knowledge-augmented
    encoder (the span head starts anew, as REALM's fine-tuning)."""
    check_vocab(weights_vocab(weights), dictionary, path)
    parts = weights["parts"]
    if reader is not None:
        if "reader" not in parts:
            raise ValueError(f"{path}: holds no knowledge-augmented encoder (it has {sorted(parts)}); convert "
                             f"REALM's encoder (realm-cc-news-pretrained-encoder) with it")
        _load(reader, parts["reader"], path, "reader")
    if span_reader is None:
        return
    if "span_reader" in parts:
        _load(span_reader, parts["span_reader"], path, "span_reader")
    elif "reader" in parts:
        encoder = {k[len("encoder."):]: v for k, v in parts["reader"].items() if k.startswith("encoder.")}
        _load(span_reader.encoder, encoder, path, "reader's encoder")
    else:
        raise ValueError(f"{path}: holds no reader (it has {sorted(parts)}); convert REALM's encoder or an "
                         f"open-QA checkpoint with it")


def embedder_from_weights(path: str, dictionary, tower: str = "doc_embedder", weights: Optional[dict] = None
                          ) -> Embedder:
    """The query or document embedder of the REALM weights file ``path`` (or of ``weights`` converted from
    it) as they compute: the pooling, score, head and block segments recorded with them (REALM's: cls, dot,
    REALM's head, title and body as segments), e.g. to embed a corpus of one's own."""
    weights = weights or load_realm_weights(path)
    check_vocab(weights_vocab(weights), dictionary, path)
    form, similarity = weights["form"], Similarity(**weights["retriever"])
    segments = form["doc_segments"] if tower == "doc_embedder" else "none"
    embedder = Embedder(EncoderConfig(**weights["config"]), dictionary, similarity.pooling,
                        weights["retriever_projection_dim"], norm=tower_norm(similarity.score, 1.0, tower),
                        head=form["retriever_head"], doc_segments=segments)
    _load(embedder, _tower_state(weights, tower, path), path, tower)
    return embedder.eval()


def _tower_state(weights: dict, tower: str, path: str) -> Dict[str, torch.Tensor]:
    parts = weights["parts"]
    if "query_embedder" not in parts:
        raise ValueError(f"{path}: holds no embedder (it has {sorted(parts)}); convert REALM's embedder "
                         f"(realm-cc-news-pretrained-embedder) or an open-QA checkpoint with it")
    return parts.get(tower, parts["query_embedder"])


def describe(weights: dict) -> str:
    cfg = weights["config"]
    return (f"{cfg['encoder_layers']} layers, hidden {cfg['encoder_embed_dim']}, {cfg['encoder_attention_heads']} "
            f"heads, projection {weights['retriever_projection_dim']}, span hidden {weights['span_hidden_dim']}, "
            f"{cfg['activation_fn']}; parts: {', '.join(p for p in PARTS if p in weights['parts'])}")


def hf_dir_kind(hf_dir: str) -> Optional[str]:
    """``realm`` if ``hf_dir`` holds a REALM checkpoint (by its config.json), else None."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return "realm" if json.load(f).get("model_type") == "realm" else None
    except (ValueError, UnicodeDecodeError):
        return None
