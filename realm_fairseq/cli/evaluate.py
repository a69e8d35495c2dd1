"""``realm-evaluate --checkpoint CKPT --questions FILE``: exact match, F1 and recall@k of a fine-tuned REALM.

Answers every question of a JSONL question file (batched, with a progress bar), prints the metrics as
JSON (``em``, ``f1`` for text answers, ``recall@k`` for k in 1, 5, 20, 100 up to ``--beam``, in percent)
and, with ``--out``, writes one prediction a line: the question, the predicted answer and its score, the
gold answers, whether it is correct and its F1, and the evidence blocks read (title, text, retrieval score,
whether it holds a gold answer). Exact match and F1 are SQuAD's (:mod:`realm_fairseq.data.qa_metrics`); a
block holds an answer by DPR's rule (:mod:`realm_fairseq.data.answers`). With ``--bm25`` the checkpoint's
reader reads the blocks BM25 ranks first, BM25's score in the place of f(x, z): the pipeline baseline of
BM25 and the same reader (REALM's Table 1 compares with BM25 + BERT).

``--retrieval-only`` measures a retriever alone, zero-shot, as REALM's Table 2 does
(:mod:`realm_fairseq.retrieval.recall`): the query embedder of any of our checkpoints (``--checkpoint``),
converted BERT, sentence-transformers or REALM weights as both towers (``--hf``), or BM25 (``--bm25``), over
``--index`` or, without one, the corpus embedded now; it prints ``recall@k`` (and ``gold_recall@k`` for
questions with a ``doc_id``).
"""
import argparse
import json
import logging
import os
import time
from dataclasses import asdict
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch

from realm_fairseq.atomic_io import atomic_file
from realm_fairseq.cli import log_to_stderr
from realm_fairseq.data.answers import BlockHits
from realm_fairseq.data.corpus import BlockCorpus
from realm_fairseq.data.documents import InputError
from realm_fairseq.data.qa_metrics import exact_match, f1, first_hits, percent, recall_at
from realm_fairseq.data.questions import ANSWER_TYPES, Question, read_questions
from realm_fairseq.errors import cli_errors
from realm_fairseq.hub import Answer, RealmQA
from realm_fairseq.models.open_qa import SPAN_RULES
from realm_fairseq.retrieval.recall import evaluate_retrieval

logger = logging.getLogger("realm-evaluate")


def add_model_args(parser: argparse.ArgumentParser, checkpoint_required: bool = True) -> None:
    """Options to load a fine-tuned model, shared with ``realm-answer``."""
    parser.add_argument("--checkpoint", required=checkpoint_required,
                        help="checkpoint of a realm_open_qa fine-tuning run (with --retrieval-only: any realm "
                             "checkpoint, ICT, pre-training or open QA)")
    parser.add_argument("--index", help="INDEX directory (default: the one the checkpoint was trained with)")
    parser.add_argument("--index-version", type=int, default=None,
                        help="version of the INDEX to retrieve from (default: as trained, else the newest)")
    parser.add_argument("--corpus", help="CORPUS directory (default: the one the checkpoint was trained with)")
    parser.add_argument("--topk", type=int, default=None, help="blocks read per question (default: as trained)")
    parser.add_argument("--beam", type=int, default=None, help="blocks retrieved per question (default: as trained)")
    parser.add_argument("--span-rule", choices=SPAN_RULES, default=None,
                        help="how the answer span is picked: marginal (highest p(z|x) p(s|z,x), spans on word "
                             "boundaries) or orqa (ORQA's and REALM's: highest retrieval + span score over every "
                             "wordpiece span of the blocks read); default: as the checkpoint was trained or "
                             "converted (realm-convert-hf --qa-checkpoint: orqa)")
    parser.add_argument("--batch-size", type=int, default=16, help="questions answered at a time")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device of the model; retrieval searches there too (cuda: every GPU)")


def load_model(args: argparse.Namespace, **overrides) -> RealmQA:
    if args.index_version is not None:
        overrides["index_version"] = args.index_version
    return RealmQA.from_pretrained(args.checkpoint, index=args.index, corpus=args.corpus, device=args.device,
                                   span_rule=args.span_rule, bm25=args.bm25, **overrides)


def score(corpus: BlockCorpus, questions: List[Question], answers: Iterable[Answer], answer_type: str = "text"
          ) -> Tuple[Dict[str, float], List[dict]]:
    """Metrics (questions, em and recall@k in percent) and one prediction record per question."""
    hits = BlockHits(corpus, answer_type)
    records, holds_all = [], []
    for question, answer in zip(questions, answers):
        holds = hits.holds(question.answers, answer.retrieved)
        holds_all.append(holds)
        evidence = [{**asdict(e), "has_answer": has} for e, has in zip(answer.evidence, holds)]
        records.append({"id": question.id, "question": question.question, "prediction": answer.text,
                        "score": answer.score, "answers": question.answers,
                        "correct": exact_match(answer.text, question.answers, answer_type),
                        "f1": f1(answer.text, question.answers, answer_type), "evidence": evidence})
    beam = len(holds_all[0]) if holds_all else 0
    metrics = {"questions": len(records), "em": percent(sum(r["correct"] for r in records), len(records))}
    if answer_type == "text":
        metrics["f1"] = percent(sum(r["f1"] for r in records), len(records))
    metrics.update(recall_at(first_hits(np.array(holds_all, dtype=bool).reshape(len(records), beam)), beam))
    return metrics, records


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realm-evaluate",
        description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog="Zero-shot retrieval: realm-evaluate --retrieval-only --questions Q --corpus CORPUS "
               "(--checkpoint CKPT | --hf DIR | --bm25) [--index INDEX]",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_args(parser, checkpoint_required=False)
    parser.add_argument("--questions", required=True, help="JSONL question file ({\"question\", \"answer\"})")
    parser.add_argument("--answer-type", choices=ANSWER_TYPES, default="text",
                        help="answers are strings, or regular expressions (CuratedTREC)")
    parser.add_argument("--out", help="write the predictions with their evidence here (JSONL)")
    parser.add_argument("--max-questions", type=int, default=None, help="evaluate only the first N questions")
    parser.add_argument("--sample", type=int, default=None,
                        help="evaluate a random sample of N questions (seeded by --seed; in file order), e.g. "
                             "when the file is ordered by article")
    parser.add_argument("--seed", type=int, default=1, help="seed of --sample")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    zero_shot = parser.add_argument_group("zero-shot retrieval (REALM's Table 2)")
    zero_shot.add_argument("--retrieval-only", action="store_true",
                           help="measure the retriever alone: recall@1/5/20/100 (and gold_recall@k where question "
                                "lines carry a \"doc_id\"); no reading")
    source = zero_shot.add_mutually_exclusive_group()
    source.add_argument("--hf", help="converted BERT, sentence-transformers or REALM weights (realm-convert-hf file, "
                                     "or a BERT, sentence-transformers or realm-export-hf directory) as the towers, "
                                     "pooled and scored as they were trained")
    source.add_argument("--bm25", action="store_true",
                        help="rank blocks by BM25 (bm25s, k1=0.9, b=0.4; the bm25 extra), no index needed; with "
                             "--checkpoint and no --retrieval-only, the checkpoint's reader reads BM25's blocks "
                             "(BM25's score as f(x, z)): the same reader with BM25 as its retriever")
    zero_shot.add_argument("--max-tokens", type=int, default=16384,
                           help="tokens in a batch when embedding the corpus (no --index)")
    return parser


def _check_sources(args: argparse.Namespace) -> None:
    """Raise InputError where the options do not name exactly one model for the chosen mode."""
    if not args.retrieval_only:
        if args.hf:
            raise InputError("--hf measures a retriever alone: add --retrieval-only")
        if not args.checkpoint:
            raise InputError("--checkpoint is required (or --retrieval-only with --hf or --bm25)")
        if args.bm25 and args.index:
            raise InputError("--bm25 retrieves from the CORPUS for the checkpoint's reader; it takes no --index")
        return
    named = [o for o, v in (("--checkpoint", args.checkpoint), ("--hf", args.hf), ("--bm25", args.bm25)) if v]
    if len(named) != 1:
        raise InputError(f"--retrieval-only takes exactly one of --checkpoint, --hf, --bm25 (got {named or 'none'})")
    if args.bm25 and args.index:
        raise InputError("--bm25 ranks the CORPUS directly; it takes no --index")
    if not args.checkpoint and not args.corpus:
        raise InputError(f"{named[0]} needs --corpus, the CORPUS to retrieve from")


def retriever_for(args: argparse.Namespace):
    """The retriever the options name, and the corpus it retrieves from."""
    from realm_fairseq.indexing import retrievers
    from realm_fairseq.models.loading import checkpoint_state

    progress = not args.no_progress
    embed_options = {"max_tokens": args.max_tokens, "progress": progress}
    if args.checkpoint:
        state = checkpoint_state(args.checkpoint)  # memory-mapped: the towers are read, not the optimizer
        corpus = BlockCorpus(args.corpus or retrievers.checkpoint_corpus(state))
        return retrievers.from_checkpoint(state, args.checkpoint, corpus, args.index, args.index_version,
                                          args.device, embed_options), corpus
    corpus = BlockCorpus(args.corpus)
    if args.hf:
        return (retrievers.from_weights(args.hf, corpus, args.index, args.index_version, args.device, embed_options),
                corpus)
    from realm_fairseq.retrieval.bm25 import Bm25Retriever

    return Bm25Retriever.for_corpus(corpus, progress=progress), corpus


def retrieval_only(args: argparse.Namespace, questions: List[Question]) -> Tuple[dict, List[dict]]:
    retriever, corpus = retriever_for(args)
    metrics, records = evaluate_retrieval(retriever, corpus, questions, args.answer_type, args.questions,
                                          progress=not args.no_progress, records=bool(args.out))
    metrics["retriever"] = "bm25" if args.bm25 else os.path.abspath(args.checkpoint or args.hf)
    return metrics, records


def answer_questions(args: argparse.Namespace, questions: List[Question]) -> Tuple[dict, List[dict]]:
    qa = load_model(args, answer_type=args.answer_type)
    started = time.perf_counter()
    answers = qa.answer_all([q.question for q in questions], args.batch_size, args.topk, args.beam,
                            progress=not args.no_progress)
    metrics, records = score(qa.task.corpus, questions, answers, args.answer_type)
    if qa.task.cfg.retrieval == "bm25":  # --bm25, or a checkpoint fine-tuned with --retrieval bm25
        metrics["retriever"] = "bm25"
    metrics["questions_per_second"] = round(len(questions) / max(time.perf_counter() - started, 1e-9), 2)
    return metrics, records


def check_out(args: argparse.Namespace) -> None:
    """Raise before any work unless ``--out`` names a file that can be written and is none of the inputs
    (the questions, the checkpoint or weights, nor a file of the CORPUS or INDEX)."""
    out = os.path.realpath(args.out)
    parent = os.path.dirname(out)
    if os.path.isdir(out):
        raise IsADirectoryError(f"--out {args.out} is a directory; expected a file name for the predictions")
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--out {args.out}: cannot write in {parent} (missing or not writable)")
    for flag, path in (("--questions", args.questions), ("--checkpoint", args.checkpoint), ("--hf", args.hf)):
        if path and os.path.realpath(path) == out:
            raise InputError(f"--out {args.out} is the {flag} file; write the predictions elsewhere")
    for flag, path in (("--corpus", args.corpus), ("--index", args.index), ("--hf", args.hf)):
        if path and os.path.isdir(path) and out.startswith(os.path.join(os.path.realpath(path), "")):
            raise InputError(f"--out {args.out} is inside the {flag} directory {path}; write the predictions "
                             f"elsewhere")


def write_records(path: str, records: List[dict]) -> None:
    with atomic_file(path, force=True) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    logger.info("wrote %d predictions to %s", len(records), path)


def select(questions: List[Question], sample: Optional[int], seed: int) -> List[Question]:
    """A random sample of ``sample`` questions (all with None or more than there are), in their order."""
    if sample is None or sample >= len(questions):
        return questions
    if sample < 1:
        raise InputError(f"--sample {sample}: expected a positive number of questions")
    keep = np.sort(np.random.default_rng(seed).choice(len(questions), sample, replace=False))
    return [questions[i] for i in keep]


@cli_errors("realm-evaluate")
def cli_main(argv: Optional[List[str]] = None) -> None:
    log_to_stderr()
    args = build_parser().parse_args(argv)
    _check_sources(args)
    if args.out:
        check_out(args)
    questions = select(read_questions(args.questions, args.answer_type)[: args.max_questions], args.sample,
                       args.seed)
    metrics, records = (retrieval_only if args.retrieval_only else answer_questions)(args, questions)
    if args.out:
        write_records(args.out, records)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    cli_main()
