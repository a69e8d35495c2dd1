"""Corpus preparation throughput against the bare tokenizer on the same text, in the same run.

    python bench/prepare_corpus.py [--inputs FILE...] [--repeat 3]

Baselines: HF ``tokenizers`` WordPiece encoding every title and text, one document at a time in one
thread (what a single worker does), and ``encode_batch`` on all cores. Measured: ``prepare_corpus``
(salient spans by the date regex) with 1 and 2 workers, which also finds sentences, cuts blocks and
examples and writes the CORPUS. Goals: preparation costs <= 1.5x tokenizing alone, and 2 workers
run it >= 1.5x as fast as 1 (on 2 or more cores).

spaCy NER (timed once each, on ``--spacy-documents`` documents): ``prepare_corpus --salient-spans spacy`` with 1
and 2 workers (each worker pipes its documents through ``nlp.pipe``, ner alone), and spaCy by itself: the whole
pipeline one text at a time with tagger and parser excluded (what the builder ran before: ``tok2vec`` still ran),
``nlp.pipe`` batched with ner alone, and spaCy's own ``n_process=2``. Every row gives documents/s and
documents/s per core (the processes it runs, at most the cores there are).
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
    parser.add_argument("--no-spacy", action="store_true", help="skip the spaCy NER timings")
    parser.add_argument("--spacy-documents", type=int, default=600, help="documents the spaCy rows read")
    args = parser.parse_args()

    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus
    from realm_fairseq.data.documents import read_documents, resolve_formats
    from realm_fairseq.data.vocab import Vocab

    docs = [d for _, d in read_documents(args.inputs, resolve_formats(args.inputs))]
    vocab = Vocab.load(args.vocab)
    tok = vocab.tokenizer()
    sizes = [len(tok.encode(d.title).ids) + len(tok.encode(d.text).ids) for d in docs]  # wordpieces a document
    wordpieces = sum(sizes)
    texts = [t for d in docs for t in (d.title, d.text)]

    def bare_one_thread():
        for t in texts:
            len(tok.encode(t).ids)

    def bare_batch():
        for e in tok.encode_batch(texts):
            len(e.ids)

    tmp = tempfile.mkdtemp(prefix="bench-prepare-")

    def prepare(workers, spans="regex", inputs=None, limit=0):
        out = os.path.join(tmp, "corpus")
        shutil.rmtree(out, ignore_errors=True)
        prepare_corpus(inputs or args.inputs, args.vocab, out,
                       CorpusConfig(workers=workers, salient_spans=spans, no_progress=True, max_documents=limit))

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = len(docs)
    rows = [  # (what, seconds, documents, processes)
        ("tokenizer, 1 thread (baseline)", median_time(bare_one_thread, args.repeat), n, 1),
        (f"tokenizer, encode_batch ({cores} cores)", median_time(bare_batch, args.repeat), n, cores),
        ("prepare_corpus --workers 1", median_time(lambda: prepare(1), args.repeat), n, 1),
        ("prepare_corpus --workers 2", median_time(lambda: prepare(2), args.repeat), n, 2),
    ]
    if not args.no_spacy:
        rows += spacy_rows(docs[:args.spacy_documents], lambda w: prepare(w, "spacy", limit=args.spacy_documents))
    shutil.rmtree(tmp, ignore_errors=True)

    base = rows[0][1] / rows[0][2]
    print(f"\n{n} documents, {wordpieces:,} wordpieces, {cores} cores, python {sys.version.split()[0]}")
    print(f"| {'what':48s} | {'docs':>5s} | {'seconds':>8s} | {'docs/s':>8s} | {'docs/s/core':>11s} | "
          f"{'wordpieces/s/core':>17s} | {'x tokenizer':>11s} |")
    print(f"|{'-' * 50}|{'-' * 7}|{'-' * 10}|{'-' * 10}|{'-' * 13}|{'-' * 19}|{'-' * 13}|")
    for name, t, count, procs in rows:
        per_core = t * min(procs, cores)  # core-seconds
        print(f"| {name:48s} | {count:5d} | {t:8.2f} | {count / t:8.1f} | {count / per_core:11.1f} | "
              f"{sum(sizes[:count]) / per_core:17,.0f} | {t / count / base:11.2f} |")
    one, two = rows[2][1], rows[3][1]
    print()
    print(goal_line("preparation / tokenizing alone (1 worker vs 1 thread)", one / rows[0][1], "<=", 1.5))
    note = "" if cores >= 2 else f" (only {cores} core: 2 workers cannot run side by side)"
    print(goal_line("speed-up from 1 to 2 workers", one / two, ">=", 1.5, note=note))
    if len(rows) > 4:  # the spaCy rows
        print(goal_line("speed-up from 1 to 2 workers, spaCy NER", rows[4][1] / rows[5][1], ">=", 1.5, note=note))


def spacy_rows(docs, prepare):
    """The spaCy rows: prepare_corpus with spaCy NER on 1 and 2 workers, then spaCy alone three ways."""
    from realm_fairseq.data.salient_spans import SPACY_MODELS, UNUSED_COMPONENTS

    import importlib

    module = next((importlib.import_module(m) for m in SPACY_MODELS if importlib.util.find_spec(m)), None)
    if module is None:
        print("(no spaCy English model installed: the spaCy rows are left out)")
        return []
    texts = [d.text for d in docs]
    before = module.load(exclude=[c for c in UNUSED_COMPONENTS if c != "tok2vec"])
    ner = module.load(exclude=list(UNUSED_COMPONENTS))
    n = len(texts)
    return [
        ("prepare_corpus --workers 1, spaCy NER", median_time(lambda: prepare(1), 1), n, 1),
        ("prepare_corpus --workers 2, spaCy NER", median_time(lambda: prepare(2), 1), n, 2),
        ("spaCy alone: nlp(text) with tok2vec (before)", median_time(lambda: [before(t) for t in texts], 1), n, 1),
        ("spaCy alone: nlp.pipe(batch 64), ner only", median_time(lambda: list(ner.pipe(texts, batch_size=64)), 1),
         n, 1),
        ("spaCy alone: nlp.pipe(n_process=2), ner only",
         median_time(lambda: list(ner.pipe(texts, batch_size=64, n_process=2)), 1), n, 2),
    ]


if __name__ == "__main__":
    main()
