"""The retriever's towers: pooling and projection options, architectures, a swapped-in fairseq encoder,
and HF BERT weights converted so that our encoder computes what transformers' BertModel computes."""
import argparse
import os
import types

import pytest
import torch
from fairseq.data import Dictionary

from realm_fairseq.data import Vocab
from realm_fairseq.data.documents import read_jsonl
from realm_fairseq.models.config import RealmConfig
from realm_fairseq.models.embedder import Embedder
from realm_fairseq.models.encoder import EncoderConfig
from realm_fairseq.models.hf_convert import convert_hf_bert, dictionary_for, load_into_encoder, load_weights
from realm_fairseq.models.realm import RealmModel, realm_minilm, realm_tiny

from conftest import SQUAD_DEV, VOCAB, WIKI, hide_torchaudio, run

TINY = dict(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
            dropout=0.0, attention_dropout=0.0)


@pytest.fixture(scope="module")
def dictionary():
    return dictionary_for(Vocab.load(VOCAB))


def batch(dictionary, lengths, seed=0):
    """(B, T) right-padded token ids, each row [CLS] ... [SEP]."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.full((len(lengths), max(lengths)), dictionary.pad())
    for i, n in enumerate(lengths):
        tokens[i, :n] = torch.randint(1000, 20000, (n,), generator=g)
        tokens[i, 0], tokens[i, n - 1] = dictionary.bos(), dictionary.eos()
    return tokens


def test_cls_pooling_with_projection_gives_realm_sized_embeddings(dictionary):
    embedder = Embedder(EncoderConfig(**TINY), dictionary, pooling="cls", projection_dim=128).eval()
    out = embedder(batch(dictionary, [7, 5, 9]))
    assert out.shape == (3, 128) and embedder.dim == 128


def test_mean_pooling_ignores_padding_and_keeps_the_width(dictionary):
    embedder = Embedder(EncoderConfig(**TINY), dictionary, pooling="mean", projection_dim=0).eval()
    tokens = batch(dictionary, [6, 11])
    with torch.no_grad():
        together = embedder(tokens)
        alone = embedder(tokens[:1, :6])
    assert together.shape == (2, 32) and embedder.dim == 32
    assert torch.allclose(together[0], alone[0], atol=1e-5)


def tiny_realm(dictionary, **overrides) -> RealmModel:
    args = argparse.Namespace(**overrides)
    realm_tiny(args)
    cfg = RealmConfig(**{k: getattr(args, k) for k in vars(args)})
    return RealmModel.build_model(cfg, types.SimpleNamespace(source_dictionary=dictionary)).eval()


def test_cosine_score_is_scale_times_the_cosine_of_the_dot_embeddings(dictionary):
    dot = tiny_realm(dictionary)
    cosine = tiny_realm(dictionary, retriever_score="cosine", retriever_scale=7.5)
    cosine.load_state_dict(dot.state_dict())
    queries, blocks = batch(dictionary, [9, 6, 8], seed=1), batch(dictionary, [5, 12], seed=2)
    with torch.no_grad():
        q, d = dot.embed_queries(queries), dot.embed_blocks(blocks)  # (3, D), (2, D)
        scores = cosine.embed_queries(queries) @ cosine.embed_blocks(blocks).T  # (3, 2)
    expected = 7.5 * torch.nn.functional.cosine_similarity(q[:, None], d[None], dim=-1)
    assert torch.allclose(scores, expected, atol=1e-5)
    assert not torch.allclose(q @ d.T, expected, atol=1e-2)  # the dot score is another one


def test_architectures_set_the_documented_sizes():
    tiny, minilm = argparse.Namespace(), argparse.Namespace()
    realm_tiny(tiny)
    realm_minilm(minilm)
    assert (tiny.encoder_layers, tiny.encoder_embed_dim, tiny.retriever_projection_dim) == (2, 64, 32)
    assert (minilm.encoder_layers, minilm.encoder_embed_dim, minilm.encoder_attention_heads,
            minilm.encoder_ffn_embed_dim, minilm.retriever_projection_dim) == (6, 384, 12, 1536, 0)
    for args in (tiny, minilm):  # pooling and score come from the --encoder-init weights, not the architecture
        assert getattr(args, "retriever_pooling", None) is None and getattr(args, "retriever_score", None) is None
    overridden = argparse.Namespace(encoder_layers=4)
    realm_tiny(overridden)
    assert overridden.encoder_layers == 4


# LightConvEncoder (Wu et al. 2019) with the options its command line would give it
LIGHTCONV_OPTIONS = ('{"encoder_kernel_size_list": [3, 7], "encoder_conv_type": "lightweight", '
                     '"encoder_glu": true, "weight_softmax": true, "weight_dropout": 0.0}')


def test_another_fairseq_encoder_can_be_swapped_in(dictionary):
    cfg = EncoderConfig(encoder_class="fairseq.models.lightconv:LightConvEncoder", encoder_arch="lightconv",
                        encoder_options=LIGHTCONV_OPTIONS, num_segments=0,
                        max_positions=64, **TINY)
    embedder = Embedder(cfg, dictionary, pooling="cls", projection_dim=16)
    assert type(embedder.encoder.encoder).__name__ == "LightConvEncoder"
    out = embedder(batch(dictionary, [8, 5]))
    out.sum().backward()
    assert out.shape == (2, 16)
    assert embedder.encoder.embed_tokens.weight.grad.abs().sum() > 0


def test_encoder_class_errors_are_clear(dictionary):
    with pytest.raises(ValueError, match="expected one of \\['transformer'\\] or 'package.module:Class'"):
        Embedder(EncoderConfig(encoder_class="lstm", **TINY), dictionary, "cls", 0)
    with pytest.raises(ValueError, match="is not a fairseq FairseqEncoder class"):
        Embedder(EncoderConfig(encoder_class="torch.nn:Linear", **TINY), dictionary, "cls", 0)
    with pytest.raises(ValueError, match="set num_segments to 0"):
        Embedder(EncoderConfig(encoder_class="fairseq.models.lightconv:LightConvEncoder", encoder_arch="lightconv",
                               encoder_options=LIGHTCONV_OPTIONS, **TINY), dictionary, "cls", 0)
    with pytest.raises(ValueError, match=r"encoder_options '\[3\]': expected a JSON object"):
        Embedder(EncoderConfig(encoder_options="[3]", **TINY), dictionary, "cls", 0)


# --------------------------------------------------------------------------- HF BERT weights


def import_bert_model(monkeypatch):
    """transformers' BertModel, imported with torchaudio hidden for the calling test only (BERT uses no audio)."""
    hide_torchaudio(monkeypatch)
    transformers = pytest.importorskip("transformers", reason="transformers is a test-only dependency")
    return transformers.BertModel


def real_sentences(n):
    questions = [qa["question"] for qa in next(read_squad_questions())][: n // 2]
    wiki = next(iter(read_jsonl(WIKI))).text.split(". ")[: n - len(questions)]
    return questions + wiki


def read_squad_questions():
    import gzip
    import json

    with gzip.open(SQUAD_DEV, "rt", encoding="utf-8") as f:
        for article in json.load(f)["data"]:
            yield [qa for p in article["paragraphs"] for qa in p["qas"]]


def test_converted_minilm_matches_transformers_bert(minilm_dir, minilm_weights, measured, monkeypatch):
    BertModel = import_bert_model(monkeypatch)
    out = minilm_weights
    weights = load_weights(out)
    vocab = Vocab.load(os.path.join(minilm_dir, "vocab.txt"))
    dictionary = dictionary_for(vocab)
    ours = Embedder(EncoderConfig(**weights["config"]), dictionary, "mean", 0).encoder.eval()
    load_into_encoder(ours, weights, dictionary, out)
    hf = BertModel.from_pretrained(minilm_dir).eval()

    tokenizer = vocab.tokenizer()
    sentences = real_sentences(16)
    pieces = [tokenizer.encode(s).ids[:126] for s in sentences]
    width = max(len(p) for p in pieces) + 2
    hf_ids = torch.zeros(len(pieces), width, dtype=torch.long)
    our_ids = torch.full((len(pieces), width), dictionary.pad())
    for i, p in enumerate(pieces):
        hf_ids[i, : len(p) + 2] = torch.tensor([vocab.bert_id("[CLS]"), *p, vocab.bert_id("[SEP]")])
        our_ids[i, : len(p) + 2] = torch.tensor([dictionary.bos(), *(t + 4 for t in p), dictionary.eos()])
    mask = our_ids.ne(dictionary.pad())
    with torch.no_grad():
        expected = hf(input_ids=hf_ids, attention_mask=mask.long()).last_hidden_state
        hidden, padding = ours(our_ids)
    assert torch.equal(padding, ~mask)
    diff = (expected - hidden).abs()[mask].max().item()
    measured(f"MiniLM converted vs transformers BertModel, {len(pieces)} real sentences: "
             f"max |diff| = {diff:.2e}")
    assert diff < 1e-4


def test_realm_model_warm_starts_every_tower(minilm_weights):
    dictionary = dictionary_for(Vocab.load(VOCAB))
    args = argparse.Namespace(encoder_init=minilm_weights)
    realm_minilm(args)
    cfg = RealmConfig(**{k: getattr(args, k) for k in vars(args)})
    model = RealmModel.build_model(cfg, types.SimpleNamespace(source_dictionary=dictionary)).eval()
    q = model.query_embedder.encoder.embed_tokens.weight
    d = model.doc_embedder.encoder.embed_tokens.weight
    assert torch.equal(q, d) and q.data_ptr() != d.data_ptr()  # same start, separate parameters
    tokens = batch(dictionary, [9, 6])
    with torch.no_grad():  # MiniLM scores by cosine: the query tower scales its unit vectors
        assert torch.allclose(model.embed_queries(tokens), cfg.retriever_scale * model.embed_blocks(tokens), atol=1e-5)
    assert model.embed_queries(tokens).shape == (2, 384)


def test_convert_hf_refuses_bad_directories_and_overwrites(minilm_dir, tmp_path):
    proc = run(["realm-convert-hf", str(tmp_path), "--out", str(tmp_path / "w.pt")], check=False)
    assert proc.returncode != 0 and "no config.json" in proc.stderr
    (tmp_path / "w.pt").write_text("mine")
    proc = run(["realm-convert-hf", minilm_dir, "--out", str(tmp_path / "w.pt")], check=False)
    assert proc.returncode != 0 and "already exists" in proc.stderr
    assert (tmp_path / "w.pt").read_text() == "mine"


def test_weights_from_another_vocab_are_refused(minilm_dir, tmp_path):
    weights = convert_hf_bert(minilm_dir)
    other = Dictionary()
    for token in reversed(weights["vocab"]):
        other.add_symbol(token)
    encoder = Embedder(EncoderConfig(**weights["config"]), other, "mean", 0).encoder
    expected = r"another vocab than the dictionary's \(first difference at vocab id 0\)"
    with pytest.raises(ValueError, match=expected):
        load_into_encoder(encoder, weights, other, "w.pt")
