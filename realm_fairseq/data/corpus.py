"""Read a CORPUS directory written by ``realm-prepare-corpus``: blocks and pre-training examples.

    corpus = BlockCorpus("CORPUS")
    corpus.tokens(7)        # LongTensor of fairseq ids: title [SEP] body
    corpus.block(7).text    # the source text of block 7, as a person reads it
    ex = corpus.examples    # PretrainingExamples: sentences with source block and salient spans

The file layout is documented in :mod:`realm_fairseq.data.corpus_builder`. Blocks are what the
retriever scores (REALM, section 3.2); examples are the ``x`` of masked-language-model pre-training.
"""
import json
import os
import struct
from dataclasses import dataclass
from functools import cached_property
from typing import List, Sequence, Tuple

import numpy as np
import torch
from fairseq.data import Dictionary
from fairseq.data.indexed_dataset import MMapIndexedDataset

from realm_fairseq.data.vocab import Vocab
from realm_fairseq.errors import InputError

BLOCKS = "blocks"
BLOCK_META = "blocks.meta.npy"
DOCUMENTS = "documents.jsonl"
DOCUMENT_OFFSETS = "documents.offsets.npy"
EXAMPLES = "examples"
EXAMPLE_META = "examples.meta.npy"
EXAMPLE_SPANS = "examples.spans.npy"
DICT = "dict.txt"
MANIFEST = "manifest.json"
#: the head of a fairseq ``.idx`` file: magic, version, dtype code, number of items; then int32 sizes and
#: int64 pointers, one of each per item
_IDX_HEAD = struct.Struct("<9sQBQ")


def with_cls_sep(tokens: torch.Tensor, dictionary: Dictionary) -> torch.Tensor:
    """``[CLS] tokens [SEP]`` as fairseq ids (``<s>``/``</s>`` alias BERT's ``[CLS]``/``[SEP]``): the form every
    embedder reads a query or a block in."""
    return torch.cat([tokens.new([dictionary.bos()]), tokens, tokens.new([dictionary.eos()])])


def with_cls_sep_batch(tokens: torch.Tensor, lengths: torch.Tensor, dictionary: Dictionary) -> torch.Tensor:
    """:func:`with_cls_sep` for a padded batch: (N, L) tokens of ``lengths`` (N,) -> (N, L + 2)
    ``[CLS] tokens [SEP]``, padded, on the tokens' device."""
    rows = tokens.new_full((tokens.shape[0], tokens.shape[1] + 2), dictionary.pad())
    rows[:, 0] = dictionary.bos()
    rows[:, 1:-1] = tokens
    rows[torch.arange(len(rows), device=rows.device), lengths + 1] = dictionary.eos()
    return rows


@dataclass
class Block:
    """One retrieval block, for showing to a person."""

    index: int
    doc_id: str
    title: str
    text: str  # the block's span of the document text
    char_start: int
    char_end: int


def _load_manifest(path: str) -> dict:
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(
            f"{path} is not a corpus: {MANIFEST} is missing (build one with realm-prepare-corpus)"
        )
    with open(manifest_path, encoding="utf-8") as f:
        try:
            manifest = json.load(f)
        except ValueError as e:
            raise _damaged(manifest_path, f"invalid JSON ({e})") from None
    if not isinstance(manifest, dict) or not {"settings", "counts", "corpus_checksum"} <= manifest.keys():
        raise _damaged(manifest_path, "not the manifest of realm-prepare-corpus")
    return manifest


def _damaged(path: str, what: str) -> InputError:
    return InputError(f"{path}: {what}; expected a file of a whole CORPUS: build it again with "
                      f"realm-prepare-corpus")


def _load_npy(path: str, mmap_mode=None) -> np.ndarray:
    """An array file of a CORPUS; a missing or damaged one raises an :class:`InputError` naming it."""
    try:
        return np.load(path, mmap_mode=mmap_mode)
    except FileNotFoundError:
        raise _damaged(path, "missing") from None
    except (ValueError, OSError, EOFError) as e:
        raise _damaged(path, f"truncated or not a .npy array ({e})") from None


def open_indexed_dataset(prefix: str) -> MMapIndexedDataset:
    """fairseq's memory-mapped dataset ``prefix``.idx/.bin, once both files are checked whole."""
    idx, data = prefix + ".idx", prefix + ".bin"
    for path in (idx, data):
        if not os.path.isfile(path):
            raise _damaged(path, "missing")
    with open(idx, "rb") as f:
        head = f.read(_IDX_HEAD.size)
    if len(head) < _IDX_HEAD.size or _IDX_HEAD.unpack(head)[:2] != (MMapIndexedDataset.Index._HDR_MAGIC, 1):
        raise _damaged(idx, "not a fairseq indexed dataset index")
    items = _IDX_HEAD.unpack(head)[3]
    if os.path.getsize(idx) < _IDX_HEAD.size + 12 * items:
        raise _damaged(idx, f"truncated (too short for its {items} items)")
    dataset = MMapIndexedDataset(prefix)
    needed = int(dataset.sizes.sum()) * np.dtype(dataset._index.dtype).itemsize
    if os.path.getsize(data) < needed:
        raise _damaged(data, f"truncated ({os.path.getsize(data)} bytes, where its index needs {needed})")
    return dataset


class BlockCorpus:
    """The blocks of a CORPUS with their source documents; indexable by block id."""

    def __init__(self, path: str):
        self.path = path
        self.manifest = _load_manifest(path)
        self.dataset = open_indexed_dataset(os.path.join(path, BLOCKS))
        self.meta = _load_npy(os.path.join(path, BLOCK_META), mmap_mode="r")
        self._doc_offsets = _load_npy(os.path.join(path, DOCUMENT_OFFSETS), mmap_mode="r")

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def sizes(self) -> np.ndarray:
        return self.dataset.sizes

    @property
    def block_size(self) -> int:
        return self.manifest["settings"]["block_size"]

    @property
    def checksum(self) -> str:
        return self.manifest["corpus_checksum"]

    @cached_property
    def dictionary(self) -> Dictionary:
        return Dictionary.load(os.path.join(self.path, DICT))

    @cached_property
    def vocab(self) -> Vocab:
        return Vocab(path=os.path.join(self.path, DICT), tokens=self.dictionary.symbols[4:], md5="")

    @cached_property
    def tokenizer(self):
        return self.vocab.tokenizer()

    @cached_property
    def examples(self) -> "PretrainingExamples":
        return PretrainingExamples(self.path)

    def tokens(self, i: int) -> torch.Tensor:
        """Block ``i`` as fairseq ids (``title [SEP] body``, no outer ``[CLS]``/``[SEP]``)."""
        return self.dataset[i].long()

    def padded_tokens(self, ids: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Blocks ``ids`` as one batch: tokens (N, L) padded with the dictionary's pad, L the longest, and
        lengths (N,). An id of -1 gives an empty row (the null document, or a result the index lacked)."""
        lengths = np.array([self.sizes[i] if i >= 0 else 0 for i in ids], dtype=np.int64)
        rows = np.full((len(lengths), int(lengths.max(initial=0))), self.dictionary.pad(), dtype=np.int64)
        for row, i in enumerate(ids):
            if i >= 0:
                rows[row, : lengths[row]] = self.dataset[int(i)].numpy()
        return torch.from_numpy(rows), torch.from_numpy(lengths)

    def wordpieces_of(self, tokens: torch.Tensor) -> List[str]:
        return [self.dictionary[t] for t in tokens.tolist()]

    def wordpieces(self, i: int) -> List[str]:
        """Block ``i`` as wordpiece strings."""
        return self.wordpieces_of(self.tokens(i))

    def decode(self, i: int) -> str:
        """Block ``i`` decoded from its wordpieces (lower-cased, as the model sees it)."""
        bert_ids = self.vocab.to_bert(self.tokens(i).numpy()).tolist()
        return self.tokenizer.decode(bert_ids, skip_special_tokens=False)

    def document(self, doc_index: int) -> dict:
        with open(os.path.join(self.path, DOCUMENTS), "rb") as f:
            f.seek(int(self._doc_offsets[doc_index]))
            return json.loads(f.readline())

    @cached_property
    def document_ids(self) -> List[str]:
        """The id of every document, in document order."""
        with open(os.path.join(self.path, DOCUMENTS), encoding="utf-8") as f:
            return [json.loads(line)["id"] for line in f]

    def statistics(self) -> dict:
        """Counts and length statistics of the blocks, examples and salient spans."""
        ex = self.examples
        return {
            **self.manifest["counts"],
            "block_size": self.block_size,
            "block_length_mean": round(float(self.sizes.mean()), 1),
            "block_length_median": int(np.median(self.sizes)),
            "blocks_over_90_percent_full": round(float((self.sizes > 0.9 * self.block_size).mean()), 3),
            "example_length_mean": round(float(ex.sizes.mean()), 1) if len(ex) else 0.0,
            "examples_with_salient_span": round(float((ex.spans_per_example > 0).mean()), 3) if len(ex) else 0.0,
            "salient_span_source": self.manifest["salient_span_source"],
            "inputs": {os.path.basename(i["path"]): i["documents"] for i in self.manifest["inputs"]},
        }

    def block(self, i: int) -> Block:
        if not 0 <= i < len(self):
            raise IndexError(f"block {i} out of range: the corpus has {len(self)} blocks")
        doc_index, start, end, _ = (int(v) for v in self.meta[i])
        doc = self.document(doc_index)
        return Block(i, doc["id"], doc["title"], doc["text"][start:end], start, end)


class PretrainingExamples:
    """The pre-training examples of a CORPUS: token ids, source block and salient spans."""

    def __init__(self, path: str):
        self.path = path
        meta = _load_npy(os.path.join(path, EXAMPLE_META))
        # fairseq cannot memory-map an empty file: a corpus may have no example (all sentences short)
        self.dataset = open_indexed_dataset(os.path.join(path, EXAMPLES)) if len(meta) else None
        self.source_block = meta[:, 0]
        self.block_offset = meta[:, 1]
        self.spans = _load_npy(os.path.join(path, EXAMPLE_SPANS))
        self._span_ptr = np.searchsorted(self.spans[:, 0], np.arange(len(meta) + 1))

    def __len__(self) -> int:
        return len(self.source_block)

    @property
    def sizes(self) -> np.ndarray:
        return self.dataset.sizes if self.dataset is not None else np.zeros(0, dtype=np.int64)

    def tokens(self, i: int) -> torch.Tensor:
        if not 0 <= i < len(self):
            raise IndexError(f"example {i} out of range: the corpus has {len(self)} examples")
        return self.dataset[i].long()

    @property
    def spans_per_example(self) -> np.ndarray:
        return np.diff(self._span_ptr)

    def salient_spans(self, i: int) -> List[Tuple[int, int]]:
        """Wordpiece ranges ``[start, end)`` of the salient spans of example ``i``."""
        rows = self.spans[self._span_ptr[i] : self._span_ptr[i + 1], 1:]
        return [(int(s), int(e)) for s, e in rows]
