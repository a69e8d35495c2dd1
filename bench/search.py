"""Speed, recall and size of each MIPS index type at its defaults, against an exact search in numpy.

    python bench/search.py [--sizes 100000 1000000] [--queries 1000] [--k 10] [--types flat ivf_flat ...]

Data: synthetic, clustered unit vectors of dimension ``--dim`` (128, REALM's embedding size): a mixture
of ``n / 100`` Gaussians whose centres are standard normal and whose noise is ``--spread`` (1.5) times the
centres' scale, each vector L2-normalised (at 1.0 ivf_flat and hnsw find the exact top 10; at 2.0 the
clusters are mostly lost in the noise). Queries are fresh draws of the same mixture. Real encoder
embeddings have their own structure, so measure on yours before choosing; the test suite measures recall
on real text (tests/test_retrieval_index.py).

Measured per type: build time (training included), bytes a vector of the serialized index, queries/s
(the best of ``--repeat`` passes over all queries, one faiss call per ``--batch-size`` queries, all cores), and
recall@k: the fraction of the exact top k that the index returns. The exact top k comes from numpy, not
faiss: float64 inner products of every query with every vector, the k best by argpartition. ``ivf_*``
and ``hnsw`` are also searched with ``nprobe`` / ``ef_search`` times each ``--sweep`` factor (default
4), which needs no rebuild (``MipsIndex.set_search_options``). Goal: ``flat`` is exact (recall 1.000), and
so is ``flat16`` against the exact top k of the vectors rounded to float16 (what it stores, as an index
version stores its embeddings); the approximate types have none, they trade recall for speed and memory.
"""
import argparse
import os
import platform
import sys
import time

import faiss
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from realm_fairseq.retrieval.mips import INDEX_TYPES, SEARCH_BATCH, MipsIndex  # noqa: E402

from goals import verdict  # noqa: E402  (bench/goals.py, this script's directory)


SWEEP = {"ivf_flat": "nprobe", "ivf_pq": "nprobe", "hnsw": "ef_search"}  # search-time settings


def clustered_unit_vectors(n, d, centres, spread, rng, chunk=1 << 17):
    """(n, d) float32: each row a centre plus Gaussian noise, L2-normalised."""
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        which = rng.integers(len(centres), size=end - start)
        x = centres[which] + spread * rng.standard_normal((end - start, d), dtype=np.float32)
        out[start:end] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_top_k(embeddings, queries, k, chunk=16384):
    """Ids (q, k) of the k highest inner products of each query, computed in numpy (float64), independently
    of faiss: a running top k over chunks of ``chunk`` vectors."""
    queries = queries.astype(np.float64)
    scores, ids = np.empty((len(queries), 0)), np.empty((len(queries), 0), dtype=np.int64)
    for start in range(0, len(embeddings), chunk):
        block = embeddings[start : start + chunk].astype(np.float64)  # (c, d)
        scores = np.concatenate([scores, queries @ block.T], axis=1)  # (q, kept + c)
        ids = np.concatenate([ids, np.broadcast_to(np.arange(start, start + len(block)), (len(queries), len(block)))],
                             axis=1)
        keep = np.argpartition(-scores, min(k, scores.shape[1]) - 1, axis=1)[:, :k]
        scores, ids = np.take_along_axis(scores, keep, axis=1), np.take_along_axis(ids, keep, axis=1)
    return ids


def recall_at_k(found, truth):
    """Mean over queries of |found ∩ truth| / k; both (q, k)."""
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2).sum(axis=1)
    return float(hits.mean() / truth.shape[1])


def best_time(repeat, fn, *args):
    """The shortest of ``repeat`` runs of ``fn(*args)`` in seconds, and its result."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="vectors indexed")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--spread", type=float, default=1.5, help="noise scale relative to the centres")
    parser.add_argument("--types", nargs="+", default=list(INDEX_TYPES), choices=INDEX_TYPES)
    parser.add_argument("--repeat", type=int, default=3, help="timed search passes (best counts)")
    parser.add_argument("--batch-size", type=int, default=SEARCH_BATCH,
                        help="queries handed to faiss at a time (default: %(default)s; realm-evaluate's retrieval "
                             "hands 256, a pre-training rank its batch)")
    parser.add_argument("--sweep", type=int, nargs="*", default=[4],
                        help="also search with nprobe / ef_search times these factors (none: defaults only)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {platform.machine()}, "
          f"{os.cpu_count()} CPUs; synthetic clustered data (mixture of n/100 Gaussians, spread "
          f"{args.spread}, unit vectors), d={args.dim}, {args.queries} queries, k={args.k}\n", flush=True)
    rows = []
    for n in args.sizes:
        rng = np.random.default_rng(args.seed)
        centres = rng.standard_normal((max(1, n // 100), args.dim), dtype=np.float32)
        embeddings = clustered_unit_vectors(n, args.dim, centres, args.spread, rng)
        queries = clustered_unit_vectors(args.queries, args.dim, centres, args.spread, rng)
        truth = {"flat": exact_top_k(embeddings, queries, args.k)}
        if "flat16" in args.types:  # exact over the float16 vectors it stores, as an index version does
            truth["flat16"] = exact_top_k(embeddings.astype(np.float16), queries, args.k)
        for index_type in args.types:
            start = time.perf_counter()
            index = MipsIndex.build(embeddings, index_type)
            build = time.perf_counter() - start
            # the defaults first, then larger search-time settings (no rebuild): the recall/speed trade-off
            setting = SWEEP.get(index_type)
            values = [index.options[setting] * f for f in [1] + args.sweep] if setting else [None]
            for i, value in enumerate(values):
                if i:
                    index.set_search_options(**{setting: value})
                seconds, (ids, _) = best_time(args.repeat, index.search, queries, args.k, None, args.batch_size)
                recall = recall_at_k(ids, truth.get(index_type, truth["flat"]))
                options = ", ".join(f"{k}={v}" for k, v in index.options.items() if k != "train_size")
                row = {
                    "vectors": f"{n:,}",
                    "index": index_type,
                    "options": (options or "-") + (" (default)" if setting and not i else ""),
                    "build s": f"{build:.1f}" if not i else '"',
                    "bytes/vector": f"{index.bytes_per_vector:.0f}",
                    "queries/s": f"{args.queries / seconds:,.0f}",
                    f"recall@{args.k}": f"{recall:.3f}",
                    "goal": f"1.000 (exact) {verdict(recall, '==', 1, 3)}" if index_type in truth else "none",
                }
                rows.append(row)
                print("  ".join(f"{k}: {v}" for k, v in row.items()), file=sys.stderr, flush=True)
            del index
        del embeddings

    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row[h] for h in header) + " |")


if __name__ == "__main__":
    main()
