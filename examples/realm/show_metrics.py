"""Print the REALM pre-training metrics of a fairseq training log, first and last validation side by side.

    python examples/realm/show_metrics.py demo-output/pretrain.log
"""
import argparse
import re
import sys

METRICS = {
    "loss": "masked-LM loss, bits per masked token: -log2 sum_z p(z|x) p(y|x,z)",
    "ppl": "perplexity of the masked tokens",
    "retrieval_utility": "bits per masked token gained by reading the retrieved blocks over the null document",
    "null_prob": "mean p(null document | x)",
    "entropy": "entropy of p(z|x) over the candidates, bits",
    "index_version": "index version in use",
    "staleness": "updates since the index's embeddings were computed",
    "num_updates": "updates done",
}


def log_records(path: str, kind: str = "valid"):
    """The metrics of every ``valid`` (``valid on 'valid' subset``) or ``train_inner`` line of a fairseq log
    written with ``--log-format simple``, in order, as dicts of strings."""
    marker = "| valid on " if kind == "valid" else "| train_inner |"
    with open(path, encoding="utf-8") as f:
        return [dict(re.findall(r"([\w@]+)[= ]([-\d.e]+)(?:,|$| \|)", line)) for line in f if marker in line]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", help="fairseq-train / realm-train log file")
    args = parser.parse_args(argv)
    runs = log_records(args.log)
    if not runs:
        sys.exit(f"{args.log}: no validation line found; did training validate (see --validate-interval-updates)?")
    first, last = runs[0], runs[-1]
    print(f"{'metric':<18} {'first valid':>12} {'last valid':>12}  meaning")
    for name, meaning in METRICS.items():
        print(f"{name:<18} {first.get(name, '-'):>12} {last.get(name, '-'):>12}  {meaning}")


if __name__ == "__main__":
    main()
