"""Build a CORPUS directory from raw documents: the block store REALM retrieves from (section 4.3).

Documents are read in the main process (so input errors name their file and line), cut into chunks,
and tokenized, blocked and tagged for salient spans by ``workers`` processes (each pipes its chunk through
spaCy in batches). Results are written in input order, so the output is byte-identical for any number of
workers. Everything is written into a temporary directory renamed to CORPUS at the end
(:mod:`realm_fairseq.atomic_io`). For a job array, ``shard_id``/``num_shards`` prepare one shard of the
documents each and ``merge`` writes the CORPUS a single run writes (:mod:`realm_fairseq.data.corpus_shards`).

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

from realm_fairseq.atomic_io import atomic_directory, check_writable_target, sha256_files, write_json
from realm_fairseq.data import corpus as files
from realm_fairseq.data import corpus_shards as shards
from realm_fairseq.data.blocking import BlockedChunk, TokenizedDocument, block_documents
from realm_fairseq.data.documents import FORMATS, InputError, read_documents, resolve_formats
from realm_fairseq.data.realm_blocks import FORMAT as REALM_BLOCKS, check_one_block_per_record
from realm_fairseq.data.salient_spans import DEFAULT_BATCH_SIZE, MODES, SalientSpanFinder, make_finder
from realm_fairseq.data.sentences import SentenceRules
from realm_fairseq.data.vocab import FAIRSEQ_NSPECIAL, Vocab

logger = logging.getLogger(__name__)

#: documents handed to a worker at a time (large enough to amortise inter-process traffic)
CHUNK_CHARS = 1 << 20
MANIFEST_VERSION = 1
CORPUS_FORMAT = "realm-fairseq corpus"
#: options that change how a CORPUS is made, not what it holds (left out of its manifest's settings)
RUN_OPTIONS = ("workers", "spacy_batch_size", "shard_id", "num_shards", "shard_group_size", "merge", "force",
               "no_progress")


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
    spacy_batch_size: int = field(
        default=DEFAULT_BATCH_SIZE, metadata={"help": "texts in a batch of spaCy's nlp.pipe (each worker pipes its "
                                              "own documents; only the ner component runs)"}
    )
    shard_id: int = field(
        default=0, metadata={"help": "the shard to prepare, with --num-shards (a job array's task id); it is "
                             "written to CORPUS.shards and a rerun skips it once written"}
    )
    num_shards: int = field(
        default=1, metadata={"help": "shards the documents are prepared in (groups of --shard-group-size "
                             "documents dealt in turn), then joined by --merge"}
    )
    shard_group_size: int = field(
        default=1000, metadata={"help": "documents dealt to a shard at a time (the same for every shard and "
                                "the merge)"}
    )
    merge: bool = field(
        default=False, metadata={"help": "join the --num-shards prepared shards into CORPUS, the bytes a single "
                                 "run writes; the shards are removed"}
    )
    max_documents: int = field(
        default=0, metadata={"help": "read only the first N documents of the inputs, in order (0: all); "
                             "for trying the pipeline on a small corpus"}
    )
    force: bool = field(default=False, metadata={"help": "replace an existing CORPUS (never another file or "
                                                         "directory, nor one holding an input)"})
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
        if self.spacy_batch_size < 1:
            raise ValueError(f"--spacy-batch-size {self.spacy_batch_size}: expected at least 1")
        if self.num_shards < 1:
            raise ValueError(f"--num-shards {self.num_shards}: expected at least 1")
        if not 0 <= self.shard_id < self.num_shards:
            raise ValueError(f"--shard-id {self.shard_id} is not in 0..{self.num_shards - 1}")
        if self.shard_group_size < 1:
            raise ValueError(f"--shard-group-size {self.shard_group_size}: expected at least 1")
        if self.merge and self.num_shards == 1:
            raise ValueError("--merge joins the shards of a sharded run: give their --num-shards (at least 2)")
        if self.merge and self.shard_id:
            raise ValueError("--merge joins all shards: drop --shard-id")

    @property
    def sharded(self) -> bool:
        """Whether this run prepares one shard (not the CORPUS, not the merge)."""
        return self.num_shards > 1 and not self.merge

    def settings(self) -> dict:
        """The options that decide what the CORPUS holds, as its manifest records them."""
        return {k: v for k, v in asdict(self).items() if k not in RUN_OPTIONS}


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
        spans = self.find_spans.find_all([text for _, text in docs])
        for (doc_title, text), salient in zip(docs, spans):
            if doc_title != title:  # consecutive SQuAD paragraphs share their title
                title = doc_title
                title_ids = np.array(self.tokenizer.encode(title).ids, dtype=np.int64)
            enc = self.tokenizer.encode(text)
            tokenized.append(TokenizedDocument(
                text=text,
                ids=np.array(enc.ids, dtype=np.int64),
                offsets=np.fromiter(chain.from_iterable(enc.offsets), np.int64).reshape(-1, 2),
                title_ids=title_ids,
                salient_spans=salient,
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

    def counts(self) -> dict:
        """The counts a manifest (or a shard's record) holds, in its order."""
        return {
            "documents": self.num_docs,
            "empty_documents": self.empty_docs,
            "blocks": self.num_blocks,
            "examples": self.num_examples,
            "salient_spans": int(sum(len(s) for s in self.spans)),
            "wordpieces": int(self.token_counts.sum()),
        }


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


def _own_documents(documents, cfg: CorpusConfig, seen_per_input: List[int]):
    """The (input index, document) pairs of this run's shard (all of them unsharded); counts every document
    read in ``seen_per_input``."""
    if cfg.max_documents:
        documents = islice(documents, cfg.max_documents)
    for index, (k, doc) in enumerate(documents):
        seen_per_input[k] += 1
        if not cfg.sharded or shards.is_own(index, cfg.shard_id, cfg.num_shards, cfg.shard_group_size):
            yield k, doc


def _run(cfg: CorpusConfig, vocab: Vocab, finder: SalientSpanFinder, inputs, formats, root: str):
    """Process this run's documents into ``root``; returns the writer and, per input, the documents written
    and the documents read."""
    writer = _CorpusWriter(root, vocab)
    docs_per_input, seen_per_input = [0] * len(inputs), [0] * len(inputs)
    what = f"shard {cfg.shard_id} of {cfg.num_shards}" if cfg.sharded else "prepare corpus"
    progress = tqdm(unit=" docs", desc=what, disable=cfg.no_progress, mininterval=1.0)
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
        documents = _own_documents(read_documents(inputs, formats), cfg, seen_per_input)
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
    return writer, docs_per_input, seen_per_input


def prepare_corpus(inputs: List[str], vocab_path: str, out: str, cfg: CorpusConfig) -> dict:
    """Build CORPUS ``out`` from ``inputs``; returns its manifest. See the module docstring. With
    ``cfg.num_shards`` > 1, prepare shard ``cfg.shard_id`` (returns its record) or, with ``cfg.merge``, join
    the shards into ``out``."""
    cfg.validate()
    if not inputs:
        raise InputError("no input files given")
    check_writable_target(out, cfg.force)
    if cfg.force and os.path.lexists(out):
        check_replaceable(out, inputs + [vocab_path])
    vocab = Vocab.read(vocab_path)
    formats = resolve_formats(inputs, cfg.format)
    if REALM_BLOCKS in formats and len(inputs) > 1:
        raise InputError(f"{', '.join(inputs)}: a {REALM_BLOCKS} corpus is built from one block_records.npy alone, "
                         f"so that its blocks keep the records' order")
    if cfg.merge:
        return _merge(cfg, vocab, inputs, formats, out)
    finder = _finder(cfg)
    if cfg.sharded:
        return _prepare_shard(cfg, vocab, finder, inputs, formats, out)
    started = time.time()
    with atomic_directory(out, force=cfg.force) as root:
        writer, docs_per_input, _ = _run(cfg, vocab, finder, inputs, formats, root)
        if writer.num_blocks == 0:
            raise InputError(f"{', '.join(inputs)}: no text found; expected documents with text")
        if formats == [REALM_BLOCKS]:
            check_one_block_per_record(_concat(writer.block_meta, (0, 4)), writer.num_docs,
                                       np.concatenate(writer.blocks.sizes), cfg.block_size, inputs[0])
        manifest = _manifest(cfg, vocab, inputs, formats, docs_per_input, writer.counts(), finder.description, root)
        write_json(os.path.join(root, files.MANIFEST), manifest)
    _log_written(out, manifest["counts"], started)
    return manifest


def _finder(cfg: CorpusConfig) -> SalientSpanFinder:
    finder = make_finder(cfg.salient_spans, cfg.spacy_batch_size)
    if finder.mode == "regex" and cfg.salient_spans == "auto":
        logger.warning(
            "salient spans: %s. Install the ner extra (pip install 'realm-fairseq[ner]') for named "
            "entities as REALM masks them.", finder.description,
        )
    else:
        logger.info("salient spans: %s", finder.description)
    return finder


def _log_written(out: str, counts: dict, started: float) -> None:
    logger.info("wrote %s: %d documents, %d blocks, %d examples, %d salient spans in %.1fs", out,
                counts["documents"], counts["blocks"], counts["examples"], counts["salient_spans"],
                time.time() - started)
    if counts["empty_documents"]:
        logger.warning("%d documents had no text and gave no block", counts["empty_documents"])


def _shared_record(cfg: CorpusConfig, vocab: Vocab, inputs, formats, docs_per_input, span_source: str) -> dict:
    """What every shard of one sharded run records alike (checked by the merge)."""
    return {
        "num_shards": cfg.num_shards,
        "shard_group_size": cfg.shard_group_size,
        "settings": cfg.settings(),
        "vocab": {"md5": vocab.md5, "size": len(vocab)},
        "inputs": [{"path": os.path.abspath(p), "format": f, "documents": n, "sha256": sha256_files(p)}
                   for p, f, n in zip(inputs, formats, docs_per_input)],
        "salient_span_source": span_source,
    }


def _prepare_shard(cfg: CorpusConfig, vocab: Vocab, finder: SalientSpanFinder, inputs, formats, out: str) -> dict:
    """Prepare shard ``cfg.shard_id`` into ``CORPUS.shards`` (skipped if already written alike); its record."""
    path = shards.shard_path(out, cfg.shard_id, cfg.num_shards)
    old = shards.read_record(path)
    if old is not None:
        shared = _shared_record(cfg, vocab, inputs, formats, [i["documents"] for i in old["inputs"]],
                                finder.description)
        difference = shards.first_difference(old, shared)
        if difference is None:
            logger.info("%s: shard %d of %d is already prepared: skipped", path, cfg.shard_id, cfg.num_shards)
            return old
        logger.warning("%s: prepared with other options or inputs (%s): prepared again", path, difference)
    started = time.time()
    with atomic_directory(path, force=True) as root:
        writer, _, seen_per_input = _run(cfg, vocab, finder, inputs, formats, root)
        record = {"format": shards.SHARD_FORMAT, "version": shards.SHARD_VERSION, "shard_id": cfg.shard_id,
                  **_shared_record(cfg, vocab, inputs, formats, seen_per_input, finder.description),
                  "counts": writer.counts()}
        shards.write_record(root, record, writer.token_counts)
    _log_written(path, record["counts"], started)
    return record


def _merge(cfg: CorpusConfig, vocab: Vocab, inputs, formats, out: str) -> dict:
    """Join the shards of ``out`` into the CORPUS a single run writes; returns its manifest."""
    started = time.time()
    first = shards.read_record(shards.shard_path(out, 0, cfg.num_shards)) or {}
    totals = [i.get("documents") for i in first.get("inputs", [])]
    totals = totals if len(totals) == len(inputs) else [0] * len(inputs)  # a mismatch is named below
    expected = _shared_record(cfg, vocab, inputs, formats, totals, "")
    expected["salient_span_source"] = first.get("salient_span_source")  # the shards must agree with shard 0
    records = shards.check_records(out, cfg.num_shards, expected)
    dtype = best_fitting_int_dtype(len(vocab) + FAIRSEQ_NSPECIAL + 1)  # as _CorpusWriter
    logger.info("merging %d shards of %s into %s", cfg.num_shards, shards.shards_dir(out), out)
    with atomic_directory(out, force=cfg.force) as root:
        counts = shards.write_merged(root, out, records, cfg.shard_group_size, vocab, dtype)
        if counts["blocks"] == 0:
            raise InputError(f"{', '.join(inputs)}: no text found; expected documents with text")
        if formats == [REALM_BLOCKS]:
            sizes = MMapIndexedDataset.Index(os.path.join(root, files.BLOCKS + ".idx")).sizes
            check_one_block_per_record(np.load(os.path.join(root, files.BLOCK_META), mmap_mode="r"),
                                       counts["documents"], sizes, cfg.block_size, inputs[0])
        manifest = _manifest(cfg, vocab, inputs, formats, totals, counts, first["salient_span_source"], root)
        write_json(os.path.join(root, files.MANIFEST), manifest)
    shards.remove_shards(out, cfg.num_shards)
    _log_written(out, counts, started)
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


def _manifest(cfg, vocab, inputs, formats, docs_per_input, counts, span_source, root) -> dict:
    return {
        "format": CORPUS_FORMAT,
        "version": MANIFEST_VERSION,
        "settings": cfg.settings(),
        "counts": counts,
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
