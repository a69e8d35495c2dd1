"""The quick start's main job: examples/realm/demo.sh in its quick mode, and the README's test command in CI."""
import json
import os
import re

import pytest

from realm_fairseq.data import BlockCorpus

from conftest import DEMO, ROOT, run

QUICK_PRETRAIN_UPDATES, QUICK_REFRESH_AT, QUICK_TEST = 4, 3, 8  # demo.sh --quick


@pytest.mark.long
def test_demo_quick_runs_the_pipeline_and_prints_its_results(tmp_path):
    out = tmp_path / "demo"
    proc = run(["bash", os.path.join(DEMO, "demo.sh"), "--quick", "--out", str(out)], cwd=tmp_path)
    corpus = BlockCorpus(str(out / "corpus"))
    stats = corpus.statistics()
    assert stats["inputs"] == {"squad-v1.1-dev.json.gz": 148}
    assert f"blocks                         {len(corpus)}" in proc.stdout
    assert "salient_span_source            date regex only" in proc.stdout
    assert "example " in proc.stdout and "[ " in proc.stdout  # an example with a bracketed salient span
    assert (out / "index" / "v1" / "manifest.json").exists()
    assert (out / "pretrain" / "checkpoint_last.pt").exists()
    steps = {m.group(2): m.start() for m in re.finditer(r"^== \[(\d+m\d\ds)\] (step \d+\w?|results|done)",
                                                         proc.stdout, re.M)}  # each with the time so far
    assert list(steps) == ["step 1", "step 2", "step 3", "step 3b", "step 4", "step 5a", "step 5b", "step 5c", "step 6",
                           "step 7", "results", "done"]

    # pre-training with retrieval, and the same reader without (--retrieval-topk 0), compared
    table = proc.stdout[proc.stdout.index("metric "):steps["step 4"]].strip().splitlines()
    assert table[0].split()[:6] == ["metric", "first", "valid", "last", "valid", "no"]
    rows = {line.split()[0]: line.split()[1:4] for line in table[1:] if line.strip() and not line.startswith("after")}
    assert set(rows) >= {"loss", "ppl", "retrieval_utility", "null_prob", "entropy", "index_version", "staleness"}
    assert rows["num_updates"] == ["2", str(QUICK_PRETRAIN_UPDATES), str(QUICK_PRETRAIN_UPDATES)]  # valid every 2
    assert rows["index_version"][0] == "1"
    assert rows["retrieval_utility"][2] == "0" and rows["loss"][2] != "-"  # the null document only: no utility
    assert re.search(rf"after {QUICK_PRETRAIN_UPDATES} updates the masked tokens cost {rows['loss'][1]} bits with "
                     rf"retrieval and {rows['loss'][2]} bits for the same reader", proc.stdout)
    # one refresh, launched before the last update and waited for at the end: swapped in or committed as v2
    assert f"index refresh of update {QUICK_REFRESH_AT} launched" in proc.stdout
    assert (out / "index" / "v2" / "manifest.json").exists() and not (out / "index" / "v3").exists()
    assert rows["index_version"][1] in ("1", "2")

    # open-domain QA: (a) from MiniLM with its index, (b) from the pre-training with the refreshed index,
    # evaluated on a sample of the test articles' questions
    assert re.search(r"5a: .*\n.*retrieving from \S+/index/v1: ", proc.stdout)
    assert re.search(r"5b: .*\n.*retrieving from \S+/index/v2: ", proc.stdout)
    test_ids = {q["id"] for q in map(json.loads, open(out / "questions" / "test.jsonl"))}
    for name in ("qa-minilm", "qa-realm"):
        metrics = json.load(open(out / f"{name}.squad.json"))
        assert metrics["questions"] == QUICK_TEST and {"em", "f1", "recall@1", "recall@5", "recall@20"} <= set(metrics)
        predictions = [json.loads(line) for line in open(out / f"{name}.squad.predictions.jsonl")]
        assert {p["id"] for p in predictions} <= test_ids and all(p["evidence"] for p in predictions)
    right = [p for p in map(json.loads, open(out / "qa-realm.squad.predictions.jsonl")) if p["correct"]][:3]
    shown = proc.stdout[steps["step 7"]:steps["results"]]
    assert re.findall(r"^Q: (.*)$", shown, re.M) == [p["question"] for p in right]  # the ones (b) gets right

    # the table: zero-shot recall@5 of BM25, MiniLM (index v1) and the pre-trained retriever (index v2), then
    # recall@5, EM and F1 after fine-tuning, each as its JSON says
    results = proc.stdout[steps["results"]:steps["done"]].splitlines()
    assert results[3].split() == ["zero-shot", "R@5", "R@5", "EM", "F1"]
    for line, zero_shot, qa in zip(results[4:9], ("bm25", "minilm", "realm", None, None),
                                   (None, "qa-minilm", "qa-realm", "qa-realm-bm25", "qa-bm25")):
        expected = [json.load(open(out / f"{zero_shot}.squad.zero-shot.json"))["recall@5"]] if zero_shot else []
        if qa:
            tuned = json.load(open(out / f"{qa}.squad.json"))
            expected += [tuned["recall@5"], tuned["em"], tuned["f1"]]
        assert [v for v in line.split()[-4:] if v != "-"] == [f"{v:.1f}" for v in expected]
    em = {qa: json.load(open(out / f"{qa}.squad.json"))["em"] for qa in ("qa-minilm", "qa-realm", "qa-realm-bm25",
                                                                          "qa-bm25")}
    for baseline, qa in (("\\(a\\)", "qa-minilm"), ("BM25 \\+ \\(b\\)'s reader", "qa-realm-bm25"),
                         ("\\(c\\)", "qa-bm25")):
        compared = re.search(rf"^\(b\) - {baseline} on SQuAD dev, test split, (\d+) questions: EM ([-+][\d.]+) \(95% "
                             r"interval ([-+][\d.]+) to ([-+][\d.]+)\), F1 ", "\n".join(results), re.M)
        assert compared and int(compared[1]) == QUICK_TEST  # (b) against the baseline on the same questions
        assert float(compared[2]) == pytest.approx(em["qa-realm"] - em[qa], abs=0.05)
        assert float(compared[3]) <= float(compared[2]) <= float(compared[4])
    assert results[4].startswith("BM25") and results[5].startswith("(a) MiniLM")
    assert results[6].startswith("(b) after REALM pre-training") and results[7].startswith("(b)'s reader on BM25's")
    assert results[8].startswith("(c) BM25 + (a)'s reader")
    assert all(json.load(open(out / f"{qa}.squad.json"))["retriever"] == "bm25" for qa in ("qa-realm-bm25", "qa-bm25"))
    assert json.load(open(out / "minilm.squad.zero-shot.json"))["questions"] == QUICK_TEST
    assert (out / "report.png").stat().st_size > 10_000 and f"wrote {out / 'report.png'}" in proc.stdout


def test_ci_runs_the_readme_test_command():
    readme = open(os.path.join(ROOT, "README.md")).read().splitlines()
    command = readme[readme.index("# 2. install and run the tests") + 1]
    assert "pytest" in command and 'pip install -c constraints.txt -e ".[test,ner]"' in command
    assert "README.md" in open(os.path.join(ROOT, ".ci", "run")).read()
