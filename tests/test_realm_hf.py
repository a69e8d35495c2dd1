"""REALM's released checkpoints, converted, compute what transformers' REALM computes.

The fixtures under ``tests/fixtures/realm_hf/`` are tiny random REALM checkpoints in Hugging Face format
(RealmEmbedder, RealmScorer, RealmKnowledgeAugEncoder, RealmForOpenQA with its block_records.npy) and
transformers 4.40.2's outputs on real SQuAD questions and Wikipedia blocks, made by
``tests/make_realm_fixtures.py`` (see there to regenerate them; transformers 5 has no REALM, CI needs none).
Every equality is to 1e-4; retrieval through an index is to float16 precision, the precision an index
version stores."""
import argparse
import json
import os
import pickle
import shutil
import types

import numpy as np
import pytest
import torch

from realm_fairseq.cli import convert_hf
from realm_fairseq.data import Vocab
from realm_fairseq.data.corpus import BlockCorpus, with_cls_sep_batch
from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus
from realm_fairseq.data.documents import InputError
from realm_fairseq.data.realm_blocks import iter_block_records
from realm_fairseq.models import realm_hf
from realm_fairseq.models.config import RealmConfig
from realm_fairseq.models.hf_convert import dictionary_for
from realm_fairseq.models.realm import RealmModel, realm_base
from realm_fairseq.models.span_reader import orqa_best_span
from realm_fairseq.indexing import retrievers as dense
from realm_fairseq.retrieval.versions import IndexStore

from conftest import REALM_FIXTURES as FIXTURES, ROOT, VOCAB, run

TOL = 1e-4


@pytest.fixture(scope="module")
def hf(realm_hf_dirs):
    return realm_hf_dirs


@pytest.fixture(scope="module")
def ref():
    with np.load(os.path.join(FIXTURES, "outputs.npz")) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def dictionary():
    return dictionary_for(Vocab.load(VOCAB))


def convert(tmp_path, *dirs) -> str:
    weights, _ = realm_hf.convert_realm(list(dirs))
    path = str(tmp_path / f"{'+'.join(os.path.basename(d) for d in dirs)}.pt")
    realm_hf.save_realm_weights(weights, path, force=True)
    return path


def build(dictionary, needs_reader=False, needs_span_reader=False, **init) -> RealmModel:
    """A realm model of the fixtures' sizes started from ``init`` (--retriever-init/--realm-init)."""
    sizes = dict(encoder_layers=2, encoder_embed_dim=8, encoder_ffn_embed_dim=16, encoder_attention_heads=2,
                 retriever_projection_dim=8, span_hidden_dim=8, dropout=0.0, attention_dropout=0.0)
    args = argparse.Namespace(**{**sizes, **init})
    realm_base(args)
    cfg = RealmConfig(**{k: getattr(args, k) for k in vars(args)})
    model = RealmModel.build_model(cfg, types.SimpleNamespace(source_dictionary=dictionary))
    if needs_reader:  # as the tasks that read register their heads
        model.register_reader()
    if needs_span_reader:
        model.register_span_reader()
    return model.eval()


def ours(hf_ids: np.ndarray, dictionary, sep=None) -> torch.Tensor:
    """BERT ids (N, T), 0-padded -> fairseq ids: [CLS] -> <s>, [SEP] -> </s> (or ``sep``), [PAD] -> <pad>."""
    ids = torch.from_numpy(hf_ids) + 4
    ids[hf_ids == 101] = dictionary.bos()
    ids[hf_ids == 102] = dictionary.eos() if sep is None else sep
    ids[hf_ids == 0] = dictionary.pad()
    return ids


def report(measured, what, diff):
    measured(f"{what}: max |diff| = {diff:.2e}")


# --------------------------------------------------------------------------------------------- embedder


def test_embedder_scores_equal_transformers(hf, ref, dictionary, tmp_path, measured):
    model = build(dictionary, retriever_init=convert(tmp_path, hf["embedder"]))
    assert (model.cfg.retriever_head, model.cfg.doc_segments, model.cfg.activation_fn) == \
        ("realm", "title_body", "gelu_accurate")  # followed the weights
    assert (model.cfg.retriever_pooling, model.cfg.retriever_score) == ("cls", "dot")
    with torch.no_grad():
        queries = model.embed_queries(ours(ref["query_ids"], dictionary))  # (Q, P)
        sep = dictionary.index("[SEP]")  # the corpus separates title and body with the vocab's [SEP]
        blocks = ours(ref["block_ids"], dictionary)
        first_sep = (blocks == dictionary.eos()).long().argmax(1)
        blocks[torch.arange(len(blocks)), first_sep] = sep
        docs = model.embed_blocks(blocks)  # (B, P)
    diffs = [np.abs(queries.numpy() - ref["query_emb"]).max(), np.abs(docs.numpy() - ref["block_emb"]).max(),
             np.abs((queries @ docs.T).numpy() - ref["relevance"]).max()]
    report(measured, "REALM embedder: query, block embeddings, relevance vs RealmEmbedder/RealmScorer", max(diffs))
    assert max(diffs) < TOL
    alone = realm_hf.embedder_from_weights(model.cfg.retriever_init, dictionary)  # e.g. to index one's corpus
    with torch.no_grad():
        assert np.abs(alone(blocks).numpy() - ref["block_emb"]).max() < TOL
    assert np.abs(ref["relevance"]).max() > 1.0  # scores large enough for 1e-4 to mean something


def test_scorer_converts_to_the_same_embedders(hf, tmp_path):
    embedder = realm_hf.load_realm_weights(convert(tmp_path, hf["embedder"]))["parts"]
    scorer = realm_hf.load_realm_weights(convert(tmp_path, hf["scorer"]))["parts"]
    for part in ("query_embedder", "doc_embedder"):
        assert scorer[part].keys() == embedder[part].keys()
        assert all(torch.equal(scorer[part][k], embedder[part][k]) for k in scorer[part])


def test_reader_checkpoint_converts_as_the_open_qa_models_reader(hf, tmp_path):
    """A RealmReader checkpoint (as google/realm-orqa-nq-reader) holds what RealmForOpenQA holds under
    ``reader.``: here it is cut out of the open-QA fixture."""
    reader_dir = tmp_path / "reader"
    reader_dir.mkdir()
    state = torch.load(os.path.join(hf["openqa"], "pytorch_model.bin"), weights_only=True)
    torch.save({k[len("reader."):]: v for k, v in state.items() if k.startswith("reader.")},
               reader_dir / "pytorch_model.bin")
    config = json.load(open(os.path.join(hf["openqa"], "config.json")))
    (reader_dir / "config.json").write_text(json.dumps({**config, "architectures": ["RealmReader"]}))
    (reader_dir / "vocab.txt").symlink_to(VOCAB)
    reader = realm_hf.load_realm_weights(convert(tmp_path, str(reader_dir)))["parts"]
    openqa = realm_hf.load_realm_weights(convert(tmp_path, hf["openqa"]))["parts"]
    assert sorted(reader) == ["span_reader"]
    assert all(torch.equal(v, openqa["span_reader"][k]) for k, v in reader["span_reader"].items())


def test_our_corpus_blocks_are_realms_and_embed_as_realm(hf, ref, dictionary, tmp_path):
    """Blocks cut by realm-prepare-corpus from the same titles and bodies hold the wordpieces REALM's tokenizer
    gives, and the document embedder reads them as REALM's (title segment 0, body segment 1)."""
    blocks = json.load(open(os.path.join(FIXTURES, "blocks.json"), encoding="utf-8"))["blocks"]
    with open(tmp_path / "docs.jsonl", "w", encoding="utf-8") as f:
        for i, b in enumerate(blocks):
            f.write(json.dumps({"id": str(i), "title": b["title"], "text": b["body"]}) + "\n")
    prepare_corpus([str(tmp_path / "docs.jsonl")], VOCAB, str(tmp_path / "corpus"),
                   CorpusConfig(workers=1, salient_spans="none", no_progress=True))
    corpus = BlockCorpus(str(tmp_path / "corpus"))
    assert len(corpus) == len(blocks)
    tokens, lengths = corpus.padded_tokens(list(range(len(corpus))))
    hf_ids = ref["block_ids"]
    for i in range(len(corpus)):  # REALM: [CLS] title [SEP] body [SEP]; ours: title [SEP] body
        n = int(ref["block_mask"][i].sum())
        assert tokens[i, : lengths[i]].tolist() == (torch.from_numpy(hf_ids[i, 1 : n - 1]) + 4).tolist()
    model = build(dictionary, retriever_init=convert(tmp_path, hf["embedder"]))
    with torch.no_grad():
        docs = model.embed_blocks(with_cls_sep_batch(tokens, lengths, dictionary))
    assert np.abs(docs.numpy() - ref["block_emb"]).max() < TOL


def test_realm_weights_build_an_index_and_retrieve_zero_shot(hf, ref, tmp_path):
    """realm-build-index --hf and realm-evaluate --retrieval-only --hf take REALM's converted embedder as REALM
    computes it: the index holds REALM's block embeddings, questions embed as REALM's and rank as its scores."""
    blocks = json.load(open(os.path.join(FIXTURES, "blocks.json"), encoding="utf-8"))
    with open(tmp_path / "docs.jsonl", "w", encoding="utf-8") as f:
        for i, b in enumerate(blocks["blocks"]):
            f.write(json.dumps({"id": str(i), "title": b["title"], "text": b["body"]}) + "\n")
    corpus_dir, index = str(tmp_path / "corpus"), str(tmp_path / "index")
    prepare_corpus([str(tmp_path / "docs.jsonl")], VOCAB, corpus_dir,
                   CorpusConfig(workers=1, salient_spans="none", no_progress=True))
    weights = convert(tmp_path, hf["embedder"])
    run(["realm-build-index", "--corpus", corpus_dir, "--hf", weights, "--out", index, "--no-progress"])
    store = IndexStore(index)
    assert store.manifest()["encoder"]["score"] == "dot"
    assert np.abs(store.embeddings().astype(np.float32) - ref["block_emb"]).max() < 5e-3  # stored as float16
    retriever = dense.from_weights(weights, BlockCorpus(corpus_dir), index)
    questions = [q["question"] for q in blocks["questions"]]
    assert np.abs(retriever.embed(questions) - ref["query_emb"][: len(questions)]).max() < TOL
    ids, _ = retriever.search(questions, 3)
    assert ids.tolist() == np.argsort(-ref["relevance"][: len(questions)], axis=1)[:, :3].tolist()


def test_untitled_blocks_read_as_realms_empty_title(hf, dictionary, tmp_path):
    model = build(dictionary, retriever_init=convert(tmp_path, hf["embedder"]))
    body = torch.tensor([[dictionary.bos(), 2000, 3000, 4000, dictionary.eos()]])
    with_empty_title = torch.tensor([[dictionary.bos(), dictionary.index("[SEP]"), 2000, 3000, 4000,
                                      dictionary.eos()]])
    with torch.no_grad():
        assert torch.allclose(model.embed_blocks(body), model.embed_blocks(with_empty_title), atol=1e-6)
        assert not torch.allclose(model.embed_blocks(body), model.embed_queries(body), atol=1e-3)


# --------------------------------------------------------------------------------------------- readers


def test_reader_masked_lm_logits_equal_transformers(hf, ref, dictionary, tmp_path, measured):
    path = convert(tmp_path, hf["embedder"], hf["encoder"])
    model = build(dictionary, needs_reader=True, realm_init=path)
    tokens = ours(ref["mlm_ids"], dictionary)
    with torch.no_grad():
        logits = model.reader(tokens, torch.from_numpy(ref["mlm_type_ids"]))  # (N, T, 4 + V)
    positions = torch.from_numpy(ref["mlm_positions"])
    valid = positions >= 0
    rows = torch.arange(len(tokens))[:, None].expand_as(positions)
    at = logits[rows, positions.clamp(min=0)]  # (N, M, 4 + V)
    sample = torch.from_numpy(ref["mlm_vocab"]) + 4
    diff = (at[..., sample] - torch.from_numpy(ref["mlm_logits"])).abs()[valid].max().item()
    # the normaliser over BERT's vocab: every logit counts, not only the sample
    lse = (torch.logsumexp(at[..., 4:], -1) - torch.from_numpy(ref["mlm_logsumexp"])).abs()[valid].max().item()
    report(measured, f"REALM knowledge-augmented encoder: masked-LM logits ({int(valid.sum())} positions x "
                     f"{len(sample)} ids) and log-normaliser vs RealmKnowledgeAugEncoder", max(diff, lse))
    assert diff < TOL and lse < TOL


def test_open_qa_spans_and_prediction_equal_transformers(hf, ref, dictionary, tmp_path, measured):
    model = build(dictionary, needs_span_reader=True, realm_init=convert(tmp_path, hf["openqa"]))
    assert model.cfg.span_head == "orqa"
    inputs = torch.from_numpy(ref["qa_inputs"])  # (Q, 4, R, T): ids, segments, attention, block mask
    starts, ends = torch.from_numpy(ref["span_starts"]), torch.from_numpy(ref["span_ends"])
    span_diff, query_diff = 0.0, 0.0
    for q in range(len(inputs)):
        tokens = ours(inputs[q, 0].numpy(), dictionary)
        with torch.no_grad():
            scores = model.span_reader(tokens, inputs[q, 1], max_span_len=10)  # (R, T, L)
            query = model.embed_queries(ours(ref["query_ids"][q : q + 1], dictionary))[0]  # (P,)
        expected = torch.from_numpy(ref["span_logits"][q])  # (R, C), nan outside the block
        inside = ~expected.isnan()
        got = scores[:, starts, ends - starts]  # (R, C)
        span_diff = max(span_diff, (got - expected).abs()[inside].max().item())
        query_diff = max(query_diff, np.abs(query.numpy() - ref["qa_query_emb"][q]).max())
        retrieval = torch.from_numpy(ref["block_emb"][ref["qa_retrieved"][q]]) @ query  # (R,)
        block, start, length = orqa_best_span(scores[None], retrieval[None], inputs[q, 3].bool()[None])
        assert [int(block), int(start), int(start + length)] == ref["qa_predicted"][q].tolist()
    report(measured, "REALM open QA: query embedding, span logits vs RealmForOpenQA", max(span_diff, query_diff))
    assert span_diff < TOL and query_diff < TOL


def test_fine_tuning_from_cc_news_starts_the_span_reader_from_the_encoder(hf, dictionary, tmp_path):
    model = build(dictionary, needs_span_reader=True, realm_init=convert(tmp_path, hf["embedder"], hf["encoder"]))
    weights = realm_hf.load_realm_weights(str(tmp_path / "embedder+encoder.pt"))
    reader = weights["parts"]["reader"]
    state = model.span_reader.state_dict()
    assert torch.equal(state["encoder.encoder.layers.1.fc1.weight"], reader["encoder.encoder.layers.1.fc1.weight"])
    assert model.cfg.span_head == "orqa" and model.span_reader.score.weight.eq(0).all()  # a new head


# --------------------------------------------------------------------------------------------- blocks


@pytest.fixture(scope="module")
def converted_qa(realm_qa):
    return realm_qa


def fixture_questions():
    """The fixture questions, as RealmForOpenQA answered them ({"question", "answers"})."""
    return json.load(open(os.path.join(FIXTURES, "blocks.json"), encoding="utf-8"))["questions"]


def test_realm_blocks_become_a_corpus_and_an_index_without_reembedding(hf, ref, converted_qa):
    corpus = BlockCorpus(converted_qa["corpus"])
    texts = [r.decode() for r in np.load(os.path.join(hf["openqa"], "block_records.npy"), allow_pickle=True)]
    assert [corpus.block(i).text for i in range(len(corpus))] == texts
    store = IndexStore(converted_qa["index"])
    np.testing.assert_array_equal(store.embeddings(1), ref["block_emb"].astype(np.float16))
    assert store.manifest(1)["encoder"]["kind"] == "realm-block-emb"

    from realm_fairseq.hub import RealmQA

    qa = RealmQA.from_pretrained(converted_qa["qa.pt"], device="cpu")
    answers = qa.answer([q["question"] for q in fixture_questions()])
    for q, answer in enumerate(answers):  # REALM's top 3 blocks, in its order, with its scores
        assert answer.retrieved[:3] == ref["qa_retrieved"][q].tolist()
        scores = [e.retrieval_score for e in answer.evidence[:3]]
        np.testing.assert_allclose(scores, ref["qa_retrieval_logits"][q], rtol=2e-3, atol=2e-3)


def realm_prediction(ref, finder, q):
    """RealmForOpenQA's answer to fixture question ``q``: the rank of its block, the span's text, and its
    probability under ORQA's model (softmax of retrieval + span logit over every span inside the blocks)."""
    rank, start, end = ref["qa_predicted"][q].tolist()  # start, end (inclusive) in [CLS] x [SEP] z [SEP]
    z_start = int(ref["qa_inputs"][q, 3, rank].argmax())  # REALM's block mask: the first wordpiece of z
    block = int(ref["qa_retrieved"][q, rank])
    logits = ref["qa_retrieval_logits"][q][:, None] + ref["span_logits"][q]  # (R, C), nan outside the blocks
    p = np.exp(np.nanmax(logits) - np.log(np.nansum(np.exp(logits))))
    return rank, finder.block_text(block).span_text(start - z_start, end - z_start), p


def test_converted_open_qa_checkpoint_predicts_as_realm(ref, converted_qa, tmp_path):
    """realm-convert-hf --qa-checkpoint records ORQA's span rule, so realm-evaluate (and realm-answer, RealmQA)
    predicts RealmForOpenQA's block and span with ORQA's p(s, z | x); --span-rule marginal, and our checkpoints
    (trained with the default rule, or saved before the option), predict by p(z|x) p(s|z,x) as before. On
    these fixtures both rules pick the same spans: the scores tell them apart."""
    qa, orqa = answers(converted_qa["qa.pt"])
    assert qa.task.cfg.span_rule == "orqa"
    for q, answer in enumerate(orqa):
        rank, text, p = realm_prediction(ref, qa.task.finder, q)
        assert (answer.block_rank, answer.text) == (rank, text)
        assert answer.score == pytest.approx(p, rel=2e-3)  # retrieval scores from a float16 index

    ours_qa, ours = answers(saved_before(converted_qa["qa.pt"], tmp_path, "span_rule"))
    _, marginal = answers(converted_qa["qa.pt"], "--span-rule", "marginal")
    assert ours_qa.task.cfg.span_rule == "marginal"
    assert spans(ours) == spans(marginal)
    assert all(a.score != pytest.approx(b.score, rel=0.02) for a, b in zip(marginal, orqa))  # 6-8% apart


def test_options_given_reach_a_checkpoint_saved_before_them(converted_qa, tmp_path):
    """A checkpoint saved before the task had span_rule, retrieval_devices and retrieval_precision: what
    realm-evaluate and RealmQA are given still applies (fairseq sets only options a checkpoint has, and these
    would take their defaults: marginal, auto, fp32)."""
    from realm_fairseq.hub import RealmQA

    old = saved_before(converted_qa["qa.pt"], tmp_path, "span_rule", "retrieval_devices", "retrieval_precision")
    qa, orqa = answers(old, "--span-rule", "orqa")
    assert qa.task.cfg.span_rule == "orqa"
    assert qa.task.cfg.retrieval_devices == "cpu"  # beside the model (--device cpu), not auto's GPU
    assert spans(orqa) == spans(answers(converted_qa["qa.pt"])[1])
    qa = RealmQA.from_pretrained(old, device="cpu", retrieval_precision="fp16")
    assert (qa.task.cfg.span_rule, qa.task.cfg.retrieval_precision) == ("marginal", "fp16")


def answers(checkpoint, *flags):
    """The model as realm-evaluate and realm-answer load it from ``checkpoint`` with ``flags`` (on the CPU), and
    its answers to the fixture questions, reading 3 blocks (RealmForOpenQA's reader_beam_size)."""
    from realm_fairseq.cli import evaluate

    args = evaluate.build_parser().parse_args(["--checkpoint", checkpoint, "--questions", "-", "--device", "cpu",
                                               *flags])
    qa = evaluate.load_model(args)
    return qa, qa.answer([q["question"] for q in fixture_questions()], topk=3)


def spans(answers):
    return [(a.block_rank, a.text, a.score) for a in answers]


def saved_before(checkpoint, tmp_path, *options) -> str:
    """A copy of ``checkpoint`` as if saved before its task had ``options``."""
    state = torch.load(checkpoint, weights_only=False)
    for name in options:
        del state["cfg"]["task"][name]
    path = tmp_path / f"before-{'-'.join(options)}.pt"
    torch.save(state, path)
    return str(path)


def write_object_npy(path, records, protocol):
    """``records`` as numpy writes an object array, with a given pickle protocol (numpy 1.x used 3)."""
    array = np.empty(len(records), dtype=object)
    array[:] = records
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": (len(records),)})
        pickle.dump(array, f, protocol=protocol)


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_block_records_stream_for_every_pickle_protocol(tmp_path, protocol):
    records = [b"Short block.", "Caf\u00e9 na\u00efve ".encode() * 100, b"x" * 70000, "a str record"]
    records.append(records[1])  # the same object twice: pickled as a reference to the first
    write_object_npy(tmp_path / "r.npy", records, protocol)
    assert list(iter_block_records(str(tmp_path / "r.npy"))) == \
        [r if isinstance(r, str) else r.decode() for r in records]
    np.save(tmp_path / "s.npy", np.array([b"fixed", b"width"]))
    assert list(iter_block_records(str(tmp_path / "s.npy"))) == ["fixed", "width"]


def test_bad_block_records_are_refused(tmp_path):
    write_object_npy(tmp_path / "latin1.npy", [b"fine", b"caf\xe9"], 3)
    with pytest.raises(InputError, match="latin1.npy: record 1 is not UTF-8 text"):
        list(iter_block_records(str(tmp_path / "latin1.npy")))
    write_object_npy(tmp_path / "cut.npy", [b"a" * 100, b"b" * 100], 3)
    raw = (tmp_path / "cut.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:-60])  # into the second record
    with pytest.raises(InputError, match="cut.npy: damaged pickle after record 1"):
        list(iter_block_records(str(tmp_path / "cut.npy")))
    np.save(tmp_path / "floats.npy", np.zeros(3))
    with pytest.raises(InputError, match="holds float64 values; expected byte strings"):
        list(iter_block_records(str(tmp_path / "floats.npy")))
    write_object_npy(tmp_path / "long.npy", [b"one block", ("word " * 400).encode(), b"   "], 3)
    with pytest.raises(InputError, match=r"long.npy: record 1 makes 2 blocks \(400 wordpieces, more than "
                                         r"--block-size 288\); a realm-blocks corpus needs exactly one block per "
                                         r"record \(2 records do not\)"):
        prepare_corpus([str(tmp_path / "long.npy")], VOCAB, str(tmp_path / "corpus"),
                       CorpusConfig(workers=1, salient_spans="none", no_progress=True))
    assert not os.path.exists(tmp_path / "corpus")


# --------------------------------------------------------------------------------------------- bad input


def test_bad_checkpoints_are_refused_with_the_key_or_file(hf, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(hf["embedder"], broken, symlinks=False)
    from safetensors.torch import load_file, save_file

    state = load_file(broken / "model.safetensors")
    save_file({k: v for k, v in state.items() if k != "cls.LayerNorm.bias"}, broken / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(InputError, match="broken: lacks 'cls.LayerNorm.bias'; expected REALM weights"):
        realm_hf.convert_realm([str(broken)])
    save_file({**state, "cls.dense.weight": state["cls.dense.weight"][:4]}, broken / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"query_embedder.projection.weight has shape \(4, 8\), expected \(8, 8\)"):
        realm_hf.convert_realm([str(broken)])
    save_file({k.replace("realm.", "bert."): v for k, v in state.items()}, broken / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"not a REALM checkpoint \(top-level weights \['bert', 'cls'\]\)"):
        realm_hf.convert_realm([str(broken)])
    shutil.copy(os.path.join(FIXTURES, "embedder", "model.safetensors"), broken / "model.safetensors")
    tokens = Vocab.load(VOCAB).tokens
    (broken / "vocab.txt").unlink()
    (broken / "vocab.txt").write_text("\n".join(tokens[:1000] + tokens[1001:] + [tokens[1000]]) + "\n")
    with pytest.raises(InputError, match="vocab.txt: not BERT's uncased vocab"):
        realm_hf.convert_realm([str(broken)])
    with pytest.raises(InputError, match="scorer: holds the doc_embedder that .*embedder holds already"):
        realm_hf.convert_realm([hf["embedder"], hf["scorer"]])
    with pytest.raises(SystemExit, match="realm-convert-hf: error: .* not a REALM checkpoint, unlike"):
        convert_hf.cli_main([hf["embedder"], str(tmp_path), "--out", str(tmp_path / "w.pt")])
    assert not os.path.exists(tmp_path / "w.pt")


def test_models_that_do_not_fit_the_weights_are_refused(hf, dictionary, tmp_path):
    path = convert(tmp_path, hf["embedder"])
    with pytest.raises(ValueError, match=r"does not fit these REALM weights: --encoder-embed-dim 16 \(the "
                                         r"weights: 8\)"):
        build(dictionary, retriever_init=path, encoder_embed_dim=16)
    with pytest.raises(ValueError, match="holds no knowledge-augmented encoder"):
        build(dictionary, needs_reader=True, realm_init=path)
    with pytest.raises(InputError, match="holds REALM weights, which start a model with --retriever-init"):
        build(dictionary, encoder_init=path)
    with pytest.raises(InputError, match="not built from block_records.npy"):
        from realm_fairseq.data.realm_blocks import check_corpus_for

        prepare_corpus([os.path.join(ROOT, "examples", "realm", "data", "enwiki-sample-articles.jsonl.gz")], VOCAB,
                       str(tmp_path / "wiki"), CorpusConfig(workers=1, salient_spans="none", no_progress=True,
                                                            max_documents=2))
        check_corpus_for(BlockCorpus(str(tmp_path / "wiki")), None, 10, "block_emb")
