"""Draw the demo's report: REALM pre-training and open-domain QA fine-tuning by update, from their logs.

    python examples/realm/report.py demo-output            # writes demo-output/report.png

Left: the pre-training masked-LM loss (bits per masked token) of the run with retrieval and of the same
reader trained with ``--retrieval-topk 0`` (no blocks), and the retrieval utility (bits per masked token
gained by the retrieved blocks over the null document). Right: validation EM and recall@5 of the QA
fine-tuning of (a) MiniLM without REALM pre-training, (b) after it and (c) the pipeline baseline on BM25's
blocks. It reads the fairseq logs ``pretrain.log``, ``pretrain-no-retrieval.log``, ``qa-minilm.log``,
``qa-realm.log`` and ``qa-bm25.log`` of OUT.
"""
import argparse
import os
import sys

from show_metrics import log_records

PRETRAIN = (("pretrain.log", "with retrieval (k blocks + null document)"),
            ("pretrain-no-retrieval.log", "same reader, --retrieval-topk 0"))
QA = (("qa-minilm.log", "(a) MiniLM, no REALM pre-training"), ("qa-realm.log", "(b) after REALM pre-training"),
      ("qa-bm25.log", "(c) BM25 + (a)'s reader on its blocks"))


def series(path: str, kind: str, metric: str):
    """(updates, values) of ``metric`` over the ``kind`` lines (train_inner or valid) of a log."""
    points = [(float(r["num_updates"]), float(r[metric])) for r in log_records(path, kind)
              if metric in r and "num_updates" in r]
    return [u for u, _ in points], [v for _, v in points]


def plot(ax, out: str, runs, kind: str, metric: str, title: str, ylabel: str) -> None:
    for name, label in runs:
        path = os.path.join(out, name)
        if os.path.exists(path):
            ax.plot(*series(path, kind, metric), marker="o" if kind == "valid" else None, markersize=3,
                    label=label)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("update")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the demo's output directory (demo.sh --out), holding its logs")
    parser.add_argument("--png", default=None, help="where to write the picture (default: OUT/report.png)")
    args = parser.parse_args(argv)
    if not os.path.exists(os.path.join(args.out, PRETRAIN[0][0])):
        sys.exit(f"{args.out}: no {PRETRAIN[0][0]}; expected the output directory of examples/realm/demo.sh")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    plot(axes[0, 0], args.out, PRETRAIN, "train_inner", "loss", "REALM pre-training: masked-LM loss (training)",
         "bits per masked token")
    plot(axes[1, 0], args.out, PRETRAIN[:1], "train_inner", "retrieval_utility",
         "REALM pre-training: retrieval utility (training)", "bits per masked token")
    plot(axes[0, 1], args.out, QA, "valid", "em", "open-domain QA fine-tuning: validation EM", "EM (%)")
    plot(axes[1, 1], args.out, QA, "valid", "recall@5", "open-domain QA fine-tuning: validation recall@5",
         "recall@5 (%)")
    fig.tight_layout()
    png = args.png or os.path.join(args.out, "report.png")
    tmp = png + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, png)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
