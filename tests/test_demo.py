"""The quick start's main job: examples/realm/demo.sh, in its quick mode."""
import os

from realm_fairseq.data import BlockCorpus

from conftest import ROOT, run

QUICK_PRETRAIN_UPDATES = 8  # demo.sh --quick


def test_demo_quick_runs_corpus_index_and_pretraining_and_prints_their_results(tmp_path):
    out = tmp_path / "demo"
    proc = run(["bash", os.path.join(ROOT, "examples", "realm", "demo.sh"), "--quick", "--out", str(out)],
               cwd=tmp_path)
    corpus = BlockCorpus(str(out / "corpus"))
    stats = corpus.statistics()
    assert stats["inputs"] == {"squad-v1.1-dev.json.gz": 300}
    assert f"blocks                         {len(corpus)}" in proc.stdout
    assert "salient_span_source            date regex only" in proc.stdout
    assert "example " in proc.stdout and "[ " in proc.stdout  # an example with a bracketed salient span
    assert (out / "index" / "v1" / "manifest.json").exists()
    assert (out / "pretrain" / "checkpoint_last.pt").exists()
    table = proc.stdout[proc.stdout.index("metric "):].splitlines()
    rows = {line.split()[0]: line.split()[1:3] for line in table[1:]}
    assert set(rows) >= {"loss", "ppl", "retrieval_utility", "null_prob", "entropy", "index_version", "staleness"}
    assert rows["num_updates"][1] == str(QUICK_PRETRAIN_UPDATES) and rows["index_version"] == ["1", "1"]


def test_ci_runs_the_readme_test_command():
    readme = open(os.path.join(ROOT, "README.md")).read().splitlines()
    command = readme[readme.index("# 2. install and run the tests") + 1]
    assert "pytest" in command and 'pip install -c constraints.txt -e ".[test,ner]"' in command
    assert "README.md" in open(os.path.join(ROOT, ".ci", "run")).read()
