"""Open-domain QA data: question files, the SQuAD converter, exact match and where answers occur in blocks."""
import gzip
import json

import numpy as np
import pytest

from realm_fairseq.data import BlockCorpus
from realm_fairseq.data.answers import AnswerFinder
from realm_fairseq.data.qa_metrics import exact_match, f1, normalize_answer, paired_difference
from realm_fairseq.data.documents import InputError
from realm_fairseq.data.questions import Question, read_questions, split_by_article, squad_questions

from conftest import SQUAD_DEV, run


@pytest.mark.parametrize("text, normalized", [
    ("The Denver Broncos", "denver broncos"),
    ("  a   Tale of Two Cities! ", "tale of two cities"),
    ("U.S.", "us"),
    ("Théâtre, the end.", "théâtre end"),
    ("an apple an hour", "apple hour"),
    ("Anthem", "anthem"),  # an article only as a whole word
])
def test_squad_normalisation(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match_of_strings_and_of_regular_expressions():
    assert exact_match("the Denver Broncos.", ["Denver Broncos"])
    assert exact_match("Broncos", ["Carolina Panthers", "broncos"])
    assert not exact_match("Denver", ["Denver Broncos"])
    assert not exact_match("", ["Denver Broncos"])
    # CuratedTREC patterns match from the start of the prediction, ignoring case
    assert exact_match("Ahmad Shah Massoud", [r"Ahmm?ed Shah Massoud|Ahmad Shah Mass?oud"], "regex")
    assert exact_match("1,200 feet", [r"1,?200 (feet|ft)"], "regex")
    assert exact_match("MOUNT EVEREST", [r"(Mount|Mt\.?) Everest"], "regex")
    assert not exact_match("the Mount Everest", [r"(Mount|Mt\.?) Everest"], "regex")
    assert not exact_match("1200 meters", [r"1,?200 (feet|ft)"], "regex")


def test_f1_gives_partial_credit_for_shared_words():
    assert f1("the Denver Broncos.", ["Denver Broncos"]) == 1.0
    assert f1("Broncos", ["Denver Broncos"]) == pytest.approx(2 / 3)  # precision 1, recall 1/2
    assert f1("Broncos", ["Carolina Panthers", "Denver Broncos"]) == pytest.approx(2 / 3)  # the best answer
    assert f1("Denver Denver", ["Denver Broncos"]) == 0.5  # words count as a bag: one Denver is shared
    assert f1("Carolina", ["Denver Broncos"]) == 0.0
    assert f1("", ["Denver Broncos"]) == 0.0 and f1("the", ["a"]) == 1.0  # no words on either side
    assert f1("1,200 feet", [r"1,?200 (feet|ft)"], "regex") is None  # patterns have no words to share


def squad_predictions(limit: int = 2000):
    """SQuAD v1.1 dev questions with their gold answers and predictions that share some of their words: another
    annotator's answer, the first answer cut short or run on into its paragraph, and a wrong span."""
    with gzip.open(SQUAD_DEV, "rt", encoding="utf-8") as f:
        articles = json.load(f)["data"]
    cases = []
    for paragraph in (p for a in articles for p in a["paragraphs"]):
        context = paragraph["context"]
        for qa in paragraph["qas"]:
            answers = [a["text"] for a in qa["answers"]]
            start = qa["answers"][0]["answer_start"]
            first = answers[0]
            for prediction in {answers[-1], first[: len(first) // 2], context[start: start + len(first) + 12],
                               context[:20]}:
                cases.append((f"{qa['id']}-{len(cases)}", prediction, answers))
            if len(cases) >= limit:
                return cases
    return cases


def test_em_and_f1_equal_torchmetrics_squad_on_squad_dev():
    """torchmetrics' SQuAD metric (the official v1.1 script's EM and F1) over 2,000 predictions."""
    squad = pytest.importorskip("torchmetrics.functional.text").squad
    cases = squad_predictions()
    ours = {"exact_match": 100 * sum(exact_match(p, a) for _, p, a in cases) / len(cases),
            "f1": 100 * sum(f1(p, a) for _, p, a in cases) / len(cases)}
    theirs = squad([{"prediction_text": p, "id": i} for i, p, _ in cases],
                   [{"answers": {"answer_start": [0] * len(a), "text": a}, "id": i} for i, _, a in cases])
    assert 0 < ours["exact_match"] < ours["f1"] < 100  # the cases give partial credit, not all or nothing
    assert ours == pytest.approx({k: float(v) for k, v in theirs.items()}, abs=1e-3)


def test_paired_difference_gives_the_mean_difference_and_a_bootstrap_interval():
    assert paired_difference([1, 0, 1], [1, 0, 1]) == (0.0, 0.0, 0.0)
    assert paired_difference([1, 1], [0, 0]) == (1.0, 1.0, 1.0)
    rng = np.random.default_rng(0)  # 400 questions, (b) right on 45% and (a) on 40%, independently
    b, a = rng.random(400) < 0.45, rng.random(400) < 0.40
    mean, low, high = paired_difference(b, a)
    diff = b.astype(float) - a
    half = 1.96 * diff.std() / np.sqrt(len(diff))  # the normal approximation the bootstrap should agree with
    assert mean == pytest.approx(diff.mean()) and low < mean < high
    assert (low, high) == pytest.approx((mean - half, mean + half), abs=0.01)
    assert paired_difference(b, a) == (mean, low, high)  # seeded
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([1, 0], [1])


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_question_files_accept_answer_answers_and_single_strings(tmp_path):
    path = write_lines(tmp_path / "q.jsonl", [
        json.dumps({"question": "who wrote hamlet", "answer": ["Shakespeare", "William Shakespeare"]}),
        "",
        json.dumps({"question": "capital of france?", "answers": ["Paris"], "id": 7}),
        json.dumps({"question": "largest planet", "answer": "Jupiter"}),
    ])
    questions = read_questions(path)
    assert [q.answers for q in questions] == [["Shakespeare", "William Shakespeare"], ["Paris"], ["Jupiter"]]
    assert [q.id for q in questions] == ["q.jsonl:1", "7", "q.jsonl:4"]


@pytest.mark.parametrize("line, answer_type, message", [
    ('{"question": "q", "answer": ["a"]', "text", "line 2, column 1: invalid JSON"),
    ('{"question": "q"}', "text", "line 2: missing \"answer\""),
    ('{"question": "", "answer": ["a"]}', "text", "line 2: \"question\" is \"\""),
    ('{"question": "q", "answers": []}', "text", "line 2: \"answers\" is []; expected a non-empty list"),
    ('{"question": "q", "answer": [3]}', "text", "line 2: \"answer\" is [3]"),
    ('["q", "a"]', "text", "line 2: expected a JSON object"),
    ('{"question": "q", "answer": ["(unclosed"]}', "regex", "line 2: answer '(unclosed' is not a valid regular"),
])
def test_bad_question_lines_are_reported_with_file_and_line(tmp_path, line, answer_type, message):
    path = write_lines(tmp_path / "bad.jsonl", ['{"question": "fine", "answer": ["yes"]}', line])
    with pytest.raises(InputError) as e:
        read_questions(path, answer_type)
    assert str(e.value).startswith(f"{path}, ") and message in str(e.value)


def test_an_empty_question_file_is_reported(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(InputError, match=rf"^{path}: file is empty; expected questions$"):
        read_questions(str(path))


def test_squad_converter_splits_by_article(tmp_path):
    with gzip.open(SQUAD_DEV, "rt", encoding="utf-8") as f:
        squad = json.load(f)
    articles = {a["title"] for a in squad["data"]}
    items = squad_questions(SQUAD_DEV)
    assert len(items) == sum(len(p["qas"]) for a in squad["data"] for p in a["paragraphs"])
    assert items[0][1].answers == ["Denver Broncos"]  # three annotators, one text
    splits = split_by_article(items, {"train": 80, "valid": 10, "test": 10}, seed=1)
    assert sum(len(s) for s in splits.values()) == len(items)
    assert 0.7 < len(splits["train"]) / len(items) < 0.9 and len(splits["test"]) > 500

    out = tmp_path / "questions"
    proc = run(["realm-squad-to-questions", SQUAD_DEV, "--out", str(out)])
    assert "test.jsonl: " in proc.stdout
    title_of = {q.id: t for t, q in items}
    seen = {}
    for name in ("train", "valid", "test"):
        questions = read_questions(str(out / f"{name}.jsonl"))
        assert [q.id for q in questions] == [q.id for q in splits[name]]  # the same split as the function
        seen[name] = {title_of[q.id] for q in questions}
    assert not seen["test"] & (seen["train"] | seen["valid"]) and not seen["train"] & seen["valid"]
    assert seen["train"] | seen["valid"] | seen["test"] == articles
    bad = run(["realm-squad-to-questions", SQUAD_DEV, "--out", str(out), "--split", "train=80,test"], check=False)
    assert bad.returncode != 0 and "expected distinct name=share pairs" in bad.stderr


@pytest.fixture(scope="module")
def super_bowl(tmp_path_factory):
    """The corpus of the first SQuAD dev article (Super Bowl 50) and its first block."""
    from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus

    from conftest import VOCAB
    with gzip.open(SQUAD_DEV, "rt", encoding="utf-8") as f:
        squad = json.load(f)
    squad["data"] = squad["data"][:1]
    root = tmp_path_factory.mktemp("superbowl")
    (root / "squad.json").write_text(json.dumps(squad), encoding="utf-8")
    prepare_corpus([str(root / "squad.json")], VOCAB, str(root / "corpus"),
                   CorpusConfig(workers=1, salient_spans="regex", no_progress=True))
    return BlockCorpus(str(root / "corpus"))


def spans_as_text(finder, block, answers, max_len=0):
    text = finder.block_text(block)
    return [text.span_text(s, e) for s, e in finder.spans(block, finder.targets(answers), max_len)]


def test_answer_spans_in_a_block(super_bowl):
    finder = AnswerFinder(super_bowl)
    assert finder.block_text(0).text.startswith("Super Bowl 50\nSuper Bowl 50 was an American football game")
    # an answer is found as written and as normalised (no article), at word boundaries; the title counts too
    assert spans_as_text(finder, 0, ["the Denver Broncos"]) == ["Denver Broncos"]
    assert spans_as_text(finder, 0, ["Denver Broncos", "The Broncos"]) == ["Denver Broncos", "Broncos"]
    assert spans_as_text(finder, 0, ["super bowl 50"])[:2] == ["Super Bowl 50", "Super Bowl 50"]
    assert spans_as_text(finder, 0, ["Super Bowl"], max_len=1) == []  # two wordpieces
    assert spans_as_text(finder, 0, ["Bowl 5"]) == []  # "50" is one word, not "5" + more
    assert finder.contains(0, finder.targets(["National Football League"]))
    assert not finder.contains(0, finder.targets(["Seattle Seahawks"]))


def test_regex_answer_spans_in_a_block(super_bowl):
    finder = AnswerFinder(super_bowl, "regex")
    assert spans_as_text(finder, 0, [r"Denver\s+Bronco(s)?"]) == ["Denver Broncos"]
    assert spans_as_text(finder, 0, [r"20\d\d season"]) == ["2015 season"]
    assert spans_as_text(finder, 0, [r"Bron"]) == []  # matches inside a word: no span, but the block holds it
    assert finder.contains(0, finder.targets([r"Bron"]))
    assert not finder.contains(0, finder.targets([r"Seahawks"]))


def test_the_reader_chooses_among_whole_word_spans_of_one_part(super_bowl):
    import torch

    from realm_fairseq.models.span_reader import allowed_spans

    finder = AnswerFinder(super_bowl)
    pieces = finder.pieces(0)
    sep = int(super_bowl.meta[0, 3]) - 1  # title [SEP] body
    flags = [torch.from_numpy(a)[None] for a in (pieces.starts_word, pieces.ends_word, pieces.part)]
    allowed = allowed_spans(*flags, max_span_len=10)[0]  # (n, 10): span from t to t + l
    starts, lengths = (t.tolist() for t in allowed.nonzero(as_tuple=True))
    assert len(starts) > 5 * len(pieces.tokens)  # most words start several spans
    assert not allowed[sep].any() and all(s + l < sep or s > sep for s, l in zip(starts, lengths))
    assert all(pieces.starts_word[s] and pieces.ends_word[s + l] for s, l in zip(starts, lengths))
    assert any(not w for w in pieces.starts_word)  # the block has ## pieces, none of which starts a span
    for s, e in finder.spans(0, finder.targets(["Denver Broncos", "Super Bowl 50", "2015"]), max_len=10):
        assert allowed[s, e - s]


def test_evaluate_sample_is_a_seeded_subset_from_the_whole_file_in_its_order():
    """realm-evaluate --sample N: the same N questions for a seed, drawn from the whole file (not its first N,
    which are the questions of one article in a split file), in the file's order."""
    from realm_fairseq.cli.evaluate import select

    questions = [Question(question=f"question {i}", answers=["a"], id=str(i)) for i in range(100)]
    picked = [int(q.id) for q in select(questions, 10, 1)]
    again, other = ([int(q.id) for q in select(questions, 10, seed)] for seed in (1, 2))
    assert picked == again != other
    assert len(set(picked)) == 10 and picked == sorted(picked) and picked[-1] >= 50
    assert select(questions, None, 1) == questions == select(questions, 100, 1)
    with pytest.raises(InputError, match="--sample 0"):
        select(questions, 0, 1)
