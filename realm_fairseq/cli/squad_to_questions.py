"""``realm-squad-to-questions SQUAD.json --out DIR``: SQuAD questions as open-domain question files.

Every question of the SQuAD JSON becomes a line ``{"id", "question", "answer": [distinct answer texts]}``
of ``DIR/<split>.jsonl``; the articles are split (``--split train=80,valid=10,test=10``, shares of the
questions) so that all questions of an article land in the same split and no test article is seen in
training. Used open-domain, the questions are answered from a whole corpus, not from their paragraph.
"""
import argparse
import os
from typing import Dict, List, Optional

from realm_fairseq.cli import log_to_stderr
from realm_fairseq.errors import cli_errors
from realm_fairseq.data.questions import split_by_article, squad_questions, write_questions

DEFAULT_SPLIT = "train=80,valid=10,test=10"


def parse_split(text: str) -> Dict[str, float]:
    """``name=share,name=share`` -> {name: share}, in order."""
    split = {}
    for item in text.split(","):
        name, sep, share = item.partition("=")
        try:
            value = float(share)
        except ValueError:
            value = -1.0
        if not sep or not name.strip() or value <= 0 or name.strip() in split:
            raise argparse.ArgumentTypeError(f"{text!r}: expected distinct name=share pairs with positive shares, "
                                             f"e.g. {DEFAULT_SPLIT}")
        split[name.strip()] = value
    return split


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realm-squad-to-questions",
        description=__doc__.split("\n\n")[0].replace("``", ""),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("squad", help="SQuAD JSON file (plain or .gz)")
    parser.add_argument("--out", required=True, help="directory for the question files <split>.jsonl")
    parser.add_argument("--split", type=parse_split, default=DEFAULT_SPLIT,
                        help="splits and their shares of the questions; articles are never shared")
    parser.add_argument("--seed", type=int, default=1, help="seed of the article shuffle")
    parser.add_argument("--max-articles", type=int, default=None,
                        help="only the questions of the first N articles (for small trial corpora)")
    return parser


@cli_errors("realm-squad-to-questions")
def cli_main(argv: Optional[List[str]] = None) -> None:
    log_to_stderr()
    args = build_parser().parse_args(argv)
    split = parse_split(args.split) if isinstance(args.split, str) else args.split
    items = squad_questions(args.squad)
    if args.max_articles is not None:
        kept = set(list(dict.fromkeys(title for title, _ in items))[: args.max_articles])
        items = [item for item in items if item[0] in kept]
    splits = split_by_article(items, split, args.seed)
    for name, questions in splits.items():
        path = os.path.join(args.out, f"{name}.jsonl")
        write_questions(path, questions)
        print(f"{path}: {len(questions)} questions")


if __name__ == "__main__":
    cli_main()
