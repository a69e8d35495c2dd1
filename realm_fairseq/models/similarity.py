"""Which similarity a retriever's weights were trained for: pooling and score, read from the weights.

REALM scores a block by the inner product of ``[CLS]`` embeddings (section 3.2); a sentence embedder such
as MiniLM was trained to average its tokens and compare them by cosine. Scoring MiniLM's embeddings by
the inner product ranks long blocks first and finds the gold passage for a fraction of the questions
its cosine finds, so the similarity travels with the weights:

- a sentence-transformers directory (``modules.json``) names its pooling (``1_Pooling/config.json``)
  and, through a ``Normalize`` module or ``similarity_fn_name`` in ``config_sentence_transformers.json``
  (sentence-transformers' default: cosine), its score;
- plain BERT (and REALM) weights keep REALM's ``cls`` pooling and ``dot`` score.

``realm-convert-hf`` records the result in the weights file; ``realm-build-index --hf``, ``--encoder-init``
and the architectures that leave pooling and score unset take it from there unless a flag says otherwise
(:func:`resolve_retriever_config`).
"""
import json
import os
from dataclasses import asdict, dataclass
from typing import Optional

from realm_fairseq.errors import InputError

POOLINGS = ("cls", "mean")
SCORES = ("dot", "cosine")
#: sentence-transformers modules the conversion understands, by the last part of their type name
_TRANSFORMER, _POOLING, _NORMALIZE = "Transformer", "Pooling", "Normalize"
_ST_SCORES = {"cosine": "cosine", "dot": "dot", "dot_product": "dot"}


@dataclass(frozen=True)
class Similarity:
    """How a retriever pools token states into an embedding and scores a query against a block."""

    pooling: str
    score: str

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r}: expected one of {', '.join(POOLINGS)}")
        if self.score not in SCORES:
            raise ValueError(f"retriever score {self.score!r}: expected one of {', '.join(SCORES)}")

    def to_dict(self) -> dict:
        return asdict(self)


#: REALM's own similarity (section 3.2), the one BERT weights are given
REALM_SIMILARITY = Similarity(pooling="cls", score="dot")


def _read_json(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}, line {e.lineno}, column {e.colno}: invalid JSON ({e.msg}); expected {what}") \
            from None


def _module_type(module: dict, path: str, i: int) -> str:
    if not isinstance(module, dict) or not isinstance(module.get("type"), str):
        raise InputError(f"{path}: entry {i} has no \"type\"; expected sentence-transformers modules")
    return module["type"].rsplit(".", 1)[-1]


def transformer_dir(hf_dir: str) -> str:
    """The directory holding the BERT weights: ``hf_dir`` itself, or the Transformer module's folder of a
    sentence-transformers directory."""
    path = os.path.join(hf_dir, "modules.json")
    if not os.path.isfile(path):
        return hf_dir
    modules = _read_json(path, "a list of sentence-transformers modules")
    for i, module in enumerate(modules if isinstance(modules, list) else []):
        if _module_type(module, path, i) == _TRANSFORMER:
            return os.path.join(hf_dir, module.get("path", ""))
    raise InputError(f"{path}: no Transformer module; expected a sentence-transformers BERT model")


def _pooling_of(module_dir: str) -> str:
    path = os.path.join(module_dir, "config.json")
    if not os.path.isfile(path):
        raise InputError(f"{module_dir}: no config.json; expected a sentence-transformers Pooling module")
    config = _read_json(path, "a sentence-transformers Pooling config")
    modes = sorted(k[len("pooling_mode_"):] for k, v in config.items() if k.startswith("pooling_mode_") and v)
    known = {"cls_token": "cls", "mean_tokens": "mean"}
    if len(modes) != 1 or modes[0] not in known:
        raise InputError(f"{path}: pooling modes {modes or 'none'}; only a single cls_token or mean_tokens "
                         f"pooling converts")
    return known[modes[0]]


def _st_score(hf_dir: str, normalized: bool) -> str:
    if normalized:
        return "cosine"
    path = os.path.join(hf_dir, "config_sentence_transformers.json")
    config = _read_json(path, "a sentence-transformers config") if os.path.isfile(path) else {}
    name = config.get("similarity_fn_name") or "cosine"  # sentence-transformers' own default
    if name not in _ST_SCORES:
        raise InputError(f"{path}: similarity_fn_name {name!r}; only {', '.join(_ST_SCORES)} retrieve by "
                         f"inner product")
    return _ST_SCORES[name]


def similarity_of_hf_dir(hf_dir: str) -> Similarity:
    """The similarity the weights in ``hf_dir`` were trained for (see the module docstring)."""
    path = os.path.join(hf_dir, "modules.json")
    if not os.path.isfile(path):
        return REALM_SIMILARITY
    modules = _read_json(path, "a list of sentence-transformers modules")
    if not isinstance(modules, list):
        raise InputError(f"{path}: expected a list of sentence-transformers modules")
    pooling, normalized = None, False
    for i, module in enumerate(modules):
        kind = _module_type(module, path, i)
        if kind == _POOLING:
            pooling = _pooling_of(os.path.join(hf_dir, module.get("path", "")))
        elif kind == _NORMALIZE:
            normalized = True
        elif kind != _TRANSFORMER:
            raise InputError(f"{path}: module {i} is a {module['type']}; only Transformer, Pooling and "
                             f"Normalize modules convert")
    if pooling is None:
        raise InputError(f"{path}: no Pooling module; expected a sentence-transformers embedder")
    return Similarity(pooling, _st_score(hf_dir, normalized))


def resolve_retriever_config(cfg, weights_similarity: Optional[Similarity]) -> Similarity:
    """Fill ``cfg.retriever_pooling`` and ``cfg.retriever_score`` where no flag set them (None): from the
    similarity recorded with the ``--encoder-init`` weights, else REALM's. Returns the result."""
    default = weights_similarity or REALM_SIMILARITY
    chosen = Similarity(cfg.retriever_pooling or default.pooling, cfg.retriever_score or default.score)
    cfg.retriever_pooling, cfg.retriever_score = chosen.pooling, chosen.score
    return chosen
