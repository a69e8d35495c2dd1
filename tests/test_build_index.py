"""realm-build-index: corpus embedding from a realm checkpoint, sharded builds, and the score an index is
built for. MiniLM's retrieval through the index is checked against its own library in
test_retrieval_quality.py."""
import shutil

import numpy as np
import pytest

from realm_fairseq.data import BlockCorpus
from realm_fairseq.models.loading import doc_embedder_from_checkpoint
from realm_fairseq.retrieval.versions import IndexStore

from conftest import run

ICT_SHORT = ["--task", "realm_ict", "--arch", "realm_tiny", "--criterion", "realm_ict", "--optimizer", "adam",
             "--lr", "1e-3", "--lr-scheduler", "fixed", "--batch-size", "16", "--max-update", "2", "--cpu",
             "--num-workers", "0", "--no-progress-bar", "--required-batch-size-multiple", "1", "--seed", "1",
             "--disable-validation"]


@pytest.fixture(scope="module")
def ict_checkpoint(wiki_corpus, tmp_path_factory):
    """A realm_tiny checkpoint after two ICT updates."""
    save = tmp_path_factory.mktemp("ict")
    run(["realm-train", wiki_corpus, *ICT_SHORT, "--save-dir", str(save)], cwd=save)
    return str(save / "checkpoint_last.pt")


def test_index_from_a_checkpoint_and_sharded_builds_agree(wiki_corpus, ict_checkpoint, tmp_path):
    whole, sharded = str(tmp_path / "whole"), str(tmp_path / "sharded")
    common = ["--corpus", wiki_corpus, "--checkpoint", ict_checkpoint, "--no-progress"]
    assert "committed" in run(["realm-build-index", *common, "--out", whole]).stdout
    for shard in ("1", "0", "1"):  # the second run of shard 1 finds it written
        proc = run(["realm-build-index", *common, "--out", sharded, "--shard-id", shard, "--num-shards", "2"])
    assert "already written: skipped" in proc.stderr
    assert IndexStore(sharded).versions() == []
    run(["realm-build-index", *common, "--out", sharded, "--merge", "--num-shards", "2"])
    a, b = IndexStore(whole), IndexStore(sharded)
    manifest = a.manifest()
    assert manifest["count"] == len(BlockCorpus(wiki_corpus)) and manifest["dim"] == 32
    assert manifest["encoder"]["kind"] == "checkpoint" and manifest["encoder"]["update"] == 2
    np.testing.assert_allclose(a.embeddings().astype(np.float32), b.embeddings().astype(np.float32),
                               rtol=1e-2, atol=2e-3)


def test_merge_reports_missing_shards_and_bad_shard_ids(wiki_corpus, ict_checkpoint, tmp_path):
    common = ["--corpus", wiki_corpus, "--checkpoint", ict_checkpoint, "--out", str(tmp_path / "i"),
              "--no-progress"]
    run(["realm-build-index", *common, "--shard-id", "0", "--num-shards", "3"])
    proc = run(["realm-build-index", *common, "--merge", "--num-shards", "3"], check=False)
    assert proc.returncode != 0 and "1, 2" in proc.stderr
    proc = run(["realm-build-index", *common, "--shard-id", "3", "--num-shards", "3"], check=False)
    assert proc.returncode != 0 and "--shard-id 3 is not in 0..2" in proc.stderr


def test_a_cosine_index_is_normalised_and_refused_by_a_dot_model(wiki_corpus, ict_checkpoint, tmp_path):
    index = str(tmp_path / "cosine")
    run(["realm-build-index", "--corpus", wiki_corpus, "--checkpoint", ict_checkpoint, "--score", "cosine",
         "--out", index, "--no-progress"])
    store = IndexStore(index)
    assert store.manifest()["encoder"]["score"] == "cosine"
    np.testing.assert_allclose(np.linalg.norm(store.embeddings().astype(np.float32), axis=1), 1.0, atol=2e-3)
    pretrain = ["realm-train", wiki_corpus, "--task", "realm_pretrain", "--index", index,
                *ICT_SHORT[2:], "--criterion", "realm_mlm", "--save-dir", str(tmp_path / "ck")]
    proc = run(pretrain, cwd=tmp_path, check=False)  # realm_tiny scores with dot by default
    assert proc.returncode != 0
    assert f"the index {index} holds embeddings for --retriever-score cosine" in proc.stderr
    assert "realm-build-index --score dot" in proc.stderr


def test_a_checkpoint_embeds_without_the_files_it_started_from(wiki_corpus, ict_checkpoint, tmp_path):
    """A checkpoint's towers are its own weights: realm-build-index --checkpoint (and every index refresh,
    which runs it on a snapshot) reads neither the --retriever-init file (it may be gone) nor its score,
    and --score may differ from the score of the checkpoint the model started from."""
    start = tmp_path / "ict.pt"
    shutil.copy(ict_checkpoint, start)  # scores with dot
    run(["realm-train", wiki_corpus, *ICT_SHORT, "--retriever-init", str(start),
         "--save-dir", str(tmp_path / "ck")], cwd=tmp_path)
    start.unlink()
    corpus = BlockCorpus(wiki_corpus)
    checkpoint = str(tmp_path / "ck" / "checkpoint_last.pt")
    assert doc_embedder_from_checkpoint(checkpoint, corpus).info["score"] == "dot"
    cosine = doc_embedder_from_checkpoint(checkpoint, corpus, score="cosine")
    assert cosine.info["score"] == "cosine" and cosine.embedder.norm == 1.0
