"""BERT uncased WordPiece vocabulary, its fast tokenizer, and the fairseq dictionary built from it.

REALM (Guu et al. 2020, section 4.3) uses BERT's uncased WordPiece vocabulary for the retriever and
the reader. fairseq keeps its own ``Dictionary`` with four special symbols in front, so we fix one
mapping between the two and use it everywhere (corpus files, converted weights, decoding):

    fairseq id = vocab line number (0-based) + 4

``dict.txt`` lists every vocab entry in vocab order, so fairseq's ids 4.. line up row for row with
BERT's embedding matrix. fairseq's own specials alias BERT's: ``<s>`` (0) is ``[CLS]``, ``<pad>`` (1)
is ``[PAD]``, ``</s>`` (2) is ``[SEP]`` and ``<unk>`` (3) is ``[UNK]``; a weight converter copies
those four BERT rows into rows 0-3.
"""
import hashlib
import json
import os
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

from realm_fairseq.data.input_files import decode_utf8
from realm_fairseq.errors import InputError

#: number of special symbols fairseq's ``Dictionary`` puts before the symbols of ``dict.txt``
FAIRSEQ_NSPECIAL = 4
#: BERT symbols every vocab must have
REQUIRED_SYMBOLS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: fairseq's special symbols; a vocab that contains one cannot become a fairseq dictionary
FAIRSEQ_SYMBOLS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
#: BERT's limit: longer words become [UNK]
MAX_INPUT_CHARS_PER_WORD = 100


def check_tokens(path: str, tokens: List[str], unit: str) -> None:
    """Raise InputError unless ``tokens`` (read from ``path``, entry n at ``unit`` n: line or id) are unique,
    non-empty WordPieces with BERT's specials and no fairseq special."""
    if not tokens:
        raise InputError(f"{path}: vocab file is empty; expected one WordPiece per line")
    first = 1 if unit == "line" else 0
    seen = {}
    for n, tok in enumerate(tokens, start=first):
        if not tok.strip() or tok != tok.strip():
            raise InputError(f"{path}, {unit} {n}: empty or space-padded vocab entry {tok!r}")
        if tok in seen:
            raise InputError(f"{path}, {unit} {n}: duplicate vocab entry {tok!r} (first at {unit} {seen[tok]})")
        if tok in FAIRSEQ_SYMBOLS:
            raise InputError(f"{path}, {unit} {n}: vocab entry {tok!r} clashes with a fairseq special symbol")
        seen[tok] = n
    missing = [s for s in REQUIRED_SYMBOLS if s not in seen]
    if missing:
        raise InputError(
            f"{path}: vocab lacks {', '.join(missing)}; expected a BERT WordPiece vocab with "
            f"{', '.join(REQUIRED_SYMBOLS)}"
        )
    if all(tok.startswith("[") and tok.endswith("]") for tok in tokens):
        raise InputError(
            f"{path}: vocab holds only special symbols ({len(tokens)} [...] entries), so every word would "
            f"become [UNK]; expected a BERT WordPiece vocab"
        )


@dataclass
class Vocab:
    """A validated WordPiece vocabulary read from a ``vocab.txt`` file."""

    path: str
    tokens: List[str]
    md5: str

    @classmethod
    def load(cls, path: str) -> "Vocab":
        """Read and validate ``path``: one unique, non-empty WordPiece per line, with BERT's specials."""
        if not os.path.isfile(path):
            raise InputError(f"{path}: vocab file not found")
        with open(path, "rb") as f:
            raw = f.read()
        text = decode_utf8(path, raw)
        tokens = text.split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        tokens = [t.rstrip("\r") for t in tokens]
        check_tokens(path, tokens, "line")
        return cls(path=path, tokens=tokens, md5=hashlib.md5(raw).hexdigest())

    @classmethod
    def read(cls, path: str) -> "Vocab":
        """The vocab at ``path``: a ``vocab.txt``, a ``tokenizer.json``, or a Hugging Face directory holding
        either (``vocab.txt`` first; newer transformers and sentence-transformers save ``tokenizer.json``
        alone)."""
        if os.path.isdir(path):
            txt, json_path = os.path.join(path, "vocab.txt"), os.path.join(path, "tokenizer.json")
            return cls.load(txt) if os.path.isfile(txt) or not os.path.isfile(json_path) else \
                cls.from_tokenizer_json(json_path)
        return cls.from_tokenizer_json(path) if path.endswith(".json") else cls.load(path)

    @classmethod
    def from_tokenizer_json(cls, path: str) -> "Vocab":
        """The WordPiece vocab of a ``tokenizers`` file (``tokenizer.json``, which transformers and
        sentence-transformers save in place of ``vocab.txt``); its md5 is that of the same ``vocab.txt``."""
        try:
            with open(path, encoding="utf-8") as f:
                model = json.load(f).get("model") or {}
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: not a readable tokenizer.json ({e})") from None
        if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
            raise InputError(f"{path}: its model is {model.get('type')!r}; expected BERT's WordPiece with a vocab")
        by_id = sorted((i, token) for token, i in model["vocab"].items())
        if [i for i, _ in by_id] != list(range(len(by_id))):
            raise InputError(f"{path}: WordPiece ids are not 0..{len(by_id) - 1} without gaps")
        tokens = [token for _, token in by_id]
        check_tokens(path, tokens, "id")
        text = "".join(token + "\n" for token in tokens)
        return cls(path=path, tokens=tokens, md5=hashlib.md5(text.encode("utf-8")).hexdigest())

    def __len__(self) -> int:
        return len(self.tokens)

    def bert_id(self, symbol: str) -> int:
        return self.tokens.index(symbol)

    def fairseq_id(self, symbol: str) -> int:
        return self.bert_id(symbol) + FAIRSEQ_NSPECIAL

    def continuation_mask(self) -> np.ndarray:
        """``mask[bert_id]`` is True for ``##`` pieces, which continue the word before them."""
        return np.array([t.startswith("##") for t in self.tokens], dtype=bool)

    def tokenizer(self) -> Tokenizer:
        """BERT's uncased WordPiece tokenizer (HF ``tokenizers``, Rust), adding no special tokens."""
        tok = Tokenizer(
            WordPiece(
                {t: i for i, t in enumerate(self.tokens)},
                unk_token="[UNK]",
                max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD,
            )
        )
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        return tok

    def write_fairseq_dict(self, path: str, counts: Sequence[int]) -> None:
        """Write ``dict.txt``: every vocab entry in vocab order with its count in the corpus."""
        with open(path, "w", encoding="utf-8") as f:
            for tok, count in zip(self.tokens, counts):
                f.write(f"{tok} {int(count)}\n")

    def to_fairseq(self, bert_ids: np.ndarray) -> np.ndarray:
        return np.asarray(bert_ids, dtype=np.int64) + FAIRSEQ_NSPECIAL

    def to_bert(self, fairseq_ids: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_fairseq`; fairseq's specials map to the BERT symbols they alias."""
        ids = np.asarray(fairseq_ids, dtype=np.int64)
        aliases = np.array([self.bert_id(s) for s in ("[CLS]", "[PAD]", "[SEP]", "[UNK]")])
        return np.where(ids < FAIRSEQ_NSPECIAL, aliases[np.minimum(ids, 3)], ids - FAIRSEQ_NSPECIAL)
