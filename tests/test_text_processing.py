"""Sentence boundaries, the date regex and spaCy salient spans on known cases."""
import logging

import numpy as np
import pytest

from realm_fairseq.data import Vocab, salient_spans
from realm_fairseq.data.salient_spans import date_spans, make_finder, merge_spans
from realm_fairseq.data.sentences import SentenceRules, sentence_start_tokens

from conftest import VOCAB


VOCABULARY = Vocab.load(VOCAB)
TOKENIZER = VOCABULARY.tokenizer()


def sentences(text):
    enc = TOKENIZER.encode(text)
    offsets = np.array(enc.offsets, dtype=np.int64).reshape(-1, 2)
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    found = sentence_start_tokens(np.array(enc.ids), offsets, codepoints, SentenceRules.for_vocab(VOCABULARY))
    starts = [0] + [int(offsets[t, 0]) for t in found] + [len(text)]
    return [text[a:b].strip() for a, b in zip(starts[:-1], starts[1:])]


def test_sentences_split_at_full_stops_and_line_breaks():
    text = 'He left in 1901. "Why?" she asked! It rained.\n==History==\nThe war ended (finally). 2000 came.'
    assert sentences(text) == ["He left in 1901.", '"Why?" she asked!', "It rained.", "==History==",
                               "The war ended (finally).", "2000 came."]


def test_sentences_do_not_split_after_abbreviations_and_initials():
    text = "Dr. Smith met J. R. R. Tolkien in the U.S. in May. Mr. Brown, i.e. the host, was late."
    assert sentences(text) == ["Dr. Smith met J. R. R. Tolkien in the U.S. in May.",
                               "Mr. Brown, i.e. the host, was late."]


@pytest.mark.parametrize("text,dates", [
    ("The game was played on February 7, 2016, at Levi's Stadium.", ["February 7, 2016"]),
    ("Born 10 December 1815 in London.", ["10 December 1815"]),
    ("It opened in March 2001 and closed on Sept. 3.", ["March 2001", "Sept. 3"]),
    ("In the 1990s and the 19th century, and in 300 BC.", ["1990s", "19th century", "300 BC"]),
    ("From April 2016 to AD 70, on August 3rd.", ["April 2016", "AD 70", "August 3rd"]),
    ("The 2015-16 season, not 1,500 people or 12345 or 3.1415.", ["2015-16"]),
    ("He was born in 1912.", ["1912"]),
    ("May I say 7 things?", []),
])
def test_date_regex_finds_dates_and_only_dates(text, dates):
    assert [text[a:b] for a, b in date_spans(text)] == dates


def test_overlapping_spans_keep_the_first_longest():
    assert merge_spans([(5, 9), (0, 4), (0, 6), (8, 12), (12, 13)]) == [(0, 6), (8, 12), (12, 13)]


def test_regex_mode_finds_dates_without_spacy():
    finder = make_finder("regex")
    text = "Marie Curie won the Nobel Prize in 1903."
    assert [text[a:b] for a, b in finder(text)] == ["1903"]
    assert make_finder("none")(text) == []


def test_auto_mode_falls_back_to_dates_with_a_warning(tmp_path, monkeypatch, caplog):
    from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus

    monkeypatch.setattr(salient_spans, "_load_spacy", lambda: (None, "spaCy is not installed"))
    src = tmp_path / "d.jsonl"
    src.write_text('{"id": "1", "title": "T", "text": "Marie Curie won the Nobel Prize in 1903 in Sweden."}\n')
    with caplog.at_level(logging.WARNING):
        manifest = prepare_corpus([str(src)], VOCAB, str(tmp_path / "c"),
                                  CorpusConfig(workers=1, no_progress=True))
    assert "date regex only (spaCy is not installed)" in caplog.text
    assert "pip install 'realm-fairseq[ner]'" in caplog.text
    assert manifest["salient_span_source"] == "date regex only (spaCy is not installed)"
    with pytest.raises(ImportError, match="spaCy is not installed"):
        make_finder("spacy")


def test_spacy_finds_named_entities_and_dates():
    pytest.importorskip("spacy", reason="the ner extra (spaCy) is not installed")
    finder = make_finder("spacy")
    if finder.mode != "spacy":
        pytest.skip(f"no spaCy English model: {finder.description}")
    text = "Marie Curie moved to Paris in 1891 and later worked at the University of Paris."
    found = {text[a:b] for a, b in finder(text)}
    assert {"Marie Curie", "Paris", "1891"} <= found
    assert any("University of Paris" in f for f in found)
    assert "spaCy" in finder.description and "date regex" in finder.description


def test_corpus_examples_carry_spacy_entities_across_workers(tmp_path):
    pytest.importorskip("spacy", reason="the ner extra (spaCy) is not installed")
    from realm_fairseq.data import BlockCorpus
    from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus

    if make_finder("spacy").mode != "spacy":
        pytest.skip("no spaCy English model")
    src = tmp_path / "d.jsonl"
    src.write_text("".join(
        f'{{"id": "{i}", "title": "Curie {i}", "text": "Marie Curie moved from Warsaw to Paris in 1891 '
        f'to study physics at the University of Paris. She won a Nobel Prize in {1903 + i}."}}\n'
        for i in range(6)))
    manifest = prepare_corpus([str(src)], VOCAB, str(tmp_path / "c"),
                              CorpusConfig(workers=2, salient_spans="spacy", no_progress=True))
    assert manifest["salient_span_source"].startswith("spaCy")
    corpus = BlockCorpus(str(tmp_path / "c"))
    ex = corpus.examples
    found = {corpus.dictionary.string(ex.tokens(j)[s:e]).replace(" ##", "")
             for j in range(len(ex)) for s, e in ex.salient_spans(j)}
    assert {"marie curie", "warsaw", "paris", "1891", "1908"} <= found
