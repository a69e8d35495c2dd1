"""The shards of a CORPUS prepared as a job array, and their merge into the CORPUS a single run writes.

``realm-prepare-corpus ... --out CORPUS --shard-id i --num-shards n`` reads every document of the inputs (so
that bad input is reported as a single run reports it) but keeps, tokenizes and tags only its own: the
documents are dealt to the shards in groups of ``--shard-group-size`` (group g to shard g mod n), so that
each shard holds about 1/n of the corpus and none needs the document count before it starts. A shard is a
directory ``CORPUS.shards/shard-I-of-N`` holding the files of a CORPUS (documents indexed within the shard),
``token_counts.npy`` and ``shard.json``, the record the merge checks: settings, vocab, inputs with their
checksums and total document counts, salient span source and counts. It is written through a temporary
directory (:mod:`realm_fairseq.atomic_io`), and a rerun skips a shard already written with the same record.

``--merge --num-shards n`` checks the n records against each other and against its own command line (a
mismatch is named: the shard, the field, both values), then writes CORPUS group by group, copying bytes
and shifting indices, so that it is byte-identical to a single run's. Its memory does not grow with the
corpus: shards are read through memory maps and the output arrays are written the same way.
"""
import json
import logging
import os
import shutil
import struct
from contextlib import ExitStack
from dataclasses import dataclass
from typing import BinaryIO, Dict, Iterator, List, Optional, Tuple

import numpy as np
from fairseq.data.indexed_dataset import MMapIndexedDataset, _dtype_header_code

from realm_fairseq.atomic_io import write_json
from realm_fairseq.data import corpus as files
from realm_fairseq.errors import InputError

logger = logging.getLogger(__name__)

SHARD_FORMAT = "realm-fairseq corpus shard"
SHARD_VERSION = 1
RECORD = "shard.json"
TOKEN_COUNTS = "token_counts.npy"
#: fields of a shard's record that every shard of one corpus must share with the merge
SHARED_FIELDS = ("num_shards", "shard_group_size", "settings", "vocab", "inputs", "salient_span_source")
COPY_BYTES = 1 << 26  # bytes copied at a time


class ShardMismatchError(InputError):
    """The shards given to a merge were not prepared by one sharded run of the merge's command line."""


def shards_dir(out: str) -> str:
    """Where the shards of CORPUS ``out`` are written: ``CORPUS.shards`` beside it."""
    return os.path.abspath(out).rstrip(os.sep) + ".shards"


def shard_path(out: str, shard_id: int, num_shards: int) -> str:
    return os.path.join(shards_dir(out), f"shard-{shard_id:05d}-of-{num_shards:05d}")


def is_own(index: int, shard_id: int, num_shards: int, group_size: int) -> bool:
    """Whether document ``index`` (0-based, in input order) belongs to shard ``shard_id``."""
    return (index // group_size) % num_shards == shard_id


def documents_of(total: int, shard_id: int, num_shards: int, group_size: int) -> int:
    """How many of ``total`` documents shard ``shard_id`` holds."""
    full_rounds, rest = divmod(total, group_size * num_shards)
    return full_rounds * group_size + min(max(rest - shard_id * group_size, 0), group_size)


def read_record(path: str) -> Optional[dict]:
    """The record of the shard directory ``path``; None if it holds no complete shard."""
    try:
        with open(os.path.join(path, RECORD), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ShardMismatchError(f"{os.path.join(path, RECORD)}: unreadable shard record ({e}); prepare this "
                                 f"shard again") from None


def write_record(root: str, record: dict, token_counts: np.ndarray) -> None:
    np.save(os.path.join(root, TOKEN_COUNTS), token_counts.astype(np.int64))
    write_json(os.path.join(root, RECORD), record)


def _differences(a, b, where: str = "") -> Iterator[Tuple[str, object, object]]:
    """(field path, a's value, b's value) for each leaf where ``a`` and ``b`` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            yield from _differences(a.get(key), b.get(key), f"{where}.{key}" if where else key)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _differences(x, y, f"{where}[{i}]")
    elif a != b:
        yield where, a, b


def first_difference(record: dict, expected: dict) -> Optional[str]:
    """``FIELD: VALUE, expected EXPECTED`` for the first shared field where ``record`` differs; None if none."""
    for name in SHARED_FIELDS:
        for field, got, want in _differences(record.get(name), expected.get(name), name):
            return f"{field} is {got!r}, expected {want!r}"
    return None


def check_records(out: str, num_shards: int, expected: dict) -> List[dict]:
    """The records of shards 0..num_shards-1 of ``out``, checked against ``expected`` (the merge's own record
    fields) and against the document counts their inputs imply."""
    root = shards_dir(out)
    paths = [shard_path(out, i, num_shards) for i in range(num_shards)]
    records = [read_record(p) for p in paths]
    missing = [i for i, r in enumerate(records) if r is None]
    if missing:
        others = sorted(set(os.listdir(root)) - {os.path.basename(p) for p in paths}) if os.path.isdir(root) else []
        raise ShardMismatchError(
            f"{root}: missing shard(s) {', '.join(map(str, missing))} of {num_shards}; run those shard jobs first"
            + (f" (also there: {', '.join(others)}, of another --num-shards?)" if others else ""))
    total = sum(i["documents"] for i in expected["inputs"])
    for i, (path, record) in enumerate(zip(paths, records)):
        if record.get("format") != SHARD_FORMAT or record.get("version") != SHARD_VERSION:
            raise ShardMismatchError(f"{path}: not a {SHARD_FORMAT} of version {SHARD_VERSION}")
        if record.get("shard_id") != i:
            raise ShardMismatchError(f"{path}: shard_id is {record.get('shard_id')!r}, expected {i}")
        difference = first_difference(record, expected)
        if difference:
            raise ShardMismatchError(f"{path}: shard {i} of {num_shards} does not match the merge: {difference}; "
                                     f"prepare it again with the merge's inputs and options")
        want = documents_of(total, i, num_shards, expected["shard_group_size"])
        if record["counts"]["documents"] != want:
            raise ShardMismatchError(f"{path}: shard {i} holds {record['counts']['documents']} documents, expected "
                                     f"{want} of the inputs' {total}")
    return records


def remove_shards(out: str, num_shards: int) -> None:
    """Remove the merged shards, and ``CORPUS.shards`` if nothing else is left in it."""
    for i in range(num_shards):
        shutil.rmtree(shard_path(out, i, num_shards), ignore_errors=True)
    try:
        os.rmdir(shards_dir(out))
    except OSError:
        pass  # another build's shards are there


# ---------------------------------------------------------------------------------------------------
# the merge: output written segment by segment (one group of documents of one shard each)


@dataclass
class Segment:
    shard: int
    docs: Tuple[int, int]  # documents [a, b) within the shard
    blocks: Tuple[int, int]
    examples: Tuple[int, int]
    spans: Tuple[int, int]


class _ShardFiles:
    """The files of one shard, memory-mapped."""

    def __init__(self, path: str):
        self.path = path
        load = lambda name: np.load(os.path.join(path, name), mmap_mode="r")  # noqa: E731
        self.doc_offsets = load(files.DOCUMENT_OFFSETS)
        self.block_meta = load(files.BLOCK_META)
        self.example_meta = load(files.EXAMPLE_META)
        self.spans = load(files.EXAMPLE_SPANS)
        self.blocks = MMapIndexedDataset.Index(os.path.join(path, files.BLOCKS + ".idx"))
        self.examples = MMapIndexedDataset.Index(os.path.join(path, files.EXAMPLES + ".idx"))

    def segment(self, shard: int, a: int, b: int) -> Segment:
        blocks = _search(self.block_meta, 0, a, b)
        examples = _search(self.example_meta, 0, *blocks)
        return Segment(shard, (a, b), blocks, examples, _search(self.spans, 0, *examples))


def _search(rows: np.ndarray, column: int, a: int, b: int) -> Tuple[int, int]:
    """The rows ``[i, j)`` whose ``column`` (sorted) lies in ``[a, b)``."""
    if len(rows) == 0:
        return 0, 0
    i, j = np.searchsorted(rows[:, column], [a, b])
    return int(i), int(j)


def segments(shards: List[_ShardFiles], docs: List[int], group_size: int) -> List[Segment]:
    """The segments of the merged corpus in order: group g of the documents is group g // n of shard g mod n."""
    n, out = len(shards), []
    for g in range(-(-sum(docs) // group_size)):
        s, k = g % n, g // n
        a = k * group_size
        out.append(shards[s].segment(s, a, min(a + group_size, docs[s])))
    return out


def _copy(src: BinaryIO, dst: BinaryIO, start: int, end: int) -> None:
    src.seek(start)
    while start < end:
        data = src.read(min(COPY_BYTES, end - start))
        if not data:
            raise InputError(f"{src.name}: ends at byte {start}, expected {end} bytes; prepare this shard again")
        dst.write(data)
        start += len(data)


def _byte_range(starts: np.ndarray, rows: Tuple[int, int], file_size: int) -> Tuple[int, int]:
    """Bytes ``[start, end)`` of rows ``[a, b)`` of a file whose row i starts at byte ``starts[i]``."""
    bound = lambda i: int(starts[i]) if i < len(starts) else file_size  # noqa: E731
    return bound(rows[0]), bound(rows[1])


def _write_tokens(root: str, shards: List[_ShardFiles], parts: List[Segment], name: str, dtype) -> None:
    """``PREFIX.bin`` by copying each segment's rows, ``PREFIX.idx`` as fairseq's writer writes it."""
    rows_of = lambda seg: seg.blocks if name == files.BLOCKS else seg.examples  # noqa: E731
    index_of = lambda seg: getattr(shards[seg.shard], "blocks" if name == files.BLOCKS else "examples")  # noqa: E731
    with ExitStack() as stack, open(os.path.join(root, name + ".bin"), "wb") as out:
        sources = [stack.enter_context(open(os.path.join(s.path, name + ".bin"), "rb")) for s in shards]
        sizes = [os.fstat(f.fileno()).st_size for f in sources]
        for seg in parts:
            _copy(sources[seg.shard], out, *_byte_range(index_of(seg)._pointers, rows_of(seg), sizes[seg.shard]))
    count = sum(b - a for a, b in map(rows_of, parts))
    with open(os.path.join(root, name + ".idx"), "wb") as idx:
        idx.write(MMapIndexedDataset.Index._HDR_MAGIC + struct.pack("<Q", 1)
                  + struct.pack("<B", _dtype_header_code(dtype)) + struct.pack("<Q", count))
        for seg in parts:
            a, b = rows_of(seg)
            idx.write(np.asarray(index_of(seg).sizes[a:b], np.int32).tobytes())
        address = 0
        for seg in parts:
            a, b = rows_of(seg)
            step = np.asarray(index_of(seg).sizes[a:b], np.int64) * np.dtype(dtype).itemsize
            idx.write((address + np.cumsum(step) - step).astype(np.int64).tobytes())
            address += int(step.sum())


def _rows_file(path: str, rows: int, width: Optional[int]) -> np.ndarray:
    """An int64 ``.npy`` of ``rows`` (x ``width``) to fill, bytes as ``np.save`` writes them."""
    shape = (rows,) if width is None else (rows, width)
    if rows == 0:
        np.save(path, np.zeros(shape, np.int64))
        return np.zeros(shape, np.int64)
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=shape)


def _write_rows(root: str, shards: List[_ShardFiles], parts: List[Segment]) -> None:
    """The ``.npy`` files: each segment's rows with documents, blocks and examples renumbered."""
    count = lambda attr: sum(getattr(p, attr)[1] - getattr(p, attr)[0] for p in parts)  # noqa: E731
    out = {
        files.DOCUMENT_OFFSETS: _rows_file(os.path.join(root, files.DOCUMENT_OFFSETS), count("docs"), None),
        files.BLOCK_META: _rows_file(os.path.join(root, files.BLOCK_META), count("blocks"), 4),
        files.EXAMPLE_META: _rows_file(os.path.join(root, files.EXAMPLE_META), count("examples"), 2),
        files.EXAMPLE_SPANS: _rows_file(os.path.join(root, files.EXAMPLE_SPANS), count("spans"), 3),
    }
    at = dict(docs=0, blocks=0, examples=0, spans=0, bytes=0)
    with ExitStack() as stack, open(os.path.join(root, files.DOCUMENTS), "wb") as documents:
        sources = [stack.enter_context(open(os.path.join(s.path, files.DOCUMENTS), "rb")) for s in shards]
        sizes = [os.fstat(f.fileno()).st_size for f in sources]
        for seg in parts:
            shard = shards[seg.shard]
            (a, b), (ba, bb), (ea, eb), (sa, sb) = seg.docs, seg.blocks, seg.examples, seg.spans
            start, end = _byte_range(shard.doc_offsets, seg.docs, sizes[seg.shard])
            _copy(sources[seg.shard], documents, start, end)
            out[files.DOCUMENT_OFFSETS][at["docs"]:at["docs"] + b - a] = shard.doc_offsets[a:b] - start + at["bytes"]
            out[files.BLOCK_META][at["blocks"]:at["blocks"] + bb - ba] = (
                shard.block_meta[ba:bb] + [at["docs"] - a, 0, 0, 0])
            out[files.EXAMPLE_META][at["examples"]:at["examples"] + eb - ea] = (
                shard.example_meta[ea:eb] + [at["blocks"] - ba, 0])
            out[files.EXAMPLE_SPANS][at["spans"]:at["spans"] + sb - sa] = (
                shard.spans[sa:sb] + [at["examples"] - ea, 0, 0])
            for key, n in (("docs", b - a), ("blocks", bb - ba), ("examples", eb - ea), ("spans", sb - sa),
                           ("bytes", end - start)):
                at[key] += n
    for array in out.values():
        if isinstance(array, np.memmap):
            array.flush()


def write_merged(root: str, out: str, records: List[dict], group_size: int, vocab, dtype) -> Dict[str, int]:
    """Write the merged files of the shards of ``out`` into ``root``; returns the summed counts."""
    num_shards = len(records)
    shards = [_ShardFiles(shard_path(out, i, num_shards)) for i in range(num_shards)]
    parts = segments(shards, [r["counts"]["documents"] for r in records], group_size)
    _write_tokens(root, shards, parts, files.BLOCKS, dtype)
    _write_tokens(root, shards, parts, files.EXAMPLES, dtype)
    _write_rows(root, shards, parts)
    token_counts = sum(np.load(os.path.join(s.path, TOKEN_COUNTS)) for s in shards)
    vocab.write_fairseq_dict(os.path.join(root, files.DICT), token_counts)
    counts = {key: sum(r["counts"][key] for r in records) for key in records[0]["counts"]}
    if counts["wordpieces"] != int(token_counts.sum()):
        raise ShardMismatchError(f"{shards_dir(out)}: the shards' {TOKEN_COUNTS} sum to {int(token_counts.sum())} "
                                 f"wordpieces, their records to {counts['wordpieces']}; prepare them again")
    return counts
