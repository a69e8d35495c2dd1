"""The MIPS index (exact and approximate search, exclusion) and index versions on disk.

"Embeddings of real text" have no neural encoder here: passages of the shipped Wikipedia articles become
hashed bag-of-words vectors (log tf, 2**14 buckets) projected to 128 dimensions by a fixed-seed Gaussian
matrix and L2-normalised. Queries are windows of the same articles that straddle two passages.
Run with ``-s`` to see the measured recalls and build times.
"""
import errno
import gzip
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zlib

import faiss
import numpy as np
import pytest
import torch

from realm_fairseq.retrieval.mips import DEFAULT_INDEX_TYPE, MipsIndex, default_nlist, resolve_options
from realm_fairseq.retrieval import versions
from realm_fairseq.retrieval.versions import IndexStore, shard_range

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIKI = os.path.join(ROOT, "examples", "realm", "data", "enwiki-sample-articles.jsonl.gz")
WINDOW = 24  # words a passage: ~20k passages from the 480k words of the shipped articles
BUCKETS = 1 << 14
DIM = 128
RECALL_K = 10
# minimum recall@10 against flat at the documented defaults
MIN_RECALL = {"ivf_flat": 0.9, "hnsw": 0.9, "sq8": 0.9, "ivf_pq": 0.7}


# ---------------------------------------------------------------- data
def wiki_passages():
    """(passages, queries): word windows of the articles; a query overlaps two consecutive passages."""
    passages, queries = [], []
    with gzip.open(WIKI, "rt", encoding="utf-8") as f:
        for line in f:
            words = re.findall(r"\w+", json.loads(line)["text"].lower())
            passages += [words[s : s + WINDOW] for s in range(0, len(words) - WINDOW + 1, WINDOW)]
            queries += [words[s : s + WINDOW] for s in range(WINDOW // 2, len(words) - WINDOW + 1, WINDOW)]
    return passages, queries


def text_embeddings(texts, seed=0):
    """Hashed bag of words, log(1 + tf), randomly projected to DIM and L2-normalised: (len(texts), DIM)."""
    rows, cols = [], []
    for i, words in enumerate(texts):
        rows += [i] * len(words)
        cols += [zlib.crc32(w.encode()) % BUCKETS for w in words]
    counts = torch.sparse_coo_tensor(torch.tensor([rows, cols]), torch.ones(len(rows)), (len(texts), BUCKETS),
                                     check_invariants=False).coalesce()  # sums repeated words: tf
    tf = torch.sparse_coo_tensor(counts.indices(), torch.log1p(counts.values()), counts.shape,
                                 check_invariants=False)  # (n, BUCKETS)
    gaussian = np.random.default_rng(seed).standard_normal((BUCKETS, DIM)).astype(np.float32)
    projection = torch.from_numpy(gaussian)  # (BUCKETS, DIM)
    emb = torch.sparse.mm(tf, projection)  # (n, DIM)
    return torch.nn.functional.normalize(emb, dim=1).numpy()


@pytest.fixture(scope="module")
def text_data():
    """(embeddings (~20k, 128) float32, queries (1000, 128) float32) of real text."""
    passages, queries = wiki_passages()
    rng = np.random.default_rng(0)
    picked = [queries[i] for i in rng.choice(len(queries), 1000, replace=False)]
    emb, q = text_embeddings(passages), text_embeddings(picked)
    assert 19000 <= len(emb) <= 22000, len(emb)
    return emb, q


@pytest.fixture(scope="module")
def text_flat(text_data):
    """The flat index over the text embeddings and its exact top 10 of every query."""
    emb, queries = text_data
    flat = MipsIndex.build(emb, "flat")
    return flat, flat.search(queries, RECALL_K)[0]


def random_unit(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall(found, truth):
    """Mean over queries of |found ∩ truth| / |truth|."""
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def assert_matches_brute_force(index, embeddings, queries, k, tol=1e-5):
    """Scores close to torch.topk of queries @ embeddings.T; ids equal wherever scores are not tied."""
    q, e = torch.from_numpy(np.asarray(queries, np.float32)), torch.from_numpy(embeddings.astype(np.float32))
    exact = q @ e.T  # (q, n)
    top = torch.topk(exact, k + 1, dim=1)  # one more, to see a tie at the k-th place
    ref_scores, ref_ids = top.values.numpy(), top.indices.numpy()
    ids, scores = index.search(queries, k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (len(queries), k)
    np.testing.assert_allclose(scores, ref_scores[:, :k], rtol=0, atol=1e-4)
    gaps = -np.diff(ref_scores, axis=1)  # (q, k): score j minus score j + 1
    gap_before = np.concatenate([np.full((len(gaps), 1), np.inf), gaps[:, : k - 1]], axis=1)  # (q, k)
    untied = (gaps[:, :k] > tol) & (gap_before > tol)
    assert untied.mean() > 0.9, "too many ties for the comparison to mean anything"
    mismatched = np.argwhere(untied & (ids != ref_ids[:, :k]))
    assert len(mismatched) == 0, f"ids differ from torch.topk at (query, rank) {mismatched[:5].tolist()}"
    assert (np.diff(scores, axis=1) <= 0).all(), "scores are not sorted descending"


# ---------------------------------------------------------------- exact search
def test_flat_equals_brute_force_on_random_embeddings():
    emb = random_unit(5000, 64, seed=1)
    queries = random_unit(300, 64, seed=2)
    index = MipsIndex.build(emb)
    assert (index.index_type, index.ntotal, index.dim) == ("flat", 5000, 64)
    assert_matches_brute_force(index, emb, queries, k=20)
    # float16 embeddings are indexed as their float32 values; torch queries of any float dtype work
    emb16 = emb.astype(np.float16)
    index16 = MipsIndex.build(emb16)
    assert_matches_brute_force(index16, emb16, queries, k=20)
    ids, scores = index16.search(torch.from_numpy(queries).to(torch.float16), 5)
    ref_ids, ref_scores = index16.search(torch.from_numpy(queries).half().float().numpy(), 5)
    np.testing.assert_array_equal(ids, ref_ids)
    # batching does not change results
    batched = index.search(queries, 7, batch_size=64)
    whole = index.search(queries, 7)
    np.testing.assert_array_equal(batched[1], whole[1])
    np.testing.assert_array_equal(batched[0], whole[0])


def test_flat_equals_brute_force_on_text_embeddings(text_data, text_flat):
    emb, queries = text_data
    assert_matches_brute_force(text_flat[0], emb, queries, k=RECALL_K)


def test_flat16_is_flat_over_float16_embeddings_in_half_the_bytes(text_data, tmp_path):
    """The default type of index versions: the top k of ``flat`` over the float16 embeddings a version
    stores (scores within float32 rounding), in 256 bytes a vector at d=128 instead of 512, read back
    memory-mapped, excluded ids honoured alike."""
    emb, queries = text_data
    emb16 = emb.astype(np.float16)
    flat, flat16 = MipsIndex.build(emb16, "flat"), MipsIndex.build(emb16, "flat16")
    assert flat16.index_type == DEFAULT_INDEX_TYPE == "flat16"
    assert_matches_brute_force(flat16, emb16, queries, k=RECALL_K)
    exclude = flat.search(queries, 1)[0]  # (q, 1): each query's best block, as a pre-training source block
    ids, scores = flat.search(queries, RECALL_K, exclude)  # (q, k) each
    gaps = -np.diff(scores, axis=1)  # (q, k - 1)
    untied = np.ones(ids.shape, dtype=bool)  # ids whose score is apart from their neighbours'
    untied[:, :-1] &= gaps > 1e-4
    untied[:, 1:] &= gaps > 1e-4
    assert untied.mean() > 0.9
    for index in (flat16, MipsIndex.load(_saved(flat16, tmp_path / "v.faiss"), "flat16")):
        ids16, scores16 = index.search(queries, RECALL_K, exclude)
        np.testing.assert_allclose(scores16, scores, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(ids16[untied], ids[untied])
        assert not (ids16 == exclude).any()
    # float16 rows become the codes by a copy: the index faiss itself encodes from them, to the byte
    encoded = faiss.IndexScalarQuantizer(emb16.shape[1], faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    encoded.add(emb16.astype(np.float32))
    assert bytes(faiss.serialize_index(encoded)) == bytes(faiss.serialize_index(flat16._cpu))
    big = random_unit(2000, 128, seed=5).astype(np.float16)
    sizes = {t: MipsIndex.build(big, t).bytes_per_vector for t in ("flat", "flat16")}
    assert 256 <= sizes["flat16"] < 257 and 512 <= sizes["flat"] < 513, sizes


def _saved(index, path) -> str:
    index.save(str(path))
    return str(path)


# ---------------------------------------------------------------- approximate search
@pytest.mark.parametrize("index_type", ["ivf_flat", "hnsw", "sq8", "ivf_pq"])
def test_approximate_recall_on_text_embeddings(index_type, text_data, text_flat, measured):
    emb, queries = text_data
    _, truth = text_flat
    start = time.perf_counter()
    index = MipsIndex.build(emb.astype(np.float16), index_type)
    built = time.perf_counter() - start
    start = time.perf_counter()
    ids, scores = index.search(queries, RECALL_K)
    searched = time.perf_counter() - start
    r = recall(ids, truth)
    measured(f"{index_type}: recall@{RECALL_K} {r:.3f} against flat over {index.ntotal} text embeddings, "
             f"options {index.options}, build {built:.2f} s, {len(queries) / searched:,.0f} queries/s, "
             f"{index.bytes_per_vector:.0f} bytes/vector")
    assert r >= MIN_RECALL[index_type], f"{index_type}: recall@{RECALL_K} {r:.3f} < {MIN_RECALL[index_type]}"
    assert (ids >= 0).all() and (np.diff(scores, axis=1) <= 0).all()


def test_default_options_are_resolved_and_checked():
    assert default_nlist(20000) == 20000 // 39  # 4 sqrt(n) = 566 would leave cells under 39 vectors
    assert default_nlist(1_000_000) == 4000
    assert default_nlist(10) == 1
    opts = resolve_options("ivf_pq", 100_000, 128)
    assert opts == {"nlist": 1265, "nprobe": 128, "train_size": 80960, "pq_m": 64, "pq_nbits": 8}
    assert resolve_options("hnsw", 10, 8) == {"hnsw_m": 32, "ef_construction": 80, "ef_search": 128}
    assert resolve_options("ivf_flat", 100, 8, nprobe=50)["nprobe"] == 2  # at most nlist
    with pytest.raises(ValueError, match="unknown index type 'ivfflat'"):
        resolve_options("ivfflat", 10, 8)
    with pytest.raises(ValueError, match="'nprobe' does not apply to index type 'flat'"):
        resolve_options("flat", 10, 8, nprobe=4)
    with pytest.raises(ValueError, match="pq_m=5 must divide the embedding dimension 128"):
        resolve_options("ivf_pq", 10000, 128, pq_m=5)
    with pytest.raises(ValueError, match="needs at least 256 vectors to train on; got 100"):
        MipsIndex.build(random_unit(100, 16, seed=0), "ivf_pq")
    with pytest.raises(ValueError, match="float16 or float32"):
        MipsIndex.build(np.zeros((4, 4), dtype=np.int32))
    bad = random_unit(10, 4, seed=0)
    bad[7, 2] = np.nan
    with pytest.raises(ValueError, match="row 7 is not finite"):
        MipsIndex.build(bad)
    for value in (np.nan, np.inf, -np.inf):  # float16 rows are copied, still checked (by their bits)
        bad16 = random_unit(10, 4, seed=0).astype(np.float16)
        bad16[7, 2] = value
        with pytest.raises(ValueError, match="row 7 is not finite"):
            MipsIndex.build(bad16, "flat16")
    extremes = np.array([[65504, -65504, 6e-8, -0.0]], np.float16)  # the largest, a subnormal, minus zero
    assert MipsIndex.build(extremes, "flat16").ntotal == 1


@pytest.mark.parametrize("index_type", ["ivf_flat", "hnsw", "sq8"])
def test_tiny_collections(index_type):
    emb = random_unit(20, 16, seed=3)  # ivf_flat: one cell, i.e. an exact scan
    queries = random_unit(5, 16, seed=4)
    index = MipsIndex.build(emb, index_type)
    if index_type != "sq8":  # sq8 scores quantized vectors: near ties may swap
        np.testing.assert_array_equal(index.search(queries, 5)[0], MipsIndex.build(emb).search(queries, 5)[0])
    ids, scores = index.search(queries, 25)  # more than exist: every vector, then padding
    assert all(sorted(row[:20].tolist()) == list(range(20)) for row in ids)
    assert (ids[:, 20:] == -1).all() and np.isneginf(scores[:, 20:]).all()


# ---------------------------------------------------------------- exclusion
def test_excluded_ids_never_appear_and_k_results_remain():
    emb = random_unit(2000, 32, seed=5)
    queries = random_unit(100, 32, seed=6)
    index = MipsIndex.build(emb)
    k = 10
    top = index.search(queries, k + 3)[0]  # (q, k + 3)
    cases = {
        "(q,) array": top[:, 0],  # REALM: the block the sentence came from, here its top hit
        "(q, m) array": top[:, [0, 2, 5]],
        "list of lists": [list(row[: i % 4]) for i, row in enumerate(top)],  # ragged, some empty
        "torch": torch.from_numpy(top[:, [1, 3]]),
    }
    for name, exclude in cases.items():
        ids, scores = index.search(queries, k, exclude=exclude)
        rows = [np.atleast_1d(np.asarray(r)) for r in (exclude.numpy() if name == "torch" else exclude)]
        for i, excluded in enumerate(rows):
            assert not set(ids[i].tolist()) & set(excluded.tolist()), f"{name}: query {i} got an excluded id"
            expected = [b for b in top[i] if b not in set(excluded.tolist())][:k]  # exact: next best in order
            assert ids[i].tolist() == expected, name
        assert (ids >= 0).all() and np.isfinite(scores).all(), f"{name}: fewer than k results"
    # approximate indexes over-fetch too
    ivf = MipsIndex.build(emb, "ivf_flat", nprobe=4)
    ids = ivf.search(queries, k, exclude=top[:, :5])[0]
    assert (ids >= 0).all()
    assert not (ids[:, :, None] == top[:, None, :5]).any()
    # padding only when fewer than k blocks are left
    small = MipsIndex.build(emb[:4])
    ids, scores = small.search(queries[:2], 3, exclude=[[0, 1], [2]])
    assert sorted(ids[0].tolist()) == [-1, 2, 3] and sorted(ids[1].tolist()) == [0, 1, 3]
    assert np.isneginf(scores[0, 2]) and ids[0, 2] == -1
    # ids out of range exclude nothing (and not some id of another query)
    far = index.ntotal + 2 + np.roll(top[:, :2], -1, axis=0)  # (q, 2): the next query's best, shifted
    np.testing.assert_array_equal(index.search(queries, k, exclude=far)[0], top[:, :k])
    with pytest.raises(ValueError, match="one entry per query"):
        index.search(queries, k, exclude=top[:5, 0])


# ---------------------------------------------------------------- save / load / GPU
@pytest.mark.parametrize("index_type", ["flat16", "flat", "ivf_flat", "ivf_pq", "hnsw", "sq8"])
def test_save_load_round_trip(index_type, tmp_path):
    emb = random_unit(3000, 32, seed=7)
    queries = random_unit(50, 32, seed=8)
    index = MipsIndex.build(emb, index_type)
    path = str(tmp_path / "index.faiss")
    index.save(path)
    loaded = MipsIndex.load(path, index_type, **index.options)
    assert loaded.options == index.options and loaded.ntotal == 3000 and loaded.dim == 32
    for a, b in zip(index.search(queries, 10), loaded.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    assert abs(loaded.bytes_per_vector - os.path.getsize(path) / 3000) < 1e-9
    assert os.listdir(tmp_path) == ["index.faiss"]  # no temporary file left
    other = "hnsw" if index_type != "hnsw" else "flat"
    with pytest.raises(ValueError, match=f"holds a {index_type} index, expected {other}"):
        MipsIndex.load(path, other)


def test_bytes_per_vector_orders_the_types():
    emb = random_unit(5000, 128, seed=9)
    size = {t: MipsIndex.build(emb, t).bytes_per_vector for t in ["flat", "flat16", "hnsw", "sq8"]}
    size["ivf_pq"] = MipsIndex.build(emb, "ivf_pq", pq_m=16).bytes_per_vector
    assert 512 <= size["flat"] < 513 and 256 <= size["flat16"] < 257 and 128 <= size["sq8"] < 130
    assert size["ivf_pq"] < size["sq8"] < size["flat16"] < size["flat"] < size["hnsw"], size


def test_load_errors_name_the_file(tmp_path):
    missing = str(tmp_path / "nope.faiss")
    with pytest.raises(FileNotFoundError, match="nope.faiss"):
        MipsIndex.load(missing, "flat")
    junk = tmp_path / "junk.faiss"
    junk.write_bytes(b"not an index at all")
    with pytest.raises(ValueError, match="junk.faiss: not a readable faiss index"):
        MipsIndex.load(str(junk), "flat")
    index = MipsIndex.build(random_unit(3000, 16, seed=0), "ivf_flat")
    index.save(str(tmp_path / "ivf.faiss"))
    with pytest.raises(ValueError, match=r"built with nlist=\d+, expected nlist=7"):
        MipsIndex.load(str(tmp_path / "ivf.faiss"), "ivf_flat", nlist=7)
    assert MipsIndex.load(str(tmp_path / "ivf.faiss"), "ivf_flat", nprobe=3).options["nprobe"] == 3


def test_to_gpu_without_gpu_stays_on_cpu():
    emb = random_unit(500, 16, seed=10)
    index = MipsIndex.build(emb)
    before = index.search(emb[:5], 3)
    assert index.to_gpu() is index and index.devices == []
    np.testing.assert_array_equal(index.search(emb[:5], 3)[0], before[0])


# ---------------------------------------------------------------- versions
class FakeCorpus:
    def __init__(self, checksum, count):
        self.checksum, self.count = checksum, count

    def __len__(self):
        return self.count


def test_commit_list_and_load_versions(tmp_path):
    store = IndexStore(str(tmp_path / "INDEX"))
    assert store.versions() == [] and store.latest() is None
    with pytest.raises(FileNotFoundError, match="no committed index version.*realm-build-index"):
        store.load()
    emb1, emb2 = random_unit(300, 16, seed=11), random_unit(300, 16, seed=12)
    assert store.commit(emb1, "sum-a", {"checkpoint": "ckpt/a.pt", "update": 100}) == 1
    assert store.commit(emb2, "sum-a", {"checkpoint": "ckpt/b.pt", "update": 200}, "ivf_flat", nprobe=2) == 2
    assert store.versions() == [1, 2] and store.latest() == 2
    assert sorted(os.listdir(store.root)) == [".lock", "v1", "v2"]
    assert sorted(os.listdir(store.version_dir(2))) == ["embeddings.npy", "index.faiss", "manifest.json"]
    # a flat16 version (the default) holds its embeddings once: as its index's codes
    assert sorted(os.listdir(store.version_dir(1))) == ["index.faiss", "manifest.json"]

    index, manifest = store.load()  # the newest
    assert manifest["version"] == 2 and manifest["encoder"] == {"checkpoint": "ckpt/b.pt", "update": 200}
    assert manifest["index_type"] == "ivf_flat" and manifest["index_options"] == index.options
    assert manifest["index_options"]["nprobe"] == 2 and (manifest["count"], manifest["dim"]) == (300, 16)
    assert manifest["corpus_checksum"] == "sum-a" and "T" in manifest["created"]
    assert index.index_type == "ivf_flat" and index.options["nprobe"] == 2
    np.testing.assert_array_equal(index.search(emb2[:3], 1)[0][:, 0], [0, 1, 2])

    index1, manifest1 = store.load(1, corpus=FakeCorpus("sum-a", 300))
    assert manifest1["version"] == 1 and index1.index_type == DEFAULT_INDEX_TYPE
    np.testing.assert_array_equal(index1.search(emb1[:3], 1)[0][:, 0], [0, 1, 2])
    for v, emb in ((1, emb1), (2, emb2)):
        stored = store.embeddings(v)  # v1: a view of index.faiss's last bytes; v2: embeddings.npy
        assert stored.dtype == np.float16 and isinstance(stored, np.memmap) and stored.shape == (300, 16)
        assert os.path.basename(stored.filename) == ("index.faiss" if v == 1 else "embeddings.npy")
        np.testing.assert_array_equal(stored, emb.astype(np.float16))
    with pytest.raises(FileNotFoundError, match=r"v7: no such committed version \(found v1, v2\)"):
        store.load(7)


def test_unfinished_tmp_version_is_ignored_and_replaced(tmp_path):
    store = IndexStore(str(tmp_path / "INDEX"))
    store.commit(random_unit(50, 8, seed=0), "sum", {"update": 1})
    tmp = os.path.join(store.root, "v2.tmp")  # a killed build: partial files, no manifest
    os.makedirs(tmp)
    with open(os.path.join(tmp, "embeddings.npy"), "wb") as f:
        f.write(b"\x93NUMPY partial")
    assert store.versions() == [1]
    assert store.load()[1]["version"] == 1
    assert store.commit(random_unit(60, 8, seed=1), "sum", {"update": 2}) == 2
    assert not os.path.exists(tmp) and store.versions() == [1, 2] and store.load()[1]["count"] == 60


def test_mismatched_corpus_is_refused(tmp_path):
    store = IndexStore(str(tmp_path / "INDEX"))
    store.commit(random_unit(40, 8, seed=0), "sum-a", {})
    with pytest.raises(ValueError, match=r"v1: manifest.json field corpus_checksum is 'sum-a', but the "
                                         r"corpus has 'sum-b'"):
        store.load(corpus=FakeCorpus("sum-b", 40))
    with pytest.raises(ValueError, match=r"v1: manifest.json field count is 40, but the corpus has 41"):
        store.load(corpus=FakeCorpus("sum-a", 41))


def test_index_of_a_real_corpus(tmp_path, wiki_corpus):
    from realm_fairseq.data import BlockCorpus

    corpus = BlockCorpus(wiki_corpus)
    store = IndexStore(str(tmp_path / "INDEX"))
    store.commit(random_unit(len(corpus), 16, seed=0), corpus.checksum, {"checkpoint": None, "update": 0})
    assert store.load(corpus=corpus)[0].ntotal == len(corpus)
    store.commit(random_unit(len(corpus) - 1, 16, seed=0), corpus.checksum, {})
    expected = f"field count is {len(corpus) - 1}, but the corpus has {len(corpus)}"
    with pytest.raises(ValueError, match=expected):
        store.load(corpus=corpus)


def test_damaged_versions_give_clear_errors(tmp_path):
    store = IndexStore(str(tmp_path / "INDEX"))
    store.commit(random_unit(500, 16, seed=0), "sum", {}, "flat")  # a type that keeps embeddings.npy
    vdir = store.version_dir(1)
    manifest_path = os.path.join(vdir, "manifest.json")
    good = open(manifest_path).read()

    with open(manifest_path, "w") as f:
        f.write(good[: len(good) // 2])  # truncated JSON
    with pytest.raises(ValueError, match=r"v1/manifest.json: not valid JSON"):
        store.load()
    manifest = json.loads(good)
    del manifest["dim"]
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    with pytest.raises(ValueError, match=r"v1/manifest.json: missing field\(s\) dim"):
        store.load()
    os.remove(manifest_path)
    with pytest.raises(FileNotFoundError, match=r"v1/manifest.json: missing"):
        store.load()
    with open(manifest_path, "w") as f:
        f.write(good)

    embeddings_path = os.path.join(vdir, "embeddings.npy")
    data = open(embeddings_path, "rb").read()
    with open(embeddings_path, "wb") as f:
        f.write(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match=r"v1/embeddings.npy: not a readable .npy file"):
        store.load()
    np.save(embeddings_path, np.zeros((499, 16), np.float16))  # wrong shape
    with pytest.raises(ValueError, match=r"v1/embeddings.npy: holds float16 \(499, 16\), expected float16 "
                                         r"\(500, 16\)"):
        store.embeddings(1)
    os.remove(embeddings_path)
    with pytest.raises(FileNotFoundError, match=r"v1/embeddings.npy: missing"):
        store.load()
    np.save(embeddings_path, np.zeros((500, 16), np.float16))  # other values, same shape and size
    with pytest.raises(ValueError, match=r"v1/embeddings.npy: its sha256 is not the one \S+/v1/manifest.json "
                                         r"records; the file was replaced or damaged after the build"):
        store.load()
    with open(embeddings_path, "wb") as f:
        f.write(data)

    index_path = os.path.join(vdir, "index.faiss")
    with open(index_path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match=r"v1/index.faiss: 100 bytes, but \S+/v1/manifest.json records \d+"):
        store.load()
    legacy = {k: v for k, v in json.loads(good).items() if k != "files"}  # built before checksums
    with open(manifest_path, "w") as f:
        json.dump(legacy, f)
    with pytest.raises(ValueError, match=r"v1/index.faiss: not a readable faiss index"):
        store.load()
    os.remove(index_path)
    with pytest.raises(FileNotFoundError, match=r"v1/index.faiss"):
        store.load()


def test_damaged_flat16_versions_give_clear_errors(tmp_path):
    """A flat16 version's one file holds the index and the embeddings: damage to it is named as for any
    version, and without checksums (a legacy manifest) a file not ending in the rows is refused."""
    store = IndexStore(str(tmp_path / "INDEX"))
    store.commit(random_unit(500, 16, seed=0), "sum", {})
    vdir = store.version_dir(1)
    manifest_path, index_path = os.path.join(vdir, "manifest.json"), os.path.join(vdir, "index.faiss")
    good = json.loads(open(manifest_path).read())
    assert good["embeddings_file"] == "index.faiss" and set(good["files"]) == {"index.faiss"}
    data = open(index_path, "rb").read()

    def write_manifest(**changes):
        with open(manifest_path, "w") as f:
            json.dump({k: v for k, v in {**good, **changes}.items() if v is not None}, f)

    write_manifest(embeddings_file="rows.npy")
    with pytest.raises(ValueError, match=r"v1/manifest.json: field embeddings_file is 'rows.npy', expected "
                                         r"'embeddings.npy' or, for index types flat16, 'index.faiss'"):
        store.load()
    write_manifest(index_type="flat", index_options={})
    with pytest.raises(ValueError, match=r"field embeddings_file is 'index.faiss', expected 'embeddings.npy'"):
        store.embeddings(1)
    write_manifest()
    with open(index_path, "wb") as f:
        f.write(data[:-2] + b"\0\0")  # the last row changed, same size
    for read in (store.load, store.embeddings):
        with pytest.raises(ValueError, match=r"v1/index.faiss: its sha256 is not the one \S+/v1/manifest.json "
                                             r"records; the file was replaced or damaged after the build"):
            read()
    os.remove(index_path)
    with pytest.raises(FileNotFoundError, match=r"v1/index.faiss: missing \(the index and the block embeddings"):
        store.load()
    write_manifest(files=None)  # built before checksums: the file's end is still checked
    with open(index_path, "wb") as f:
        f.write(data[:-32])  # a row short
    with pytest.raises(ValueError, match=r"v1/index.faiss: does not end with 500 x 16 float16 rows"):
        store.embeddings(1)
    with open(index_path, "wb") as f:
        f.write(data)
    np.testing.assert_array_equal(store.embeddings(1), random_unit(500, 16, seed=0).astype(np.float16))


def test_shards_write_check_and_merge(tmp_path):
    assert [shard_range(10, i, 3) for i in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert [shard_range(2, i, 4) for i in range(4)] == [(0, 0), (0, 1), (1, 1), (1, 2)]
    for count, n in [(1000, 7), (5, 5), (13, 4)]:
        ranges = [shard_range(count, i, n) for i in range(n)]
        assert ranges[0][0] == 0 and ranges[-1][1] == count
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert max(e - s for s, e in ranges) - min(e - s for s, e in ranges) <= 1
    with pytest.raises(ValueError):
        shard_range(10, 3, 3)

    store = IndexStore(str(tmp_path / "INDEX"))
    emb = random_unit(1000, 16, seed=13)
    parts = [emb[slice(*shard_range(len(emb), i, 3))] for i in range(3)]
    store.write_shard("enc-2000", 0, 3, parts[0])
    store.write_shard("enc-2000", 2, 3, parts[2])
    assert [store.has_shard("enc-2000", i, 3) for i in range(3)] == [True, False, True]
    assert not store.has_shard("enc-2000", 0, 4)
    with pytest.raises(FileNotFoundError, match=r"missing shard\(s\) 1 of 3"):
        store.merge_shards("enc-2000", 3, "sum", {"update": 2000})
    store.write_shard("enc-2000", 1, 3, parts[0][:-1])  # e.g. embedded for another split of the corpus
    with pytest.raises(ValueError, match=r"do not split a corpus of 1000 blocks into 3: shard 1 has 332 rows, "
                                         r"expected 333 \(blocks 333..665\); remove those shard files"):
        store.merge_shards("enc-2000", 3, "sum", {"update": 2000}, count=1000)
    store.write_shard("enc-2000", 1, 3, parts[1])
    assert store.versions() == []
    shard_files = os.listdir(store.shard_dir("enc-2000"))
    assert sorted(shard_files) == ["shard-0-of-3.npy", "shard-1-of-3.npy", "shard-2-of-3.npy"]

    version = store.merge_shards("enc-2000", 3, "sum", {"update": 2000}, "hnsw", count=1000)
    assert version == 1 and store.load()[1]["index_type"] == "hnsw"
    np.testing.assert_array_equal(store.embeddings(1), np.concatenate(parts).astype(np.float16))
    assert not os.path.exists(os.path.join(store.root, "shards"))
    with pytest.raises(ValueError, match="shard tag"):
        store.write_shard("../x", 0, 1, parts[0])



@pytest.mark.parametrize("index_type", ["flat16", "flat", "sq8", "ivf_flat"])
def test_a_version_of_parts_is_the_version_of_their_concatenation(tmp_path, index_type):
    """A merge commits the shards as parts, never concatenated: its files are byte for byte those of one
    commit of all the rows (an empty part included), and embeddings.npy is what np.save writes."""
    emb = random_unit(3000, 16, seed=5).astype(np.float16)
    whole, split = IndexStore(str(tmp_path / "whole")), IndexStore(str(tmp_path / "split"))
    whole.commit(emb, "sum", {}, index_type)
    split.commit([emb[:1000], emb[1000:1000], emb[1000:]], "sum", {}, index_type)
    a, b = whole.manifest(1), split.manifest(1)
    assert a["files"] == b["files"] and a["index_options"] == b["index_options"] and b["count"] == 3000
    if index_type == "flat":  # a type that keeps embeddings.npy beside the index
        expected = io.BytesIO()
        np.save(expected, emb)
        with open(os.path.join(split.version_dir(1), "embeddings.npy"), "rb") as f:
            assert f.read() == expected.getvalue()
    with pytest.raises(ValueError, match=r"part 1 is float32 \(5, 16\).*part 0: float16"):
        MipsIndex.build([emb[:5], emb[:5].astype(np.float32)])
    with pytest.raises(ValueError, match="every part is empty"):
        MipsIndex.build([emb[:0], emb[:0]])


def test_merging_shards_holds_no_concatenated_copy(tmp_path):
    """At 13.35M blocks a concatenation is 3.4 GB beside the index's own copy: the merge reads the
    memory-mapped shards part by part instead (numpy's allocations, which tracemalloc sees, stay a fraction
    of the embeddings; the index's copy is faiss's)."""
    store = IndexStore(str(tmp_path / "INDEX"))
    emb = np.random.default_rng(0).standard_normal((200_000, 64), dtype=np.float32).astype(np.float16)
    for i in range(4):
        store.write_shard("t", i, 4, emb[slice(*shard_range(len(emb), i, 4))])
    tracemalloc.start()
    try:
        store.merge_shards("t", 4, "sum", {})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < emb.nbytes / 2, f"the merge allocated {peak / 1e6:.1f} MB for {emb.nbytes / 1e6:.1f} MB of rows"
    np.testing.assert_array_equal(store.embeddings(1), emb)

def test_prune_keeps_newest_and_in_use(tmp_path):
    store = IndexStore(str(tmp_path / "INDEX"))
    for i in range(5):
        store.commit(random_unit(20, 4, seed=i), "sum", {"update": i})
    assert store.prune(keep=2, in_use=2) == [1, 3]
    assert store.versions() == [2, 4, 5]
    assert store.prune(keep=1, in_use=[4]) == [2]
    assert store.versions() == [4, 5] and sorted(os.listdir(store.root)) == [".lock", "v4", "v5"]
    assert store.prune(keep=3) == []
    assert store.load()[1]["version"] == 5
    assert store.commit(random_unit(20, 4, seed=9), "sum", {}) == 6


# ---------------------------------------------------------------- killed builds
def test_failure_while_writing_leaves_no_version(tmp_path, monkeypatch):
    store = IndexStore(str(tmp_path / "INDEX"))
    store.commit(random_unit(30, 8, seed=0), "sum", {})

    def fail(self, f):
        raise OSError("disk full")

    monkeypatch.setattr(MipsIndex, "write_to", fail)
    with pytest.raises(OSError, match="disk full"):
        store.commit(random_unit(30, 8, seed=1), "sum", {})
    assert store.versions() == [1] and sorted(os.listdir(store.root)) == [".lock", "v1"]
    monkeypatch.undo()

    def full_after_a_megabyte(self, data):  # the disk fills while faiss hands over the index
        if self.size + len(data) > 1 << 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.size += len(data)
        return self.f.write(data)

    monkeypatch.setattr(versions._HashingFile, "write", full_after_a_megabyte)
    with pytest.raises(OSError, match=r"No space left on device: '\S+/INDEX/\.tmp-\w+/index\.faiss'"):
        store.commit(random_unit(20000, 64, seed=1), "sum", {})  # 2.5 MB
    assert store.versions() == [1] and sorted(os.listdir(store.root)) == [".lock", "v1"]


KILLED_BUILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from realm_fairseq.retrieval.mips import MipsIndex
    from realm_fairseq.retrieval.versions import IndexStore

    write_to = MipsIndex.write_to

    def write_then_stall(self, f):  # the parent kills us here, with the index (and the embeddings) written
        write_to(self, f)
        print("WRITING", flush=True)
        time.sleep(120)

    MipsIndex.write_to = write_then_stall
    embeddings = np.random.default_rng(0).standard_normal((200000, 128)).astype(np.float16)  # 51 MB
    IndexStore(sys.argv[1]).commit(embeddings, "sum", {"update": 2})
""")


def test_killed_build_leaves_no_version(tmp_path):
    store = IndexStore(str(tmp_path / "INDEX"))
    store.commit(random_unit(30, 8, seed=0), "sum", {"update": 1})
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, store.root], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "WRITING", f"the build did not get to writing: {proc.stderr.read()[-3000:]}"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lock, partial, v1 = sorted(os.listdir(store.root))  # the partial build, beside v1
    assert (lock, v1) == (".lock", "v1") and partial.startswith(".tmp-")
    assert os.path.getsize(os.path.join(store.root, partial, "index.faiss")) > 50_000_000
    assert store.versions() == [1]
    assert store.load()[1]["encoder"] == {"update": 1}
    assert store.commit(random_unit(30, 8, seed=1), "sum", {"update": 3}) == 2
    assert sorted(os.listdir(store.root)) == [".lock", "v1", "v2"]
