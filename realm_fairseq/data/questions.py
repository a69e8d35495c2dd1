"""Question files for open-domain QA (REALM, section 4.1; the ORQA formats): read, convert, split.

A question file is JSONL, one question a line, plain or ``.gz``:

- NQ-Open / WebQuestions style: ``{"question": str, "answer": [str, ...]}``; ``answers`` is accepted for
  ``answer``, a single string for a one-element list, and an optional ``id`` is kept, as is an optional
  ``doc_id``, the id of the CORPUS document that holds the gold passage (``realm-evaluate
  --retrieval-only`` reports ``gold_recall@k`` with it);
- CuratedTREC style: the same, the answers being regular expressions (``answer_type="regex"``); every
  pattern is compiled when read, so a bad one is reported with its line.

SQuAD JSON converts to this format (:func:`squad_questions`), split by article (:func:`split_by_article`)
so that no article of the test split is seen in training: ``realm-squad-to-questions`` does both.
Bad input raises :class:`~realm_fairseq.errors.InputError` naming the file, line and field.
"""
import itertools
import json
import os
import random
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from realm_fairseq.atomic_io import atomic_file
from realm_fairseq.data.input_files import decode_utf8, jsonl_objects, read_all
from realm_fairseq.errors import InputError

ANSWER_TYPES = ("text", "regex")
REGEX_FLAGS = re.IGNORECASE | re.UNICODE | re.MULTILINE


@dataclass
class Question:
    question: str
    answers: List[str]  # strings or regular expressions, by the file's answer type
    id: str
    doc_id: Optional[str] = None  # the CORPUS document of the gold passage, where known
    line: int = 0  # line of the question file it was read from (0: not read from a file)


def compile_answer_regex(pattern: str) -> "re.Pattern":
    """A CuratedTREC answer pattern, case-insensitive as DrQA and ORQA match them."""
    return re.compile(pattern, REGEX_FLAGS)


def _answers_field(obj: dict, where: str, answer_type: str) -> List[str]:
    keys = [k for k in ("answer", "answers") if k in obj]
    if not keys:
        raise InputError(f"{where}: missing \"answer\" (or \"answers\"); expected a list of strings")
    if len(keys) == 2:
        raise InputError(f"{where}: has both \"answer\" and \"answers\"; expected one of them")
    value = obj[keys[0]]
    answers = [value] if isinstance(value, str) else value
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise InputError(f"{where}: \"{keys[0]}\" is {json.dumps(value)[:80]}; expected a non-empty list of "
                         f"non-empty strings")
    if answer_type == "regex":
        for pattern in answers:
            try:
                compile_answer_regex(pattern)
            except re.error as e:
                raise InputError(f"{where}: answer {pattern!r} is not a valid regular expression ({e})") from None
    return answers


def read_questions(path: str, answer_type: str = "text") -> List[Question]:
    """The questions of a JSONL question file, in file order."""
    if answer_type not in ANSWER_TYPES:
        raise ValueError(f"answer type {answer_type!r}: expected one of {', '.join(ANSWER_TYPES)}")
    questions = []
    for lineno, where, obj in jsonl_objects(path, "questions", '"question", "answer"'):
        text = obj.get("question")
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{where}: \"question\" is {json.dumps(text)[:80]}; expected a non-empty string")
        qid = obj.get("id", f"{os.path.basename(path)}:{lineno}")
        doc_id = obj.get("doc_id")
        if doc_id is not None and not isinstance(doc_id, str):
            raise InputError(f"{where}: \"doc_id\" is {json.dumps(doc_id)[:80]}; expected a string, the id of a "
                             f"CORPUS document")
        questions.append(Question(text.strip(), _answers_field(obj, where, answer_type), str(qid), doc_id, lineno))
    return questions


def squad_questions(path: str) -> List[Tuple[str, Question]]:
    """(article title, question) for every question of a SQuAD JSON file; the answers are the distinct
    answer texts of the question, in order, and ``doc_id`` the id ``realm-prepare-corpus`` gives its
    paragraph (``title#j``)."""
    squad = _load_squad(path)
    found = []
    for i, article in enumerate(squad["data"]):
        where = f"{path}: data[{i}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise InputError(f"{where}: expected an article with a \"paragraphs\" list")
        title = str(article.get("title", i))
        doc_title = article.get("title", "")  # as realm-prepare-corpus names the paragraphs
        for j, paragraph in enumerate(article["paragraphs"]):
            for k, qa in enumerate(paragraph.get("qas", []) if isinstance(paragraph, dict) else []):
                qwhere = f"{where}.paragraphs[{j}].qas[{k}]"
                answers = qa.get("answers") if isinstance(qa, dict) else None
                if not isinstance(qa, dict) or not isinstance(qa.get("question"), str) or not isinstance(answers, list):
                    raise InputError(f"{qwhere}: expected {{\"question\": str, \"answers\": [{{\"text\": str}}]}}")
                texts = list(dict.fromkeys(a.get("text", "").strip() for a in answers if isinstance(a, dict)))
                texts = [t for t in texts if t]
                if texts and not qa["question"].strip():
                    raise InputError(f"{qwhere}: \"question\" is empty; expected the question's text")
                if texts:  # SQuAD 2.0's unanswerable questions have none
                    found.append((title, Question(qa["question"].strip(), texts, str(qa.get("id", qwhere)),
                                                  f"{doc_title}#{j}")))
    return found


def _load_squad(path: str) -> dict:
    raw = read_all(path)
    try:
        squad = json.loads(decode_utf8(path, raw))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}, line {e.lineno}, column {e.colno}: invalid JSON ({e.msg})") from None
    if not isinstance(squad, dict) or not isinstance(squad.get("data"), list):
        raise InputError(f"{path}: expected SQuAD JSON, an object with a \"data\" list of articles")
    return squad


def split_by_article(items: Sequence[Tuple[str, Question]], fractions: Dict[str, float],
                     seed: int = 1) -> Dict[str, List[Question]]:
    """Split (article, question) pairs so that all questions of an article land in one split. The
    articles are shuffled with ``seed`` and dealt to the splits in order: a split takes the next article
    while the article's middle question falls within the split's share (``fractions``) of all questions,
    takes at least one, and leaves one for every split after it."""
    if not fractions or any(f <= 0 for f in fractions.values()):
        raise ValueError(f"split fractions {fractions}: expected positive numbers")
    per_article: Dict[str, List[Question]] = {}
    for title, question in items:
        per_article.setdefault(title, []).append(question)
    articles = list(per_article)
    if len(articles) < len(fractions):
        raise ValueError(f"{len(articles)} articles cannot fill {len(fractions)} splits")
    random.Random(seed).shuffle(articles)
    names, total = list(fractions), len(items)
    bounds = list(itertools.accumulate(fractions[n] / sum(fractions.values()) * total for n in names))
    splits: Dict[str, List[Question]] = {}
    taken, next_article = 0, 0
    for n, name in enumerate(names):
        later = len(names) - n - 1
        chosen: List[Question] = []
        while next_article < len(articles) - later:
            questions = per_article[articles[next_article]]
            if chosen and later and taken + len(chosen) + len(questions) / 2 > bounds[n]:
                break
            chosen += questions
            next_article += 1
        splits[name] = chosen
        taken += len(chosen)
    return splits


def write_questions(path: str, questions: Sequence[Question], force: bool = True) -> None:
    """Write a JSONL question file (``{"id", "question", "answer"}`` a line) through a temporary file."""
    with atomic_file(path, force=force) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for q in questions:
                record = {"id": q.id, "question": q.question, "answer": q.answers}
                if q.doc_id is not None:
                    record["doc_id"] = q.doc_id
                f.write(json.dumps(record, ensure_ascii=False))
                f.write("\n")
