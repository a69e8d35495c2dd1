"""Which similarity a retriever's weights were trained for: pooling and score, read from the weights.

REALM scores a block by the inner product of ``[CLS]`` embeddings (section 3.2); a sentence embedder such
as MiniLM was trained to average its tokens and compare them by cosine. Scoring MiniLM's embeddings by
the inner product ranks long blocks first and finds the gold passage for a fraction of the questions
its cosine finds, so the similarity travels with the weights:

- a sentence-transformers directory (``modules.json``) names its pooling (``1_Pooling/config.json``)
  and, through a ``Normalize`` module or ``similarity_fn_name`` in ``config_sentence_transformers.json``
  (sentence-transformers' default: cosine), its score; the ``Dense`` and ``LayerNorm`` modules of a head
  between them are read by :mod:`realm_fairseq.models.st_import`;
- plain BERT (and REALM) weights keep REALM's ``cls`` pooling and ``dot`` score.

``realm-convert-hf`` records the result in the weights file; ``realm-build-index --hf``, ``--encoder-init``
and the architectures that leave pooling and score unset take it from there unless a flag says otherwise
(:func:`resolve_retriever_config`).
"""
import json
import os
from dataclasses import asdict, dataclass
from typing import List, Optional, Tuple

from realm_fairseq.errors import InputError

POOLINGS = ("cls", "mean")
SCORES = ("dot", "cosine")
#: sentence-transformers modules the conversion understands, by the last part of their type name
_TRANSFORMER, _POOLING, _NORMALIZE = "Transformer", "Pooling", "Normalize"
#: the modules after the pooling that make up an embedder's head
HEAD_MODULES = ("Dense", "LayerNorm")
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


def read_json(path: str, what: str):
    """The JSON value in ``path``, a missing file or invalid JSON raised as an InputError naming ``what`` was
    expected there."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(f"{path}: not found; expected {what}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}, line {e.lineno}, column {e.colno}: invalid JSON ({e.msg}); expected {what}") \
            from None


def _module_type(module: dict, path: str, i: int) -> str:
    if not isinstance(module, dict) or not isinstance(module.get("type"), str):
        raise InputError(f"{path}: entry {i} has no \"type\"; expected sentence-transformers modules")
    return module["type"].rsplit(".", 1)[-1]


def st_modules(hf_dir: str) -> List[Tuple[str, str, str]]:
    """(type, full type name, directory) of each module of the sentence-transformers directory ``hf_dir``, in
    order; none for a plain BERT directory (no ``modules.json``)."""
    path = os.path.join(hf_dir, "modules.json")
    if not os.path.isfile(path):
        return []
    modules = read_json(path, "a list of sentence-transformers modules")
    if not isinstance(modules, list):
        raise InputError(f"{path}: expected a list of sentence-transformers modules")
    return [(_module_type(module, path, i), module["type"], os.path.join(hf_dir, module.get("path", "")))
            for i, module in enumerate(modules)]


def head_modules(hf_dir: str) -> List[Tuple[str, str]]:
    """(type, directory) of the modules of a sentence-transformers directory that make up an embedder's head
    (``Dense``, ``LayerNorm``; :mod:`realm_fairseq.models.st_import`), in order."""
    return [(kind, module_dir) for kind, _, module_dir in st_modules(hf_dir) if kind in HEAD_MODULES]


def transformer_dir(hf_dir: str) -> str:
    """The directory holding the BERT weights: ``hf_dir`` itself, or the Transformer module's folder of a
    sentence-transformers directory."""
    modules = st_modules(hf_dir)
    if not modules:
        return hf_dir
    found = [module_dir for kind, _, module_dir in modules if kind == _TRANSFORMER]
    if not found:
        raise InputError(f"{os.path.join(hf_dir, 'modules.json')}: no Transformer module; expected a "
                         f"sentence-transformers BERT model")
    return found[0]


def _pooling_of(module_dir: str) -> str:
    """``cls`` or ``mean`` from a Pooling module's config: ``pooling_mode_*`` flags, or, as
    sentence-transformers 5 and later save it, ``pooling_mode``."""
    path = os.path.join(module_dir, "config.json")
    if not os.path.isfile(path):
        raise InputError(f"{module_dir}: no config.json; expected a sentence-transformers Pooling module")
    config = read_json(path, "a sentence-transformers Pooling config")
    mode = config.get("pooling_mode")
    if mode is not None:
        modes = sorted(mode) if isinstance(mode, list) else [mode]
    else:
        modes = sorted(k[len("pooling_mode_"):] for k, v in config.items() if k.startswith("pooling_mode_") and v)
    known = {"cls_token": "cls", "mean_tokens": "mean", "cls": "cls", "mean": "mean"}
    if len(modes) != 1 or modes[0] not in known:
        raise InputError(f"{path}: pooling modes {modes or 'none'}; only a single cls_token or mean_tokens "
                         f"pooling converts")
    return known[modes[0]]


def _st_score(hf_dir: str, normalized: bool) -> str:
    if normalized:
        return "cosine"
    path = os.path.join(hf_dir, "config_sentence_transformers.json")
    config = read_json(path, "a sentence-transformers config") if os.path.isfile(path) else {}
    name = config.get("similarity_fn_name") or "cosine"  # sentence-transformers' own default
    if name not in _ST_SCORES:
        raise InputError(f"{path}: similarity_fn_name {name!r}; only {', '.join(_ST_SCORES)} retrieve by "
                         f"inner product")
    return _ST_SCORES[name]


def similarity_of_hf_dir(hf_dir: str, with_head: bool = False) -> Similarity:
    """The similarity the weights in ``hf_dir`` were trained for (see the module docstring). A head after the
    pooling (:data:`HEAD_MODULES`) is refused unless ``with_head``: encoder weights would leave it out."""
    modules = st_modules(hf_dir)
    if not modules:
        return REALM_SIMILARITY
    path = os.path.join(hf_dir, "modules.json")
    pooling, normalized = None, False
    for i, (kind, full, module_dir) in enumerate(modules):
        if kind == _POOLING:
            pooling = _pooling_of(module_dir)
        elif kind == _NORMALIZE:
            normalized = True
        elif kind in HEAD_MODULES:
            if not with_head:
                raise InputError(f"{path}: module {i} is a {full}, part of a head after the pooling; encoder "
                                 f"weights would leave it out: realm-convert-hf {hf_dir} --out RETRIEVER.pt converts "
                                 f"the embedder with its head, for --retriever-init and --hf")
            if pooling is None or normalized:
                where = "after Normalize" if normalized else "before the Pooling"
                raise InputError(f"{path}: module {i}, a {full}, comes {where}; a head converts only between the "
                                 f"Pooling and Normalize")
        elif kind != _TRANSFORMER:
            raise InputError(f"{path}: module {i} is a {full}; only Transformer, Pooling, Normalize and, as an "
                             f"embedder's head, Dense and LayerNorm modules convert")
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
