"""The full demo's open-domain QA fine-tuning settings (examples/realm/finetune_qa.sh) learn on a slice of
its data."""
import gzip
import json
import os
import random
import re

import pytest
import torch

from realm_fairseq.data import BlockCorpus

from conftest import DEMO, SQUAD_DEV, VOCAB, run

DEMO_BLOCK_SIZE = int(re.search(r"^block_size=(\d+)", open(os.path.join(DEMO, "demo.sh")).read(), re.M).group(1))


@pytest.mark.long
def test_the_demos_qa_settings_learn_on_a_slice(tmp_path, minilm_weights, measured):
    """finetune_qa.sh, the demo's open-domain QA fine-tuning as it is but for fewer updates, on the paragraphs
    of 3 SQuAD dev articles (in the demo's blocks) and their questions: exact match on 64 held-out questions
    is clearly above that of the model it starts from (MiniLM and a new span head), and recall@5 is not below it."""
    from fairseq import checkpoint_utils, tasks

    from realm_fairseq.cli.evaluate import score
    from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus
    from realm_fairseq.data.questions import read_questions, squad_questions, write_questions
    from realm_fairseq.hub import RealmQA
    from realm_fairseq.indexing.build import build_index
    from realm_fairseq.models.loading import doc_embedder_from_bert

    with gzip.open(SQUAD_DEV, "rt", encoding="utf-8") as f:
        squad = json.load(f)
    squad["data"] = squad["data"][:3]
    (tmp_path / "squad.json").write_text(json.dumps(squad), encoding="utf-8")
    prepare_corpus([str(tmp_path / "squad.json")], VOCAB, str(tmp_path / "corpus"),
                   CorpusConfig(workers=2, salient_spans="regex", block_size=DEMO_BLOCK_SIZE, no_progress=True))
    corpus = BlockCorpus(str(tmp_path / "corpus"))
    build_index(corpus, str(tmp_path / "index"), doc_embedder_from_bert(minilm_weights, corpus),
                embed_options=dict(progress=False))
    questions = [q for _, q in squad_questions(str(tmp_path / "squad.json"))]
    random.Random(0).shuffle(questions)
    valid = str(tmp_path / "questions" / "valid.jsonl")
    write_questions(valid, questions[:64])
    write_questions(str(tmp_path / "questions" / "train.jsonl"), questions[64:])

    updates = 200
    run(["bash", os.path.join(DEMO, "finetune_qa.sh"), *(str(tmp_path / d) for d in ("questions", "corpus", "index",
         "ckpt")), "--encoder-init", minilm_weights, "--max-update", str(updates),
         "--validate-interval-updates", str(updates)], cwd=tmp_path)
    checkpoint = str(tmp_path / "ckpt" / "checkpoint_best.pt")
    after = json.loads(run(["realm-evaluate", "--checkpoint", checkpoint, "--questions", valid]).stdout)

    cfg = checkpoint_utils.load_checkpoint_to_cpu(checkpoint)["cfg"]  # the same settings, not trained
    torch.manual_seed(1)
    task = tasks.setup_task(cfg.task)
    start = RealmQA(cfg, task, task.build_model(cfg.model))
    held_out = read_questions(valid)
    before, _ = score(corpus, held_out, start.answer_all([q.question for q in held_out]))
    measured(f"the demo's QA settings, {updates} updates on a slice: EM {before['em']} -> {after['em']}, "
             f"recall@5 {before['recall@5']} -> {after['recall@5']}")
    # measured (2026-12-04): EM 0.0 -> 29.7 in one process, 37.5 under the suite's two workers; recall@5
    # 95.3 -> 100.0. Before realm_adam (one rate of 1e-4 for the query embedder too) EM was 35.9, and the test
    # let recall@5 fall 5 points
    assert before["em"] <= 5 and after["em"] >= before["em"] + 10
    assert after["recall@5"] >= before["recall@5"]  # the retriever learns at its rate, and keeps what it knew
