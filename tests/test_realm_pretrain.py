"""REALM pre-training (realm_pretrain + realm_mlm): gradients reach both embedders and the reader, the
source block is never retrieved, one certain candidate reduces to plain masked LM, fairseq-train runs it
with its metrics, --retrieval-precision reaches every version searched, and a swapped-out version is let go."""
import argparse
import dataclasses
import gc
import json
import math
import os
import re
import shutil
import subprocess
import weakref
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from fairseq.logging import metrics

from realm_fairseq.criterions.marginal_likelihood import marginal_log_likelihood
from realm_fairseq.criterions.realm_mlm import RealmMlmCriterion
from realm_fairseq.data import BlockCorpus
from realm_fairseq.data.masking import MaskedExamplesDataset
from realm_fairseq.models.config import RealmConfig
from realm_fairseq.models.hf_export import export_checkpoint
from realm_fairseq.models.reader import join_query_and_blocks
from realm_fairseq.models.realm import RealmModel, realm_tiny
from realm_fairseq.models.similarity import Similarity
from realm_fairseq.indexing.embed import embed_blocks
from realm_fairseq.models.loading import EmbedderSource, resolve_similarity
from realm_fairseq.retrieval.mips import MipsIndex
from realm_fairseq.retrieval.retriever import Retriever
from realm_fairseq.retrieval.versions import IndexStore

from conftest import BIN, ROOT, free_port, hide_torchaudio, run


@pytest.fixture(scope="module")
def setup(wiki_corpus):
    """A realm_tiny model, the index of its own document embeddings and a batch of masked sentences."""
    torch.manual_seed(0)
    corpus = BlockCorpus(wiki_corpus)
    args = argparse.Namespace(dropout=0.0, attention_dropout=0.0)
    realm_tiny(args)
    model = RealmModel.build_model(RealmConfig(**vars(args)), SimpleNamespace(source_dictionary=corpus.dictionary))
    model.register_reader()  # as realm_pretrain does
    embeddings = embed_blocks(EmbedderSource(model.doc_embedder, {}), corpus, progress=False)
    ds = MaskedExamplesDataset(corpus.examples, np.arange(len(corpus.examples)), corpus.dictionary)
    batch = ds.collater([ds[i] for i in range(0, 400, 25)])
    return corpus, model, MipsIndex.build(embeddings), batch


def forward(model, batch, retriever):
    return model(**batch["net_input"], target=batch["target"], exclude_blocks=batch["exclude_blocks"],
                 retriever=retriever)


def criterion_task(corpus, index) -> SimpleNamespace:
    """What RealmMlmCriterion reads from its task: the retriever (k=4 and the null document)."""
    return SimpleNamespace(retriever=Retriever(corpus, index, topk=4, null_document=True))


def tower_gradient(tower) -> float:
    return sum(float(p.grad.abs().sum()) for p in tower.parameters() if p.grad is not None)


def test_gradients_reach_both_embedders_and_the_reader(setup):
    corpus, model, index, batch = setup
    model.zero_grad()
    out = forward(model, batch, Retriever(corpus, index, topk=4, null_document=True))
    assert out["retrieval_scores"].shape == (16, 5)
    loss = -marginal_log_likelihood(out["retrieval_scores"], out["token_log_probs"], out["token_mask"]).sum()
    loss.backward()
    for name, tower in (("query", model.query_embedder), ("doc", model.doc_embedder), ("reader", model.reader)):
        assert tower_gradient(tower) > 0, f"no gradient in the {name} tower"


def test_retriever_warmup_keeps_the_embedders_still_and_trains_the_reader(setup):
    corpus, model, index, batch = setup
    task = criterion_task(corpus, index)
    criterion = RealmMlmCriterion(task, retriever_warmup_updates=3)
    losses = []
    for update, embedders_learn in ((2, False), (3, True)):
        model.set_num_updates(update)  # as fairseq's train_step does
        model.zero_grad()
        loss, _, _ = criterion(model, batch)
        loss.backward()
        losses.append(float(loss))
        for tower in (model.query_embedder, model.doc_embedder):
            assert (tower_gradient(tower) > 0) == embedders_learn, f"update {update}"
        assert tower_gradient(model.reader) > 0
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)  # the same p(z|x) with or without its gradient


def test_logged_metrics_are_in_bits(setup):
    corpus, model, index, batch = setup
    task = criterion_task(corpus, index)
    with torch.no_grad():
        loss, ntokens, logging_output = RealmMlmCriterion(task)(model, batch)
        out = forward(model, batch, task.retriever)
    p_z = torch.softmax(out["retrieval_scores"], -1)  # (B, 5)
    alone = out["token_log_probs"][:, -1][out["token_mask"]]  # log p(y | x, null document) per masked token
    with metrics.aggregate() as logged:
        RealmMlmCriterion.reduce_metrics([logging_output])
    logged = logged.get_smoothed_values()
    assert logged["loss"] == pytest.approx(float(loss) / ntokens / math.log(2), abs=1e-3)
    assert logged["entropy"] == pytest.approx(float(-(p_z * torch.log2(p_z)).sum(-1).mean()), abs=1e-3)
    gain = -float(loss) - float(alone.sum())  # log p(y|x) - log p(y|x, null document), nats
    assert logged["retrieval_utility"] == pytest.approx(gain / ntokens / math.log(2), abs=1e-3)
    assert logged["null_prob"] == pytest.approx(float(p_z[:, -1].mean()), abs=1e-3)


def own_block_index(corpus, queries: torch.Tensor, sources: np.ndarray) -> MipsIndex:
    """An index in which each query's best block is its source block: the source block's row is the
    query's direction, and every row has unit length (other blocks: random directions), so by
    Cauchy-Schwarz no other block scores higher. The retriever REALM must be kept from becoming."""
    rows = np.random.default_rng(0).standard_normal((len(corpus), queries.shape[1])).astype(np.float32)
    rows[sources] = queries.numpy()
    return MipsIndex.build(rows / np.linalg.norm(rows, axis=1, keepdims=True))


def test_the_source_block_is_never_a_candidate(setup):
    corpus, model, _, _ = setup
    ds = MaskedExamplesDataset(corpus.examples, np.arange(len(corpus.examples)), corpus.dictionary)
    first_of_block = np.unique(corpus.examples.source_block[ds.example_ids], return_index=True)[1]
    batch = ds.collater([ds[int(i)] for i in first_of_block[::80]])  # sentences of 20 different blocks
    sources = batch["exclude_blocks"].numpy()
    with torch.no_grad():
        queries = model.embed_queries(batch["net_input"]["src_tokens"])
        retriever = Retriever(corpus, own_block_index(corpus, queries, sources), topk=8, null_document=True)
        control = forward(model, {**batch, "exclude_blocks": torch.full_like(batch["exclude_blocks"], -1)}, retriever)
        out = forward(model, batch, retriever)
    assert (control["block_ids"][:, 0] == sources).all()  # without exclusion every source block comes first
    ids = out["block_ids"]
    assert ids.shape == (len(sources), 8) and not (ids == sources[:, None]).any()
    best, _ = retriever.index.search(queries, 9)
    assert (ids == best[:, 1:]).all()  # the next 8 blocks take its place, in order
    assert out["retrieval_scores"].shape == (len(sources), 9)  # and the null document


def test_candidates_are_the_blocks_padded_with_the_null_document_last(setup):
    corpus, _, index, _ = setup
    retriever = Retriever(corpus, index, topk=3, null_document=True)
    ids = np.array([[5, 17, 2], [40, -1, 9]])  # -1: a result the index did not have
    tokens, lengths = retriever.candidate_tokens(ids)
    assert tokens.shape[0] == 8 and lengths.tolist() == [int(corpus.sizes[i]) if i >= 0 else 0
                                                          for i in (5, 17, 2, -1, 40, -1, 9, -1)]
    for row, i in enumerate((5, 17, 2, -1, 40, -1, 9, -1)):
        expected = corpus.tokens(i) if i >= 0 else torch.zeros(0, dtype=torch.long)
        assert tokens[row, : lengths[row]].equal(expected)
        assert (tokens[row, lengths[row]:] == corpus.dictionary.pad()).all()


def test_one_certain_candidate_equals_plain_masked_lm(setup):
    corpus, model, _, batch = setup
    model.eval()
    with torch.no_grad():
        out = forward(model, batch, Retriever(corpus, None, topk=0, null_document=True))
        marginal = marginal_log_likelihood(out["retrieval_scores"], out["token_log_probs"], out["token_mask"])
        # the reader alone on [CLS] x [SEP] [SEP], scored directly
        d, src, target = corpus.dictionary, batch["net_input"]["src_tokens"], batch["target"]
        null = torch.zeros(len(src), 0, dtype=torch.long)
        tokens, segments = join_query_and_blocks(src, null, torch.zeros(len(src), dtype=torch.long),
                                                 d.pad(), d.eos(), model.cfg.max_positions)
        log_probs = torch.log_softmax(model.reader(tokens, segments), -1)[:, : src.shape[1]]
        mask = target.ne(d.pad())
        plain = log_probs.gather(2, target[:, :, None]).squeeze(2)[mask]
    model.train()
    assert out["retrieval_scores"].shape == (16, 1)
    assert torch.allclose(marginal[mask], plain, atol=1e-4)


@pytest.fixture(scope="module")
def index_dir(setup, tmp_path_factory):
    """An INDEX over the wiki corpus with the tiny model's document embeddings (32 dimensions)."""
    corpus, model, _, _ = setup
    root = str(tmp_path_factory.mktemp("index"))
    embeddings = embed_blocks(EmbedderSource(model.doc_embedder, {}), corpus, progress=False)
    IndexStore(root).commit(embeddings, corpus.checksum, {"kind": "test", "update": 0})
    return root


def pretrain_args(corpus_dir, index_dir, *extra):
    return [corpus_dir, "--task", "realm_pretrain", "--index", index_dir, "--arch", "realm_tiny",
            "--criterion", "realm_mlm", "--optimizer", "adam", "--lr", "1e-3", "--lr-scheduler", "fixed",
            "--batch-size", "8", "--cpu", "--num-workers", "0", "--no-progress-bar", "--log-format", "simple",
            "--required-batch-size-multiple", "1", "--seed", "1", *extra]


def test_fairseq_train_runs_realm_pretrain_and_logs_its_metrics(wiki_corpus, index_dir, tmp_path):
    common = pretrain_args(wiki_corpus, index_dir, "--max-update", "6", "--log-interval", "3", "--no-save",
                           "--valid-percent", "4", "--max-valid-steps", "2")
    log = run(["realm-train", *common, "--retrieval-topk", "4"], cwd=tmp_path).stdout
    line = [row for row in log.splitlines() if "| valid on" in row][-1]
    for metric in ("loss", "ppl", "retrieval_utility", "null_prob", "entropy", "index_version 1", "staleness"):
        assert re.search(rf"\| {metric}", line), f"{metric} missing from: {line}"
    alone = run(["realm-train", *common, "--retrieval-topk", "0"], cwd=tmp_path).stdout
    assert "num_updates 6" in alone and "index_version 0" in alone


def refreshing_task(corpus_dir, index_dir, tmp_path, device="cpu", precision="fp16"):
    """A realm_pretrain task refreshed every 10 updates, retrieving on ``device`` from a copy of ``index_dir``,
    in which a version 2 (the same rows) is committed as a refresh would commit it."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    index = str(tmp_path / "index")
    shutil.copytree(index_dir, index)
    args = [a for a in pretrain_args(corpus_dir, index, "--retrieval-topk", "2", "--refresh-interval-updates",
                                     "10", "--retrieval-devices", device, "--retrieval-precision", precision)
            if not (a == "--cpu" and device != "cpu")]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), args))
    task = tasks.setup_task(cfg.task)
    store = IndexStore(index)
    store.commit(store.embeddings(1), task.retriever.corpus.checksum, {"kind": "test", "update": 10})
    return task


DEVICES = ["cpu", pytest.param("cuda:0", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.parametrize("device", DEVICES)
def test_retrieval_precision_reaches_the_search_and_every_refreshed_version(wiki_corpus, index_dir, device,
                                                                            tmp_path):
    """--retrieval-precision fp16 is how a GPU multiplies for the version training starts from and for each
    version a refresh loads; on the CPU faiss searches as it always does."""
    task = refreshing_task(wiki_corpus, index_dir, tmp_path, device)
    loader = task.refresher.loader
    loader.poll(in_use=1)
    loader.close()
    version, refreshed, _ = loader.ready
    assert version == 2 and task.retriever.precision == loader.precision == "fp16"
    if device == "cpu":
        assert isinstance(task.retriever.index, MipsIndex) and isinstance(refreshed, MipsIndex)
    else:
        assert task.retriever.index.precision == refreshed.precision == "fp16"


@pytest.mark.parametrize("device", DEVICES)
def test_a_swapped_out_version_is_let_go(wiki_corpus, index_dir, device, tmp_path):
    """At the swap nothing keeps the version that was in use: a rank holds one extra version only while the
    next one loads (on a GPU, its rows return to the allocator for the next refresh)."""
    task = refreshing_task(wiki_corpus, index_dir, tmp_path, device)
    first = weakref.ref(task.retriever.index)
    task.refresher.after_update(None, 1)  # update 1: no refresh due; loads version 2 in the background
    task.refresher.loader.close()
    task.refresher.after_update(None, 2)  # ... and swaps it in
    gc.collect()
    assert task.retriever.version == 2 and first() is None


def test_bf16_trains_where_it_runs_not_on_a_tpu(wiki_corpus, index_dir, tmp_path):
    # fairseq's command line reads --bf16 as "on a TPU" and then fails without torch_xla
    args = pretrain_args(wiki_corpus, index_dir, "--bf16", "--retrieval-topk", "2", "--max-update", "2",
                         "--no-save", "--disable-validation")
    log = run(["realm-train", *args], cwd=tmp_path).stdout
    assert re.search(r"num_updates[= ]2\b", log) and "'bf16': True" in log and "'tpu': False" in log


EXACT = ["--retrieval-topk", "2", "--dropout", "0", "--attention-dropout", "0", "--disable-validation",
         "--log-interval", "1"]


def logged_losses(log: str):
    return [float(v) for v in re.findall(r"\| train_inner \|.*? loss=([\d.]+)", log)]


def weights(save_dir):
    return torch.load(f"{save_dir}/checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]


def assert_same_weights(a, b):
    """Bit for bit."""
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[0]} by {(a[differ[0]] - b[differ[0]]).abs().max()}"


def test_a_resumed_run_matches_an_uninterrupted_one(wiki_corpus, index_dir, tmp_path):
    args = pretrain_args(wiki_corpus, index_dir, *EXACT)
    whole = run(["realm-train", *args, "--max-update", "6", "--save-dir", str(tmp_path / "whole")], cwd=tmp_path)
    first = run(["realm-train", *args, "--max-update", "3", "--save-dir", str(tmp_path / "parts")], cwd=tmp_path)
    second = run(["realm-train", *args, "--max-update", "6", "--save-dir", str(tmp_path / "parts")], cwd=tmp_path)
    assert "Loaded checkpoint" in second.stdout
    resumed = logged_losses(first.stdout) + logged_losses(second.stdout)
    assert len(resumed) == 6 and resumed == logged_losses(whole.stdout)
    assert_same_weights(weights(tmp_path / "whole"), weights(tmp_path / "parts"))


def test_checkpoint_activations_trains_the_same_model(wiki_corpus, index_dir, tmp_path):
    """realm-train --checkpoint-activations, dropout on: every tower recomputes its layers in the backward pass
    and the run ends with the weights of a run that keeps the activations, bit for bit."""
    args = pretrain_args(wiki_corpus, index_dir, "--retrieval-topk", "2", "--disable-validation", "--max-update",
                         "3", "--log-interval", "1")
    plain = run(["realm-train", *args, "--save-dir", str(tmp_path / "plain")], cwd=tmp_path)
    checkpointed = run(["realm-train", *args, "--checkpoint-activations", "--save-dir", str(tmp_path / "ckpt")],
                       cwd=tmp_path)
    assert "'checkpoint_activations': True" in checkpointed.stdout
    assert len(logged_losses(plain.stdout)) == 3 and logged_losses(checkpointed.stdout) == logged_losses(plain.stdout)
    assert_same_weights(weights(tmp_path / "plain"), weights(tmp_path / "ckpt"))


def test_two_ranks_match_one_rank_with_twice_the_batch(wiki_corpus, index_dir, tmp_path):
    args = pretrain_args(wiki_corpus, index_dir, *EXACT, "--max-update", "4")
    one = run(["realm-train", *args, "--update-freq", "2", "--save-dir", str(tmp_path / "one")], cwd=tmp_path)
    init = f"tcp://127.0.0.1:{free_port()}"
    ranks = [
        subprocess.Popen(
            [f"{BIN}/realm-train", *args, "--save-dir", str(tmp_path / "two"), "--distributed-world-size", "2",
             "--distributed-rank", str(rank), "--distributed-backend", "gloo", "--distributed-init-method", init,
             "--distributed-no-spawn", "--ddp-backend", "legacy_ddp"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(2)
    ]
    logs = [p.communicate(timeout=300)[0] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], logs[0][-3000:]
    assert len(logged_losses(one.stdout)) == 4
    assert np.allclose(logged_losses(logs[0]), logged_losses(one.stdout), atol=1e-4)
    assert_same_weights(weights(tmp_path / "one"), weights(tmp_path / "two"))


CONFIGS = os.path.join(ROOT, "examples", "realm", "config", "pretrain")


def test_small_cpu_hydra_config_trains(wiki_corpus, index_dir, tmp_path):
    log = run(["realm-hydra-train", "--config-dir", CONFIGS, "--config-name", "small_cpu",
               f"task.data={wiki_corpus}", f"task.index={index_dir}", "optimization.max_update=4",
               f"checkpoint.save_dir={tmp_path / 'ckpt'}"], cwd=tmp_path)
    text = log.stdout + log.stderr
    assert re.search(r"num_updates[= ]4", text) and "retrieval_utility" in text
    assert (tmp_path / "ckpt" / "checkpoint_last.pt").exists()
    assert "Warning" not in text, text[:3000]  # none about fairseq's own calls to hydra and torch
    assert "DEBUG" not in text  # fairseq sets the root logger to DEBUG at import; hydra's debug lines stay out
    small = yaml.safe_load(open(os.path.join(CONFIGS, "small_cpu.yaml")))  # a reader trained from scratch:
    assert 0 < small["criterion"]["retriever_warmup_updates"] < small["optimization"]["max_update"]


def test_paper_config_has_the_paper_settings(tmp_path):
    proc = run(["realm-hydra-train", "--config-dir", CONFIGS, "--config-name", "realm_base", "--cfg", "job",
                "task.data=CORPUS", "task.index=INDEX"], cwd=tmp_path)
    cfg = yaml.safe_load(proc.stdout)
    world, per_gpu = cfg["distributed_training"]["distributed_world_size"], cfg["dataset"]["batch_size"]
    assert world * per_gpu * cfg["optimization"]["update_freq"][0] == 512
    assert cfg["optimization"]["lr"] == [3e-5] and cfg["optimization"]["max_update"] == 200000
    assert cfg["task"]["retrieval_topk"] == 8 and cfg["task"]["masking"] == "salient_span"
    assert cfg["common"]["bf16"] and cfg["task"]["retrieval_precision"] == "fp16"  # bf16 queries: the same search
    assert cfg["model"] == {"_name": "realm"}
    assert cfg["criterion"] == {"_name": "realm_mlm", "retriever_warmup_updates": 0}  # the reader starts from BERT
    defaults = RealmConfig()  # what model: {_name: realm} builds: BERT-base towers as REALM
    assert (defaults.encoder_layers, defaults.encoder_embed_dim, defaults.encoder_attention_heads,
            defaults.encoder_ffn_embed_dim, defaults.retriever_projection_dim) == (12, 768, 12, 3072, 128)
    assert resolve_similarity(defaults) == Similarity("cls", "dot")  # REALM's, as BERT weights record


def test_readers_of_their_own_size_beside_a_small_retriever(wiki_corpus, index_dir, minilm_weights, tmp_path,
                                                            monkeypatch):
    """--reader-init: realm_tiny's retriever (2 layers of 64) beside a reader started from MiniLM (6 layers of
    384). The checkpoint records the reader's shape; fine-tuning from it (--realm-init) builds its span reader in
    that shape and fills it, and realm-export-hf writes each tower in its own."""
    save = tmp_path / "ckpt"
    args = pretrain_args(wiki_corpus, index_dir, "--reader-init", minilm_weights, "--retrieval-topk", "2",
                         "--batch-size", "2", "--max-update", "2", "--disable-validation", "--save-dir", str(save))
    log = run(["realm-train", *args], cwd=tmp_path).stdout
    assert "num_updates 2" in log
    state = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    shape = json.loads(state["cfg"]["model"]["reader_encoder"])
    assert (shape["encoder_layers"], shape["encoder_embed_dim"], shape["max_positions"]) == (6, 384, 512)
    minilm = torch.load(minilm_weights, weights_only=True)["state_dict"]
    moved = state["model"]["reader.encoder.encoder.layers.5.fc1.weight"] - minilm["encoder.layers.5.fc1.weight"]
    assert 0 < moved.abs().max() < 0.01  # started from MiniLM's, then trained
    assert state["model"]["query_embedder.encoder.encoder.layers.1.fc1.weight"].shape == (128, 64)

    corpus = BlockCorpus(wiki_corpus)
    fine_tune = argparse.Namespace(realm_init=str(save / "checkpoint_last.pt"))
    realm_tiny(fine_tune)
    model = RealmModel.build_model(RealmConfig(**vars(fine_tune)), SimpleNamespace(source_dictionary=corpus.dictionary))
    model.register_span_reader()
    assert json.loads(model.cfg.reader_encoder) == shape and model.reader_cfg.encoder_layers == 6
    read = model.span_reader.encoder.state_dict()
    trained = {k[len("reader.encoder."):]: v for k, v in state["model"].items() if k.startswith("reader.encoder.")}
    assert trained.keys() == read.keys() and all(torch.equal(read[k], v) for k, v in trained.items())

    exported = export_checkpoint(str(save / "checkpoint_last.pt"), str(tmp_path / "hf"))
    shapes = {t: [json.load(open(os.path.join(exported.out, t, "config.json")))[k] for k in
                  ("num_hidden_layers", "hidden_size", "max_position_embeddings")] for t in exported.towers}
    assert shapes == {"query_embedder": [2, 64, 320], "doc_embedder": [2, 64, 320], "reader": [6, 384, 512]}
    hide_torchaudio(monkeypatch)
    from transformers import BertForMaskedLM

    pretrained = RealmModel.build_model(dataclasses.replace(model.cfg, realm_init=None),
                                        SimpleNamespace(source_dictionary=corpus.dictionary))
    pretrained.register_reader()
    pretrained.load_state_dict(state["model"])
    tokens = corpus.tokens(7)[:60]  # title [SEP] body: the title's [SEP] read as the closing one, as exported
    tokens = tokens.masked_fill(tokens == corpus.dictionary.index("[SEP]"), corpus.dictionary.eos())
    ids = torch.cat([torch.tensor([101]), torch.where(tokens == 2, 102, tokens - 4), torch.tensor([102])])[None]
    with torch.no_grad():
        ours = pretrained.eval().reader(torch.cat([torch.tensor([0]), tokens, torch.tensor([2])])[None],
                                        torch.zeros_like(ids))[..., 4:]  # (1, T, V): BERT's columns
        theirs = BertForMaskedLM.from_pretrained(os.path.join(exported.out, "reader")).eval()(ids).logits
    columns = [i for i in range(theirs.shape[-1]) if i not in (0, 101, 102)]  # the specials' rows are aliased
    assert (ours[..., columns] - theirs[..., columns]).abs().max() < 1e-4


def test_reader_encoder_options_are_checked(wiki_corpus, minilm_weights, tmp_path):
    corpus = BlockCorpus(wiki_corpus)

    def build(**options):
        args = argparse.Namespace(**options)
        realm_tiny(args)
        model = RealmModel.build_model(RealmConfig(**vars(args)), SimpleNamespace(source_dictionary=corpus.dictionary))
        model.register_reader()
        return model

    assert build(reader_encoder='{"encoder_layers": 3}').reader.encoder.encoder.layers.__len__() == 3
    with pytest.raises(ValueError, match="encoder_layer is no encoder option; expected some of encoder_class"):
        build(reader_encoder='{"encoder_layer": 3}')
    with pytest.raises(ValueError, match="expected a JSON object"):
        build(reader_encoder="[3]")
    with pytest.raises(ValueError, match="--reader-init .* and --realm-init .* both start the readers"):
        build(reader_init=minilm_weights, realm_init=str(tmp_path / "any.pt"))
    with pytest.raises(ValueError, match="encoder_layers is '12'; expected int"):
        build(reader_encoder='{"encoder_layers": "12"}')
    with pytest.raises(ValueError, match=r"minilm.pt does not fit the readers: encoder_layers 3 \(the weights: 6\).*"
                                         r"--reader-encoder \{\"encoder_layers\": 3\}"):
        build(encoder_init=minilm_weights, retriever_projection_dim=0, encoder_layers=6, encoder_embed_dim=384,
              encoder_ffn_embed_dim=1536, encoder_attention_heads=12, max_positions=512,
              reader_encoder='{"encoder_layers": 3}')
