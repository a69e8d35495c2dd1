"""``realm-corpus-stats CORPUS``: what a CORPUS holds, and a few of its blocks and examples."""
import argparse
import json
import textwrap
from typing import List, Optional

from realm_fairseq.data.corpus import BlockCorpus
from realm_fairseq.errors import cli_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realm-corpus-stats",
        description="Print the statistics of a CORPUS made by realm-prepare-corpus, with sample blocks "
        "and pre-training examples (salient spans in [brackets]).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("corpus", metavar="CORPUS", help="corpus directory")
    parser.add_argument("--samples", type=int, default=2, help="blocks and examples to show")
    parser.add_argument("--json", action="store_true", help="print the statistics as JSON only")
    return parser


def show_example(corpus: BlockCorpus, j: int) -> str:
    """Example ``j`` as text, its salient spans in brackets."""
    ex = corpus.examples
    pieces = corpus.wordpieces_of(ex.tokens(j))
    for start, end in reversed(ex.salient_spans(j)):
        pieces[start:end] = ["[", *pieces[start:end], "]"]
    return " ".join(pieces).replace(" ##", "")


@cli_errors("realm-corpus-stats")
def cli_main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    corpus = BlockCorpus(args.corpus)
    stats = corpus.statistics()
    if args.json:
        print(json.dumps(stats, indent=2))
        return
    print(f"corpus {args.corpus}")
    for key, value in stats.items():
        print(f"  {key:30s} {value}")
    step = max(1, len(corpus) // max(1, args.samples))
    for i in range(0, step * args.samples, step):
        block = corpus.block(i)
        print(f"\nblock {i} ({len(corpus.tokens(i))} wordpieces) from {block.title!r}:")
        print(textwrap.indent(textwrap.fill(block.text[:400] + (" ..." if len(block.text) > 400 else "")), "  "))
    with_spans = [j for j in range(min(len(corpus.examples), 5000)) if corpus.examples.salient_spans(j)]
    for j in with_spans[:: max(1, len(with_spans) // max(1, args.samples))][: args.samples]:
        print(f"\nexample {j} (from block {corpus.examples.source_block[j]}):")
        print(textwrap.indent(textwrap.fill(show_example(corpus, j)), "  "))


if __name__ == "__main__":
    cli_main()
