"""``realm-answer --checkpoint CKPT "question" ...``: answer questions with a fine-tuned REALM, with evidence.

Questions come from the command line or, when none is given, from standard input (one a line). For
each, prints the answer and its score, then the blocks it read (title, retrieval score and the start
of the text), the one the answer came from marked ``*``; ``--json`` prints one JSON object a line instead.
"""
import argparse
import json
import logging
import sys
import textwrap
from typing import List, Optional

from realm_fairseq.cli import log_to_stderr
from realm_fairseq.cli.evaluate import add_model_args, load_model
from realm_fairseq.data.input_files import decode_utf8
from realm_fairseq.errors import InputError, cli_errors
from realm_fairseq.hub import Answer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realm-answer",
        description=__doc__.split("\n\n")[0].replace("``", ""),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("questions", nargs="*", help="questions (default: read from stdin, one a line)")
    add_model_args(parser)
    parser.add_argument("--evidence", type=int, default=3, help="evidence blocks shown per answer")
    parser.add_argument("--json", action="store_true", help="print one JSON object per answer")
    parser.add_argument("--bm25", action="store_true",
                        help="the reader reads the blocks BM25 ranks first instead of its retriever's (BM25's score "
                             "as the retrieval score; the bm25 extra)")
    return parser


def show(answer: Answer, evidence: int) -> str:
    """The answer and the first ``evidence`` blocks read, and always the block the answer came from (marked
    ``*``, its text around the answer, in [brackets])."""
    lines = [f"Q: {answer.question}", f"A: {answer.text}    (p = {answer.score:.3f})"]
    for e in answer.evidence:
        source = e.rank == answer.block_rank
        if e.rank < evidence or source:
            lines.append(f" {'*' if source else ' '} [{e.rank + 1}] {e.title}  (score {e.retrieval_score:.2f})")
            lines.append("       " + (around(e.text, answer.text) if source else shorten(e.text)))
    return "\n".join(lines) + "\n"


def shorten(text: str, width: int = 160) -> str:
    return textwrap.shorten(text, width, placeholder=" ...")


def around(text: str, answer: str, context: int = 80) -> str:
    """``text`` near the first place it holds ``answer`` (ignoring case), the answer in [brackets]."""
    at = text.lower().find(answer.lower()) if answer else -1
    if at < 0:
        return shorten(text)
    start, end = max(0, at - context), at + len(answer)
    before = "... " + text[start:at].split(" ", 1)[-1] if start else text[:at]  # whole words only
    after = text[end : end + context].rsplit(" ", 1)[0] + " ..." if end + context < len(text) else text[end:]
    return " ".join(f"{before}[{text[at:end]}]{after}".split())


def stdin_questions() -> List[str]:
    """The non-blank lines of standard input, which must be UTF-8."""
    lines = (decode_utf8("standard input", raw, lineno).strip() for lineno, raw in enumerate(sys.stdin.buffer, 1))
    return [line for line in lines if line]


def check_questions(questions: List[str]) -> None:
    if not questions:
        raise InputError("no question given (as arguments or on stdin)")
    empty = [i for i, q in enumerate(questions, 1) if not q.strip()]
    if empty:
        raise InputError(f"question {empty[0]} is empty; expected text to answer")


@cli_errors("realm-answer")
def cli_main(argv: Optional[List[str]] = None) -> None:
    log_to_stderr(logging.WARNING)
    args = build_parser().parse_args(argv)
    questions = args.questions or stdin_questions()
    check_questions(questions)
    qa = load_model(args)
    for answer in qa.answer_all(questions, args.batch_size, args.topk, args.beam):
        print(json.dumps(answer.to_dict(), ensure_ascii=False) if args.json else show(answer, args.evidence),
              flush=True)


if __name__ == "__main__":
    cli_main()
