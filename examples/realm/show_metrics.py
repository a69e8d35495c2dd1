"""Print the REALM pre-training metrics of a fairseq training log, first and last validation side by side,
and beside them the last validation of the same pre-training without retrieval (``--baseline``).

    python examples/realm/show_metrics.py demo-output/pretrain.log [--baseline demo-output/pretrain-no-retrieval.log]
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


def valid_records(path: str):
    runs = log_records(path)
    if not runs:
        sys.exit(f"{path}: no validation line found; did training validate (see --validate-interval-updates)?")
    return runs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", help="fairseq-train / realm-train log file")
    parser.add_argument("--baseline", help="log of the same pre-training with --retrieval-topk 0: its last "
                                           "validation is shown beside, and the loss compared")
    args = parser.parse_args(argv)
    runs = valid_records(args.log)
    first, last = runs[0], runs[-1]
    base = valid_records(args.baseline)[-1] if args.baseline else {}
    extra = f" {'no retrieval':>13}" if args.baseline else ""
    print(f"{'metric':<18} {'first valid':>12} {'last valid':>12}{extra}  meaning")
    for name, meaning in METRICS.items():
        extra = f" {base.get(name, '-'):>13}" if args.baseline else ""
        print(f"{name:<18} {first.get(name, '-'):>12} {last.get(name, '-'):>12}{extra}  {meaning}")
    if args.baseline:
        gain = float(base["loss"]) - float(last["loss"])
        print(f"\nafter {last['num_updates']} updates the masked tokens cost {last['loss']} bits with retrieval and "
              f"{base['loss']} bits for the same reader trained without it (--retrieval-topk 0): retrieval "
              f"{'saves' if gain > 0 else 'costs'} {abs(gain):.3f} bits per masked token")


if __name__ == "__main__":
    main()
