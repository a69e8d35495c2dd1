"""The realm_qa criterion against a direct computation, and exact match against SQuAD's own definition.

The direct computation follows the definitions of the paper (section 3.3) and of
:mod:`realm_fairseq.criterions.realm_qa` one question and one block at a time, in float64, with none of the
code under test: the beam from every block's score, each block read alone as ``[CLS] x [SEP] z [SEP]``, the
spans that may answer and the gold spans found by comparing wordpieces, the two log-likelihoods and the
best span. The model is a random realm_tiny with a random span head (so that spans score differently) on
the first paragraphs of the first SQuAD dev article.
"""
import argparse
import gzip
import json
import re
import string
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from realm_fairseq.criterions.realm_qa import RealmQaCriterion
from realm_fairseq.data import BlockCorpus
from realm_fairseq.data.qa_metrics import exact_match, f1, normalize_answer
from realm_fairseq.data.question_dataset import QuestionsDataset
from realm_fairseq.data.questions import Question
from realm_fairseq.data.vocab import FAIRSEQ_NSPECIAL
from realm_fairseq.models.config import RealmConfig
from realm_fairseq.models.open_qa import predict
from realm_fairseq.models.realm import RealmModel, realm_tiny
from realm_fairseq.indexing.embed import embed_blocks
from realm_fairseq.models.loading import EmbedderSource
from realm_fairseq.retrieval.fixed_retriever import FixedIndexRetriever
from realm_fairseq.retrieval.versions import IndexStore
from realm_fairseq.tasks.realm_open_qa import RealmOpenQAConfig, RealmOpenQATask

from conftest import SQUAD_DEV, VOCAB

PARAGRAPHS, QUESTIONS, TOPK, BEAM, MAX_SPAN_LEN = 6, 16, 4, 8, 4


def squad_dev():
    with gzip.open(SQUAD_DEV, "rt", encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def qa_case(tmp_path_factory):
    """A realm_open_qa task over the first paragraphs of the Super Bowl 50 article (blocks of at most 64
    wordpieces: 13), its INDEX of a random realm_tiny's block embeddings, the model and a batch of questions."""
    from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus

    root = tmp_path_factory.mktemp("realm_qa")
    squad = squad_dev()
    article = squad["data"][0]
    article["paragraphs"] = article["paragraphs"][:PARAGRAPHS]
    squad["data"] = [article]
    (root / "squad.json").write_text(json.dumps(squad), encoding="utf-8")
    prepare_corpus([str(root / "squad.json")], VOCAB, str(root / "corpus"),
                   CorpusConfig(workers=1, salient_spans="regex", block_size=64, no_progress=True))
    corpus = BlockCorpus(str(root / "corpus"))
    model = tiny_span_model(corpus)
    IndexStore(str(root / "index")).commit(embed_blocks(EmbedderSource(model.doc_embedder, {}), corpus, progress=False),
                                           corpus.checksum, {"kind": "test", "update": 0})
    cfg = RealmOpenQAConfig(data=str(root), corpus=str(root / "corpus"), index=str(root / "index"),
                            retrieval_topk=TOPK, retriever_beam=BEAM, max_span_len=MAX_SPAN_LEN)
    task = RealmOpenQATask(cfg, corpus, FixedIndexRetriever(corpus, cfg.index))
    questions = [Question(question=qa["question"], answers=[a["text"] for a in qa["answers"]], id=qa["id"])
                 for p in article["paragraphs"] for qa in p["qas"]][::8][:QUESTIONS]  # of every paragraph
    ds = QuestionsDataset(questions, corpus, max_question_len=64)
    return task, model, ds.collater([ds[i] for i in range(len(ds))])


def tiny_span_model(corpus: BlockCorpus) -> RealmModel:
    """A realm_tiny model with its span reader, no dropout, and a random span head."""
    torch.manual_seed(0)
    args = argparse.Namespace(dropout=0.0, attention_dropout=0.0)
    realm_tiny(args)
    model = RealmModel.build_model(RealmConfig(**vars(args)), SimpleNamespace(source_dictionary=corpus.dictionary))
    model.register_span_reader()  # as realm_open_qa does
    torch.nn.init.normal_(model.span_reader.score.weight, std=1.0)
    return model.eval()


def block_flags(corpus: BlockCorpus, z: int):
    """Per wordpiece of block z (``title [SEP] body``): its part (0 title, 1 body, -1 the [SEP]), whether it
    starts a word and whether it ends one (the next piece starts a word or another part, or there is none)."""
    pieces = corpus.wordpieces(z)
    head = int(corpus.meta[z, 3])  # title wordpieces + [SEP], 0 without a title
    part = [0 if i < head - 1 else -1 if i == head - 1 else 1 for i in range(len(pieces))]
    starts = [not p.startswith("##") for p in pieces]
    ends = [i + 1 == len(pieces) or starts[i + 1] or part[i + 1] != part[i] for i in range(len(pieces))]
    return part, starts, ends


def may_answer(flags, s: int, e: int) -> bool:
    """Whether wordpieces s..e of a block may be an answer: whole words within its title or its body."""
    part, starts, ends = flags
    return e < len(part) and part[s] >= 0 and part[s] == part[e] and starts[s] and ends[e]


def answer_pieces(corpus: BlockCorpus, answers) -> set:
    """The wordpiece sequences (fairseq ids) that spell an answer: each answer as written and normalised."""
    encode = corpus.tokenizer.encode
    return {tuple(t + FAIRSEQ_NSPECIAL for t in encode(form, add_special_tokens=False).ids)
            for a in answers for form in (a, normalize_answer(a))} - {()}


def gold_spans(corpus: BlockCorpus, z: int, answers) -> list:
    """Every answer span (s, e) of block z, of any length."""
    tokens, flags, seqs = corpus.tokens(z).tolist(), block_flags(corpus, z), answer_pieces(corpus, answers)
    return [(s, e) for s in range(len(tokens)) for e in range(s, len(tokens))
            if tuple(tokens[s : e + 1]) in seqs and may_answer(flags, s, e)]


def read_alone(model: RealmModel, question: torch.Tensor, z_tokens: torch.Tensor) -> dict:
    """log p(s | z, x) of every span (s, e) of z that may answer, z read alone with the question."""
    d = model.dictionary
    tokens = torch.cat([question, z_tokens, torch.tensor([d.eos()])])[None]  # [CLS] x [SEP] z [SEP]
    segments = torch.cat([torch.zeros(len(question)), torch.ones(len(z_tokens) + 1)]).long()[None]
    with torch.no_grad():
        scores = model.span_reader(tokens, segments, MAX_SPAN_LEN)[0].double()  # (T, L)
    return {(s, s + l): float(scores[len(question) + s, l]) for s in range(len(z_tokens)) for l in range(MAX_SPAN_LEN)}


def joint_log_probs(model: RealmModel, corpus: BlockCorpus, question: torch.Tensor, blocks, scores) -> dict:
    """log p(s, z_k | x) = log p(z_k | x) + log p(s | z_k, x) of every span that may answer in the blocks
    read, keyed (k, s, e); p(z | x) is the softmax of their ``scores``, p(s | z, x) over the spans of z."""
    log_p_z = torch.log_softmax(scores, 0)
    joint = {}
    for k, z in enumerate(blocks):
        flags = block_flags(corpus, z)
        spans = {span: v for span, v in read_alone(model, question, corpus.tokens(z)).items()
                 if may_answer(flags, *span)}
        log_norm = float(torch.logsumexp(torch.tensor(list(spans.values())), 0))
        joint.update({(k, *span): float(log_p_z[k]) + v - log_norm for span, v in spans.items()})
    return joint


def add_term(out: dict, term: str, counter: str, log_probs: list) -> None:
    """Add -log of the summed probabilities to loss ``term`` and count the question; without any, nothing."""
    if log_probs:
        out[term] -= float(torch.logsumexp(torch.tensor(log_probs), 0))
        out[counter] += 1


def direct(task, model: RealmModel, batch: dict) -> dict:
    """The realm_qa loss terms, counts and best spans of ``batch``, computed directly (module docstring)."""
    corpus, pad = task.corpus, model.dictionary.pad()
    blocks = torch.from_numpy(IndexStore(task.cfg.index).embeddings(1).astype(np.float64))  # (N, D)
    with torch.no_grad():
        relevance = model.embed_queries(batch["net_input"]["src_tokens"]).double() @ blocks.T  # (B, N)
    out = {"reader_loss": 0.0, "retriever_loss": 0.0, "readable": 0, "retrievable": 0, "best": []}
    for b, answers in enumerate(batch["answers"]):
        beam_scores, beam = relevance[b].topk(BEAM)
        beam = beam.tolist()
        gold = [gold_spans(corpus, z, answers) for z in beam]
        log_p_beam = torch.log_softmax(beam_scores, 0)
        add_term(out, "retriever_loss", "retrievable", [float(log_p_beam[i]) for i, g in enumerate(gold) if g])
        question = batch["net_input"]["src_tokens"][b]
        joint = joint_log_probs(model, corpus, question[question.ne(pad)], beam[:TOPK], beam_scores[:TOPK])
        add_term(out, "reader_loss", "readable", [v for (k, s, e), v in joint.items() if (s, e) in gold[k]])
        k, s, e = max(joint, key=joint.get)
        out["best"].append((beam[k], s, e, float(np.exp(joint[k, s, e]))))
    return out


def test_loss_and_predictions_match_a_direct_computation(qa_case):
    task, model, batch = qa_case
    expected = direct(task, model, batch)
    with torch.no_grad():
        loss, sample_size, log = RealmQaCriterion(task)(model, batch)
        predictions = predict(task.read(model, batch["net_input"]["src_tokens"], batch["questions"]), task.finder)
    # the case has questions answered and not answered in their blocks, read and retrieved
    assert 0 < expected["readable"] < expected["retrievable"] < QUESTIONS, expected
    assert sample_size == QUESTIONS and (log["readable"], log["retrievable"]) == (
        expected["readable"], expected["retrievable"])
    assert log["reader_loss"] == pytest.approx(expected["reader_loss"], rel=1e-4)
    assert log["retriever_loss"] == pytest.approx(expected["retriever_loss"], rel=1e-4)
    assert float(loss) == pytest.approx(expected["reader_loss"] + expected["retriever_loss"], rel=1e-4)
    for prediction, (block, start, end, score) in zip(predictions, expected["best"]):
        assert (prediction.block, prediction.start, prediction.end) == (block, start, end)
        assert prediction.score == pytest.approx(score, rel=1e-4)
    texts = [task.finder.block_text(block).span_text(start, end) for block, start, end, _ in expected["best"]]
    assert [p.text for p in predictions] == texts
    assert log["em"] == sum(exact_match(t, a) for t, a in zip(texts, batch["answers"]))
    assert log["f1"] == sum(f1(t, a) for t, a in zip(texts, batch["answers"]))


def test_training_reads_only_the_blocks_with_a_gold_span_for_the_same_loss_and_gradients(qa_case):
    """In training (``model.training``) the criterion reads only the top-k blocks that hold a gold span: the
    others add nothing to the loss. The loss and every parameter's gradient are those of reading every block."""
    task, model, batch = qa_case
    rows_read = []
    hook = model.span_reader.register_forward_hook(lambda module, inputs, out: rows_read.append(len(inputs[0])))

    def loss_and_gradients(training: bool):
        model.train(training)  # the model has no dropout: only what the criterion reads differs
        model.zero_grad()
        rows_read.clear()
        loss, _, log = RealmQaCriterion(task)(model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return float(loss), grads, sum(rows_read), log

    try:
        full_loss, full_grads, full_rows, full_log = loss_and_gradients(False)
        loss, grads, rows, log = loss_and_gradients(True)
    finally:
        hook.remove()
        model.eval()
    assert full_rows == QUESTIONS * TOPK and 0 < rows < full_rows / 2, (rows, full_rows)
    assert loss == pytest.approx(full_loss, rel=1e-5)
    assert grads.keys() == full_grads.keys() and any(n.startswith("span_reader.") for n in grads)
    scale = max(float(g.abs().max()) for g in full_grads.values())  # float noise is relative to it
    for name, grad in full_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-3, atol=1e-5 * scale)
    assert "em" in full_log and "em" not in log  # predictions need every block read
    assert (full_log["blocks_read"], log["blocks_read"]) == (full_rows, rows)


def squad_official_normalize(s: str) -> str:
    """normalize_answer of the official SQuAD v1.1 evaluation script (evaluate-v1.1.py), as written there."""
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def test_exact_match_is_squads_on_every_shipped_answer():
    """Every gold answer of the shipped SQuAD dev set normalises as the official script does, and exact match
    of each question's first answer against the answers of the next question agrees with the script's."""
    questions = [[a["text"] for a in qa["answers"]] for article in squad_dev()["data"]
                 for p in article["paragraphs"] for qa in p["qas"]]
    answers = {a for q in questions for a in q}
    assert len(answers) > 14000
    assert [normalize_answer(a) for a in sorted(answers)] == [squad_official_normalize(a) for a in sorted(answers)]
    for first, other in zip(questions, questions[1:]):
        official = any(squad_official_normalize(first[0]) == squad_official_normalize(a) for a in other)
        assert exact_match(first[0], other) == official


@pytest.mark.parametrize("prediction, answers, matches", [
    ("The  Broncos!", ["broncos"], True),  # case, article, punctuation and white space
    ("Saint-Denis", ["Saint Denis"], False),  # punctuation is removed, not made a space
    ("Saint-Denis", ["SaintDenis"], True),
    ("theater", ["ater"], False),  # articles only as whole words
    ("A.D. 1066", ["ad 1066"], True),
    ("an", ["the"], True),  # both normalise to ""
    ("", ["a"], True),
    ("Broncos", [], False),
])
def test_exact_match_by_hand(prediction, answers, matches):
    assert exact_match(prediction, answers) is matches


@pytest.mark.parametrize("prediction, pattern, matches", [
    ("Denver Broncos", r"Denver", True),  # from the start, not to the end (DrQA's regex_match)
    ("the Denver Broncos", r"Denver", False),
    ("DENVER", r"denver", True),  # ignoring case
    ("1,200 ft", r"1,?200 (feet|ft)", True),
    ("1200feet", r"1,?200 (feet|ft)", False),
    ("Tokyo\nJapan", r"Japan", False),  # a new line is no new start
    ("Nikola Tesla", r"(Nikola )?Tesla$", True),
])
def test_regex_exact_match_by_hand(prediction, pattern, matches):
    assert exact_match(prediction, [pattern], "regex") is matches
