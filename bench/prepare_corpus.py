"""Corpus preparation throughput against the bare tokenizer on the same text, in the same run.

    python bench/prepare_corpus.py [--inputs FILE...] [--repeat 3]

Baselines: HF ``tokenizers`` WordPiece encoding every title and text, one document at a time in one
thread (what a single worker does), and ``encode_batch`` on all cores. Measured: ``prepare_corpus``
(salient spans by the date regex) with 1 and 2 workers, which also finds sentences, cuts blocks and
examples and writes the CORPUS. Goals: preparation costs <= 1.5x tokenizing alone, and 2 workers
run it >= 1.5x as fast as 1 (on 2 or more cores). The spaCy NER path is timed once for information.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

from goals import goal_line  # bench/goals.py (this script's directory)

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "examples", "realm", "data")


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", default=[os.path.join(DATA, "enwiki-sample-articles.jsonl.gz"),
                                                         os.path.join(DATA, "squad-v1.1-dev.json.gz")])
    parser.add_argument("--vocab", default=os.path.join(DATA, "bert-base-uncased-vocab.txt"))
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--no-spacy", action="store_true", help="skip the spaCy NER timing")
    args = parser.parse_args()

    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus
    from realm_fairseq.data.documents import read_documents, resolve_formats
    from realm_fairseq.data.vocab import Vocab

    docs = [d for _, d in read_documents(args.inputs, resolve_formats(args.inputs))]
    vocab = Vocab.load(args.vocab)
    tok = vocab.tokenizer()
    wordpieces = sum(len(tok.encode(d.title).ids) + len(tok.encode(d.text).ids) for d in docs)
    texts = [t for d in docs for t in (d.title, d.text)]

    def bare_one_thread():
        for t in texts:
            len(tok.encode(t).ids)

    def bare_batch():
        for e in tok.encode_batch(texts):
            len(e.ids)

    tmp = tempfile.mkdtemp(prefix="bench-prepare-")

    def prepare(workers, spans="regex"):
        out = os.path.join(tmp, "corpus")
        shutil.rmtree(out, ignore_errors=True)
        prepare_corpus(args.inputs, args.vocab, out,
                       CorpusConfig(workers=workers, salient_spans=spans, no_progress=True))

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = [
        ("tokenizer, 1 thread (baseline)", median_time(bare_one_thread, args.repeat)),
        (f"tokenizer, encode_batch ({cores} cores)", median_time(bare_batch, args.repeat)),
        ("prepare_corpus --workers 1", median_time(lambda: prepare(1), args.repeat)),
        ("prepare_corpus --workers 2", median_time(lambda: prepare(2), args.repeat)),
    ]
    if not args.no_spacy:
        rows.append(("prepare_corpus --workers 2, spaCy NER", median_time(lambda: prepare(2, "spacy"), 1)))
    shutil.rmtree(tmp, ignore_errors=True)

    base = rows[0][1]
    print(f"\n{len(docs)} documents, {wordpieces:,} wordpieces, {cores} cores, python {sys.version.split()[0]}")
    print(f"| {'what':42s} | {'seconds':>8s} | {'docs/s':>8s} | {'wordpieces/s':>12s} | {'x tokenizer':>11s} |")
    print(f"|{'-' * 44}|{'-' * 10}|{'-' * 10}|{'-' * 14}|{'-' * 13}|")
    for name, t in rows:
        print(f"| {name:42s} | {t:8.2f} | {len(docs) / t:8.0f} | {wordpieces / t:12,.0f} | {t / base:11.2f} |")
    one, two = rows[2][1], rows[3][1]
    print()
    print(goal_line("preparation / tokenizing alone (1 worker vs 1 thread)", one / base, "<=", 1.5))
    print(goal_line("speed-up from 1 to 2 workers", one / two, ">=", 1.5,
                    note="" if cores >= 2 else f" (only {cores} core: 2 workers cannot run side by side)"))


if __name__ == "__main__":
    main()
