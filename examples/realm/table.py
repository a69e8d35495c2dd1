"""Print the demo's results in the shape of REALM's Table 2: for each test set, the zero-shot recall@5 of each
retriever, and recall@5, exact match and SQuAD's F1 after open-domain QA fine-tuning.

    python examples/realm/table.py demo-output

Rows: BM25 (retrieval only), (a) MiniLM without REALM pre-training, (b) after REALM pre-training, (b)'s reader
reading the blocks BM25 ranks first (``realm-evaluate --bm25``) and (c) the pipeline baseline, (a)'s reader
fine-tuned on BM25's blocks (``--retrieval bm25``; BM25 + BERT in REALM's Table 1). It reads the JSON that
``realm-evaluate`` wrote in OUT: ``RETRIEVER.SET.zero-shot.json`` (``--retrieval-only``) and
``MODEL.SET.json``, for the sets ``squad`` (the SQuAD dev test split) and ``shifts`` (SQuADShifts new-wiki,
out of domain) that are there. Below the table, for each set, (b) against (a), against its reader on BM25's
blocks and against (c), on the same questions from their ``MODEL.SET.predictions.jsonl``: the EM and F1
differences with 95% paired bootstrap intervals.
"""
import argparse
import json
import os
import sys

from realm_fairseq.data.qa_metrics import paired_difference

SETS = (("squad", "SQuAD dev, test split"), ("shifts", "SQuADShifts new-wiki (out of domain)"))
ROWS = (("BM25 (bm25s, k1=0.9, b=0.4)", "bm25", None),
        ("(a) MiniLM, no REALM pre-training", "minilm", "qa-minilm"),
        ("(b) after REALM pre-training", "realm", "qa-realm"),
        ("(b)'s reader on BM25's blocks", None, "qa-realm-bm25"),
        ("(c) BM25 + (a)'s reader on its blocks", None, "qa-bm25"))
#: pairs compared on the same questions: (name, predictions, baseline name, baseline predictions)
COMPARED = (("(b)", "qa-realm", "(a)", "qa-minilm"), ("(b)", "qa-realm", "BM25 + (b)'s reader", "qa-realm-bm25"),
            ("(b)", "qa-realm", "(c)", "qa-bm25"))
COLUMNS = ("zero-shot R@5", "R@5", "EM", "F1")
NAME_WIDTH, CELL = 40, 15


def load(out: str, name: str):
    path = os.path.join(out, f"{name}.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def cells(out: str, qset: str, retriever, qa) -> list:
    zero_shot = [f"{load(out, f'{retriever}.{qset}.zero-shot')['recall@5']:.1f}" if retriever else "-"]
    if not qa:
        return zero_shot + ["-"] * (len(COLUMNS) - 1)
    tuned = load(out, f"{qa}.{qset}")
    return zero_shot + [f"{tuned[key]:.1f}" for key in ("recall@5", "em", "f1")]


def predictions(out: str, name: str) -> dict:
    with open(os.path.join(out, f"{name}.predictions.jsonl"), encoding="utf-8") as f:
        return {r["id"]: r for r in map(json.loads, f)}


def comparison(out: str, qset: str, title: str, name: str, qa: str, baseline: str, baseline_qa: str) -> str:
    """``qa`` against ``baseline_qa`` on the questions both answered: EM and F1 differences in points, with
    their intervals."""
    b, a = (predictions(out, f"{q}.{qset}") for q in (qa, baseline_qa))
    ids = [i for i in b if i in a]
    parts = []
    for metric, key in (("EM", "correct"), ("F1", "f1")):
        mean, low, high = paired_difference([float(b[i][key]) for i in ids], [float(a[i][key]) for i in ids])
        parts.append(f"{metric} {100 * mean:+.1f} (95% interval {100 * low:+.1f} to {100 * high:+.1f})")
    return f"{name} - {baseline} on {title}, {len(ids)} questions: " + ", ".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the demo's output directory (demo.sh --out)")
    args = parser.parse_args(argv)
    sets = [(key, title) for key, title in SETS if os.path.exists(os.path.join(args.out, f"bm25.{key}.zero-shot.json"))]
    if not sets:
        sys.exit(f"{args.out}: no bm25.squad.zero-shot.json; expected the output directory of examples/realm/demo.sh")
    sizes = ", ".join(f"{load(args.out, f'bm25.{key}.zero-shot')['questions']} {title}" for key, title in sets)
    print(f"open-domain QA over {load(args.out, f'bm25.{sets[0][0]}.zero-shot')['blocks']} blocks; questions: {sizes}")
    print(f"{'':<{NAME_WIDTH}}" + "".join(f"| {title:<{CELL * len(COLUMNS) - 2}}" for _, title in sets))
    print(f"{'':<{NAME_WIDTH}}" + "".join(f"{c:>{CELL}}" for _ in sets for c in COLUMNS))
    for name, retriever, qa in ROWS:
        row = [c for key, _ in sets for c in cells(args.out, key, retriever, qa)]
        print(f"{name:<{NAME_WIDTH}}" + "".join(f"{c:>{CELL}}" for c in row))
    print("zero-shot R@5: the retriever before fine-tuning; R@5, EM, F1: after fine-tuning on the SQuAD train split")
    for pair in COMPARED:
        for key, title in sets:
            print(comparison(args.out, key, title, *pair))
    print("(paired bootstrap over the questions: an interval that holds 0 is no evidence that the two differ)")


if __name__ == "__main__":
    main()
