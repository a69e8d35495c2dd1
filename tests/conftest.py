"""Shared fixtures: the shipped demo data and a corpus built from it once per test session."""
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "examples", "realm", "data")
VOCAB = os.path.join(DATA, "bert-base-uncased-vocab.txt")
WIKI = os.path.join(DATA, "enwiki-sample-articles.jsonl.gz")
SQUAD_DEV = os.path.join(DATA, "squad-v1.1-dev.json.gz")
BIN = os.path.dirname(sys.executable)


def run(cmd, cwd=None, check=True, timeout=600, env=None):
    """Run a console script of this environment; returns the CompletedProcess (text output)."""
    cmd = [os.path.join(BIN, cmd[0]) if os.path.exists(os.path.join(BIN, cmd[0])) else cmd[0]] + cmd[1:]
    env = dict(os.environ if env is None else env)
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")  # scripts the command calls come from here too
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-5000:]}")
    return proc


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
