"""BERT's masked-LM head survives the conversion: a reader started with ``--encoder-init`` from a converted
``BertForMaskedLM`` gives the masked-LM logits transformers gives, on real sentences (REALM initialises its
reader from BERT, head included: paper, section 3.4)."""
import argparse
import json
import os
import shutil
import types

import pytest
import torch

from realm_fairseq.data import Vocab
from realm_fairseq.data.documents import InputError, read_jsonl
from realm_fairseq.models.config import RealmConfig
from realm_fairseq.models.hf_convert import convert_hf_bert, dictionary_for, load_weights, save_weights
from realm_fairseq.models.realm import RealmModel, realm_tiny

from conftest import VOCAB, WIKI, hide_torchaudio

SIZES = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)


def random_bert_mlm(monkeypatch, hidden_act="gelu"):
    """A tiny BertForMaskedLM with BERT's uncased vocab and every parameter random (biases and LayerNorms
    included, so that one left out of the conversion changes the logits)."""
    hide_torchaudio(monkeypatch)
    transformers = pytest.importorskip("transformers", reason="transformers is a test-only dependency")
    config = transformers.BertConfig(vocab_size=30522, hidden_act=hidden_act, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0, **SIZES)
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.3).add_(1.0 if name.endswith("LayerNorm.weight") else 0.0)
    return model


@pytest.fixture(scope="module")
def hf_mlm(tmp_path_factory):
    """The random BertForMaskedLM saved as a HF directory with the shipped vocab, and converted."""
    monkeypatch = pytest.MonkeyPatch()
    try:
        model = random_bert_mlm(monkeypatch)
        out = tmp_path_factory.mktemp("bert_mlm")
        model.save_pretrained(out / "hf")
        shutil.copy(VOCAB, out / "hf" / "vocab.txt")
        save_weights(convert_hf_bert(str(out / "hf")), str(out / "bert.pt"))
        yield model, str(out / "hf"), str(out / "bert.pt")
    finally:
        monkeypatch.undo()


def reader_from(weights_path, dictionary, **sizes):
    """The reader of a realm model built for realm_pretrain with ``--encoder-init weights_path``."""
    args = argparse.Namespace(encoder_init=weights_path, encoder_layers=2, encoder_embed_dim=16,
                              encoder_ffn_embed_dim=32, encoder_attention_heads=2, dropout=0.0, attention_dropout=0.0,
                              max_positions=512, **sizes)
    realm_tiny(args)
    cfg = RealmConfig(**{k: getattr(args, k) for k in vars(args)})
    model = RealmModel.build_model(cfg, types.SimpleNamespace(source_dictionary=dictionary))
    model.register_reader()  # as realm_pretrain does
    return model.reader.eval(), cfg


def masked_sentences(vocab, dictionary, n=8):
    """Real Wikipedia sentences, every 5th wordpiece [MASK]ed: HF ids and ours, (N, T) each, and the mask."""
    tokenizer = vocab.tokenizer()
    text = next(iter(read_jsonl(WIKI))).text
    pieces = [tokenizer.encode(s).ids[:60] for s in text.split(". ")[:n]]
    width = max(len(p) for p in pieces) + 2
    hf = torch.zeros(len(pieces), width, dtype=torch.long)
    ours = torch.full((len(pieces), width), dictionary.pad())
    for i, p in enumerate(pieces):
        p = [vocab.bert_id("[MASK]") if j % 5 == 2 else t for j, t in enumerate(p)]
        hf[i, : len(p) + 2] = torch.tensor([vocab.bert_id("[CLS]"), *p, vocab.bert_id("[SEP]")])
        ours[i, : len(p) + 2] = torch.tensor([dictionary.bos(), *(t + 4 for t in p), dictionary.eos()])
    return hf, ours, ours.ne(dictionary.pad())


def test_reader_masked_lm_logits_equal_transformers(hf_mlm, measured):
    model, _, weights_path = hf_mlm
    vocab = Vocab.load(VOCAB)
    dictionary = dictionary_for(vocab)
    reader, _ = reader_from(weights_path, dictionary)
    hf_ids, our_ids, mask = masked_sentences(vocab, dictionary)
    segments = torch.zeros_like(our_ids)
    segments[:, our_ids.shape[1] // 2 :] = 1  # the second half as z, so that segment 1 is checked too
    with torch.no_grad():
        expected = model(input_ids=hf_ids, attention_mask=mask.long(), token_type_ids=segments).logits  # (N, T, V)
        ours = reader(our_ids, segments)  # (N, T, 4 + V)
    diff = (ours[..., 4:] - expected).abs()[mask].max().item()
    aliases = [vocab.bert_id(s) for s in ("[CLS]", "[PAD]", "[SEP]", "[UNK]")]
    alias_diff = (ours[..., :4] - expected[..., aliases]).abs()[mask].max().item()
    measured(f"reader masked-LM logits vs transformers BertForMaskedLM, {mask.sum()} positions of "
             f"{len(mask)} real sentences: max |diff| = {diff:.2e} (logits up to {expected.abs().max():.1f})")
    assert diff < 1e-4 and alias_diff < 1e-4


def test_gelu_new_checkpoints_compute_with_the_tanh_approximation(monkeypatch, tmp_path):
    model = random_bert_mlm(monkeypatch, hidden_act="gelu_new")
    model.save_pretrained(tmp_path / "hf")
    shutil.copy(VOCAB, tmp_path / "hf" / "vocab.txt")
    weights = convert_hf_bert(str(tmp_path / "hf"))
    assert weights["config"]["activation_fn"] == "gelu_accurate"
    torch.save(weights, tmp_path / "bert.pt")
    vocab = Vocab.load(VOCAB)
    dictionary = dictionary_for(vocab)
    reader, cfg = reader_from(str(tmp_path / "bert.pt"), dictionary)
    assert cfg.activation_fn == "gelu_accurate"  # followed the weights
    hf_ids, our_ids, mask = masked_sentences(vocab, dictionary, n=3)
    with torch.no_grad():
        expected = model(input_ids=hf_ids, attention_mask=mask.long()).logits
        assert (reader(our_ids, torch.zeros_like(our_ids))[..., 4:] - expected).abs()[mask].max() < 1e-4
        exact, _ = reader_from(str(tmp_path / "bert.pt"), dictionary, activation_fn="gelu")
        assert (exact(our_ids, torch.zeros_like(our_ids))[..., 4:] - expected).abs()[mask].max() > 1e-3


def test_without_a_head_the_reader_head_starts_random_with_a_warning(hf_mlm, tmp_path, caplog):
    weights = load_weights(hf_mlm[2])
    del weights["lm_head"]
    torch.save(weights, tmp_path / "headless.pt")
    reader, _ = reader_from(str(tmp_path / "headless.pt"), dictionary_for(Vocab.load(VOCAB)))
    assert "holds no masked-LM head" in caplog.text
    assert reader.lm_head.layer_norm.weight.eq(1).all()  # untouched initialisation


def test_a_tokenizer_json_stands_in_for_vocab_txt(hf_mlm, tmp_path):
    """transformers and sentence-transformers may save tokenizer.json alone: its WordPiece vocab converts as
    vocab.txt does (the same md5); another tokenizer model or one that keeps case is refused, naming the file."""
    hf_dir = tmp_path / "hf"
    shutil.copytree(hf_mlm[1], hf_dir)
    os.remove(hf_dir / "vocab.txt")
    Vocab.load(VOCAB).tokenizer().save(str(hf_dir / "tokenizer.json"))
    converted, original = convert_hf_bert(str(hf_dir)), load_weights(hf_mlm[2])
    assert (converted["vocab"], converted["vocab_md5"]) == (original["vocab"], original["vocab_md5"])
    assert torch.equal(converted["state_dict"]["encoder.embed_tokens.weight"],
                       original["state_dict"]["encoder.embed_tokens.weight"])
    saved = json.loads((hf_dir / "tokenizer.json").read_text())
    for change, message in ((lambda t: t.update(normalizer={"type": "BertNormalizer", "lowercase": False}),
                             "tokenizer.json: does not lower-case"),
                            (lambda t: t["model"].update(type="BPE"), "its model is 'BPE'; expected BERT's WordPiece")):
        broken = json.loads(json.dumps(saved))
        change(broken)
        (hf_dir / "tokenizer.json").write_text(json.dumps(broken))
        with pytest.raises(InputError, match=message):
            convert_hf_bert(str(hf_dir))


def test_bad_heads_and_vocabs_are_refused(hf_mlm, tmp_path):
    hf_dir = tmp_path / "hf"
    shutil.copytree(hf_mlm[1], hf_dir)
    from safetensors.torch import load_file, save_file

    state = load_file(hf_dir / "model.safetensors")
    save_file({k: v for k, v in state.items() if k != "cls.predictions.transform.LayerNorm.bias"},
              hf_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match="masked-LM head lacks 'cls.predictions.transform.LayerNorm.bias'"):
        convert_hf_bert(str(hf_dir))
    state["cls.predictions.bias"] = state["cls.predictions.bias"][:100]
    save_file(state, hf_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"cls.predictions.bias has shape \(100,\), expected \(30522,\)"):
        convert_hf_bert(str(hf_dir))
    shutil.copy(os.path.join(hf_mlm[1], "model.safetensors"), hf_dir / "model.safetensors")
    tokens = Vocab.load(VOCAB).tokens
    (hf_dir / "vocab.txt").write_text("\n".join(tokens[:2000] + ["The"] + tokens[2001:]) + "\n")
    with pytest.raises(InputError, match="holds the cased wordpiece 'The'; expected an uncased BERT vocab"):
        convert_hf_bert(str(hf_dir))
    shutil.copy(VOCAB, hf_dir / "vocab.txt")
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    with pytest.raises(InputError, match="hidden_act is 'relu'; expected one of gelu, gelu_new"):
        convert_hf_bert(str(hf_dir))
