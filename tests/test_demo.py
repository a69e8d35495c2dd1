"""The quick start's main job: examples/realm/demo.sh, in its quick mode."""
import os

from realm_fairseq.data import BlockCorpus

from conftest import ROOT, run


def test_demo_quick_prepares_the_corpus_and_prints_statistics(tmp_path):
    out = tmp_path / "demo"
    proc = run(["bash", os.path.join(ROOT, "examples", "realm", "demo.sh"), "--quick", "--out", str(out)],
               cwd=tmp_path)
    corpus = BlockCorpus(str(out / "corpus"))
    stats = corpus.statistics()
    assert stats["inputs"] == {"enwiki-sample-articles.jsonl.gz": 106, "squad-v1.1-dev.json.gz": 2067,
                               "squadshifts-new-wiki-v1.0.json.gz": 1581}
    assert f"blocks                         {len(corpus)}" in proc.stdout
    assert "salient_span_source            date regex only" in proc.stdout
    assert "example " in proc.stdout and "[ " in proc.stdout  # an example with a bracketed salient span


def test_ci_runs_the_readme_test_command():
    readme = open(os.path.join(ROOT, "README.md")).read().splitlines()
    command = readme[readme.index("# 2. install and run the tests") + 1]
    assert "pytest" in command and 'pip install -c constraints.txt -e ".[test,ner]"' in command
    assert "README.md" in open(os.path.join(ROOT, ".ci", "run")).read()
