"""Inverse Cloze Task warm start: its examples, a real fairseq-train run that learns, and in-batch
negatives gathered across two data-parallel ranks."""
import re
import subprocess

import numpy as np

from realm_fairseq.data import BlockCorpus
from realm_fairseq.data.ict_dataset import IctDataset
from realm_fairseq.tasks.realm_ict import split_blocks

from conftest import BIN, free_port, run

ICT = ["--task", "realm_ict", "--arch", "realm_tiny", "--retriever-pooling", "mean", "--criterion", "realm_ict",
       "--optimizer", "adam", "--lr", "3e-3", "--lr-scheduler", "fixed", "--batch-size", "32",
       "--query-max-len", "32", "--dropout", "0", "--attention-dropout", "0", "--valid-percent", "4",
       "--cpu", "--num-workers", "0", "--no-progress-bar", "--log-format", "simple",
       "--required-batch-size-multiple", "1", "--seed", "1", "--no-save"]


def logged(metric: str, log: str, where: str = "train_inner"):
    return [float(v) for v in re.findall(rf"\| {where} \|.*?{metric}[= ]([\d.]+)", log)]


def test_queries_are_sentences_taken_out_of_their_block(wiki_corpus):
    corpus = BlockCorpus(wiki_corpus)
    blocks = split_blocks(len(corpus), 4)["train"]
    ds = IctDataset(corpus, blocks, query_max_len=66, keep_sentence_prob=0.1, seed=3)  # no truncation
    kept = 0
    for i in range(0, len(ds), 7):
        item = ds[i]
        sentence, block = item["query"][1:-1].tolist(), item["block"][1:-1].tolist()
        original = corpus.tokens(int(ds.block_ids[i])).tolist()
        assert item["query"][0] == corpus.dictionary.bos() and item["block"][-1] == corpus.dictionary.eos()
        if block == original:
            kept += 1
        else:  # the block is its original with the sentence cut out where it stood
            start = next(k for k in range(len(block) + 1) if block[:k] + sentence + block[k:] == original)
            assert start >= original.index(corpus.dictionary.index("[SEP]")) + 1
    checked = len(range(0, len(ds), 7))
    assert 0.03 < kept / checked < 0.2, f"sentence kept in {kept} of {checked} blocks, expected about 10%"


def test_each_epoch_draws_other_sentences_deterministically(wiki_corpus):
    corpus = BlockCorpus(wiki_corpus)
    ds = IctDataset(corpus, np.arange(200), query_max_len=64, keep_sentence_prob=0.1, seed=1)
    assert len(ds) > 190  # blocks without a sentence are left out
    first = [ds[i]["query"].tolist() for i in range(len(ds))]
    assert first == [ds[i]["query"].tolist() for i in range(len(ds))]
    ds.set_epoch(2)
    assert sum(a != ds[i]["query"].tolist() for i, a in enumerate(first)) > 50


def test_valid_split_holds_out_blocks_across_the_corpus():
    splits = split_blocks(2500, 4)
    assert len(np.intersect1d(splits["train"], splits["valid"])) == 0
    assert len(splits["train"]) + len(splits["valid"]) == 2500
    assert 60 < len(splits["valid"]) < 140 and splits["valid"].max() > 2000


def test_ict_training_raises_in_batch_accuracy(wiki_corpus, tmp_path, capsys):
    proc = run(["realm-train", wiki_corpus, *ICT, "--max-update", "400", "--log-interval", "50"], cwd=tmp_path)
    log = proc.stdout + proc.stderr
    top1 = logged("top1_acc", log)
    valid = logged("top1_acc", log, where="valid")
    with capsys.disabled():
        print(f"\nICT realm_tiny, 400 updates of 32: train top-1 {top1[0]:.3f} -> {top1[-1]:.3f}, "
              f"valid top-1 {valid[0]:.3f} -> {valid[-1]:.3f} (chance 1/32)")
    assert top1[-1] > 3 * top1[0] and top1[-1] > 0.12
    assert valid[-1] > 1.5 * valid[0]


def test_two_ranks_score_each_query_against_both_ranks_blocks(wiki_corpus, tmp_path):
    init = f"tcp://127.0.0.1:{free_port()}"
    ranks = [
        subprocess.Popen(
            [f"{BIN}/realm-train", wiki_corpus, *ICT, "--max-update", "4", "--log-interval", "1",
             "--distributed-world-size", "2", "--distributed-rank", str(rank), "--distributed-backend", "gloo",
             "--distributed-init-method", init, "--distributed-no-spawn", "--ddp-backend", "legacy_ddp"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(2)
    ]
    logs = [p.communicate(timeout=300)[0] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    in_batch = logged("in_batch", logs[0])
    assert in_batch and all(v > 60 for v in in_batch), in_batch  # 2 x 32 candidates per query
