"""realm-prepare-corpus: input formats, determinism, atomic output and clear errors for bad input."""
import glob
import gzip
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from realm_fairseq.data import BlockCorpus, InputError
from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus

from conftest import SQUAD_DEV, VOCAB, WIKI, run

DOCS = [
    {"id": "d1", "title": "Ada Lovelace", "text": "Ada Lovelace was born on 10 December 1815 in London. "
     "She wrote the first published algorithm."},
    {"id": "d2", "title": "Alan Turing", "text": "Alan Turing was born in 1912. He worked at Bletchley "
     "Park during the Second World War."},
]
CFG = dict(workers=1, salient_spans="regex", no_progress=True)


def build(tmp_path, inputs, name="corpus", **overrides):
    out = str(tmp_path / name)
    prepare_corpus([str(p) for p in inputs], VOCAB, out, CorpusConfig(**{**CFG, **overrides}))
    return BlockCorpus(out)


def write(path, text, compress=False):
    data = text.encode("utf-8") if isinstance(text, str) else text
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as f:
        f.write(data)
    return path


def as_jsonl(docs):
    return "".join(json.dumps(d) + "\n" for d in docs)


def as_tsv(docs):
    return "id\ttext\ttitle\n" + "".join(f"{d['id']}\t{d['text']}\t{d['title']}\n" for d in docs)


def as_squad(docs):
    return json.dumps({"version": "1.1", "data": [
        {"title": d["title"].replace(" ", "_"), "paragraphs": [{"context": d["text"], "qas": []}]}
        for d in docs]})


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("fmt,render,suffix", [
    ("jsonl", as_jsonl, ".jsonl"), ("tsv", as_tsv, ".tsv"), ("squad", as_squad, ".json"),
])
def test_each_format_gives_the_same_blocks(tmp_path, fmt, render, suffix, compress):
    name = "docs" + suffix + (".gz" if compress else "")
    corpus = build(tmp_path, [write(tmp_path / name, render(DOCS), compress)])
    assert corpus.manifest["inputs"][0]["format"] == fmt
    assert len(corpus) == 2
    assert [corpus.block(i).title for i in range(2)] == ["Ada Lovelace", "Alan Turing"]
    assert [corpus.block(i).text for i in range(2)] == [d["text"] for d in DOCS]
    assert corpus.decode(1).startswith("alan turing [SEP] alan turing was born in 1912.")
    if fmt != "squad":
        assert corpus.block(0).doc_id == "d1"


def test_documents_too_short_for_an_example_still_make_blocks(tmp_path):
    docs = [{"id": "a", "title": "", "text": "Born 1999."}, {"id": "b", "title": "B", "text": "   "},
            {"id": "c", "title": "C", "text": "Paris, 1900."}]
    corpus = build(tmp_path, [write(tmp_path / "d.jsonl", as_jsonl(docs))])
    assert [corpus.block(i).text for i in range(len(corpus))] == ["Born 1999.", "Paris, 1900."]
    assert corpus.decode(0) == "born 1999." and corpus.decode(1) == "c [SEP] paris, 1900."
    assert len(corpus.examples) == 0
    assert corpus.manifest["counts"]["empty_documents"] == 1


def test_format_is_detected_from_content_when_the_name_says_nothing(tmp_path):
    inputs = [write(tmp_path / "a.txt", as_jsonl(DOCS)), write(tmp_path / "b.txt", as_tsv(DOCS)),
              write(tmp_path / "c.dat", as_squad(DOCS))]
    corpus = build(tmp_path, inputs)
    assert [i["format"] for i in corpus.manifest["inputs"]] == ["jsonl", "tsv", "squad"]
    assert len(corpus) == 6


def test_squad_paragraphs_become_documents_titled_by_article(tmp_path):
    corpus = build(tmp_path, [SQUAD_DEV], workers=2)
    assert corpus.manifest["counts"]["documents"] == 2067
    first = corpus.block(0)
    assert first.title == "Super Bowl 50" and first.doc_id == "Super_Bowl_50#0"
    assert first.text.startswith("Super Bowl 50 was an American football game")


def test_max_documents_reads_only_the_first_documents_in_input_order(tmp_path):
    corpus = build(tmp_path, [write(tmp_path / "docs.jsonl", as_jsonl(DOCS)), SQUAD_DEV], max_documents=3)
    assert corpus.manifest["counts"]["documents"] == 3
    assert [corpus.block(i).doc_id for i in range(len(corpus))] == ["d1", "d2", "Super_Bowl_50#0"]


def test_long_documents_are_cut_at_sentence_boundaries(tmp_path):
    sentences = [f"Sentence number {i} tells about the city of Paris in {1900 + i}." for i in range(60)]
    doc = {"id": "long", "title": "Paris", "text": " ".join(sentences)}
    corpus = build(tmp_path, [write(tmp_path / "d.jsonl", as_jsonl([doc]))], block_size=64)
    assert len(corpus) > 5 and corpus.sizes.max() <= 64
    for i in range(len(corpus)):
        text = corpus.block(i).text
        assert text.startswith("Sentence number") and text.endswith(".")


def test_output_does_not_depend_on_the_number_of_workers(tmp_path):
    one = build(tmp_path, [WIKI], name="one", workers=1)
    two = build(tmp_path, [WIKI], name="two", workers=2)
    names = sorted(os.listdir(one.path))
    assert names == sorted(os.listdir(two.path))
    for name in names:
        with open(os.path.join(one.path, name), "rb") as a, open(os.path.join(two.path, name), "rb") as b:
            assert a.read() == b.read(), f"{name} differs between 1 and 2 workers"


def test_refuses_to_overwrite_without_force(tmp_path):
    src = write(tmp_path / "d.jsonl", as_jsonl(DOCS))
    out = tmp_path / "corpus"
    build(tmp_path, [src])  # a CORPUS: --force may replace it (never another directory, tests/test_faults.py)
    (out / "precious.txt").write_text("keep me")
    proc = run(["realm-prepare-corpus", str(src), "--vocab", VOCAB, "--out", str(out), "--no-progress"],
               check=False)
    assert proc.returncode != 0
    assert "already exists" in proc.stderr and "--force" in proc.stderr
    assert (out / "precious.txt").read_text() == "keep me"
    run(["realm-prepare-corpus", str(src), "--vocab", VOCAB, "--out", str(out), "--force",
         "--no-progress", "--workers", "1"])
    assert not (out / "precious.txt").exists() and len(BlockCorpus(str(out))) == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failing_run_leaves_nothing_behind(tmp_path):
    good = write(tmp_path / "good.jsonl", as_jsonl(DOCS))
    bad = write(tmp_path / "bad.jsonl", as_jsonl(DOCS) + "{broken\n")
    with pytest.raises(InputError, match="bad.jsonl, line 3"):
        build(tmp_path, [good, bad])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl"]


def test_a_killed_run_leaves_no_corpus(tmp_path):
    out = tmp_path / "corpus"
    cmd = [os.path.join(os.path.dirname(sys.executable), "realm-prepare-corpus"), WIKI, WIKI, WIKI, WIKI,
           "--vocab", VOCAB, "--out", str(out), "--workers", "1", "--salient-spans", "regex"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not any(os.path.getsize(p) > 0 for p in glob.glob(str(tmp_path / ".corpus.tmp-*/blocks.bin"))):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()


BAD_INPUTS = [
    ("invalid.jsonl", '{"id": "1", "text": "fine"}\n{"id": "2", "text": "oops}\n',
     r"invalid\.jsonl, line 2, column \d+: invalid JSON"),
    ("notext.jsonl", '{"id": "1", "text": "fine"}\n{"id": "2", "title": "No text"}\n',
     r'notext\.jsonl, line 2: missing "text"'),
    ("badtype.jsonl", '{"id": "1", "text": ["a", "list"]}\n', r'badtype\.jsonl, line 1: "text" is list'),
    ("latin1.jsonl", '{"id": "1", "text": "ok"}\n'.encode() + '{"id": "2", "text": "café"}\n'.encode("latin-1"),
     r"latin1\.jsonl, line 2, byte 25: invalid UTF-8"),
    ("empty.jsonl", "", r"empty\.jsonl: file is empty"),
    ("columns.tsv", "id\ttext\ttitle\n1\tsome text\n", r"columns\.tsv, line 2: expected 3 tab-separated"),
    ("header.tsv", "text\tid\n", r"header\.tsv, line 1: expected the DPR header"),
    ("latin1.json", '{"data": [\n{"title": "Caf'.encode() + "é".encode("latin-1") + b'"}]}',
     r"latin1\.json, line 2, byte 15: invalid UTF-8"),
    ("nocontext.json", '{"data": [{"title": "T", "paragraphs": [{"context": "x"}, {"qas": []}]}]}',
     r'nocontext\.json: data\[0\]\.paragraphs\[1\]: missing "context"'),
    ("broken.json", '{"data": [\n{"title": "T",\n}', r"broken\.json, line 3, column 1: invalid JSON"),
    ("notsquad.json", '{"articles": []}', r'notsquad\.json: expected SQuAD JSON'),
]


@pytest.mark.parametrize("name,content,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_names_file_line_and_expectation(tmp_path, name, content, message):
    path = write(tmp_path / name, content)
    with pytest.raises(InputError, match=message):
        build(tmp_path, [path])
    assert not (tmp_path / "corpus").exists()


def test_bad_gz_input_is_reported_with_its_line(tmp_path):
    path = write(tmp_path / "docs.jsonl.gz", '{"id": "1", "text": "ok"}\n{"id": 2}\n', compress=True)
    with pytest.raises(InputError, match=r'docs\.jsonl\.gz, line 2: missing "text"'):
        build(tmp_path, [path])


@pytest.mark.parametrize("drop", ["[CLS]", "[SEP]", "[MASK]"])
def test_vocab_without_bert_specials_is_refused(tmp_path, drop):
    lines = [t for t in open(VOCAB, encoding="utf-8").read().split("\n")[:-1] if t != drop]
    vocab = write(tmp_path / "vocab.txt", "\n".join(lines) + "\n")
    src = write(tmp_path / "d.jsonl", as_jsonl(DOCS))
    with pytest.raises(InputError, match=rf"vocab\.txt: vocab lacks \{drop[:-1]}\]"):
        prepare_corpus([str(src)], str(vocab), str(tmp_path / "c"), CorpusConfig(**CFG))


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    src = write(tmp_path / "d.jsonl", '{"id": "1"}\n')
    proc = run(["realm-prepare-corpus", str(src), "--vocab", VOCAB, "--out", str(tmp_path / "c")],
               check=False)
    assert proc.returncode != 0
    assert 'realm-prepare-corpus: error: ' in proc.stderr and 'd.jsonl, line 1: missing "text"' in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_help_shows_defaults():
    out = run(["realm-prepare-corpus", "--help"]).stdout
    assert "--block-size" in out and "(default: 288)" in out and "--workers" in out
