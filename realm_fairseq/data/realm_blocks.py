"""REALM's released retrieval corpus: ``block_records.npy`` and the ``block_emb`` of its open-QA checkpoints.

REALM and ORQA retrieve from English Wikipedia (20 December 2018) cut into 13,353,718 blocks of at most
288 wordpieces (paper, section 4.3). The Hugging Face copies of REALM's open-QA models ship the blocks as
``block_records.npy`` (a numpy object array of UTF-8 byte strings, one block body each: ORQA's blocks
carry no title) and their embeddings, made by REALM's document embedder, as the ``block_emb`` buffer of
the checkpoint (13,353,718 x 128, float32).

- :func:`iter_block_records` streams the records in order without unpickling the array: the pickle's
  opcodes are read one at a time (:mod:`pickletools`) and only the current record is in memory, so a
  CORPUS is built from the full file (``realm-prepare-corpus block_records.npy --format realm-blocks``) in
  the memory the corpus builder needs anyway. Each record becomes a document with an empty title and one
  block; the build fails if a record does not make exactly one block, so that block i is record i.
- :func:`check_corpus_for` checks that a CORPUS holds those blocks in their order, before
  :mod:`realm_fairseq.indexing.block_emb` copies ``block_emb`` into a version of an INDEX for it.
"""
import array
import logging
import os
import pickletools
from typing import Iterator, Optional, Union

import numpy as np

from realm_fairseq.atomic_io import sha256_files
from realm_fairseq.data.input_files import Document, decode_utf8
from realm_fairseq.errors import InputError

logger = logging.getLogger(__name__)

FORMAT = "realm-blocks"
#: pickle opcodes that push a string
_STRING_OPS = ("SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
               "BYTEARRAY8", "UNICODE")
_MEMO_PUTS = ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT")
_MEMO_GETS = ("GET", "BINGET", "LONG_BINGET")
_LIST_OPS = ("MARK", "APPENDS", "APPEND", "FRAME")


def _read_header(f, path: str):
    try:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(f)
    except ValueError as e:
        raise InputError(f"{path}: not a .npy file ({e}); expected REALM's block_records.npy") from None
    if len(shape) != 1:
        raise InputError(f"{path}: holds an array of shape {shape}; expected a 1-D array of block texts")
    return shape[0], dtype


class _PickledStrings:
    """The strings of a pickled 1-D numpy object array, in order, read opcode by opcode."""

    def __init__(self, f, path: str, count: int):
        self.f, self.path, self.count = f, path, count
        self.reread = open(path, "rb")  # for a record pickled twice (a memo reference): read it again
        self.memo_size = 0
        self.element_memo = array.array("q")  # memo index of each record pickled in place (-1: none)
        self.element_pos = array.array("q")  # file offset of each such record's opcode
        self.element_op = []  # and the opcode

    def _memo_index(self, name: str, arg) -> int:
        if name == "MEMOIZE":
            index = self.memo_size
        else:
            index = int(arg)
        self.memo_size = max(self.memo_size, index + 1)
        return index

    def _from_memo(self, index: int) -> Union[bytes, str]:
        """A record pickled as a reference to an earlier one (rare: the same object twice in the array)."""
        found = np.flatnonzero(np.frombuffer(self.element_memo, dtype=np.int64) == index)
        if not len(found):
            raise InputError(f"{self.path}: a record refers to an object that is not a block text; expected an "
                             f"array of strings")
        return self._read_at(int(found[0]))

    def _read_at(self, j: int) -> Union[bytes, str]:
        name = self.element_op[j]
        self.reread.seek(self.element_pos[j])
        for op, arg, _ in pickletools.genops(self.reread):
            if op.name != name:
                break
            return arg
        raise InputError(f"{self.path}: cannot read record {j} again")

    def __iter__(self) -> Iterator[Union[bytes, str]]:
        in_list, last_was_element, emitted = False, False, 0
        try:
            for op, arg, pos in pickletools.genops(self.f):
                name = op.name
                if not in_list:
                    if name == "EMPTY_LIST":
                        in_list = True
                    elif name in _MEMO_PUTS:
                        self._memo_index(name, arg)
                    continue
                if name in _STRING_OPS:
                    self.element_pos.append(pos)
                    self.element_op.append(name)
                    self.element_memo.append(-1)
                    last_was_element = True
                    emitted += 1
                    yield arg
                    continue
                if name in _MEMO_PUTS:
                    index = self._memo_index(name, arg)
                    if last_was_element:
                        self.element_memo[-1] = index
                    last_was_element = False
                    continue
                if name in _MEMO_GETS:
                    emitted += 1
                    yield self._from_memo(int(arg))
                    last_was_element = False
                    continue
                if name in _LIST_OPS:
                    last_was_element = False
                    continue
                break  # the list of records has ended
        except InputError:
            raise
        except ValueError as e:  # pickletools on a truncated or damaged stream
            raise InputError(f"{self.path}: damaged pickle after record {emitted} ({e})") from None
        finally:
            self.reread.close()
        if not in_list:
            raise InputError(f"{self.path}: holds no list of records; expected REALM's block_records.npy, a "
                             f"numpy object array of byte strings")
        if emitted != self.count:
            raise InputError(f"{self.path}: holds {emitted} records but its header says {self.count}")


def iter_block_records(path: str) -> Iterator[str]:
    """The block texts of ``block_records.npy`` in order, decoded from UTF-8, one in memory at a time."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    with f:
        count, dtype = _read_header(f, path)
        if dtype.kind in "SU":  # fixed-width strings: memory-mapped, no pickle
            records = np.load(path, mmap_mode="r")
            for i in range(count):
                yield _decode(records[i], path, i)
            return
        if dtype.kind != "O":
            raise InputError(f"{path}: holds {dtype} values; expected byte strings (an object array)")
        for i, record in enumerate(_PickledStrings(f, path, count)):
            yield _decode(record, path, i)


def _decode(record, path: str, i: int) -> str:
    if isinstance(record, str):
        return record
    if isinstance(record, (bytes, bytearray, np.bytes_)):
        try:
            return decode_utf8(path, bytes(record))
        except InputError:
            raise InputError(f"{path}: record {i} is not UTF-8 text") from None
    raise InputError(f"{path}: record {i} is a {type(record).__name__}; expected a byte string")


def read_realm_blocks(path: str) -> Iterator[Document]:
    """Documents of ``block_records.npy``: record i -> id ``"i"``, no title, the block text."""
    for i, text in enumerate(iter_block_records(path)):
        yield Document(id=str(i), title="", text=text)


def check_one_block_per_record(block_meta: np.ndarray, num_records: int, sizes: np.ndarray, block_size: int,
                               path: str) -> None:
    """Raise an InputError unless block i of a CORPUS came from record i, for every record."""
    per_record = np.bincount(block_meta[:, 0], minlength=num_records)  # blocks of each record
    bad = np.flatnonzero(per_record != 1)
    if len(bad):
        i = int(bad[0])
        if per_record[i] == 0:
            why = "no block (it holds no text)"
        else:
            longest = int(sizes[block_meta[:, 0] == i].sum())
            why = f"{per_record[i]} blocks ({longest} wordpieces, more than --block-size {block_size})"
        raise InputError(f"{path}: record {i} makes {why}; a {FORMAT} corpus needs exactly one block per record "
                         f"({len(bad)} records do not), so that row i of block_emb embeds block i")


# ---------------------------------------------------------------------------------------------------
# block_emb -> an index version


def check_corpus_for(corpus, records_path: Optional[str], count: int, where: str) -> None:
    """Raise an InputError unless ``corpus`` was built from REALM's blocks (``records_path`` when given) and
    has ``count`` blocks."""
    inputs = corpus.manifest.get("inputs", [])
    if not inputs or any(i.get("format") != FORMAT for i in inputs):
        raise InputError(f"{corpus.path}: not built from block_records.npy (realm-prepare-corpus "
                         f"block_records.npy --format {FORMAT}); {where} embeds REALM's blocks in their order")
    if len(corpus) != count:
        raise InputError(f"{corpus.path}: holds {len(corpus)} blocks but {where} embeds {count}")
    if records_path and os.path.isfile(records_path):
        logger.info("checking that %s was built from %s", corpus.path, records_path)
        if sha256_files(records_path) != inputs[0].get("sha256"):
            raise InputError(f"{corpus.path}: built from another file than {records_path} (sha256 differs); "
                             f"build it from the block_records.npy that comes with the checkpoint")
