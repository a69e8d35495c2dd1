"""Build a CORPUS directory from raw documents: the block store REALM retrieves from (section 4.3).

Documents are read in the main process (so input errors name their file and line), cut into chunks,
and tokenized, blocked and tagged for salient spans by ``workers`` processes. Results are written in
input order, so the output is byte-identical for any number of workers. Everything is written into a
temporary directory renamed to CORPUS at the end (:mod:`realm_fairseq.atomic_io`).

Files of a CORPUS (see :mod:`realm_fairseq.data.corpus` for reading them):

=========================  ==================================================================
``blocks.bin/.idx``        fairseq mmap indexed dataset, one block a row: ``title [SEP] body``
``blocks.meta.npy``        (num_blocks, 4) int64: document, char_start, char_end, body_start
``documents.jsonl``        the documents, ``{"id", "title", "text"}``, one a line
``documents.offsets.npy``  byte offset of each line of ``documents.jsonl``
``examples.bin/.idx``      fairseq mmap indexed dataset of pre-training examples (sentences)
``examples.meta.npy``      (num_examples, 2) int64: source block, offset within the block
``examples.spans.npy``     (num_spans, 3) int64: example, start, end (salient spans, wordpieces)
``dict.txt``               fairseq dictionary: the vocab in order (fairseq id = vocab id + 4)
``manifest.json``          counts, settings, vocab and input checksums, ``corpus_checksum``
=========================  ==================================================================
"""
import json
import logging
import multiprocessing
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from itertools import chain, islice
from typing import List, Optional, Tuple

import numpy as np
from fairseq.data.indexed_dataset import MMapIndexedDataset, best_fitting_int_dtype
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from tqdm import tqdm

from realm_fairseq.atomic_io import atomic_directory, check_writable_target, sha256_files
from realm_fairseq.data import corpus as files
from realm_fairseq.data.blocking import BlockedChunk, TokenizedDocument, block_documents
from realm_fairseq.data.documents import FORMATS, InputError, read_documents, resolve_formats
from realm_fairseq.data.realm_blocks import FORMAT as REALM_BLOCKS, check_one_block_per_record
from realm_fairseq.data.salient_spans import MODES, SalientSpanFinder, make_finder
from realm_fairseq.data.sentences import SentenceRules
from realm_fairseq.data.vocab import FAIRSEQ_NSPECIAL, Vocab

logger = logging.getLogger(__name__)

#: documents handed to a worker at a time (large enough to amortise inter-process traffic)
CHUNK_CHARS = 1 << 20
MANIFEST_VERSION = 1
CORPUS_FORMAT = "realm-fairseq corpus"


@dataclass
class CorpusConfig(FairseqDataclass):
    format: ChoiceEnum(["auto", *FORMATS]) = field(
        default="auto",
        metadata={"help": "input format; auto detects from the file name (.npy: realm-blocks, REALM's "
                  "block_records.npy, one block per record), then the first line"},
    )
    block_size: int = field(
        default=288,
        metadata={"help": "most wordpieces in a block, title and [SEP] included (REALM: 288)"},
    )
    max_title_len: int = field(
        default=64, metadata={"help": "titles are cut to this many wordpieces (and to half the block size)"}
    )
    example_min_len: int = field(
        default=8, metadata={"help": "sentences shorter than this (in wordpieces) are no example"}
    )
    example_max_len: int = field(
        default=64,
        metadata={"help": "longest pre-training example in wordpieces; longer sentences are split"},
    )
    salient_spans: ChoiceEnum(list(MODES)) = field(
        default="auto",
        metadata={
            "help": "how salient spans are found: auto (spaCy NER + dates if the ner extra is "
            "installed, else dates), spacy, regex (dates only) or none"
        },
    )
    workers: int = field(
        default=min(8, os.cpu_count() or 1),
        metadata={"help": "worker processes (the output does not depend on it)"},
    )
    max_documents: int = field(
        default=0, metadata={"help": "read only the first N documents of the inputs, in order (0: all); "
                             "for trying the pipeline on a small corpus"}
    )
    force: bool = field(default=False, metadata={"help": "replace an existing CORPUS (never another file or directory, nor one holding "
                                             "an input)"})
    no_progress: bool = field(default=False, metadata={"help": "do not show a progress bar"})

    def validate(self) -> None:
        if self.block_size < 16:
            raise ValueError(f"--block-size {self.block_size}: expected at least 16 wordpieces")
        if self.max_title_len < 0:
            raise ValueError(f"--max-title-len {self.max_title_len}: expected 0 or more")
        if not 1 <= self.example_min_len <= self.example_max_len:
            raise ValueError("expected 1 <= --example-min-len <= --example-max-len")
        if self.workers < 1:
            raise ValueError(f"--workers {self.workers}: expected at least 1")
        if self.max_documents < 0:
            raise ValueError(f"--max-documents {self.max_documents}: expected 0 (all) or more")


# ---------------------------------------------------------------------------------------------------
# worker side: tokenize, find sentences and salient spans, cut blocks (one chunk of documents a call)


class _Worker:
    """Everything a worker needs, built once per process."""

    def __init__(self, cfg: CorpusConfig, vocab: Vocab, find_spans: SalientSpanFinder):
        self.cfg = cfg
        self.tokenizer = vocab.tokenizer()
        self.continuation = vocab.continuation_mask()
        self.sep_id = vocab.bert_id("[SEP]")
        self.sentence_rules = SentenceRules.for_vocab(vocab)
        self.find_spans = find_spans

    def process(self, docs: List[Tuple[str, str]]) -> BlockedChunk:
        """Blocks and examples of ``docs`` [(title, text)], indexed within the chunk."""
        tokenized = []
        title, title_ids = None, None
        for doc_title, text in docs:
            if doc_title != title:  # consecutive SQuAD paragraphs share their title
                title = doc_title
                title_ids = np.array(self.tokenizer.encode(title).ids, dtype=np.int64)
            enc = self.tokenizer.encode(text)
            tokenized.append(TokenizedDocument(
                text=text,
                ids=np.array(enc.ids, dtype=np.int64),
                offsets=np.fromiter(chain.from_iterable(enc.offsets), np.int64).reshape(-1, 2),
                title_ids=title_ids,
                salient_spans=self.find_spans(text),
            ))
        return block_documents(
            tokenized,
            sep_id=self.sep_id,
            continuation=self.continuation,
            sentence_rules=self.sentence_rules,
            block_size=self.cfg.block_size,
            max_title_len=min(self.cfg.max_title_len, self.cfg.block_size // 2),
            example_min_len=self.cfg.example_min_len,
            example_max_len=self.cfg.example_max_len,
        )


def _concat(arrays: List[np.ndarray], empty_shape: Tuple[int, ...]) -> np.ndarray:
    return np.concatenate(arrays).astype(np.int64) if arrays else np.zeros(empty_shape, np.int64)


_WORKER: Optional[_Worker] = None


def _init_worker(cfg: CorpusConfig, vocab: Vocab, find_spans: SalientSpanFinder) -> None:
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if _WORKER is None:  # a forked worker inherits the parent's
        _WORKER = _Worker(cfg, vocab, find_spans)


def _process_chunk(docs: List[Tuple[str, str]]) -> BlockedChunk:
    return _WORKER.process(docs)


# ---------------------------------------------------------------------------------------------------
# main side: read documents, hand out chunks, write results in order


class _TokenWriter:
    """Appends rows to a fairseq mmap indexed dataset (``PREFIX.bin`` + ``PREFIX.idx``)."""

    def __init__(self, prefix: str, dtype):
        self.prefix = prefix
        self.dtype = dtype
        self.file = open(prefix + ".bin", "wb")
        self.sizes: List[np.ndarray] = []

    def write(self, flat_ids: np.ndarray, sizes: np.ndarray) -> None:
        self.file.write((flat_ids + FAIRSEQ_NSPECIAL).astype(self.dtype).tobytes(order="C"))
        self.sizes.append(sizes)

    def close(self) -> int:
        self.file.close()
        sizes = np.concatenate(self.sizes) if self.sizes else np.zeros(0, np.int64)
        with MMapIndexedDataset.Index.writer(self.prefix + ".idx", self.dtype) as index:
            index.write(sizes.tolist())
        return len(sizes)


class _CorpusWriter:
    """Writes the files of a CORPUS into ``root`` as chunks arrive."""

    def __init__(self, root: str, vocab: Vocab):
        dtype = best_fitting_int_dtype(len(vocab) + FAIRSEQ_NSPECIAL + 1)  # +1: a task's <mask>
        self.root = root
        self.blocks = _TokenWriter(os.path.join(root, files.BLOCKS), dtype)
        self.examples = _TokenWriter(os.path.join(root, files.EXAMPLES), dtype)
        self.documents = open(os.path.join(root, files.DOCUMENTS), "w", encoding="utf-8")
        self.doc_offsets: List[int] = []
        self.block_meta: List[np.ndarray] = []
        self.example_meta: List[np.ndarray] = []
        self.spans: List[np.ndarray] = []
        self.token_counts = np.zeros(len(vocab), dtype=np.int64)
        self.num_docs = self.num_blocks = self.num_examples = 0
        self.empty_docs = 0

    def add_documents(self, docs) -> None:
        for doc in docs:
            self.doc_offsets.append(self.documents.tell())
            line = json.dumps({"id": doc.id, "title": doc.title, "text": doc.text}, ensure_ascii=False)
            self.documents.write(line + "\n")

    def add_chunk(self, chunk: BlockedChunk, num_docs: int) -> None:
        meta = chunk.block_meta + [self.num_docs, 0, 0, 0]
        self.empty_docs += num_docs - len(np.unique(meta[:, 0]))
        self.blocks.write(chunk.block_tokens, chunk.block_sizes)
        self.examples.write(chunk.example_tokens, chunk.example_sizes)
        self.block_meta.append(meta)
        self.example_meta.append(chunk.example_meta + [self.num_blocks, 0])
        self.spans.append(chunk.spans + [self.num_examples, 0, 0])
        self.token_counts += np.bincount(chunk.block_tokens, minlength=len(self.token_counts))
        self.num_docs += num_docs
        self.num_blocks += len(chunk.block_sizes)
        self.num_examples += len(chunk.example_sizes)

    def close(self, vocab: Vocab) -> None:
        self.documents.close()
        self.blocks.close()
        self.examples.close()
        save = lambda name, arrays, width: np.save(  # noqa: E731
            os.path.join(self.root, name), _concat(arrays, (0, width))
        )
        save(files.BLOCK_META, self.block_meta, 4)
        save(files.EXAMPLE_META, self.example_meta, 2)
        save(files.EXAMPLE_SPANS, self.spans, 3)
        np.save(os.path.join(self.root, files.DOCUMENT_OFFSETS), np.array(self.doc_offsets, np.int64))
        vocab.write_fairseq_dict(os.path.join(self.root, files.DICT), self.token_counts)


def _chunks(documents, limit_chars: int):
    """Group (input index, document) pairs into lists of about ``limit_chars`` characters."""
    chunk, size = [], 0
    for item in documents:
        chunk.append(item)
        size += len(item[1].text)
        if size >= limit_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _run(cfg: CorpusConfig, vocab: Vocab, finder: SalientSpanFinder, inputs, formats, root: str):
    """Process all documents into ``root``; returns the writer and per-input document counts."""
    writer = _CorpusWriter(root, vocab)
    docs_per_input = [0] * len(inputs)
    progress = tqdm(unit=" docs", desc="prepare corpus", disable=cfg.no_progress, mininterval=1.0)
    global _WORKER
    _WORKER = None
    _init_worker(cfg, vocab, finder)  # before forking, so workers inherit the tokenizer and NER model
    pool = None
    if cfg.workers > 1:
        ctx = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
        pool = ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(cfg, vocab, finder))
    pending = deque()

    def finish_one():
        result, n = pending.popleft()
        writer.add_chunk(result.get() if pool else result, n)
        progress.update(n)
        progress.set_postfix(blocks=writer.num_blocks, examples=writer.num_examples, refresh=False)

    try:
        documents = read_documents(inputs, formats)
        if cfg.max_documents:
            documents = islice(documents, cfg.max_documents)
        for chunk in _chunks(documents, CHUNK_CHARS // cfg.workers):
            for k, _ in chunk:
                docs_per_input[k] += 1
            writer.add_documents(doc for _, doc in chunk)
            payload = [(doc.title, doc.text) for _, doc in chunk]
            task = pool.apply_async(_process_chunk, (payload,)) if pool else _process_chunk(payload)
            pending.append((task, len(chunk)))
            while len(pending) > 2 * cfg.workers:
                finish_one()
        while pending:
            finish_one()
    finally:
        progress.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    writer.close(vocab)
    return writer, docs_per_input


def prepare_corpus(inputs: List[str], vocab_path: str, out: str, cfg: CorpusConfig) -> dict:
    """Build CORPUS ``out`` from ``inputs``; returns its manifest. See the module docstring."""
    cfg.validate()
    if not inputs:
        raise InputError("no input files given")
    check_writable_target(out, cfg.force)
    if cfg.force and os.path.lexists(out):
        check_replaceable(out, inputs + [vocab_path])
    vocab = Vocab.load(vocab_path)
    formats = resolve_formats(inputs, cfg.format)
    if REALM_BLOCKS in formats and len(inputs) > 1:
        raise InputError(f"{', '.join(inputs)}: a {REALM_BLOCKS} corpus is built from one block_records.npy alone, "
                         f"so that its blocks keep the records' order")
    finder = make_finder(cfg.salient_spans)
    if finder.mode == "regex" and cfg.salient_spans == "auto":
        logger.warning(
            "salient spans: %s. Install the ner extra (pip install 'realm-fairseq[ner]') for named "
            "entities as REALM masks them.", finder.description,
        )
    else:
        logger.info("salient spans: %s", finder.description)
    started = time.time()
    with atomic_directory(out, force=cfg.force) as root:
        writer, docs_per_input = _run(cfg, vocab, finder, inputs, formats, root)
        if writer.num_blocks == 0:
            raise InputError(f"{', '.join(inputs)}: no text found; expected documents with text")
        if formats == [REALM_BLOCKS]:
            check_one_block_per_record(_concat(writer.block_meta, (0, 4)), writer.num_docs,
                                       np.concatenate(writer.blocks.sizes), cfg.block_size, inputs[0])
        manifest = _manifest(cfg, vocab, inputs, formats, docs_per_input, writer, finder.description)
        with open(os.path.join(root, files.MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
    logger.info(
        "wrote %s: %d documents, %d blocks, %d examples, %d salient spans in %.1fs",
        out, writer.num_docs, writer.num_blocks, writer.num_examples,
        manifest["counts"]["salient_spans"], time.time() - started,
    )
    if writer.empty_docs:
        logger.warning("%d documents had no text and gave no block", writer.empty_docs)
    return manifest


def check_replaceable(out: str, inputs: List[str]) -> None:
    """Raise unless ``--force`` may replace ``out``: a CORPUS (recognised by its manifest) that holds none of
    ``inputs``."""
    if os.path.islink(out) or not os.path.isdir(out):
        raise FileExistsError(f"{out} exists and is not a CORPUS directory; --force replaces only a CORPUS")
    try:
        with open(os.path.join(out, files.MANIFEST), encoding="utf-8") as f:
            is_corpus = json.load(f).get("format") == CORPUS_FORMAT
    except (OSError, ValueError, AttributeError):
        is_corpus = False
    if not is_corpus:
        raise FileExistsError(f"{out} exists and is not a CORPUS (no {files.MANIFEST} of realm-prepare-corpus); "
                              f"--force replaces only a CORPUS")
    root = os.path.join(os.path.realpath(out), "")
    for path in inputs:
        if os.path.realpath(path).startswith(root):
            raise FileExistsError(f"{out} holds the input {path}; --force would delete it: write the CORPUS "
                                  f"elsewhere")


def _manifest(cfg, vocab, inputs, formats, docs_per_input, writer, span_source) -> dict:
    root = writer.root
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("workers", "force", "no_progress")}
    return {
        "format": CORPUS_FORMAT,
        "version": MANIFEST_VERSION,
        "settings": settings,
        "counts": {
            "documents": writer.num_docs,
            "empty_documents": writer.empty_docs,
            "blocks": writer.num_blocks,
            "examples": writer.num_examples,
            "salient_spans": int(sum(len(s) for s in writer.spans)),
            "wordpieces": int(writer.token_counts.sum()),
        },
        "salient_span_source": span_source,
        "vocab": {"path": os.path.abspath(vocab.path), "md5": vocab.md5, "size": len(vocab)},
        "dictionary": {
            "file": files.DICT,
            "fairseq_id": f"vocab id + {FAIRSEQ_NSPECIAL}",
            "aliases": {"<s>": "[CLS]", "<pad>": "[PAD]", "</s>": "[SEP]", "<unk>": "[UNK]"},
        },
        "inputs": [
            {"path": os.path.abspath(p), "format": f, "documents": n, "sha256": sha256_files(p)}
            for p, f, n in zip(inputs, formats, docs_per_input)
        ],
        "corpus_checksum": sha256_files(
            os.path.join(root, files.BLOCKS + ".bin"), os.path.join(root, files.BLOCKS + ".idx")
        ),
    }
