"""The full demo's pre-training and open-domain QA fine-tuning settings (examples/realm/pretrain.sh and
finetune_qa.sh) on a slice of its data: the paragraphs of 3 SQuAD dev articles, in the demo's blocks, and their
questions."""
import json
import os
import re
import shutil

import pytest
import torch

from realm_fairseq.data import BlockCorpus

from conftest import DEMO, evaluate_retrieval, run, squad_articles

DEMO_BLOCK_SIZE = int(re.search(r"^block_size=(\d+)", open(os.path.join(DEMO, "demo.sh")).read(), re.M).group(1))


@pytest.fixture(scope="module")
def squad_slice(tmp_path_factory, minilm_weights):
    """The slice (3 SQuAD dev articles, the demo's block size, embedded by MiniLM as index version 1): its
    directory and the questions, shuffled."""
    root = tmp_path_factory.mktemp("squad_slice")
    return root, squad_articles(root, 3, DEMO_BLOCK_SIZE, minilm_weights)


@pytest.mark.long
def test_the_demos_pretraining_keeps_what_the_retriever_knew(squad_slice, tmp_path, minilm_weights, measured):
    """pretrain.sh, the demo's REALM pre-training from MiniLM, on the slice, with the retriever learning from the
    first update (no warm-up) for 20 updates: the reader's masked-LM head starts random, so p(z|x) has only
    noise to follow, and the retriever, at a tenth of the reader's rate, finds the gold paragraph for the
    slice's questions as often as MiniLM, its start, does (at one rate, recall@1 fell from 63.6 to 25.7)."""
    from realm_fairseq.data.questions import write_questions

    root, questions = squad_slice
    shutil.copytree(root / "index", tmp_path / "index")  # the refresh commits version 2 here
    updates = "20"
    run(["bash", os.path.join(DEMO, "pretrain.sh"), str(root / "corpus"), minilm_weights, str(tmp_path / "ckpt"),
         "--retriever-warmup-updates", "0", "--max-update", updates, "--validate-interval-updates", updates,
         "--index", str(tmp_path / "index"), "--refresh-interval-updates", updates, "--refresh-launcher", "local",
         "--refresh-at-end", "wait"], cwd=tmp_path)
    assert (tmp_path / "index" / "v2").is_dir()  # the corpus embedded by the pre-trained document embedder
    write_questions(str(tmp_path / "questions.jsonl"), questions)

    def recall(*retriever):
        return evaluate_retrieval("--questions", str(tmp_path / "questions.jsonl"), "--corpus", str(root / "corpus"),
                                  *retriever)[0]

    before = recall("--hf", minilm_weights, "--index", str(tmp_path / "index"), "--index-version", "1")
    after = recall("--checkpoint", str(tmp_path / "ckpt" / "checkpoint_last.pt"), "--index", str(tmp_path / "index"))
    measured(f"the demo's pre-training, {updates} updates without warm-up on a slice ({before['questions']} "
             f"questions, {before['blocks']} blocks): zero-shot recall@1 {before['recall@1']} -> {after['recall@1']}, "
             f"recall@5 {before['recall@5']} -> {after['recall@5']}")
    # measured (2026-12-04, one thread): recall@1 63.56 -> 64.5, recall@5 91.53 -> 91.7; with
    # --retriever-lr-scale 1, 63.56 -> 25.66 and 91.53 -> 63.82
    assert after["recall@1"] >= before["recall@1"] - 1 and after["recall@5"] >= before["recall@5"] - 1


@pytest.mark.long
def test_the_demos_qa_settings_learn_on_a_slice(squad_slice, tmp_path, minilm_weights, measured):
    """finetune_qa.sh, the demo's open-domain QA fine-tuning as it is but for fewer updates, on the slice:
    exact match on 64 held-out questions is clearly above that of the model it starts from (MiniLM and a new
    span head), and recall@5 is not below it."""
    from fairseq import checkpoint_utils, tasks

    from realm_fairseq.cli.evaluate import score
    from realm_fairseq.data.questions import read_questions, write_questions
    from realm_fairseq.hub import RealmQA

    root, questions = squad_slice
    corpus = BlockCorpus(str(root / "corpus"))
    valid = str(tmp_path / "questions" / "valid.jsonl")
    write_questions(valid, questions[:64])
    write_questions(str(tmp_path / "questions" / "train.jsonl"), questions[64:])

    updates = 200
    run(["bash", os.path.join(DEMO, "finetune_qa.sh"), str(tmp_path / "questions"), str(root / "corpus"),
         str(root / "index"), str(tmp_path / "ckpt"), "--encoder-init", minilm_weights, "--max-update", str(updates),
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
