"""Exact MIPS in torch (realm_fairseq.retrieval.torch_search) against faiss flat: same ids and scores on
embeddings of real text (the hashed bag-of-words of tests/test_retrieval_index.py, stored float16 as an
index version stores them), with exclusion, ties, chunks, shards, sizes that do not fit, and bad input.
Every test runs on the CPU, and again on CUDA when a GPU is visible."""
import numpy as np
import pytest
import torch

from realm_fairseq.retrieval.mips import MipsIndex
from realm_fairseq.retrieval.torch_search import (
    IndexTooLargeError, TorchMipsSearch, check_fits, chunk_rows, parse_devices, shard_bounds,
)
from realm_fairseq.retrieval.versions import IndexStore
from test_retrieval_index import text_embeddings, wiki_passages

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
K = 10


def small_working(d, b, rows):
    """working_bytes giving chunks of ``rows`` rows for ``b`` queries of dimension ``d``."""
    return rows * 4 * (d + b)


@pytest.fixture(scope="module")
def text():
    """(embeddings (~20k, 128) float16, queries (300, 128) float32) of the shipped Wikipedia."""
    passages, queries = wiki_passages()
    picked = np.random.default_rng(0).choice(len(queries), 300, replace=False)
    return text_embeddings(passages).astype(np.float16), text_embeddings([queries[i] for i in picked])


@pytest.fixture(scope="module")
def text_flat(text):
    return MipsIndex.build(text[0], "flat")


def assert_same(found, expected, gap_tol=1e-5):
    """Equal ids wherever faiss's scores are not within ``gap_tol`` of a neighbour; scores close."""
    ids, scores = found
    ref_ids, ref_scores = expected
    assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == ref_ids.shape
    np.testing.assert_array_equal(ids == -1, ref_ids == -1)
    real = ref_ids >= 0
    np.testing.assert_allclose(scores[real], ref_scores[real], rtol=0, atol=1e-5)
    assert np.isneginf(scores[~real]).all()
    near = np.zeros(ref_ids.shape, dtype=bool)
    close = np.abs(np.diff(np.where(real, ref_scores, -1e9), axis=1)) < gap_tol  # (q, k - 1)
    near[:, 1:] |= close
    near[:, :-1] |= close
    differ = np.argwhere((ids != ref_ids) & ~near)
    assert len(differ) == 0, f"ids differ from faiss flat at (query, rank) {differ[:5].tolist()}"
    return int(((ids != ref_ids) & near).sum())


@pytest.mark.parametrize("device", DEVICES)
def test_equals_faiss_flat_on_text(text, text_flat, device, measured):
    emb, queries = text
    search = TorchMipsSearch.from_array(emb, [device], working_bytes=small_working(128, 300, 3000))  # 7 chunks
    swapped = assert_same(search.search(queries, K), text_flat.search(queries, K))
    measured(f"torch search on {device} vs faiss flat: {swapped} of {queries.size // 128 * K} ids swapped within "
             f"near-ties")
    # any query dtype and device; torch queries give the same answer
    q16 = torch.from_numpy(queries).to(device).half()
    assert_same(search.search(q16, K), text_flat.search(q16.float().cpu().numpy(), K))


@pytest.mark.parametrize("device", DEVICES)
def test_exclusion_equals_faiss(text, text_flat, device):
    emb, queries = text
    search = TorchMipsSearch.from_array(emb, [device, device])  # two shards on one device
    top = text_flat.search(queries, 3)[0]  # (q, 3)
    for exclude in (top[:, 0], np.where(np.arange(3) < 2, top, -1),  # (q,) and (q, m) with padding
                    [list(row[: i % 4]) for i, row in enumerate(top)]):  # ragged, some empty
        ids, scores = search.search(queries, K, exclude=exclude)
        assert_same((ids, scores), text_flat.search(queries, K, exclude=exclude))
        rows = [np.atleast_1d(r) for r in exclude]
        assert not any(set(i.tolist()) & set(r.tolist()) for i, r in zip(ids, rows)), "an excluded id came back"
        assert (ids >= 0).all()  # k results remain


@pytest.mark.parametrize("device", DEVICES)
def test_k_larger_than_n_and_everything_excluded(device):
    # float16 values, as an index version stores them (a GPU keeps float16 rows: float32 would be rounded)
    emb = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float16).astype(np.float32)
    queries = np.random.default_rng(2).standard_normal((3, 16)).astype(np.float32)
    flat = MipsIndex.build(emb, "flat")
    search = TorchMipsSearch.from_array(emb, [device])
    assert_same(search.search(queries, 8), flat.search(queries, 8))
    ids, scores = search.search(queries, 8, exclude=np.tile(np.arange(5), (3, 1)))
    assert (ids == -1).all() and np.isneginf(scores).all()
    ids, _ = search.search(queries, 2, exclude=[[0, 1, 2, 3], [], [4, -1]])
    assert ids[0].tolist() == [4, -1] and 4 not in ids[2]


@pytest.mark.parametrize("device", DEVICES)
def test_chunks_and_shards_give_the_same_answer(text, device):
    emb, queries = text
    emb = emb[:2000]
    whole = TorchMipsSearch.from_array(emb, [device]).search(queries, K, exclude=np.arange(300))
    for rows in (1, 7, 999, 1000, 1001):  # chunk boundaries inside and at shard edges
        for shards in (1, 2, 3):
            search = TorchMipsSearch.from_array(emb, [device] * shards,
                                                working_bytes=small_working(128, 300, rows))
            found = search.search(queries, K, exclude=np.arange(300))
            np.testing.assert_array_equal(found[0], whole[0])
            np.testing.assert_allclose(found[1], whole[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_ties_resolved_as_faiss_flat(device):
    """Duplicate blocks score bit-equal: faiss keeps the lowest ids of a tie at the k-th place and lists
    equal scores by descending id; so does torch, across chunks and shards."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((40, 16)).astype(np.float16)
    emb = np.ascontiguousarray(base[rng.integers(0, 40, size=3000)])  # each row ~75 times
    queries = rng.standard_normal((30, 16)).astype(np.float16).astype(np.float32)  # exact products
    flat = MipsIndex.build(emb, "flat")
    for k in (1, 7, 50):
        expected = flat.search(queries, k)
        for shards, rows in ((1, 10 ** 6), (2, 97), (3, 1)):
            search = TorchMipsSearch.from_array(emb, [device] * shards, working_bytes=small_working(16, 30, rows))
            ids, scores = search.search(queries, k)
            np.testing.assert_array_equal(ids, expected[0], err_msg=f"k={k}, {shards} shards, chunks of {rows}")
            np.testing.assert_allclose(scores, expected[1], rtol=0, atol=1e-5)  # summation order


def test_shards_and_cpu_view_without_copy(tmp_path):
    assert shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert parse_devices("cpu,cpu") == [torch.device("cpu")] * 2
    path = tmp_path / "emb.npy"
    np.save(path, np.random.default_rng(0).standard_normal((100, 8)).astype(np.float16))
    emb = np.load(path, mmap_mode="r")
    search = TorchMipsSearch.from_array(emb, ["cpu", "cpu"])
    assert search.shards[0].data_ptr() == emb.ctypes.data  # the page cache, shared by the node's ranks
    assert search.shards[1].data_ptr() == emb[50:].ctypes.data
    assert search.device_bytes() == [50 * 8 * 2] * 2 and search.ntotal == 100 and search.dim == 8


def test_from_store_searches_a_version(tmp_path, text, text_flat):
    emb, queries = text
    store = IndexStore(str(tmp_path / "index"))
    v1 = store.commit(emb[:500], "corpus-a", {"checkpoint": "x"})
    v2 = store.commit(emb, "corpus-a", {"checkpoint": "y"})
    search = TorchMipsSearch.from_store(store, devices="cpu")
    assert search.version == v2 and search.ntotal == len(emb)
    assert_same(search.search(queries, K), text_flat.search(queries, K))
    old = TorchMipsSearch.from_store(store, v1, devices="cpu,cpu")
    assert old.version == v1 and old.ntotal == 500
    with pytest.raises(FileNotFoundError, match="no such committed version"):
        TorchMipsSearch.from_store(store, 7)


def test_too_large_for_the_devices_names_sizes_and_flags():
    n, d = 13_353_718, 128
    gib = 1 << 30
    check_fits(n, d, [torch.device("cuda", 0)], [10 * gib])  # 3.2 GiB + 1 GiB working memory fits
    with pytest.raises(IndexTooLargeError) as e:
        check_fits(n, d, [torch.device("cuda", 0)], [3 * gib])
    message = str(e.value)
    assert "13,353,718 x 128 (3.18 GiB" in message and "cuda:0 4.18 GiB" in message and "cuda:0 3.00 GiB" in message
    assert "at least 2 such GPUs with --retrieval-devices cuda:0,cuda:1" in message
    assert "--retrieval-devices cpu" in message
    with pytest.raises(IndexTooLargeError, match="cuda:1 1.59 GiB.*free cuda:0 3.00 GiB, cuda:1 0.50 GiB"):
        check_fits(n, d, [torch.device("cuda", 0), torch.device("cuda", 1)], [3 * gib, gib // 2],
                   working_bytes=0)
    # checked before anything is copied, with the free memory given
    emb = np.zeros((1000, 8), dtype=np.float32)
    with pytest.raises(IndexTooLargeError, match=r"1,000 x 8 .*cpu 0.00 GiB .*--retrieval-devices cpu"):
        TorchMipsSearch.from_array(emb, "cpu,cpu", free_bytes=[15_999, 16_000], working_bytes=0)
    TorchMipsSearch.from_array(emb, "cpu,cpu", free_bytes=[16_000, 16_000], working_bytes=0)


def test_bad_input_is_refused():
    emb = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    search = TorchMipsSearch.from_array(emb)
    q = np.ones((2, 4), np.float32)
    for bad, match in ((np.ones((2, 5), np.float32), r"queries: expected shape \(q, 4\)"),
                       (np.ones(4, np.float32), r"queries: expected shape"),
                       (np.ones((2, 4), np.int64), "queries: expected floats"),
                       (np.full((2, 4), np.nan, np.float32), "not finite")):
        with pytest.raises(ValueError, match=match):
            search.search(bad, 3)
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k: expected a positive integer"):
            search.search(q, k)
    with pytest.raises(ValueError, match=r"exclude: expected one entry per query \(2\)"):
        search.search(q, 3, exclude=[1, 2, 3])
    with pytest.raises(ValueError, match="exclude: expected an integer array"):
        search.search(q, 3, exclude=np.ones(2, np.float32))
    with pytest.raises(ValueError, match="up to 7e\\+04, beyond float16's 65504.*--retrieval-precision fp32"):
        TorchMipsSearch.from_array(emb, precision="fp16").search(np.full((2, 4), 7e4, np.float32), 3)
    broken = emb.copy()
    broken[13, 2] = np.inf
    for bad, match in ((emb[0], "expected a 2-d numpy array"), (emb.astype(np.int32), "float16 or float32"),
                       (emb[:0], "at least one vector"), (broken, "row 13 is not finite")):
        with pytest.raises(ValueError, match=match):
            TorchMipsSearch.from_array(bad)
    broken16 = emb.astype(np.float16)
    broken16[15, 1] = np.nan  # in the second of two shards: the row is numbered in the whole
    with pytest.raises(ValueError, match="row 15 is not finite"):
        TorchMipsSearch.from_array(broken16, "cpu,cpu")
    with pytest.raises(ValueError, match="cannot be sharded over 3 devices"):
        TorchMipsSearch.from_array(emb[:2], "cpu,cpu,cpu")
    with pytest.raises(ValueError, match="--retrieval-devices: 'tpu' is not a device"):
        parse_devices("tpu")
    with pytest.raises(ValueError, match="precision"):
        TorchMipsSearch.from_array(emb, precision="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda:3 is not visible.*--retrieval-devices cpu"):
            parse_devices("cuda:3")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_gpu_fp16_and_load_in_chunks(text, text_flat):
    emb, queries = text
    search = TorchMipsSearch.from_array(emb, "cuda:0", load_rows=777)  # copied in 27 chunks
    assert search.shards[0].dtype == torch.float16 and search.shards[0].is_cuda
    assert_same(search.search(queries, K), text_flat.search(queries, K))
    fast = TorchMipsSearch.from_array(emb, "cuda:0", precision="fp16")
    ids, scores = fast.search(queries, K)
    ref_ids, ref_scores = text_flat.search(queries, K)
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=2e-3)  # float16 queries
    assert (ids[:, 0] == ref_ids[:, 0]).mean() > 0.97
    chunked = TorchMipsSearch.from_array(emb, "cuda:0", precision="fp16", working_bytes=4 * 300 * 999)
    np.testing.assert_array_equal(chunked.search(queries, K)[0], ids)  # chunks of 999 rows: the same top k


@pytest.mark.parametrize("b, d, upcast", [(8, 128, True), (8, 128, False), (64, 128, True), (1, 32, False)])
def test_a_chunk_is_the_longest_whose_scratch_fits_the_working_bytes(b, d, upcast):
    def scratch(rows):  # scores (b, rows) float32, and the rows' float32 copy when upcast
        return 4 * rows * (b + (d if upcast else 0))

    for working in (1 << 30, 123_457, 4 * (b + d)):
        rows = chunk_rows(b, d, upcast, working)
        assert scratch(rows) <= working < scratch(rows + 1)
    assert chunk_rows(8, 128, False, 1 << 30) > 13_353_718  # REALM's corpus is one chunk in fp16 on a GPU
