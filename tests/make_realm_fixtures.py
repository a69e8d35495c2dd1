"""Generate the REALM fixtures of ``tests/test_realm_hf.py``: tiny random REALM checkpoints in Hugging Face
format and what transformers' own REALM computes with them on real questions and Wikipedia blocks.

transformers removed REALM in v5, so this runs in a throwaway environment with the last release that has it
(CI never runs it; the tests only read its output)::

    python3 -m venv /tmp/tf440
    /tmp/tf440/bin/pip install torch==2.13.0 transformers==4.40.2 numpy
    /tmp/tf440/bin/python tests/make_realm_fixtures.py          # writes tests/fixtures/realm_hf/

It writes, under ``tests/fixtures/realm_hf/``:

- ``embedder/``: a ``RealmEmbedder`` (as ``google/realm-cc-news-pretrained-embedder``), safetensors;
- ``scorer/``: a ``RealmScorer`` holding the same embedder (``-scorer``), safetensors;
- ``encoder/``: a ``RealmKnowledgeAugEncoder`` (``-encoder``: BERT with its masked-LM head), safetensors;
- ``openqa/``: a ``RealmForOpenQA`` (``google/realm-orqa-nq-openqa``: query embedder, reader with ORQA's span
  head, ``block_emb``) as ``pytorch_model.bin``, with its ``block_records.npy`` (block bodies as bytes);
- ``outputs.npz``: the inputs (token ids as transformers' RealmTokenizerFast makes them) and outputs:
  query and block embeddings and relevance scores, masked-LM logits, span logits and RealmForOpenQA's
  retrieved blocks and predicted span;
- ``blocks.json``: the questions and the blocks' titles and bodies, as text.

The models are REALM's architecture at toy sizes (2 layers, hidden 8, BERT's uncased vocab of 30,522 so
that the converter's vocab handling is exercised) with every parameter drawn at random, biases and
LayerNorm parameters included (a converter that dropped one would not match). Weights are stored in
float16 to keep the files small; transformers computes in float32 from exactly those values. The vocab is
not copied into the checkpoint directories: tests put ``examples/realm/data/bert-base-uncased-vocab.txt``
beside them, as the Hugging Face copies of REALM have it.
"""
import gzip
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "examples", "realm", "data")
VOCAB = os.path.join(DATA, "bert-base-uncased-vocab.txt")
OUT = os.path.join(ROOT, "tests", "fixtures", "realm_hf")
SEED = 20200210  # REALM's arXiv date
NUM_QUESTIONS = 4
NUM_BLOCKS = 10
BLOCK_WORDPIECES = 60  # body length to aim for; short blocks keep the fixtures small
MLM_VOCAB_SAMPLE = 256  # logits kept per checked position: these ids, plus the targets


def config():
    from transformers import RealmConfig

    return RealmConfig(vocab_size=30522, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=16, retriever_proj_size=8, span_hidden_size=8, max_span_width=10,
                       reader_beam_size=3, searcher_beam_size=NUM_BLOCKS, num_block_records=NUM_BLOCKS,
                       num_candidates=NUM_BLOCKS, reader_seq_len=160, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)


def randomize(model, generator, scale=0.4, unused=()):
    """Every parameter random, so that a weight (or bias) left out of a conversion changes the outputs; those
    under the ``unused`` prefixes (heads no forward pass reads, such as the embedder's masked-LM head) zero,
    which git stores in a few bytes."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * scale)
            if name.endswith("weight") and ("LayerNorm" in name or "layer_normalization" in name):
                p.add_(1.0)
            p.copy_(p.half().float())  # the values the float16 files hold
    zero(model, unused)


def zero(model, prefixes):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if prefixes and name.startswith(prefixes):
                p.zero_()


def perturb(model, generator, scale=0.1):
    """A 'fine-tuned' copy: every parameter moved a little."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)
            p.copy_(p.half().float())


def read_questions():
    with gzip.open(os.path.join(DATA, "squad-v1.1-dev.json.gz"), "rt", encoding="utf-8") as f:
        article = json.load(f)["data"][0]
    qas = [qa for p in article["paragraphs"] for qa in p["qas"]]
    return [{"question": qa["question"], "answers": sorted({a["text"] for a in qa["answers"]})}
            for qa in qas[:NUM_QUESTIONS]]


def read_blocks(tokenizer):
    """Blocks of real Wikipedia text: whole sentences up to about BLOCK_WORDPIECES wordpieces, with titles."""
    blocks = []
    with gzip.open(os.path.join(DATA, "enwiki-sample-articles.jsonl.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            body, used = [], 0
            for sentence in doc["text"].replace("\n", " ").split(". "):
                n = len(tokenizer.tokenize(sentence))
                if body and used + n > BLOCK_WORDPIECES:
                    break
                body.append(sentence)
                used += n
            blocks.append({"title": doc["title"], "body": ". ".join(body).strip()})
            if len(blocks) == NUM_BLOCKS:
                return blocks
    raise RuntimeError("not enough articles")


def save(model, name, safe=True):
    path = os.path.join(OUT, name)
    model.half().save_pretrained(path, safe_serialization=safe)
    model.float()
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(path, extra)):
            os.remove(os.path.join(path, extra))
    return path


def padded(rows, pad=0):
    width = max(len(r) for r in rows)
    return np.array([r + [pad] * (width - len(r)) for r in rows], dtype=np.int64)


def mlm_inputs(tokenizer, blocks, generator):
    """REALM pre-training reader inputs: a sentence with a span of it masked, joined with a block body."""
    sentences, targets, positions = [], [], []
    rows, types = [], []
    for k, block in enumerate(blocks[:4]):
        sentence = blocks[(k + 5) % len(blocks)]["body"].split(". ")[0]
        ids = tokenizer(sentence, add_special_tokens=False)["input_ids"][:40]
        start = int(torch.randint(1, max(2, len(ids) - 3), (1,), generator=generator))
        masked = list(ids)
        for i in range(start, min(start + 3, len(ids))):
            masked[i] = tokenizer.mask_token_id
        body = tokenizer(block["body"], add_special_tokens=False)["input_ids"]
        row = [tokenizer.cls_token_id, *masked, tokenizer.sep_token_id, *body, tokenizer.sep_token_id]
        rows.append(row)
        types.append([0] * (len(masked) + 2) + [1] * (len(body) + 1))
        checked = [1 + i for i in range(start, min(start + 3, len(ids)))] + [0, len(masked) + 3]
        positions.append(checked)
        targets.append([ids[i - 1] if 0 < i <= len(ids) else -1 for i in checked])
        sentences.append(sentence)
    return padded(rows), padded(types), padded(positions, -1), padded(targets, -1)


def main():
    import transformers
    from transformers import (RealmEmbedder, RealmForOpenQA, RealmKnowledgeAugEncoder, RealmRetriever,
                              RealmScorer, RealmTokenizerFast)

    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    cfg = config()
    tokenizer = RealmTokenizerFast(vocab_file=VOCAB, do_lower_case=True)
    questions = read_questions()
    blocks = read_blocks(tokenizer)
    out = {}

    # --- embedder (Embed_input = Embed_doc in REALM pre-training) and scorer
    embedder = RealmEmbedder(cfg).eval()
    randomize(embedder, g, unused=("cls.predictions.",))
    q = tokenizer([x["question"] for x in questions], padding=True, return_tensors="pt")
    b = tokenizer([x["title"] for x in blocks], [x["body"] for x in blocks], padding=True, return_tensors="pt")
    with torch.no_grad():
        query_emb = embedder(**q).projected_score  # (Q, P)
        block_emb = embedder(**b).projected_score  # (B, P)
        scorer = RealmScorer(cfg).eval()
        scorer.embedder.load_state_dict(embedder.state_dict())
        candidates = {k: v.unsqueeze(0).repeat(len(questions), 1, 1) for k, v in b.items()}
        relevance = scorer(**q, candidate_input_ids=candidates["input_ids"],
                           candidate_attention_mask=candidates["attention_mask"],
                           candidate_token_type_ids=candidates["token_type_ids"]).relevance_score  # (Q, B)
    assert torch.allclose(relevance, query_emb @ block_emb.T, atol=1e-5)
    out.update(query_ids=q["input_ids"].numpy(), query_mask=q["attention_mask"].numpy(),
               block_ids=b["input_ids"].numpy(), block_type_ids=b["token_type_ids"].numpy(),
               block_mask=b["attention_mask"].numpy(), query_emb=query_emb.numpy(), block_emb=block_emb.numpy(),
               relevance=relevance.numpy())
    save(embedder, "embedder")
    save(scorer, "scorer", safe=False)  # its two embedders are one module: torch.save keeps one copy

    # --- knowledge-augmented encoder: masked-LM logits on [CLS] masked sentence [SEP] body [SEP]
    encoder = RealmKnowledgeAugEncoder(cfg).eval()
    randomize(encoder, g)
    ids, types, positions, targets = mlm_inputs(tokenizer, blocks, g)
    mask = (ids != 0).astype(np.int64)
    with torch.no_grad():
        logits = encoder(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                         token_type_ids=torch.from_numpy(types)).logits  # (N, T, V)
    vocab_sample = torch.randperm(cfg.vocab_size, generator=g)[:MLM_VOCAB_SAMPLE]
    vocab_sample = torch.unique(torch.cat([vocab_sample, torch.from_numpy(targets[targets >= 0])]))
    rows = torch.arange(len(ids))[:, None].expand_as(torch.from_numpy(positions))
    at = logits[rows, torch.from_numpy(positions).clamp(min=0)]  # (N, M, V)
    out.update(mlm_ids=ids, mlm_type_ids=types, mlm_attention=mask, mlm_positions=positions,
               mlm_targets=targets, mlm_vocab=vocab_sample.numpy(), mlm_logits=at[..., vocab_sample].numpy(),
               mlm_logsumexp=torch.logsumexp(at, -1).numpy())
    save(encoder, "encoder")

    # --- open QA: query embedder (fine-tuned embedder), reader (encoder + ORQA's span head), block_emb
    openqa = RealmForOpenQA(cfg).eval()
    randomize(openqa, g)
    openqa.embedder.load_state_dict(embedder.state_dict())
    openqa.reader.realm.load_state_dict(encoder.realm.state_dict())
    openqa.reader.cls.load_state_dict(encoder.cls.state_dict())
    perturb(openqa.embedder, g)
    perturb(openqa.reader.realm, g)
    zero(openqa, ("embedder.cls.predictions.", "reader.cls.predictions."))
    openqa.block_emb = block_emb.clone()  # embedded by the pre-trained embedder, as ORQA's index
    records = np.array([x["body"].encode("utf-8") for x in blocks], dtype=object)
    openqa.retriever = RealmRetriever(records, tokenizer)
    span_rows, qa_queries, qa_retrieved, qa_retrieval_logits, qa_predicted = [], [], [], [], []
    span_logits, starts, ends = [], None, None
    with torch.no_grad():
        for x in questions:
            qi = tokenizer([x["question"]], return_tensors="pt")
            result = openqa(**qi, return_dict=True)
            query = openqa.embedder(**qi).projected_score[0]  # (P,)
            scores = openqa.block_emb @ query  # (B,)
            retrieved = torch.topk(scores, k=cfg.reader_beam_size).indices
            concat = tokenizer([x["question"]] * len(retrieved), [blocks[i]["body"] for i in retrieved.tolist()],
                               padding="max_length", max_length=96, truncation=True, return_special_tokens_mask=True,
                               return_tensors="pt")
            hidden = openqa.reader.realm(input_ids=concat["input_ids"], attention_mask=concat["attention_mask"],
                                         token_type_ids=concat["token_type_ids"]).last_hidden_state
            block_mask = (~concat["special_tokens_mask"].bool()) & concat["token_type_ids"].bool()
            logit, starts, ends = openqa.reader.qa_outputs(hidden, block_mask)  # (R, C) with the mask added
            reader = result.reader_output
            qa_queries.append(query.numpy())
            qa_retrieved.append(retrieved.numpy())
            qa_retrieval_logits.append(scores[retrieved].numpy())
            qa_predicted.append([int(reader.block_idx), int(reader.start_pos), int(reader.end_pos)])
            span_rows.append(np.stack([concat["input_ids"].numpy(), concat["token_type_ids"].numpy(),
                                       concat["attention_mask"].numpy(), block_mask.long().numpy()]))
            span_logits.append(torch.where(block_mask[:, starts] & block_mask[:, ends], logit,
                                           torch.full_like(logit, float("nan"))).numpy())
    out.update(qa_query_emb=np.stack(qa_queries), qa_retrieved=np.stack(qa_retrieved),
               qa_retrieval_logits=np.stack(qa_retrieval_logits), qa_predicted=np.array(qa_predicted),
               qa_inputs=np.stack(span_rows), span_starts=starts.numpy(), span_ends=ends.numpy(),
               span_logits=np.stack(span_logits).astype(np.float32))
    openqa.retriever = None
    path = save(openqa, "openqa", safe=False)
    state = torch.load(os.path.join(path, "pytorch_model.bin"), weights_only=True)
    state["block_emb"] = block_emb.clone()  # float32, as REALM's
    torch.save(state, os.path.join(path, "pytorch_model.bin"))
    np.save(os.path.join(path, "block_records.npy"), records, allow_pickle=True)

    out["versions"] = np.array([f"transformers {transformers.__version__}", f"torch {torch.__version__}",
                                f"numpy {np.__version__}", f"seed {SEED}"])
    np.savez_compressed(os.path.join(OUT, "outputs.npz"), **out)
    with open(os.path.join(OUT, "blocks.json"), "w", encoding="utf-8") as f:
        json.dump({"questions": questions, "blocks": blocks}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
