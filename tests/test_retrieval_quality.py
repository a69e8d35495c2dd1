"""Zero-shot retrieval (``realm-evaluate --retrieval-only``) measured against the references it must match.

On the paragraphs of the first SQuAD v1.1 dev articles and a third of their questions:

- MiniLM through our whole stack (realm-convert-hf, realm-build-index --hf, --retrieval-only --hf) against
  sentence-transformers' own ``encode`` and cosine on the same blocks and questions: recall@5 within 1
  point, and nearly the same top 5. Scoring MiniLM by the inner product instead (the old default) fell
  far behind its own library, which this comparison catches.
- ``--bm25`` against a direct ``bm25s`` run with the same settings: the same top 5 and recall.
- The similarity the weights record (cosine for MiniLM, dot for plain BERT) reaches the index and the
  model, and disagreements are refused with a rebuild hint.
"""
import json

import numpy as np
import pytest
import torch

from realm_fairseq.cli.evaluate import cli_main as evaluate_cli
from realm_fairseq.data import BlockCorpus
from realm_fairseq.data.answers import BlockHits
from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus
from realm_fairseq.data.documents import InputError
from realm_fairseq.data.questions import read_questions, squad_questions, write_questions
from realm_fairseq.models.config import RealmConfig
from realm_fairseq.models.hf_convert import convert_hf_bert, load_weights
from realm_fairseq.models.loading import resolve_similarity
from realm_fairseq.models.similarity import Similarity
from realm_fairseq.retrieval.versions import IndexStore

from conftest import SQUAD_DEV, VOCAB, evaluate_retrieval, hide_torchaudio, run

ARTICLES = 6  # SQuAD dev articles: 357 paragraphs
EVERY = 3  # one question in three: 715 questions


@pytest.fixture(scope="module")
def squad(tmp_path_factory):
    """CORPUS of the paragraphs of the first SQuAD dev articles and a question file about them."""
    root = tmp_path_factory.mktemp("squad")
    pairs = squad_questions(SQUAD_DEV)
    titles = list(dict.fromkeys(title for title, _ in pairs))[:ARTICLES]
    questions = [q for title, q in pairs if title in titles][::EVERY]
    write_questions(str(root / "questions.jsonl"), questions)
    paragraphs = len({q.doc_id for title, q in pairs if title in titles})  # the first documents of the file
    prepare_corpus([SQUAD_DEV], VOCAB, str(root / "corpus"),
                   CorpusConfig(workers=2, salient_spans="regex", no_progress=True, max_documents=paragraphs))
    return {"corpus": str(root / "corpus"), "questions": str(root / "questions.jsonl"), "root": root}


def top5(path, key="block"):
    """Block ids (or ``key``) of the top 5 of every question in a --retrieval-only predictions file."""
    with open(path, encoding="utf-8") as f:
        return [[b[key] for b in json.loads(line)["retrieved"]] for line in f]


def recall_at_5(corpus, questions, top):
    hits = BlockHits(corpus)
    return 100.0 * np.mean([any(hits.holds(q.answers, row)) for q, row in zip(questions, top)])


def sentence_transformers_top5(minilm_dir, corpus, questions):
    """The top 5 blocks of every question as sentence-transformers ranks them with MiniLM (cosine)."""
    with pytest.MonkeyPatch.context() as mp:
        hide_torchaudio(mp)
        st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(minilm_dir, device="cpu")
    model.max_seq_length = 512  # our blocks are up to 288 wordpieces; the library would cut them at 256
    blocks = [corpus.block(i) for i in range(len(corpus))]
    texts = [f"{b.title} [SEP] {b.text}" for b in blocks]  # our blocks read [CLS] title [SEP] body [SEP]
    docs = model.encode(texts, batch_size=32, convert_to_numpy=True)
    queries = model.encode([q.question for q in questions], batch_size=64, convert_to_numpy=True)
    scores = model.similarity(torch.from_numpy(queries), torch.from_numpy(docs)).numpy()  # (Q, blocks)
    return np.argsort(-scores, axis=1, kind="stable")[:, :5].tolist()


def test_minilm_through_our_stack_matches_sentence_transformers(squad, minilm_dir, minilm_weights, measured):
    index = str(squad["root"] / "minilm-index")
    run(["realm-build-index", "--corpus", squad["corpus"], "--hf", minilm_weights, "--out", index, "--no-progress"])
    assert IndexStore(index).manifest()["encoder"]["score"] == "cosine"
    out = str(squad["root"] / "minilm.predictions.jsonl")
    ours, _ = evaluate_retrieval("--hf", minilm_weights, "--corpus", squad["corpus"], "--index", index,
                       "--questions", squad["questions"], "--out", out)
    corpus, questions = BlockCorpus(squad["corpus"]), read_questions(squad["questions"])
    reference = sentence_transformers_top5(minilm_dir, corpus, questions)
    ours_top = top5(out)
    expected = recall_at_5(corpus, questions, reference)
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ours_top, reference)])
    measured(f"MiniLM, {len(questions)} SQuAD dev questions over {len(corpus)} blocks: recall@5 ours "
             f"{ours['recall@5']:.2f}, sentence-transformers {expected:.2f}; top-5 overlap {overlap:.3f}; "
             f"gold_recall@5 {ours['gold_recall@5']:.2f}")
    assert ours["questions"] == len(questions) and ours["gold_missing"] == 0
    assert abs(ours["recall@5"] - expected) <= 1.0
    assert overlap >= 0.95
    assert ours["recall@5"] == pytest.approx(recall_at_5(corpus, questions, ours_top), abs=0.01)
    assert ours["recall@1"] <= ours["recall@5"] <= ours["recall@20"] <= ours["recall@100"]


def test_bm25_matches_a_direct_bm25s_run(squad, measured):
    bm25s = pytest.importorskip("bm25s")
    stemmer = pytest.importorskip("Stemmer").Stemmer("english")
    out = str(squad["root"] / "bm25.predictions.jsonl")
    ours, _ = evaluate_retrieval("--bm25", "--corpus", squad["corpus"], "--questions", squad["questions"], "--out", out)
    corpus, questions = BlockCorpus(squad["corpus"]), read_questions(squad["questions"])
    texts = [f"{b.title}\n{b.text}" for b in (corpus.block(i) for i in range(len(corpus)))]
    direct = bm25s.BM25(k1=0.9, b=0.4)
    direct.index(bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    found, scores = direct.retrieve(bm25s.tokenize([q.question for q in questions], stopwords="en",
                                                   stemmer=stemmer, show_progress=False), k=5, show_progress=False)
    expected = recall_at_5(corpus, questions, found.tolist())
    same = np.mean([a == b for a, b in zip(top5(out), found.tolist())])
    measured(f"BM25, {len(questions)} SQuAD dev questions: recall@5 ours {ours['recall@5']:.2f}, "
             f"bm25s directly {expected:.2f}; same top 5 in the same order for {same:.3f}")
    np.testing.assert_allclose(np.array(top5(out, "score")), scores, rtol=1e-5)
    assert same >= 0.99  # blocks of equal score may come in another order
    assert ours["recall@5"] == pytest.approx(expected, abs=0.3)


def test_the_similarity_follows_the_weights(minilm_dir, minilm_weights, tmp_path):
    assert load_weights(minilm_weights)["retriever"] == {"pooling": "mean", "score": "cosine"}
    bert = tmp_path / "bert"  # a plain HF BERT directory: MiniLM without its sentence-transformers modules
    bert.mkdir()
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        (bert / name).symlink_to(f"{minilm_dir}/{name}")
    assert convert_hf_bert(str(bert))["retriever"] == {"pooling": "cls", "score": "dot"}
    (bert / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]))
    (bert / "1_Pooling").mkdir()
    (bert / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    with pytest.raises(InputError, match="module 2 is a sentence_transformers.models.Dense"):
        convert_hf_bert(str(bert))
    old = tmp_path / "old.pt"  # weights from before the similarity was recorded
    weights = load_weights(minilm_weights)
    del weights["retriever"]
    torch.save(weights, old)
    with pytest.raises(InputError, match="convert them again: realm-convert-hf"):
        load_weights(str(old))


def test_checkpoints_record_the_similarity_of_their_weights(squad, minilm_weights, tmp_path):
    """realm_minilm from MiniLM retrieves by cosine with mean pooling, and its checkpoint says so; a flag wins."""
    run(["realm-train", squad["corpus"], "--task", "realm_ict", "--criterion", "realm_ict", "--arch", "realm_minilm",
         "--encoder-init", minilm_weights, "--optimizer", "adam", "--lr", "1e-5", "--lr-scheduler", "fixed",
         "--batch-size", "2", "--max-update", "1", "--cpu", "--num-workers", "0", "--no-progress-bar",
         "--required-batch-size-multiple", "1", "--disable-validation", "--no-epoch-checkpoints",
         "--save-dir", str(tmp_path)], cwd=tmp_path)
    cfg = torch.load(tmp_path / "checkpoint_last.pt", weights_only=False)["cfg"]["model"]
    assert (cfg["retriever_pooling"], cfg["retriever_score"]) == ("mean", "cosine")
    flagged = RealmConfig(encoder_init=minilm_weights, retriever_score="dot")
    assert resolve_similarity(flagged) == Similarity("mean", "dot")
    assert resolve_similarity(RealmConfig()) == Similarity("cls", "dot")  # REALM's, without weights
    checkpoint = str(tmp_path / "checkpoint_last.pt")  # a model that starts from it inherits its similarity
    assert resolve_similarity(RealmConfig(realm_init=checkpoint)) == Similarity("mean", "cosine")
    with pytest.raises(ValueError, match="trained with --retriever-score cosine; leave --retriever-score unset"):
        resolve_similarity(RealmConfig(retriever_init=checkpoint, retriever_score="dot"))


def test_a_checkpoint_retrieves_from_its_own_embeddings_or_a_given_index(squad, tmp_path):
    """--retrieval-only --checkpoint without --index embeds the corpus with the checkpoint's document
    embedder: the same numbers as over an index realm-build-index made from that checkpoint."""
    run(["realm-train", squad["corpus"], "--task", "realm_ict", "--criterion", "realm_ict", "--arch", "realm_tiny",
         "--optimizer", "adam", "--lr", "1e-3", "--lr-scheduler", "fixed", "--batch-size", "16", "--max-update",
         "2", "--cpu", "--num-workers", "0", "--no-progress-bar", "--required-batch-size-multiple", "1",
         "--disable-validation", "--no-epoch-checkpoints", "--save-dir", str(tmp_path)], cwd=tmp_path)
    checkpoint, index = str(tmp_path / "checkpoint_last.pt"), str(tmp_path / "index")
    run(["realm-build-index", "--corpus", squad["corpus"], "--checkpoint", checkpoint, "--out", index,
         "--no-progress"])
    # no --index: the checkpoint embeds the corpus itself
    embedded_now, _ = evaluate_retrieval("--checkpoint", checkpoint, "--questions", squad["questions"])
    indexed, _ = evaluate_retrieval("--checkpoint", checkpoint, "--index", index, "--questions", squad["questions"])
    assert embedded_now["blocks"] == len(BlockCorpus(squad["corpus"]))
    for k in ("recall@1", "recall@5", "recall@20", "recall@100", "gold_recall@5"):
        assert embedded_now[k] == pytest.approx(indexed[k], abs=0.5), k  # float16 ties may reorder a block


def test_retrieval_only_refuses_bad_input(squad, minilm_weights, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Who?", "answer": ["x"]}\n{"question": "What?"}\n')
    _, proc = evaluate_retrieval("--bm25", "--corpus", squad["corpus"], "--questions", str(bad), check=False)
    assert proc.returncode != 0 and f"{bad}, line 2: missing \"answer\"" in proc.stderr
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"question": "Which NFL team represented the AFC at Super Bowl 50?", "answer": '
                       '["Denver Broncos"], "doc_id": "Super_Bowl_50#0"}\n'
                       '{"question": "Who?", "answer": ["x"], "doc_id": "Nowhere#3"}\n')
    metrics, proc = evaluate_retrieval("--bm25", "--corpus", squad["corpus"], "--questions", str(unknown))
    assert metrics["gold_questions"] == 1 and metrics["gold_missing"] == 1 and metrics["gold_recall@5"] == 100.0
    assert f"{unknown}, line 2: doc_id 'Nowhere#3'" in proc.stderr
    for args, message in (
        (["--bm25", "--index", str(tmp_path)], "--bm25 ranks the CORPUS directly; it takes no --index"),
        (["--hf", minilm_weights], "--hf needs --corpus"),
        (["--corpus", squad["corpus"]], "exactly one of --checkpoint, --hf, --bm25"),
        (["--bm25", "--corpus", squad["corpus"], "--checkpoint", "x.pt"], "exactly one of"),
    ):
        with pytest.raises(SystemExit, match=message):
            evaluate_cli(["--retrieval-only", *args, "--questions", squad["questions"]])
    corpus = BlockCorpus(squad["corpus"])
    vectors = np.random.default_rng(0).standard_normal((len(corpus), 384)).astype(np.float16)
    dot_index, other_index = str(tmp_path / "dot-index"), str(tmp_path / "other-index")
    IndexStore(dot_index).commit(vectors, corpus.checksum, {"kind": "bert", "score": "dot"})  # the old default
    IndexStore(other_index).commit(vectors, "another corpus", {"kind": "bert", "score": "cosine"})
    for index, message in ((dot_index, f"the index {dot_index} holds embeddings for --retriever-score dot but the "
                                       f"model scores with cosine; rebuild it with realm-build-index --score cosine"),
                           (other_index, "this index was built from another corpus")):
        _, proc = evaluate_retrieval("--hf", minilm_weights, "--corpus", squad["corpus"], "--index", index,
                           "--questions", squad["questions"], check=False)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
