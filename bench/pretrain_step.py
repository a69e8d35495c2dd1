"""A REALM training step against its parts measured alone, in the same run.

    python bench/pretrain_step.py [--arch realm_tiny] [--batch-size 8] [--topk 8] [--steps 10] [--device cpu]
                                  [--dtype fp32|bf16] [--profile 20]

The step is the realm_mlm criterion's forward and backward on a batch of masked sentences from the
shipped Wikipedia corpus, retrieving blocks drawn evenly from it (see :func:`pretraining`). Its parts, each
timed alone on the same batches: query embedding (forward + backward), the MIPS search, re-embedding the K
candidates (forward + backward), and the reader's forward + backward on the K joined sequences with the
masked-LM loss. Overhead = step / sum of the parts (goal <= 1.15: batching, gathering and the marginal cost
almost nothing). The reader part alone is a plain masked-LM step on the same joined sequences, the
baseline the step is also compared with. ``--dtype bf16`` runs the model in bfloat16, as
``fairseq-train --bf16`` does; ``--profile N`` then prints the N functions the step spends most time in.
"""
import argparse
import cProfile
import os
import pstats
import shutil
import statistics
import tempfile
import time

import numpy as np
import torch

from goals import goal_line, info_line  # bench/goals.py (this script's directory)

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "examples", "realm", "data")


def timed(fn, batches, device):
    """Median seconds of ``fn(batch)`` over the batches, after an untimed pass over all of them: every
    batch has its own shapes, and a GPU pays for the first call at each shape (kernel choice, memory)."""
    for batch in batches:
        fn(batch)
    times = []
    for batch in batches:
        start = time.perf_counter()
        fn(batch)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def shipped_corpus(tmp: str):
    """The shipped Wikipedia articles prepared as a CORPUS under ``tmp`` (blocks of up to 288 wordpieces)."""
    from realm_fairseq.data.corpus import BlockCorpus
    from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus

    prepare_corpus([os.path.join(DATA, "enwiki-sample-articles.jsonl.gz")],
                   os.path.join(DATA, "bert-base-uncased-vocab.txt"), os.path.join(tmp, "corpus"),
                   CorpusConfig(workers=2, salient_spans="regex", no_progress=True))
    return BlockCorpus(os.path.join(tmp, "corpus"))


def build_model(arch: str, corpus, device: str, dtype: str, reader: bool, **options):
    """A ``realm`` model of architecture ``arch`` with random weights and no dropout (``options`` set other
    model options), in ``dtype`` on ``device``; with the knowledge-augmented encoder (``reader``) as
    realm_pretrain grows it, or the retriever alone as realm_ict trains it."""
    from fairseq.models import ARCH_CONFIG_REGISTRY

    from realm_fairseq.models.config import RealmConfig
    from realm_fairseq.models.realm import RealmModel

    model_args = argparse.Namespace(dropout=0.0, attention_dropout=0.0, **options)
    ARCH_CONFIG_REGISTRY[arch](model_args)
    task = argparse.Namespace(source_dictionary=corpus.dictionary)
    torch.manual_seed(0)  # the same weights in every run
    model = RealmModel.build_model(RealmConfig(**vars(model_args)), task)
    if reader:
        model.register_reader()  # as realm_pretrain does
    model = model.to(device)
    return model.bfloat16() if dtype == "bf16" else model


def sample_batches(ds, count: int, batch_size: int, device: str) -> list:
    """``count`` batches of ``batch_size`` items of ``ds`` drawn without replacement (a fixed seed), collated
    and on ``device``."""
    rng = np.random.RandomState(0)
    batches = []
    for _ in range(count):
        batch = ds.collater([ds[int(i)] for i in rng.choice(len(ds), batch_size, replace=False)])
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        batch["net_input"] = {k: v.to(device) for k, v in batch["net_input"].items()}
        batches.append(batch)
    return batches


def pretraining(model, corpus, topk: int):
    """The retriever (``topk`` blocks and the null document) and the realm_mlm criterion a REALM pre-training
    step of ``model`` runs with. The index holds seeded random vectors, so that the candidates are blocks
    drawn evenly from the corpus, as long as its blocks are (median 274 wordpieces in the shipped one): the
    model's own random-weight embeddings would retrieve its shortest blocks (9-50 wordpieces, article ends),
    and a step would be timed on sequences a trained retriever seldom returns. The step re-embeds its
    candidates with the model, as training does."""
    from realm_fairseq.criterions.realm_mlm import RealmMlmCriterion
    from realm_fairseq.retrieval.mips import MipsIndex
    from realm_fairseq.retrieval.retriever import Retriever

    vectors = np.random.default_rng(0).standard_normal((len(corpus), model.doc_embedder.dim), dtype=np.float32)
    task = argparse.Namespace(source_dictionary=corpus.dictionary)
    task.retriever = Retriever(corpus, MipsIndex.build(vectors), topk, null_document=True)
    return task.retriever, RealmMlmCriterion(task)


def masked_batches(corpus, count: int, batch_size: int, device: str) -> list:
    """``count`` batches of masked pre-training sentences of ``corpus`` (:func:`sample_batches`)."""
    from realm_fairseq.data.masking import MaskedExamplesDataset

    ds = MaskedExamplesDataset(corpus.examples, np.arange(len(corpus.examples)), corpus.dictionary)
    return sample_batches(ds, count, batch_size, device)


def criterion_step(model, criterion):
    """A training step without the optimizer: ``criterion``'s forward and backward on one batch."""
    def step(batch):
        model.zero_grad()
        loss, _, _ = criterion(model, batch)
        loss.backward()
    return step


def print_parts(parts: dict, step_name: str, total: float) -> None:
    """The table of the parts' and the step's median seconds (as ms), and the overhead beside its goal."""
    print("| part | ms |\n|---|---|")
    for name, t in parts.items():
        print(f"| {name} | {1000 * t:.1f} |")
    print(f"| sum of the parts | {1000 * sum(parts.values()):.1f} |")
    print(f"| {step_name} | {1000 * total:.1f} |")
    print("\n" + goal_line("overhead: step / sum of parts", total / sum(parts.values()), "<=", 1.15))


def step_parser(doc: str, arch: str = "realm_tiny", batch_size: int = 8, topk: int = 8, steps: int = 10,
                batch_help: str = "masked sentences a step") -> argparse.ArgumentParser:
    """The options of a benchmark that times training steps (``topk`` 0: it retrieves nothing, no --topk)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default=arch, help="realm architecture (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=batch_size, help=f"{batch_help} (default: %(default)s)")
    if topk:
        parser.add_argument("--topk", type=int, default=topk, help="blocks retrieved a sentence (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=steps, help="batches measured (default: %(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device (default: %(default)s)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                        help="model precision, as fairseq-train --bf16 (default: %(default)s)")
    return parser


def main():
    parser = step_parser(__doc__)
    parser.add_argument("--profile", type=int, default=0, help="print the N functions the step spends most in")
    args = parser.parse_args()

    import realm_fairseq  # noqa: F401  (registers the task, model and criterion)
    from realm_fairseq.data.corpus import with_cls_sep_batch
    from realm_fairseq.models.reader import join_query_and_blocks

    tmp = tempfile.mkdtemp(prefix="bench-step-")
    corpus = shipped_corpus(tmp)
    d, device = corpus.dictionary, args.device
    model = build_model(args.arch, corpus, device, args.dtype, reader=True)
    retriever, criterion = pretraining(model, corpus, args.topk)
    batches = masked_batches(corpus, args.steps, args.batch_size, device)
    step = criterion_step(model, criterion)

    def query_part(batch):
        model.zero_grad()
        model.embed_queries(batch["net_input"]["src_tokens"]).sum().backward()

    with torch.no_grad():
        queries = {id(b): model.embed_queries(b["net_input"]["src_tokens"]) for b in batches}
    found = {id(b): retriever.search(queries[id(b)], args.topk, b["exclude_blocks"])[0] for b in batches}

    def search_part(batch):
        retriever.search(queries[id(batch)], args.topk, batch["exclude_blocks"])

    def candidates(batch):
        return retriever.candidate_tokens(found[id(batch)])

    wrapped = {id(b): with_cls_sep_batch(*candidates(b), d).to(device) for b in batches}

    def rembed_part(batch):
        model.zero_grad()
        model.embed_blocks(wrapped[id(batch)]).sum().backward()

    joined = {}
    for b in batches:
        src = b["net_input"]["src_tokens"]
        tokens, segments = join_query_and_blocks(src, *candidates(b), d.pad(), d.eos(), model.reader_cfg.max_positions)
        target = b["target"].repeat_interleave(retriever.num_candidates, 0)
        masked = torch.zeros(tokens.shape, dtype=torch.bool, device=device)
        masked[:, : src.shape[1]] = target.ne(d.pad())
        joined[id(b)] = (tokens, segments, masked, target[target.ne(d.pad())])

    def reader_part(batch):  # a plain masked-LM step on the joined sequences
        tokens, segments, masked, target = joined[id(batch)]
        model.zero_grad()
        logits = model.reader(tokens, segments, masked)
        torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum").backward()

    parts = {"query embedding": timed(query_part, batches, device),
             "search": timed(search_part, batches, device),
             f"re-embed {retriever.num_candidates} candidates": timed(rembed_part, batches, device),
             "reader (masked LM on joined sequences)": timed(reader_part, batches, device)}
    total = timed(step, batches, device)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(timed, step, batches, device)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
    shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{args.arch}, batch {args.batch_size}, k={args.topk} + null document, {device} {args.dtype}, "
          f"median of {args.steps} steps")
    print_parts(parts, "REALM step", total)
    print(info_line("step / plain masked-LM step on the same joined sequences",
                    total / parts["reader (masked LM on joined sequences)"],
                    "re-embedding the candidates is REALM's price, not overhead"))


if __name__ == "__main__":
    main()
