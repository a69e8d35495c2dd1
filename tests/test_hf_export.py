"""realm-export-hf: a realm checkpoint's towers as Hugging Face directories that compute what ours compute.

The embedders become sentence-transformers models and the readers transformers BERTs
(:mod:`realm_fairseq.models.hf_export`). On real text, SQuAD dev questions and blocks of the shipped Wikipedia
articles:

- a MiniLM-shaped checkpoint (mean pooling, cosine, no projection; every weight moved off MiniLM's, and with it a
  block's title separator off the closing [SEP]): sentence-transformers' ``encode`` gives our embeddings and the
  same top 5, ``BertForMaskedLM`` our reader's logits, and ``realm-convert-hf`` reads the export back;
- REALM's form (BERT's pooler, a projection and LayerNorm; title and body as segments; the open-QA reader), from
  the converted REALM fixtures;
- sentence-transformers embedders with a head (REALM's, or MiniLM given a Dense with tanh) read into both towers;
- the command: its README, an existing ``--out`` kept without ``--force``, an encoder it cannot export refused.
"""
import argparse
import gzip
import json
import os
import types

import pytest
import torch

from realm_fairseq.data.corpus import BlockCorpus, with_cls_sep
from realm_fairseq.data.question_dataset import collate_questions, encode_question
from realm_fairseq.data.vocab import Vocab
from realm_fairseq.hub import RealmQA
from realm_fairseq.models.config import RealmConfig
from realm_fairseq.models.embedder import TOWERS, title_body_segments
from realm_fairseq.models.hf_convert import convert_hf_bert
from realm_fairseq.models.hf_export import export_checkpoint
from realm_fairseq.models.loading import snapshot_state, weights_embedders
from realm_fairseq.models.realm import RealmModel, realm_minilm, realm_tiny
from realm_fairseq.models.similarity import Similarity
from realm_fairseq.models.st_import import convert_towers

from conftest import SQUAD_DEV, hide_torchaudio, run

TOL = 1e-5
#: BERT ids of the symbols whose rows come from fairseq's specials <s> <pad> </s> (0, 1, 2) in an export
ALIASED = {101: 0, 0: 1, 102: 2}


def save_checkpoint(model: RealmModel, path: str, task: dict) -> None:
    """``model`` as fairseq saves a checkpoint of it (the parts an export reads)."""
    state = snapshot_state(model, 0)
    state["model"] = model.state_dict()
    state["cfg"]["task"] = task
    torch.save(state, path)


@pytest.fixture(scope="module")
def minilm_checkpoint(minilm_weights, wiki_corpus, tmp_path_factory):
    """A realm_pretrain checkpoint of realm_minilm started from MiniLM, every weight then moved by seeded noise
    (an export of MiniLM's own weights would not pass), and the model it holds."""
    corpus = BlockCorpus(wiki_corpus)
    args = argparse.Namespace(encoder_init=minilm_weights, dropout=0.0, attention_dropout=0.0)
    realm_minilm(args)
    task = types.SimpleNamespace(source_dictionary=corpus.dictionary)
    model = RealmModel.build_model(RealmConfig(**vars(args)), task)
    model.register_reader()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.01)
    path = str(tmp_path_factory.mktemp("minilm_checkpoint") / "checkpoint.pt")
    save_checkpoint(model, path, {"_name": "realm_pretrain", "data": wiki_corpus})
    return path, model.eval()


@pytest.fixture(scope="module")
def exported(minilm_checkpoint, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export") / "hf")
    return export_checkpoint(minilm_checkpoint[0], out)


def squad_questions(n: int):
    with gzip.open(SQUAD_DEV, "rt", encoding="utf-8") as f:
        paragraphs = [p for article in json.load(f)["data"] for p in article["paragraphs"]]
    return [qa["question"] for p in paragraphs[::20] for qa in p["qas"][:1]][:n]


def test_embedders_encode_as_ours_in_sentence_transformers(minilm_checkpoint, exported, wiki_corpus, monkeypatch,
                                                          measured):
    hide_torchaudio(monkeypatch)
    from sentence_transformers import SentenceTransformer

    _, model = minilm_checkpoint
    corpus, d = BlockCorpus(wiki_corpus), BlockCorpus(wiki_corpus).dictionary
    questions = squad_questions(64)
    ids = list(range(0, len(corpus), len(corpus) // 64))[:64]
    texts = [f"{corpus.block(i).title} [SEP] {corpus.block(i).text}" for i in ids]  # as a user has a block
    blocks = collate_questions([with_cls_sep(corpus.tokens(i), d) for i in ids], d.pad())["src_tokens"]
    closing = blocks.masked_fill(blocks == d.index("[SEP]"), d.eos())  # the title's [SEP] read as the closing one
    with torch.no_grad():
        queries = model.embed_queries(collate_questions([encode_question(corpus, q, 64) for q in questions],
                                                        d.pad())["src_tokens"]) / model.cfg.retriever_scale
        docs, docs_closing = model.embed_blocks(blocks), model.embed_blocks(closing)
    query_st = SentenceTransformer(os.path.join(exported.out, "query_embedder"), device="cpu")
    doc_st = SentenceTransformer(os.path.join(exported.out, "doc_embedder"), device="cpu")
    tokenized = doc_st.tokenize(texts)["input_ids"]
    assert torch.equal(tokenized, torch.where(blocks > 3, blocks - 4, blocks.new_tensor([101, 0, 102, 100])[
        blocks.clamp(max=3)])), "the exported tokenizer splits a block as ours does"
    st_queries = torch.from_numpy(query_st.encode(questions))
    st_docs = torch.from_numpy(doc_st.encode(texts))
    query_diff = (st_queries - queries).abs().max().item()
    doc_diff = (st_docs - docs_closing).abs().max().item()
    measured(f"export: sentence-transformers vs our embedders, max |diff| query {query_diff:.1e}, block "
             f"{doc_diff:.1e} (title [SEP] as the closing one), {(st_docs - docs).abs().max().item():.1e} "
             f"(as ours reads it, rows {exported.sep_row_difference['doc_embedder']:.1e} apart)")
    assert query_diff < TOL and doc_diff < TOL
    theirs, ours = (st_queries @ st_docs.T).topk(5).indices, (queries @ docs.T).topk(5).indices
    same = sum(set(a.tolist()) == set(b.tolist()) for a, b in zip(theirs, ours))
    measured(f"export: the same top 5 of 64 blocks for {same} of {len(questions)} questions, the same first for "
             f"{int((theirs[:, 0] == ours[:, 0]).sum())}")
    assert torch.equal(theirs[:, 0], ours[:, 0]) and same >= len(questions) - 1
    assert exported.sep_row_difference["doc_embedder"] > 1e-3  # the noise moved them apart: the test means it


def test_reader_is_bert_for_masked_lm_with_our_logits(minilm_checkpoint, exported, wiki_corpus, monkeypatch,
                                                     measured):
    hide_torchaudio(monkeypatch)
    from transformers import BertForMaskedLM, BertTokenizerFast

    _, model = minilm_checkpoint
    corpus = BlockCorpus(wiki_corpus)
    reader_dir = os.path.join(exported.out, "reader")
    tokenizer = BertTokenizerFast.from_pretrained(reader_dir)
    queries = [q.replace(q.split()[1], "[MASK]", 1) for q in squad_questions(8)]
    blocks = [f"{corpus.block(i).title} [SEP] {corpus.block(i).text}" for i in range(0, 800, 100)]
    enc = tokenizer(queries, blocks, padding=True, truncation="only_second", max_length=200, return_tensors="pt")
    ids = enc["input_ids"]
    ours_ids = ids + 4
    for bert, fairseq in ALIASED.items():
        ours_ids[ids == bert] = fairseq
    with torch.no_grad():
        ours = model.reader(ours_ids, enc["token_type_ids"])  # (N, T, 4 + V)
        theirs = BertForMaskedLM.from_pretrained(reader_dir).eval()(**enc).logits  # (N, T, V)
    real = enc["attention_mask"].bool()
    columns = ours[..., 4 : 4 + theirs.shape[-1]].clone()
    for bert, fairseq in ALIASED.items():
        columns[..., bert] = ours[..., fairseq]
    diff = (columns - theirs)[real].abs().max().item()
    measured(f"export: BertForMaskedLM vs our reader, masked-LM logits of {int(real.sum())} positions, "
             f"max |diff| {diff:.1e}")
    assert diff < 1e-4 and ours.abs().max() > 1


def test_realm_convert_hf_reads_the_export_back(minilm_checkpoint, exported):
    _, model = minilm_checkpoint
    back = convert_hf_bert(os.path.join(exported.out, "query_embedder"))
    assert back["retriever"] == {"pooling": "mean", "score": "cosine"}
    ours = model.query_embedder.encoder.state_dict()
    kept = torch.ones(len(ours["encoder.embed_tokens.weight"]), dtype=torch.bool)
    kept[[3, *(4 + i for i in (*ALIASED, 100))]] = False  # fairseq's <unk> and BERT's aliased rows
    for key, value in back["state_dict"].items():
        expected = ours[key]
        if key == "encoder.embed_tokens.weight":
            value, expected = value[kept], expected[kept]
        elif key == "encoder.embed_positions.weight":  # rows 0 and 1 come before fairseq's first position
            value, expected = value[2:], expected[2:]
        assert torch.allclose(value, expected, atol=1e-7), key
    head = convert_hf_bert(os.path.join(exported.out, "reader"))["lm_head"]
    for key, value in head.items():
        expected = model.reader.lm_head.state_dict()[key]
        assert torch.allclose(value[kept] if key == "bias" else value, expected[kept] if key == "bias" else expected)


def test_realm_form_exports_with_pooler_projection_segments_and_the_span_reader(realm_qa, tmp_path, monkeypatch,
                                                                                measured):
    """REALM's embedders (pooler, tanh, projection, LayerNorm; title and body as two segments) and the open-QA
    reader's encoder, from the converted REALM fixtures."""
    exported = export_checkpoint(realm_qa["qa.pt"], str(tmp_path / "hf"))
    assert exported.towers == {"query_embedder": "sentence-transformers", "doc_embedder": "sentence-transformers",
                               "span_reader": "BertModel"}
    hide_torchaudio(monkeypatch)
    from sentence_transformers import SentenceTransformer
    from transformers import BertModel

    model = RealmQA.from_pretrained(realm_qa["qa.pt"], device="cpu").model
    corpus = BlockCorpus(realm_qa["corpus"])
    d = corpus.dictionary
    blocks = collate_questions([with_cls_sep(corpus.tokens(i), d) for i in range(len(corpus))], d.pad())["src_tokens"]
    pairs = [[corpus.block(i).title, corpus.block(i).text] for i in range(len(corpus))]
    with torch.no_grad():
        queries, docs = model.embed_queries(blocks), model.embed_blocks(blocks)
        hidden, padding = model.span_reader.encoder(*title_body_segments(blocks, model.doc_embedder.sep_ids, d.pad()))
    st = {t: SentenceTransformer(os.path.join(exported.out, t), device="cpu")
          for t in ("query_embedder", "doc_embedder")}
    texts = [corpus.decode(i) for i in range(len(corpus))]
    diffs = [(torch.from_numpy(st["query_embedder"].encode(texts)) - queries).abs().max().item(),
             (torch.from_numpy(st["doc_embedder"].encode(pairs)) - docs).abs().max().item()]
    enc = st["doc_embedder"].tokenize(pairs)
    bert = BertModel.from_pretrained(os.path.join(exported.out, "span_reader")).eval()
    with torch.no_grad():
        theirs = bert(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"],
                      attention_mask=enc["attention_mask"]).last_hidden_state
    diffs.append((theirs - hidden)[~padding].abs().max().item())
    measured(f"export of REALM's form: query, block (title, body pairs), span reader states vs ours, max |diff| "
             f"{max(diffs):.1e}")
    assert max(diffs) < 1e-4


def test_the_command_writes_a_readme_keeps_what_exists_and_refuses_other_encoders(realm_qa, tmp_path):
    out = tmp_path / "hf"
    proc = run(["realm-export-hf", realm_qa["qa.pt"], "--out", str(out)])
    assert "span_reader: BertModel" in proc.stdout and "doc_embedder: sentence-transformers" in proc.stdout
    readme = (out / "README.md").read_text()
    assert "(title, body)" in readme and "`realm-convert-hf DIR --out realm.pt`" in readme
    before = sorted(p.name for p in out.iterdir())
    again = run(["realm-export-hf", realm_qa["qa.pt"], "--out", str(out)], check=False)
    assert again.returncode != 0 and "already exists; pass --force" in again.stderr
    assert sorted(p.name for p in out.iterdir()) == before
    run(["realm-export-hf", realm_qa["qa.pt"], "--out", str(out), "--force"])
    state = torch.load(realm_qa["qa.pt"], weights_only=False)
    state["cfg"]["model"]["encoder_class"] = "fairseq.models.lightconv:LightConvEncoder"
    torch.save(state, tmp_path / "lightconv.pt")
    refused = run(["realm-export-hf", str(tmp_path / "lightconv.pt"), "--out", str(tmp_path / "x")], check=False)
    assert refused.returncode != 0 and "LightConvEncoder" in refused.stderr and "only fairseq's transformer" in \
        refused.stderr
    assert not (tmp_path / "x").exists()


def test_a_tower_without_segments_reads_text_and_pairs_alike(wiki_corpus, tmp_path, monkeypatch):
    """An ICT retriever on fairseq's transformer without segment embeddings (--num-segments 0) exports two token
    types of zeros: sentence-transformers' pairs (title, body), whose body is type 1, read as the text does."""
    corpus = BlockCorpus(wiki_corpus)
    args = argparse.Namespace(num_segments=0, dropout=0.0, attention_dropout=0.0)
    realm_tiny(args)
    torch.manual_seed(0)
    task = types.SimpleNamespace(source_dictionary=corpus.dictionary)
    model = RealmModel.build_model(RealmConfig(**vars(args)), task)
    save_checkpoint(model, str(tmp_path / "ict.pt"), {"_name": "realm_ict", "data": wiki_corpus})
    exported = export_checkpoint(str(tmp_path / "ict.pt"), str(tmp_path / "hf"))
    assert exported.towers == {"query_embedder": "sentence-transformers", "doc_embedder": "sentence-transformers"}
    hide_torchaudio(monkeypatch)
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(os.path.join(exported.out, "doc_embedder"), device="cpu")
    blocks = [corpus.block(i) for i in range(0, 400, 50)]
    texts, pairs = [f"{b.title} [SEP] {b.text}" for b in blocks], [(b.title, b.text) for b in blocks]
    assert (torch.from_numpy(st.encode(pairs)) - torch.from_numpy(st.encode(texts))).abs().max() < TOL


# ---------------------------------------------------------------- reading an export back (realm-convert-hf)


@pytest.fixture(scope="module")
def realm_export(realm_qa, tmp_path_factory):
    """REALM's form exported: pooler, projection and LayerNorm; blocks read as title and body."""
    return export_checkpoint(realm_qa["qa.pt"], str(tmp_path_factory.mktemp("realm_export") / "hf")).out


def test_an_export_with_heads_reads_back_as_the_model_that_was_exported(realm_qa, realm_export, tmp_path):
    """realm-convert-hf of an export: a model started from it (--realm-init) is built REALM's way, embeds as
    the checkpoint's towers do and has its span reader, span head included; --hf reads the export directory
    itself alike."""
    from test_realm_hf import build

    back = str(tmp_path / "back.pt")
    proc = run(["realm-convert-hf", realm_export, "--out", back])
    assert "weights for --realm-init, --retriever-init and --hf; query_embedder, doc_embedder: realm head " \
           "projecting to 8, cls pooling, dot score, blocks read as title and body; span_reader with its orqa span " \
           "head" in proc.stdout
    original = RealmQA.from_pretrained(realm_qa["qa.pt"], device="cpu").model
    corpus = BlockCorpus(realm_qa["corpus"])
    d = corpus.dictionary
    model = build(d, needs_span_reader=True, realm_init=back)
    assert (model.cfg.retriever_head, model.cfg.doc_segments, model.cfg.span_head) == ("realm", "title_body", "orqa")
    theirs = original.span_reader.state_dict()
    assert theirs.keys() == model.span_reader.state_dict().keys() and "span_norm.weight" in theirs
    for key, value in model.span_reader.state_dict().items():
        assert torch.allclose(value, theirs[key], atol=1e-6), key
    blocks = collate_questions([with_cls_sep(corpus.tokens(i), d) for i in range(len(corpus))], d.pad())["src_tokens"]
    (query_tower, doc_tower), similarity = weights_embedders(realm_export, corpus, TOWERS)
    assert similarity == Similarity("cls", "dot")
    with torch.no_grad():
        expected = original.embed_queries(blocks), original.embed_blocks(blocks)
        for queries, docs in ((model.embed_queries(blocks), model.embed_blocks(blocks)),
                              (query_tower(blocks), doc_tower(blocks))):
            assert (queries - expected[0]).abs().max() < TOL and (docs - expected[1]).abs().max() < TOL
    assert expected[1].abs().max() > 0.1 and (expected[1] - original.doc_embedder.eval()(blocks)).abs().max() < TOL


def test_a_sentence_transformers_embedder_with_a_head_starts_both_towers(realm_export, realm_qa, tmp_path,
                                                                         monkeypatch):
    """An embedder as sentence-transformers saves it (its Dense and LayerNorm modules, no realm_tower.json)
    embeds text as its ``encode`` does, as both towers."""
    hide_torchaudio(monkeypatch)
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(os.path.join(realm_export, "query_embedder"), device="cpu")
    st.save(str(tmp_path / "saved"))
    weights = convert_towers(str(tmp_path / "saved"))
    assert sorted(weights["parts"]) == sorted(TOWERS) and weights["form"]["doc_segments"] == "none"
    assert not (tmp_path / "saved" / "vocab.txt").exists()  # read from tokenizer.json, the vocab it saves
    assert weights["vocab_md5"] == Vocab.load(os.path.join(realm_export, "query_embedder", "vocab.txt")).md5
    corpus = BlockCorpus(realm_qa["corpus"])
    texts = [corpus.decode(i) for i in range(len(corpus))]
    embedders, _ = weights_embedders(str(tmp_path / "saved"), corpus, TOWERS)
    d = corpus.dictionary
    blocks = collate_questions([with_cls_sep(corpus.tokens(i), d) for i in range(len(corpus))], d.pad())["src_tokens"]
    theirs = torch.from_numpy(st.encode(texts))
    with torch.no_grad():
        for embedder in embedders:
            assert (embedder(blocks) - theirs).abs().max() < 1e-4  # LayerNorm's eps: theirs 1e-5, BERT's 1e-12


def test_an_embedder_with_sentence_transformers_default_dense_converts_and_exports_with_its_tanh(
        minilm_dir, wiki_corpus, tmp_path, monkeypatch, measured):
    """MiniLM given a projection as sentence-transformers makes one by default (``Dense`` with tanh, LaBSE's
    head) before its ``Normalize``: converted, it embeds questions as its ``encode`` does (the ``tanh`` head), and
    a realm model started from it (--retriever-init) exports the same embedder back."""
    hide_torchaudio(monkeypatch)
    from sentence_transformers import SentenceTransformer, models

    torch.manual_seed(0)
    minilm = SentenceTransformer(minilm_dir, device="cpu")
    st = SentenceTransformer(modules=[minilm[0], minilm[1], models.Dense(384, 32), models.Normalize()], device="cpu")
    st.save(str(tmp_path / "st"))
    weights_path = str(tmp_path / "retriever.pt")
    proc = run(["realm-convert-hf", str(tmp_path / "st"), "--out", weights_path])
    assert "query_embedder, doc_embedder: tanh head projecting to 32, mean pooling, cosine score" in proc.stdout
    corpus = BlockCorpus(wiki_corpus)
    d, questions = corpus.dictionary, squad_questions(32)
    tokens = collate_questions([encode_question(corpus, q, 64) for q in questions], d.pad())["src_tokens"]
    theirs = torch.from_numpy(st.encode(questions))
    embedders, _ = weights_embedders(weights_path, corpus, TOWERS)
    args = argparse.Namespace(retriever_init=weights_path, retriever_projection_dim=32, retriever_head="linear")
    realm_minilm(args)
    with pytest.raises(ValueError, match=rf"--retriever-head linear: the retriever starts from {weights_path}, "
                                         rf"trained with --retriever-head tanh; leave --retriever-head unset"):
        RealmModel.build_model(RealmConfig(**vars(args)), types.SimpleNamespace(source_dictionary=d))
    args.retriever_head, args.doc_segments = None, "title_body"
    with pytest.raises(ValueError, match=r"--doc-segments title_body: .* trained with --doc-segments none"):
        RealmModel.build_model(RealmConfig(**vars(args)), types.SimpleNamespace(source_dictionary=d))
    args.doc_segments = None
    model = RealmModel.build_model(RealmConfig(**vars(args)), types.SimpleNamespace(source_dictionary=d)).eval()
    assert model.cfg.retriever_head == "tanh"
    checkpoint = str(tmp_path / "checkpoint.pt")
    save_checkpoint(model, checkpoint, {"_name": "realm_pretrain", "data": wiki_corpus})
    export = export_checkpoint(checkpoint, str(tmp_path / "hf")).out
    back = SentenceTransformer(os.path.join(export, "query_embedder"), device="cpu")
    with torch.no_grad():
        ours = [embedder(tokens) for embedder in embedders] + [model.embed_queries(tokens) / model.cfg.retriever_scale]
    for embedded in ours + [torch.from_numpy(back.encode(questions))]:
        assert (embedded - theirs).abs().max() < TOL
    pooled = torch.from_numpy(SentenceTransformer(modules=[minilm[0], minilm[1]], device="cpu").encode(questions))
    with torch.no_grad():
        untanhed = torch.nn.functional.normalize(st[2].linear(pooled), dim=-1)
    measured(f"an embedder with a tanh head: its tanh moves the embeddings by {(untanhed - theirs).abs().max():.2e}")
    assert (untanhed - theirs).abs().max() > 1e-2  # the tanh matters: the test would see it left out


def test_a_minilm_form_export_reads_back_without_a_head(minilm_checkpoint, exported, wiki_corpus):
    """Mean pooling, cosine, no projection; each tower its own weights; the reader with its masked-LM head."""
    _, model = minilm_checkpoint
    weights = convert_towers(exported.out)
    assert (weights["form"]["retriever_head"], weights["retriever_projection_dim"], weights["retriever"]) == \
        ("linear", 0, {"pooling": "mean", "score": "cosine"})
    reader = model.reader.state_dict()
    assert weights["parts"]["reader"].keys() == reader.keys() - {"lm_head.weight", "encoder.encoder.version"}
    for key in ("encoder.encoder.layers.5.fc2.weight", "lm_head.dense.weight", "lm_head.layer_norm.bias"):
        assert torch.allclose(weights["parts"]["reader"][key], reader[key], atol=1e-7), key
    corpus = BlockCorpus(wiki_corpus)
    d = corpus.dictionary
    blocks = collate_questions([with_cls_sep(corpus.tokens(i), d) for i in range(0, 640, 10)], d.pad())["src_tokens"]
    closing = blocks.masked_fill(blocks == d.index("[SEP]"), d.eos())  # the export keeps </s>'s row for [SEP]
    (query_tower, doc_tower), _ = weights_embedders(exported.out, corpus, TOWERS)
    with torch.no_grad():
        assert (query_tower(blocks) - model.embed_queries(closing) / model.cfg.retriever_scale).abs().max() < TOL
        assert (doc_tower(blocks) - model.embed_blocks(closing)).abs().max() < TOL
        assert (doc_tower(blocks) - query_tower(blocks)).abs().max() > 1e-3  # two towers, not one twice


def edit_json(path, change) -> None:
    with open(path, encoding="utf-8") as f:
        found = json.load(f)
    change(found)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(found, f)


@pytest.mark.parametrize("broken, message", [
    ("head", "a head of Dense, LayerNorm after the pooling; only Dense (without activation or with tanh) or Dense "
             "(tanh), Dense, LayerNorm (REALM's) convert"),
    ("order", "module 1, a sentence_transformers.models.Dense, comes before the Pooling; a head converts only "
              "between the Pooling and Normalize"),
    ("activation", "3_Dense/config.json: activation_function is 'torch.nn.modules.activation.Tanh'; expected "
                   "'torch.nn.modules.linear.Identity'"),
    ("towers", "doc_embedder: its similarity ({'pooling': 'mean', 'score': 'dot'}) differ from"),
    ("segments", "realm_tower.json: doc_segments is 'pairs'; expected one of none, title_body"),
], ids=["head", "order", "activation", "towers", "segments"])
def test_an_export_that_does_not_convert_is_named(realm_export, tmp_path, broken, message):
    import shutil

    copy = str(tmp_path / "hf")
    shutil.copytree(realm_export, copy)
    doc = os.path.join(copy, "doc_embedder")
    if broken == "head":
        edit_json(os.path.join(doc, "modules.json"), lambda modules: modules.pop(2))
    elif broken == "order":
        edit_json(os.path.join(doc, "modules.json"), lambda modules: modules.insert(1, modules.pop(2)))
    elif broken == "activation":
        edit_json(os.path.join(doc, "3_Dense", "config.json"),
                  lambda c: c.update(activation_function="torch.nn.modules.activation.Tanh"))
    elif broken == "towers":
        edit_json(os.path.join(doc, "1_Pooling", "config.json"),
                  lambda c: c.update(pooling_mode_cls_token=False, pooling_mode_mean_tokens=True))
    else:
        edit_json(os.path.join(doc, "realm_tower.json"), lambda c: c.update(doc_segments="pairs"))
    proc = run(["realm-convert-hf", copy, "--out", str(tmp_path / "back.pt")], check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "back.pt").exists()


def test_a_reader_that_cannot_come_back_with_the_embedders_is_left_out_and_named(realm_export, tmp_path):
    import shutil

    copy = str(tmp_path / "hf")
    shutil.copytree(realm_export, copy)
    os.remove(os.path.join(copy, "span_reader", "span_head.safetensors"))
    proc = run(["realm-convert-hf", copy, "--out", str(tmp_path / "back.pt")], check=False)
    assert proc.returncode != 0 and "span_head.safetensors: not a readable safetensors file" in proc.stderr
    os.remove(os.path.join(copy, "span_reader", "span_head.json"))  # an export from before the span head was kept
    proc = run(["realm-convert-hf", copy, "--out", str(tmp_path / "back.pt")])
    assert "weights for --retriever-init and --hf; query_embedder, doc_embedder" in proc.stdout
    assert f"{copy}/span_reader is left out (not of the embedders' size, or without its head)" in proc.stdout
    assert sorted(torch.load(tmp_path / "back.pt", weights_only=True)["parts"]) == ["doc_embedder", "query_embedder"]
