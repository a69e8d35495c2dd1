"""Where retrieval searches (realm_fairseq.retrieval.placement, --retrieval-devices): an index version read on
the CPU is memory-mapped (the ranks of a node share one copy), on GPUs it is searched there with the same
results, and the refreshing retriever of pre-training gives the same candidates whichever search it holds."""
import numpy as np
import pytest
import torch

from realm_fairseq.retrieval import placement
from realm_fairseq.retrieval.mips import MipsIndex
from realm_fairseq.retrieval.retriever import Retriever
from realm_fairseq.retrieval.torch_search import TorchMipsSearch
from realm_fairseq.retrieval.versions import IndexStore

GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")


def rss_anon() -> int:
    """Bytes of this process's private (anonymous) resident memory."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    """An INDEX with one version of 200,000 x 64 embeddings (the default flat16: a 26 MB faiss file), and
    queries."""
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((200_000, 64), dtype=np.float32).astype(np.float16)
    root = str(tmp_path_factory.mktemp("index"))
    IndexStore(root).commit(embeddings, "checksum", {"kind": "test", "update": 0})
    return root, rng.standard_normal((16, 64), dtype=np.float32)


def test_a_version_read_on_the_cpu_is_memory_mapped(version):
    root, queries = version
    before = rss_anon()
    index, manifest = IndexStore(root).load(devices="cpu")
    ids, _ = index.search(queries, 8)
    assert isinstance(index, MipsIndex) and ids.shape == (16, 8)
    # the 26 MB of vectors are file pages (shared by every process mapping the file), not private memory
    assert rss_anon() - before < 0.2 * manifest["count"] * manifest["dim"] * 2


def test_devices_resolve_to_this_process_or_fail_clearly():
    assert placement.resolve("auto", cpu=True) == "cpu"
    expected = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    assert placement.resolve("auto") == expected
    assert placement.beside("cpu") == "cpu" and placement.beside("cuda:1") == "cuda:1"
    with pytest.raises(ValueError, match="--retrieval-devices.*'gpu0' is not a device"):
        placement.resolve("gpu0")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="cpu or GPUs, not both"):
            placement.on_gpus("cpu,cuda:0")


@GPU
def test_a_version_searched_on_the_gpu_gives_the_cpu_results(version):
    root, queries = version
    cpu, _ = IndexStore(root).load(devices="cpu")
    gpu, _ = IndexStore(root).load(devices="cuda:0")
    exclude = np.arange(16)
    found, expected = gpu.search(torch.from_numpy(queries).cuda(), 8, exclude), cpu.search(queries, 8, exclude)
    np.testing.assert_array_equal(found[0], expected[0])
    np.testing.assert_allclose(found[1], expected[1], atol=1e-4)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda:0", marks=GPU)])
def test_pretraining_candidates_are_the_same_from_torch_search(version, device):
    root, queries = version
    store = IndexStore(root)
    faiss_index, _ = store.load(devices="cpu")
    torch_search = TorchMipsSearch.from_array(store.embeddings(), [device])
    sources = np.arange(100, 116)  # each query's own block, never retrieved (REALM section 3.4)
    queries = torch.from_numpy(queries).to(device)
    found = [Retriever(None, index, 8, True, devices=device).search(queries, 8, sources)[0]
             for index in (faiss_index, torch_search)]
    np.testing.assert_array_equal(found[0], found[1])
    assert not np.isin(sources[:, None], found[1]).any(axis=1).any()
