"""What ``--retrieval-precision fp16`` changes: the blocks found with float16 queries against float32 ones.

    python bench/query_precision.py --weights demo-output/minilm.pt --index demo-output/index \
        --corpus demo-output/corpus [--questions 1000] [--k 1 5 10 100]

On a GPU, ``fp16`` multiplies float16 queries by the float16 block embeddings an index version stores, with
float32 sums (:mod:`realm_fairseq.retrieval.torch_search`); ``fp32`` multiplies the float32 queries. The
rows are the same, so rounding the queries to float16 is the whole difference, and this measures it on the
CPU: real questions (SQuAD v1.1 dev, every tenth) embedded by ``--weights`` through our stack, searched in
the ``--index`` version by faiss once as they are and once rounded to float16, in the same run. Also for
queries as a bf16 model gives them (rounded to bfloat16 first; ``--bf16`` training embeds queries so).

Printed per k: the fraction of questions whose top-k set is the same (goal >= 0.99 for k <= 10, as for
embeddings in ``bench/embed_corpus.py``) and whose top-k order is the same (no goal: near ties swap).
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from realm_fairseq.data import BlockCorpus  # noqa: E402
from realm_fairseq.data.questions import squad_questions  # noqa: E402
from realm_fairseq.indexing.retrievers import from_weights  # noqa: E402

from goals import goal_line, info_line  # noqa: E402  (bench/goals.py, this script's directory)

SQUAD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "realm", "data",
                     "squad-v1.1-dev.json.gz")


def rounded(queries: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """(Q, D) float32 queries rounded to ``dtype`` and back."""
    return torch.from_numpy(queries).to(dtype).float().numpy()


def agreement(index, queries: np.ndarray, k: int):
    """(same top-k set, same top-k order): fractions of queries, float32 against float16-rounded."""
    exact, _ = index.search(queries, k)  # (Q, k)
    half, _ = index.search(rounded(queries, torch.float16), k)
    same_set = np.mean([set(a) == set(b) for a, b in zip(exact, half)])
    return float(same_set), float(np.mean((exact == half).all(axis=1)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--weights", required=True, help="realm-convert-hf weights (both towers)")
    parser.add_argument("--index", required=True, help="INDEX over --corpus embedded with those weights")
    parser.add_argument("--corpus", required=True, help="CORPUS directory")
    parser.add_argument("--squad", default=SQUAD, help="SQuAD v1.1 file whose questions are the queries")
    parser.add_argument("--questions", type=int, default=1000, help="questions (every tenth of the file)")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 5, 10, 100], help="top k compared")
    args = parser.parse_args()

    retriever = from_weights(args.weights, BlockCorpus(args.corpus), args.index)
    questions = [q.question for _, q in squad_questions(args.squad)][::10][: args.questions]
    queries = retriever.embed(questions)  # (Q, D) float32
    print(f"{len(questions)} questions, {retriever.index.ntotal} blocks of dimension {queries.shape[1]}, "
          f"largest |query entry| {np.abs(queries).max():.3g}")
    for name, q in (("float32 queries", queries), ("bf16 queries", rounded(queries, torch.bfloat16))):
        for k in args.k:
            same_set, same_order = agreement(retriever.index, q, k)
            what = f"{name}, same top-{k} with float16 queries"
            print(goal_line(what, same_set, ">=", 0.99, 4) if k <= 10 else info_line(what, same_set, "k > 10", 4),
                  f"(same order {same_order:.4f})")


if __name__ == "__main__":
    main()
