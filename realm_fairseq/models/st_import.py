"""sentence-transformers embedders with a head, and realm-export-hf directories, as REALM-form weights.

``realm-export-hf`` (:mod:`realm_fairseq.models.hf_export`) writes each embedder (Embed_input, Embed_doc,
section 3.2) as a sentence-transformers directory: the BERT, ``Pooling``, the embedder's head and, for the
cosine score, ``Normalize``. This module reads such directories back into the weights file REALM's released
embedders convert into (:mod:`realm_fairseq.models.realm_hf`: the towers' state dicts with the form and
similarity they compute with), so that a retriever trained here, exported and trained further with
sentence-transformers, or anyone's sentence-transformers embedder with a projection, starts the towers of a
``realm`` model (``--retriever-init``) or embeds a corpus (``realm-build-index --hf``, ``realm-evaluate --hf``):

- a ``realm-export-hf`` directory (``query_embedder/`` and ``doc_embedder/``): each tower from its own, and
  the readers whose encoders have the embedders' size (one encoder config serves every part of the file):
  ``reader/`` with its masked-LM head and ``span_reader/`` with the span head realm-export-hf keeps beside it
  in our names (``span_head.safetensors``, ``span_head.json``), so that ``--realm-init`` starts the model
  that was exported;
- one sentence-transformers directory with a head: both towers from it (as REALM's one embedder).

The head is the modules after ``Pooling``, ``Normalize`` aside:

- ``Dense`` (C -> d, no activation): the ``linear`` head projecting to d;
- ``Dense`` (C -> d, tanh, sentence-transformers' default activation): the ``tanh`` head;
- ``Dense`` (C -> C, tanh), ``Dense`` (C -> d, no activation), ``LayerNorm`` (d): REALM's head (BERT's pooler,
  the projection and its LayerNorm; ``retriever_head=realm``).

How a tower read a block (``doc_segments``: REALM reads title and body as two segments) is not part of a
sentence-transformers model; ``realm-export-hf`` records it in each tower's ``realm_tower.json`` and
without that file blocks are read as one text. An embedder without a head converts as encoder weights
(:func:`realm_fairseq.models.hf_convert.convert_hf_bert`).
"""
import os
from dataclasses import dataclass
from typing import Dict, Tuple

import torch

from realm_fairseq.errors import InputError
from realm_fairseq.models.config import FORM_DEFAULTS
from realm_fairseq.models.embedder import DOC_SEGMENTS, TOWERS
from realm_fairseq.models.hf_convert import convert_hf_bert, read_hf_state_dict
from realm_fairseq.models.realm_hf import realm_weights
from realm_fairseq.models.similarity import head_modules, read_json
from realm_fairseq.models.span_reader import SPAN_HEADS

#: what realm-export-hf records beside each embedder: its tower and how it read a block
TOWER_FILE = "realm_tower.json"
#: what realm-export-hf records beside the span reader's BERT: its span head's form
SPAN_HEAD_FILE = "span_head.json"
#: sentence-transformers' names of the activations a head's Dense modules may have
TANH, IDENTITY = "torch.nn.modules.activation.Tanh", "torch.nn.modules.linear.Identity"
#: the heads, by the modules that make them up
HEAD_LAYOUTS = {("Dense",): "linear", ("Dense", "Dense", "LayerNorm"): "realm"}
#: an export's readers: the knowledge-augmented encoder (masked-LM head) and the open-QA span reader
READERS = ("reader", "span_reader")


@dataclass
class ConvertedTower:
    """One embedder directory, converted: the fields its weights file records and its state dict."""

    where: str
    weights: dict  # convert_hf_bert's: config, vocab, vocab_md5, retriever (the similarity)
    head: str
    projection_dim: int
    doc_segments: str
    state: Dict[str, torch.Tensor]  # the Embedder's


def is_export_dir(path: str) -> bool:
    """Whether ``path`` is a ``realm-export-hf`` directory with at least one embedder."""
    return any(os.path.isfile(os.path.join(path, tower, "modules.json")) for tower in TOWERS)


def is_retriever_dir(path: str) -> bool:
    """Whether ``path`` converts as retriever weights here: an export, or an embedder with a head."""
    return os.path.isdir(path) and (is_export_dir(path) or bool(head_modules(path)))


def _read_object(path: str, what: str) -> dict:
    found = read_json(path, what)
    if not isinstance(found, dict):
        raise InputError(f"{path}: expected {what}, a JSON object")
    return found


def _dense(module_dir: str, in_features: int, *activations: str) -> Tuple[torch.Tensor, torch.Tensor, str]:
    """(weight (d, C), bias (d,), activation) of a sentence-transformers Dense module that must read
    ``in_features`` and apply one of ``activations``."""
    path = os.path.join(module_dir, "config.json")
    config = _read_object(path, "the config of a sentence-transformers Dense module")
    found = config.get("activation_function", TANH)  # sentence-transformers' default
    if found not in activations:
        raise InputError(f"{path}: activation_function is {found!r}; expected {' or '.join(map(repr, activations))} "
                         f"here (see realm_fairseq.models.st_import for the heads that convert)")
    weights = read_hf_state_dict(module_dir)
    if "linear.weight" not in weights:
        raise InputError(f"{module_dir}: no linear.weight; expected a sentence-transformers Dense module")
    weight = weights["linear.weight"].float()
    if weight.shape[1] != in_features:
        raise InputError(f"{module_dir}: linear.weight has shape {tuple(weight.shape)}; expected (d, "
                         f"{in_features}), reading the {in_features} values before it")
    bias = weights.get("linear.bias")
    return weight, (bias.float() if bias is not None else torch.zeros(weight.shape[0])), found


def _layer_norm(module_dir: str, dim: int) -> Tuple[torch.Tensor, torch.Tensor]:
    weights = read_hf_state_dict(module_dir)
    missing = [k for k in ("norm.weight", "norm.bias") if k not in weights]
    if missing or weights["norm.weight"].shape != (dim,):
        raise InputError(f"{module_dir}: expected a sentence-transformers LayerNorm of dimension {dim} (norm.weight "
                         f"and norm.bias), found {sorted(weights)}")
    return weights["norm.weight"].float(), weights["norm.bias"].float()


def read_head(hf_dir: str, width: int) -> Tuple[str, int, Dict[str, torch.Tensor]]:
    """The head of the embedder ``hf_dir`` whose encoder is ``width`` wide: (retriever_head, projection dim,
    state dict in our Embedder's names); ``linear`` and 0 without one."""
    modules = head_modules(hf_dir)
    kinds = tuple(kind for kind, _ in modules)
    if not kinds:
        return "linear", 0, {}
    if kinds not in HEAD_LAYOUTS:
        raise InputError(f"{os.path.join(hf_dir, 'modules.json')}: a head of {', '.join(kinds)} after the pooling; "
                         f"only Dense (without activation or with tanh) or Dense (tanh), Dense, LayerNorm (REALM's) "
                         f"convert")
    dirs = [module_dir for _, module_dir in modules]
    head, state = HEAD_LAYOUTS[kinds], {}
    if head == "realm":
        state["pooler.weight"], state["pooler.bias"], _ = _dense(dirs[0], width, TANH)
        dirs = dirs[1:]
    projection = (IDENTITY,) if head == "realm" else (IDENTITY, TANH)
    state["projection.weight"], state["projection.bias"], activation = _dense(dirs[0], width, *projection)
    dim = state["projection.weight"].shape[0]
    if head == "realm":
        state["projection_norm.weight"], state["projection_norm.bias"] = _layer_norm(dirs[1], dim)
    return ("tanh" if activation == TANH else head), dim, state


def doc_segments_of(hf_dir: str) -> str:
    """How the embedder ``hf_dir`` read a block: recorded by realm-export-hf, else as one text."""
    path = os.path.join(hf_dir, TOWER_FILE)
    if not os.path.isfile(path):
        return FORM_DEFAULTS["doc_segments"]
    found = _read_object(path, "what realm-export-hf records of a tower").get("doc_segments")
    if found not in DOC_SEGMENTS:
        raise InputError(f"{path}: doc_segments is {found!r}; expected one of {', '.join(DOC_SEGMENTS)}")
    return found


def _encoder_state(weights: dict) -> Dict[str, torch.Tensor]:
    return {f"encoder.{k}": v for k, v in weights["state_dict"].items()}


def convert_tower(hf_dir: str) -> ConvertedTower:
    """A sentence-transformers embedder directory (head or not) -> a :class:`ConvertedTower`."""
    weights = convert_hf_bert(hf_dir, with_head=True)
    head, dim, state = read_head(hf_dir, weights["config"]["encoder_embed_dim"])
    state.update(_encoder_state(weights))
    return ConvertedTower(os.path.abspath(hf_dir), weights, head, dim, doc_segments_of(hf_dir), state)


def _towers(path: str) -> Dict[str, ConvertedTower]:
    if not is_export_dir(path):
        converted = convert_tower(path)
        return {"query_embedder": converted, "doc_embedder": converted}
    return {tower: convert_tower(os.path.join(path, tower)) for tower in TOWERS
            if os.path.isfile(os.path.join(path, tower, "modules.json"))}


def _check_alike(towers: Dict[str, ConvertedTower]) -> None:
    """The towers of one realm model share sizes, vocab, similarity and head."""
    first, *others = towers.values()
    fields = {"encoder sizes": lambda t: t.weights["config"], "vocab": lambda t: t.weights["vocab_md5"],
              "similarity": lambda t: t.weights["retriever"], "head": lambda t: (t.head, t.projection_dim)}
    for other in others:
        for name, read in fields.items():
            if read(other) != read(first):
                raise InputError(f"{other.where}: its {name} ({read(other)}) differ from {first.where}'s "
                                 f"({read(first)}); the two towers of a realm model share them")


def _span_head(span_dir: str) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """The form (``span_head``, ``span_hidden_dim``) and weights realm-export-hf wrote beside a span reader."""
    from safetensors.torch import load_file

    form = _read_object(os.path.join(span_dir, SPAN_HEAD_FILE), "the span head realm-export-hf describes")
    if form.get("span_head") not in SPAN_HEADS:
        raise InputError(f"{os.path.join(span_dir, SPAN_HEAD_FILE)}: span_head is {form.get('span_head')!r}; "
                         f"expected one of {', '.join(SPAN_HEADS)}")
    path = os.path.join(span_dir, "span_head.safetensors")
    try:
        return form, {k: v.float() for k, v in load_file(path).items()}
    except Exception as e:  # safetensors raises its own error types for a missing or damaged file
        raise InputError(f"{path}: not a readable safetensors file ({e})") from None


def reader_parts(path: str, config: dict) -> Tuple[Dict[str, Dict[str, torch.Tensor]], dict]:
    """The readers of the export ``path`` whose encoders have the embedders' ``config`` (a REALM weights file
    holds one), as parts, with what they add to the header and form: the knowledge-augmented encoder from
    ``reader/`` (its masked-LM head included) and the span reader from ``span_reader/`` with the span head
    beside it. Readers of another size are left out (they convert apart, for ``--reader-init``)."""
    parts, fields = {}, {}
    reader_dir, span_dir = (os.path.join(path, reader) for reader in READERS)
    if os.path.isdir(reader_dir):
        weights = convert_hf_bert(reader_dir)
        if weights["config"] == config and "lm_head" in weights:
            parts["reader"] = {**_encoder_state(weights), **{f"lm_head.{k}": v for k, v in weights["lm_head"].items()}}
    if os.path.isfile(os.path.join(span_dir, SPAN_HEAD_FILE)):
        weights = convert_hf_bert(span_dir)
        if weights["config"] == config:
            form, head = _span_head(span_dir)
            parts["span_reader"] = {**_encoder_state(weights), **head}
            fields = {"span_head": form["span_head"], "span_hidden_dim": int(form["span_hidden_dim"])}
    return parts, fields


def convert_towers(path: str, with_readers: bool = True) -> dict:
    """A ``realm-export-hf`` directory, or one sentence-transformers embedder with a head, as the contents of a
    REALM weights file: the embedders, and unless ``with_readers`` is false an export's readers of their size (see
    the module docstring)."""
    towers = _towers(path)
    _check_alike(towers)
    first = next(iter(towers.values()))
    doc = towers.get("doc_embedder", first)
    config = first.weights["config"]
    readers, fields = reader_parts(path, config) if with_readers and is_export_dir(path) else ({}, {})
    header = {
        "config": config, "retriever_projection_dim": first.projection_dim,
        "span_hidden_dim": fields.get("span_hidden_dim"),
        "vocab": "\n".join(first.weights["vocab"]), "vocab_md5": first.weights["vocab_md5"],
    }
    form = {"retriever_head": first.head, "doc_segments": doc.doc_segments,
            "span_head": fields.get("span_head", FORM_DEFAULTS["span_head"]), "activation_fn": config["activation_fn"]}
    sources = {**{tower: t.where for tower, t in towers.items()}, **{r: os.path.join(path, r) for r in readers}}
    return realm_weights(sources, header, first.weights["retriever"], form,
                         {**{tower: t.state for tower, t in towers.items()}, **readers})


def describe_towers(weights: dict) -> str:
    """One line on converted towers: which, the embedders' head and similarity, the span head."""
    form, similarity, parts = weights["form"], weights["retriever"], weights["parts"]
    dim = weights["retriever_projection_dim"]
    head = f"{form['retriever_head']} head" + (f" projecting to {dim}" if dim else " (no projection)")
    blocks = "as title and body" if form["doc_segments"] == "title_body" else "as one text"
    line = (f"{', '.join(t for t in TOWERS if t in parts)}: {head}, {similarity['pooling']} pooling, "
            f"{similarity['score']} score, blocks read {blocks}")
    if "reader" in parts:
        line += "; reader with its masked-LM head"
    if "span_reader" in parts:
        line += f"; span_reader with its {form['span_head']} span head"
    return line


def tower_file(tower: str, doc_segments: str) -> Dict[str, str]:
    """What realm-export-hf writes to :data:`TOWER_FILE` beside an embedder."""
    return {"tower": tower, "doc_segments": doc_segments if tower == "doc_embedder" else "none"}
