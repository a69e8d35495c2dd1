"""``realm-evaluate --checkpoint CKPT --questions FILE``: exact match and recall@k of a fine-tuned REALM.

Answers every question of a JSONL question file (batched, with a progress bar), prints the metrics as
JSON (``em``, ``recall@k`` for k in 1, 5, 20, 100 up to ``--beam``, in percent) and, with ``--out``,
writes one prediction a line: the question, the predicted answer and its score, the gold answers,
whether it is correct, and the evidence blocks read (title, text, retrieval score, whether it holds
a gold answer). Exact match and recall are computed as in training (:mod:`realm_fairseq.data.answers`).
"""
import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from typing import Dict, Iterable, List, Optional, Tuple

import torch

from realm_fairseq.atomic_io import atomic_file
from realm_fairseq.cli import log_to_stderr
from realm_fairseq.data.answers import AnswerFinder, exact_match
from realm_fairseq.data.documents import InputError
from realm_fairseq.data.questions import ANSWER_TYPES, Question, read_questions
from realm_fairseq.hub import Answer, RealmQA
from realm_fairseq.tasks.realm_open_qa import RECALL_AT


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Options to load a fine-tuned model, shared with ``realm-answer``."""
    parser.add_argument("--checkpoint", required=True, help="checkpoint of a realm_open_qa fine-tuning run")
    parser.add_argument("--index", help="INDEX directory (default: the one the checkpoint was trained with)")
    parser.add_argument("--corpus", help="CORPUS directory (default: the one the checkpoint was trained with)")
    parser.add_argument("--topk", type=int, default=None, help="blocks read per question (default: as trained)")
    parser.add_argument("--beam", type=int, default=None, help="blocks retrieved per question (default: as trained)")
    parser.add_argument("--batch-size", type=int, default=16, help="questions answered at a time")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")


def load_model(args: argparse.Namespace, **overrides) -> RealmQA:
    return RealmQA.from_pretrained(args.checkpoint, index=args.index, corpus=args.corpus, device=args.device,
                                   **overrides)


def score(finder: AnswerFinder, questions: List[Question], answers: Iterable[Answer], answer_type: str = "text"
          ) -> Tuple[Dict[str, float], List[dict]]:
    """Metrics (questions, em and recall@k in percent) and one prediction record per question."""
    records, correct, found, beam = [], 0, {k: 0 for k in RECALL_AT}, 0
    for question, answer in zip(questions, answers):
        targets = finder.targets(question.answers)
        holds = [finder.contains(z, targets) for z in answer.retrieved]
        beam = len(holds)
        for k in RECALL_AT:
            found[k] += any(holds[:k])
        is_correct = exact_match(answer.text, question.answers, answer_type)
        correct += is_correct
        evidence = [{**asdict(e), "has_answer": has} for e, has in zip(answer.evidence, holds)]
        records.append({"id": question.id, "question": question.question, "prediction": answer.text,
                        "score": answer.score, "answers": question.answers, "correct": is_correct,
                        "evidence": evidence})
    n = max(len(records), 1)
    metrics = {"questions": len(records), "em": round(100.0 * correct / n, 2)}
    metrics.update({f"recall@{k}": round(100.0 * found[k] / n, 2) for k in RECALL_AT if k <= beam})
    return metrics, records


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realm-evaluate",
        description=__doc__.split("\n\n")[0].replace("``", ""),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_args(parser)
    parser.add_argument("--questions", required=True, help="JSONL question file ({\"question\", \"answer\"})")
    parser.add_argument("--answer-type", choices=ANSWER_TYPES, default="text",
                        help="answers are strings, or regular expressions (CuratedTREC)")
    parser.add_argument("--out", help="write the predictions with their evidence here (JSONL)")
    parser.add_argument("--max-questions", type=int, default=None, help="evaluate only the first N questions")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    return parser


def cli_main(argv: Optional[List[str]] = None) -> None:
    log_to_stderr()
    args = build_parser().parse_args(argv)
    try:
        questions = read_questions(args.questions, args.answer_type)[: args.max_questions]
        qa = load_model(args, answer_type=args.answer_type)
    except (InputError, FileNotFoundError, ValueError) as e:
        sys.exit(f"realm-evaluate: error: {e}")
    started = time.perf_counter()
    answers = qa.answer_all([q.question for q in questions], args.batch_size, args.topk, args.beam,
                            progress=not args.no_progress)
    metrics, records = score(qa.task.finder, questions, answers, args.answer_type)
    metrics["questions_per_second"] = round(len(questions) / max(time.perf_counter() - started, 1e-9), 2)
    if args.out:
        with atomic_file(args.out, force=True) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        logging.getLogger("realm-evaluate").info("wrote %d predictions to %s", len(records), args.out)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    cli_main()
