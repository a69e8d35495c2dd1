"""realm-prepare-corpus: input formats, determinism, atomic output and clear errors for bad input."""
import glob
import gzip
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from realm_fairseq.data import BlockCorpus, InputError, Vocab
from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus

from conftest import ROOT, SQUAD_DEV, VOCAB, WIKI, run

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


def test_a_tokenizer_json_or_its_directory_gives_the_corpus_vocab_txt_gives(tmp_path):
    """--vocab takes the tokenizer.json that newer transformers save in place of vocab.txt, or their model
    directory: the same corpus, byte for byte, its manifest naming the file the vocab came from."""
    src = write(tmp_path / "d.jsonl", as_jsonl(DOCS))
    (tmp_path / "hf").mkdir()
    Vocab.load(VOCAB).tokenizer().save(str(tmp_path / "hf" / "tokenizer.json"))
    manifests = {name: prepare_corpus([str(src)], vocab, str(tmp_path / name), CorpusConfig(**CFG))
                 for name, vocab in (("txt", VOCAB), ("json", str(tmp_path / "hf" / "tokenizer.json")),
                                     ("dir", str(tmp_path / "hf")))}
    names = sorted(os.listdir(tmp_path / "txt"))
    for other in ("json", "dir"):
        assert sorted(os.listdir(tmp_path / other)) == names
        for name in names:
            if name != "manifest.json":
                assert (tmp_path / other / name).read_bytes() == (tmp_path / "txt" / name).read_bytes(), name
        assert manifests[other]["vocab"]["md5"] == manifests["txt"]["vocab"]["md5"]
        assert manifests[other]["vocab"]["path"] == str(tmp_path / "hf" / "tokenizer.json")


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
    ("empty.jsonl", "", r"empty\.jsonl: file is empty; expected documents"),
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


# ---------------------------------------------------------------------------------------------------
# shards (job arrays) and their merge, spaCy's batched pipe


def same_files(a, b):
    """Assert that directories ``a`` and ``b`` hold the same files, byte for byte."""
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b))
    for name in names:
        with open(os.path.join(a, name), "rb") as x, open(os.path.join(b, name), "rb") as y:
            assert x.read() == y.read(), f"{name} differs"


def prepare_shards(inputs, out, num_shards, ids=None, **overrides):
    for i in range(num_shards) if ids is None else ids:
        prepare_corpus([str(p) for p in inputs], VOCAB, str(out),
                       CorpusConfig(**{**CFG, **overrides, "shard_id": i, "num_shards": num_shards}))


def merge(inputs, out, num_shards, **overrides):
    return prepare_corpus([str(p) for p in inputs], VOCAB, str(out),
                          CorpusConfig(**{**CFG, **overrides, "num_shards": num_shards, "merge": True}))


def test_shards_merge_into_the_bytes_of_a_single_run(tmp_path, wiki_corpus, caplog):
    from realm_fairseq.data.corpus_shards import documents_of, is_own, shards_dir

    out = tmp_path / "corpus"
    prepare_shards([WIKI], out, 3, shard_group_size=7)
    with caplog.at_level("INFO"):
        prepare_shards([WIKI], out, 3, ids=[1], shard_group_size=7)  # a rerun skips a written shard
    assert "shard 1 of 3 is already prepared: skipped" in caplog.text
    assert not out.exists() and len(os.listdir(shards_dir(str(out)))) == 3
    merge([WIKI], out, 3, shard_group_size=7)
    same_files(wiki_corpus, str(out))  # manifest.json included
    assert not os.path.exists(shards_dir(str(out)))
    for total, n, group in [(0, 2, 3), (106, 3, 7), (13, 4, 1), (20, 2, 10), (21, 2, 10)]:
        assert [documents_of(total, i, n, group) for i in range(n)] == [
            sum(is_own(j, i, n, group) for j in range(total)) for i in range(n)]


def test_a_shard_without_documents_and_max_documents_merge_as_a_single_run(tmp_path):
    src = write(tmp_path / "d.jsonl", as_jsonl(DOCS * 3))
    single = build(tmp_path, [src, SQUAD_DEV], name="single", max_documents=9)
    out = tmp_path / "merged"
    prepare_shards([src, SQUAD_DEV], out, 3, shard_group_size=4, max_documents=9)  # shard 2 holds 1 document
    merge([src, SQUAD_DEV], out, 3, shard_group_size=4, max_documents=9)
    same_files(single.path, str(out))
    out = tmp_path / "few"
    prepare_shards([src], out, 4, shard_group_size=2)  # 6 documents: shard 3 holds none
    merge([src], out, 4, shard_group_size=2)
    same_files(build(tmp_path, [src], name="few-single").path, str(out))


MISMATCHES = [  # (shard 1's options, the merge's options, the message)
    (dict(block_size=128), dict(), r"shard-00001-of-00002: shard 1 of 2 does not match the merge: "
     r"settings\.block_size is 128, expected 288"),
    (dict(salient_spans="none"), dict(), r"shard-00001-of-00002: .*settings\.salient_spans is 'none', "
     r"expected 'regex'"),
    (dict(shard_group_size=5), dict(), r"shard-00001-of-00002: .*shard_group_size is 5, expected 1"),
    (dict(), dict(num_shards=3), r"\.shards: missing shard\(s\) 0, 1, 2 of 3; run those shard jobs first "
     r"\(also there: shard-00000-of-00002, shard-00001-of-00002, of another --num-shards\?\)"),
]


@pytest.mark.parametrize("shard1,merged,message", MISMATCHES, ids=["block-size", "spans", "group", "num-shards"])
def test_mismatched_shards_are_named_at_merge(tmp_path, shard1, merged, message):
    from realm_fairseq.data.corpus_shards import ShardMismatchError

    src = write(tmp_path / "d.jsonl", as_jsonl(DOCS))
    out = tmp_path / "corpus"
    prepare_shards([src], out, 2, ids=[0], shard_group_size=1)
    prepare_shards([src], out, 2, ids=[1], **{"shard_group_size": 1, **shard1})
    with pytest.raises(ShardMismatchError, match=message):
        merge([src], out, merged.get("num_shards", 2), shard_group_size=1)
    assert not out.exists()


def test_changed_input_and_missing_shard_are_named_by_the_cli(tmp_path):
    from realm_fairseq.data.corpus_shards import ShardMismatchError

    src = write(tmp_path / "d.jsonl", as_jsonl(DOCS))
    out = tmp_path / "corpus"
    prepare_shards([src], out, 2, ids=[0], shard_group_size=1)
    with pytest.raises(ShardMismatchError, match=r"missing shard\(s\) 1 of 2; run those shard jobs first$"):
        merge([src], out, 2, shard_group_size=1)
    prepare_shards([src], out, 2, ids=[1], shard_group_size=1)
    write(src, as_jsonl(DOCS[:1] + DOCS))  # the input changes between the shards and the merge
    proc = run(["realm-prepare-corpus", str(src), "--vocab", VOCAB, "--out", str(out), "--num-shards", "2",
                "--shard-group-size", "1", "--salient-spans", "regex", "--merge"], check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert re.search(r"shard-00000-of-00002: shard 0 of 2 does not match the merge: inputs\[0\]\.sha256 is '\w+', "
                     r"expected '\w+'; prepare it again", proc.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("args,message", [
    (["--shard-id", "2", "--num-shards", "2"], "--shard-id 2 is not in 0..1"),
    (["--merge"], "--merge joins the shards of a sharded run: give their --num-shards"),
    (["--num-shards", "2", "--shard-group-size", "0"], "--shard-group-size 0: expected at least 1"),
    (["--spacy-batch-size", "0"], "--spacy-batch-size 0: expected at least 1"),
])
def test_bad_shard_options_are_refused(tmp_path, args, message):
    from realm_fairseq.cli.prepare_corpus import parse

    _, cfg = parse([WIKI, "--vocab", VOCAB, "--out", str(tmp_path / "c"), *args])
    with pytest.raises(ValueError, match=re.escape(message)):
        cfg.validate()


def test_spacy_batched_pipe_finds_the_spans_of_one_text_at_a_time():
    """Only ner runs, through nlp.pipe in batches: the spans a full pipeline finds text by text."""
    pytest.importorskip("spacy", reason="the ner extra (spaCy) is not installed")
    from realm_fairseq.data.documents import read_squad
    from realm_fairseq.data.salient_spans import SALIENT_LABELS, date_spans, make_finder, merge_spans

    finder = make_finder("spacy", batch_size=8)
    if finder.mode != "spacy":
        pytest.skip(f"no spaCy English model: {finder.description}")
    assert finder.nlp.pipe_names == ["ner"]
    texts = [d.text for d, _ in zip(read_squad(SQUAD_DEV), range(60))]
    module = importlib.import_module(finder.description.split("(")[1].split()[0])  # the model's package
    full = module.load()  # every component, one text at a time: what the finder did before
    one_by_one = [merge_spans(date_spans(t) + [(e.start_char, e.end_char) for e in full(t).ents
                                                if e.label_ in SALIENT_LABELS]) for t in texts]
    found = finder.find_all(texts)
    assert found == one_by_one and sum(map(len, found)) > 200
    assert finder(texts[3]) == found[3]


def test_sbatch_template_is_a_valid_script_whose_commands_parse():
    from realm_fairseq.cli.prepare_corpus import parse

    path = os.path.join(ROOT, "slurm", "prepare_corpus.sbatch")
    subprocess.run(["bash", "-n", path], check=True)
    script = open(path, encoding="utf-8").read().replace("\\\n", " ")
    numbers = {"SHARDS": "64", "SLURM_ARRAY_TASK_ID": "3", "SLURM_CPUS_PER_TASK": "8"}
    script = re.sub(r'"?\$\{?(\w+)\}?"?', lambda m: numbers.get(m.group(1), f"/tmp/{m.group(1).lower()}"), script)
    commands = [shlex.split(line)[1:] for line in script.splitlines()
                if line.strip().startswith("realm-prepare-corpus")]
    assert len(commands) == 2
    configs = [parse(c)[1] for c in commands]
    for cfg in configs:
        cfg.validate()
    assert configs[0].merge and configs[0].num_shards == 64
    assert (configs[1].shard_id, configs[1].num_shards, configs[1].workers) == (3, 64, 8)


def test_launcher_dry_run_and_bad_commands(tmp_path, capsys):
    from realm_fairseq.launch.prepare_corpus_job import cli_main

    cli_main(["--cpus-per-task", "4", "--dry-run", "--", "realm-prepare-corpus", WIKI, "--vocab", VOCAB,
              "--out", str(tmp_path / "c"), "--num-shards", "2"])
    out = capsys.readouterr().out
    assert "--cpus-per-task=4" in out and "--mem=16G" in out and "gpus" not in out
    assert "--num-shards 2 --workers 4 --no-progress --shard-id 1\n" in out and out.rstrip().endswith("--merge")
    with pytest.raises(SystemExit, match="slurm/prepare_corpus.py: error: drop --shard-id and --merge: each array "
                                         "task gets its --shard-id, the merge job --merge"):
        cli_main(["--dry-run", "realm-prepare-corpus", WIKI, "--vocab", VOCAB, "--out", "c", "--merge",
                  "--num-shards", "2"])
    with pytest.raises(SystemExit, match="--gpus-per-node 1: corpus preparation runs on CPUs"):
        cli_main(["--dry-run", "--gpus-per-node", "1", "realm-prepare-corpus", WIKI, "--vocab", VOCAB, "--out", "c"])


needs_slurm = pytest.mark.skipif(shutil.which("sbatch") is None,
                                 reason="no Slurm here (sbatch not found); .ci/run starts a one-node cluster")


def job_state(job_id, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State"], capture_output=True,
                             text=True).stdout.split()
        if out and out[-1] in ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "OUT_OF_MEMORY", "NODE_FAIL"):
            return out[-1]
        time.sleep(1)
    raise AssertionError(f"job {job_id} not done within {timeout}s")


@needs_slurm
def test_a_slurm_array_of_two_shards_and_its_merge_write_the_single_run_corpus(tmp_path, wiki_corpus):
    out = tmp_path / "corpus"
    # slurm/submit.py sends a realm-prepare-corpus command to the array launcher (slurm/prepare_corpus.py's)
    submitted = run([sys.executable, os.path.join(ROOT, "slurm", "submit.py"), "--cpus-per-task", "1",
                     "--mem", "1G", "--time", "5", "--log-dir", str(tmp_path / "logs"), "--",
                     "realm-prepare-corpus", WIKI, "--vocab", VOCAB, "--out", str(out), "--salient-spans", "regex",
                     "--num-shards", "2", "--shard-group-size", "16"], cwd=tmp_path,
                    env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    array = re.search(r"submitted array (\d+) \(2 shard task\(s\)\)", submitted).group(1)
    merge_job = re.search(r"submitted merge job (\d+) \(after the array succeeds\)", submitted).group(1)
    try:
        assert job_state(merge_job) == "COMPLETED", open(next((tmp_path / "logs").glob(f"{merge_job}/*.err"))).read()
    finally:
        subprocess.run(["scancel", array, merge_job], check=False)
    states = subprocess.run(["sacct", "-n", "-P", "-X", "-j", array, "-o", "JobID,State,JobName"], capture_output=True,
                            text=True).stdout.split()
    assert sorted(states) == [f"{array}_0|COMPLETED|realm-prepare-corpus", f"{array}_1|COMPLETED|realm-prepare-corpus"]
    same_files(wiki_corpus, str(out))
