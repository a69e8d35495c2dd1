"""The corpus built from the shipped Wikipedia articles round-trips: blocks fit, decode back to their
source text, cover every character once, and examples point at the block they came from."""
import json
import os
import re
import unicodedata

import numpy as np
from fairseq.data import Dictionary

from realm_fairseq.atomic_io import sha256_files
from realm_fairseq.data import BlockCorpus
from realm_fairseq.data.documents import read_jsonl

from conftest import VOCAB, WIKI


def bert_normalize(text: str) -> str:
    """What BERT uncased keeps of ``text`` for matching: lower case, no accents, controls or spaces."""
    text = unicodedata.normalize("NFD", "".join(c.lower() for c in text))  # no final-sigma rule
    drop = {"Mn", "Cc", "Cf", "Zs", "Zl", "Zp"}
    return "".join(c for c in text if unicodedata.category(c) not in drop and c != "\ufffd"
                   and not c.isspace())


def pieces_pattern(pieces):
    """A regex for the text wordpieces came from; an [UNK] stands for one or more characters."""
    return "".join(".+?" if p == "[UNK]" else re.escape(p[2:] if p.startswith("##") else p)
                   for p in pieces)


def test_every_block_fits_the_block_size(wiki_corpus):
    corpus = BlockCorpus(wiki_corpus)
    assert len(corpus) > 2000
    assert corpus.sizes.max() <= 288
    assert corpus.sizes.max() >= 280, "blocks should be packed close to the block size"


def test_blocks_decode_to_their_source_text(wiki_corpus):
    corpus = BlockCorpus(wiki_corpus)
    for i in range(len(corpus)):
        body_start = int(corpus.meta[i, 3])
        pieces = corpus.wordpieces(i)
        block = corpus.block(i)
        assert pieces[body_start - 1] == "[SEP]"
        assert re.fullmatch(pieces_pattern(pieces[: body_start - 1]), bert_normalize(block.title))
        assert re.fullmatch(pieces_pattern(pieces[body_start:]), bert_normalize(block.text)), (
            f"block {i} does not decode to its text: {block.text[:200]!r}"
        )


def test_blocks_cover_every_character_exactly_once(wiki_corpus):
    corpus = BlockCorpus(wiki_corpus)
    docs = list(read_jsonl(WIKI))
    coverage = [np.zeros(len(d.text), dtype=np.int32) for d in docs]
    for doc_index, start, end, _ in corpus.meta:
        coverage[doc_index][start:end] += 1
    for doc, cov in zip(docs, coverage):
        text = np.array(list(doc.text))
        non_space = ~np.vectorize(str.isspace)(text)
        assert (cov[non_space] == 1).all(), f"{doc.title}: characters covered {set(cov[non_space])} times"
        assert (cov <= 1).all()


def test_blocks_keep_document_order_and_titles(wiki_corpus):
    corpus = BlockCorpus(wiki_corpus)
    docs = list(read_jsonl(WIKI))
    assert (np.diff(corpus.meta[:, 0]) >= 0).all()
    assert sorted(set(corpus.meta[:, 0].tolist())) == list(range(len(docs)))
    first = corpus.block(0)
    assert (first.doc_id, first.title) == (docs[0].id, docs[0].title)
    assert first.text.startswith(docs[0].text[:100])
    assert corpus.decode(0).startswith("anarchism [SEP] anarchism is a political philosophy")


def test_examples_are_slices_of_their_source_block(wiki_corpus):
    corpus = BlockCorpus(wiki_corpus)
    ex = corpus.examples
    assert len(ex) > 10 * len(corpus) / 2
    assert ex.sizes.min() >= 8 and ex.sizes.max() <= 64
    for j in range(0, len(ex), 97):
        block = corpus.tokens(int(ex.source_block[j]))
        off = int(ex.block_offset[j])
        assert off >= int(corpus.meta[ex.source_block[j], 3])  # in the body, not the title
        assert block[off : off + len(ex.tokens(j))].tolist() == ex.tokens(j).tolist()


def test_salient_spans_lie_inside_examples_and_are_dates(wiki_corpus):
    corpus = BlockCorpus(wiki_corpus)
    ex = corpus.examples
    with_spans = [j for j in range(len(ex)) if ex.salient_spans(j)]
    assert len(with_spans) > 1000
    years = 0
    for j in with_spans[:500]:
        for s, e in ex.salient_spans(j):
            assert 0 <= s < e <= len(ex.tokens(j))
            text = corpus.dictionary.string(ex.tokens(j)[s:e])
            assert re.search(r"\d", text), text
            years += bool(re.fullmatch(r"1\d{3}|20\d{2}", text))
    assert years > 50


def test_dict_lines_up_with_the_vocab_row_for_row(wiki_corpus):
    vocab = open(VOCAB, encoding="utf-8").read().split("\n")[:-1]
    d = Dictionary.load(os.path.join(wiki_corpus, "dict.txt"))
    assert len(d) == len(vocab) + 4
    assert all(d.index(tok) == i + 4 for i, tok in enumerate(vocab))
    assert d.index("[MASK]") == 103 + 4 and d.index("[SEP]") == 102 + 4
    counts = dict(line.rsplit(" ", 1) for line in open(os.path.join(wiki_corpus, "dict.txt")))
    assert int(counts["the"]) > 10000 and int(counts["[SEP]"]) == len(BlockCorpus(wiki_corpus))


def test_manifest_records_counts_and_checksums(wiki_corpus):
    manifest = json.load(open(os.path.join(wiki_corpus, "manifest.json")))
    corpus = BlockCorpus(wiki_corpus)
    assert manifest["counts"]["documents"] == 106
    assert manifest["counts"]["blocks"] == len(corpus)
    assert manifest["counts"]["examples"] == len(corpus.examples)
    assert manifest["counts"]["wordpieces"] == int(corpus.sizes.sum())
    assert manifest["settings"]["block_size"] == 288
    assert manifest["vocab"]["md5"] == "64800d5d8528ce344256daf115d4965e"
    assert manifest["inputs"][0]["sha256"] == sha256_files(WIKI)
    assert manifest["inputs"][0]["format"] == "jsonl"
    blocks = os.path.join(wiki_corpus, "blocks")
    assert manifest["corpus_checksum"] == sha256_files(blocks + ".bin", blocks + ".idx")
    assert manifest["salient_span_source"] == "date regex only"
