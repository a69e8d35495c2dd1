"""Inverse Cloze Task warm start: its examples, a real fairseq-train run that learns, and in-batch
negatives gathered across two data-parallel ranks, which compute the loss and gradients of one process."""
import argparse
import re
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from realm_fairseq.criterions.realm_ict import RealmIctCriterion
from realm_fairseq.data import BlockCorpus
from realm_fairseq.data.ict_dataset import IctDataset
from realm_fairseq.models.config import RealmConfig
from realm_fairseq.models.realm import RealmModel, realm_tiny
from realm_fairseq.tasks.base import split_blocks

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


@pytest.mark.long
def test_ict_training_raises_in_batch_accuracy(wiki_corpus, tmp_path, measured):
    proc = run(["realm-train", wiki_corpus, *ICT, "--max-update", "400", "--log-interval", "50"], cwd=tmp_path)
    log = proc.stdout + proc.stderr
    top1 = logged("top1_acc", log)
    valid = logged("top1_acc", log, where="valid")
    measured(f"ICT realm_tiny, 400 updates of 32: train top-1 {top1[0]:.3f} -> {top1[-1]:.3f}, "
             f"valid top-1 {valid[0]:.3f} -> {valid[-1]:.3f} (chance 1/32)")
    # measured (seed 1): train 0.053 -> 0.181, valid (held-out blocks) 0.059 -> 0.147; bands of about 20%
    assert 0.15 <= top1[-1] <= 0.22 and top1[-1] >= 3 * top1[0]
    assert 0.12 <= valid[-1] <= 0.18 and valid[-1] >= 2 * valid[0]


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


GLOBAL_BATCH, RANK0_ITEMS = 16, 9  # rank 0 takes the first 9 items of the global batch, rank 1 the other 7


def ict_model(corpus: BlockCorpus) -> RealmModel:
    """A realm_tiny retriever without dropout, with the same weights in every process."""
    torch.manual_seed(0)
    args = argparse.Namespace(dropout=0.0, attention_dropout=0.0, retriever_pooling="mean")
    realm_tiny(args)
    return RealmModel.build_model(RealmConfig(**vars(args)), SimpleNamespace(source_dictionary=corpus.dictionary))


def ict_items(corpus: BlockCorpus):
    """The ICT dataset and the items of one global batch, from blocks spread over the corpus."""
    ds = IctDataset(corpus, np.arange(0, len(corpus), len(corpus) // 40), query_max_len=32, keep_sentence_prob=0.1,
                    seed=1)
    return ds, [ds[i] for i in range(GLOBAL_BATCH)]


def ict_step(model: RealmModel, batch: dict):
    """realm_ict's loss, logging output and parameter gradients on ``batch``."""
    model.zero_grad()
    loss, _, log = RealmIctCriterion(SimpleNamespace())(model, batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.item(), log, grads


def ict_rank(rank: int, corpus_dir: str, init: str, out: str) -> None:
    """One of two gloo ranks: its part of the global batch, gradients summed over the ranks as data-parallel
    training sums them; writes its loss, logging output and the summed gradients to ``out``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    corpus = BlockCorpus(corpus_dir)
    ds, items = ict_items(corpus)
    part = items[:RANK0_ITEMS] if rank == 0 else items[RANK0_ITEMS:]
    loss, log, grads = ict_step(ict_model(corpus), ds.collater(part))
    for grad in grads.values():
        dist.all_reduce(grad)
    torch.save({"loss": loss, "log": log, "grads": grads}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_ranks_compute_the_loss_and_gradients_of_one_process(wiki_corpus, tmp_path):
    mp.spawn(ict_rank, args=(wiki_corpus, f"tcp://127.0.0.1:{free_port()}", str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    corpus = BlockCorpus(wiki_corpus)
    ds, items = ict_items(corpus)
    loss, log, grads = ict_step(ict_model(corpus), ds.collater(items))  # the global batch in one process
    assert sum(r["loss"] for r in ranks) == pytest.approx(loss, rel=1e-6)
    for key in ("top1", "top5", "candidates"):  # each query against all 16 blocks, its own the target
        assert sum(r["log"][key] for r in ranks) == log[key], key
    assert ranks[1]["log"]["candidates"] == (GLOBAL_BATCH - RANK0_ITEMS) * GLOBAL_BATCH
    assert grads.keys() == ranks[0]["grads"].keys()
    scale = max(float(g.abs().max()) for g in grads.values())  # 0.08; sums of many terms differ by ~1e-7
    for name, grad in grads.items():
        assert torch.allclose(ranks[0]["grads"][name], grad, rtol=1e-4, atol=1e-4 * scale), name
