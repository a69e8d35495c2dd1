"""Faults around an INDEX (realm_fairseq/retrieval/versions.py, realm-build-index): writers committing into
one INDEX at once each commit a whole, distinct version and never remove one another's version in
progress; checksums catch a file replaced after the build; realm-build-index checks its options and
output before it embeds anything."""
import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import types

import faiss
import numpy as np
import pytest
import torch

from realm_fairseq.cli.build_index import cli_main as build_index_main
from realm_fairseq.data import BlockCorpus
from realm_fairseq.models.config import RealmConfig
from realm_fairseq.models.embedder import Embedder
from realm_fairseq.models.realm import realm_tiny
from realm_fairseq.indexing.embed import embed_blocks
from realm_fairseq.indexing.scheduler import write_snapshot
from realm_fairseq.models.loading import doc_embedder_from_checkpoint, snapshot_state
from realm_fairseq.retrieval.mips import MipsIndex
from realm_fairseq.retrieval.versions import IndexStore

from conftest import BIN, ROOT
from test_refresh import ONE_THREAD, small_corpus  # noqa: F401 - a fixture

WRITERS = 3
ROWS, DIM = 100_000, 64  # 12.8 MB of float16 a version: long enough writes for the writers to overlap

CONCURRENT_COMMIT = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from realm_fairseq.retrieval.versions import IndexStore

    index, writer, start = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    embeddings = np.full((%d, %d), writer, dtype=np.float16)
    while not os.path.exists(start):  # every writer is ready: start together
        time.sleep(0.001)
    print(IndexStore(index).commit(embeddings, "sum", {"writer": writer}))
""" % (ROWS, DIM))


def stored_vectors(store: IndexStore, version: int) -> np.ndarray:
    """The vectors in the faiss file of ``version``, as faiss holds them."""
    index = faiss.read_index(os.path.join(store.version_dir(version), "index.faiss"))
    return index.reconstruct_n(0, index.ntotal)


def test_writers_at_once_each_commit_a_whole_distinct_version(tmp_path):
    store = IndexStore(str(tmp_path / "INDEX"))
    start = tmp_path / "start"
    writers = [subprocess.Popen([sys.executable, "-c", CONCURRENT_COMMIT, store.root, str(w), str(start)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
               for w in range(1, WRITERS + 1)]
    start.touch()
    outcomes = [w.communicate(timeout=120) for w in writers]
    assert all(w.returncode == 0 for w in writers), [err[-2000:] for _, err in outcomes]
    versions = sorted(int(out) for out, _ in outcomes)
    assert versions == store.versions() == list(range(1, WRITERS + 1))
    for version in versions:
        index, manifest = store.load(version)  # checksums, shapes and counts agree
        writer = manifest["encoder"]["writer"]
        assert np.all(store.embeddings(version) == writer) and np.all(stored_vectors(store, version) == writer)
    assert sorted(os.listdir(store.root)) == [".lock", *(f"v{v}" for v in versions)]


STALLED_COMMIT = textwrap.dedent("""
    import sys
    import numpy as np
    from realm_fairseq.retrieval.mips import MipsIndex
    from realm_fairseq.retrieval.versions import IndexStore

    write_to = MipsIndex.write_to

    def write_then_wait(self, f):  # the parent commits (or kills us) while we are here
        write_to(self, f)
        print("WRITING", flush=True)
        sys.stdin.readline()

    MipsIndex.write_to = write_then_wait
    print(IndexStore(sys.argv[1]).commit(np.full((50, 8), 7, dtype=np.float16), "sum", {"writer": 7}))
""")


def stalled_writer(index: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", STALLED_COMMIT, index], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    assert line.strip() == "WRITING", f"the writer did not get to writing: {proc.stderr.read()[-3000:]}"
    return proc


def temporary_dirs(store: IndexStore):
    return [n for n in os.listdir(store.root) if n.startswith(".tmp-")]


def test_a_version_in_progress_is_never_removed_but_an_abandoned_one_is(tmp_path):
    store = IndexStore(str(tmp_path / "INDEX"))
    store.commit(np.ones((50, 8), np.float16), "sum", {"writer": 1})
    slow = stalled_writer(store.root)
    (in_progress,) = temporary_dirs(store)
    assert store.commit(np.full((50, 8), 2, np.float16), "sum", {"writer": 2}) == 2
    assert temporary_dirs(store) == [in_progress]  # the other writer's, still being written
    out, err = slow.communicate("go\n", timeout=60)
    assert slow.returncode == 0, err[-3000:]
    assert int(out.split()[-1]) == 3 and store.manifest(3)["encoder"] == {"writer": 7}
    assert np.all(store.embeddings(3) == 7) and temporary_dirs(store) == []

    killed = stalled_writer(store.root)
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=30)
    assert len(temporary_dirs(store)) == 1 and store.versions() == [1, 2, 3]
    assert store.commit(np.full((50, 8), 4, np.float16), "sum", {"writer": 4}) == 4
    assert temporary_dirs(store) == []  # its writer is gone: removed


@pytest.mark.parametrize("index_type, files", [("flat16", ["index.faiss"]), ("flat", ["embeddings.npy", "index.faiss"])])
def test_a_replaced_file_is_refused_with_its_name(tmp_path, index_type, files):
    """A file replaced by one of the same size is refused by loading the version and by reading its
    embeddings (for flat16, the index file holds them)."""
    store = IndexStore(str(tmp_path / "INDEX"))
    store.commit(np.ones((50, 8), np.float16), "sum", {}, index_type)
    assert sorted(store.manifest()["files"]) == files
    other = np.full((50, 8), 3, np.float16)
    for name in files:
        path = os.path.join(store.version_dir(1), name)
        saved = open(path, "rb").read()
        if name == "index.faiss":
            MipsIndex.build(other, index_type).save(path)
        else:
            np.save(path, other)
        assert os.path.getsize(path) == len(saved)
        reads = [IndexStore(store.root).load]
        if name == store.manifest()["embeddings_file"]:
            reads.append(lambda: IndexStore(store.root).embeddings(1))
        for read in reads:
            with pytest.raises(ValueError, match=rf"v1/{name}: its sha256 is not the one .*v1/manifest.json "
                                                 r"records; the file was replaced or damaged after the build"):
                read()
        with open(path, "wb") as f:
            f.write(saved)
    np.testing.assert_array_equal(IndexStore(store.root).embeddings(1), np.ones((50, 8), np.float16))


def test_a_failed_build_removes_its_own_shards_only(tmp_path):
    store = IndexStore(str(tmp_path / "INDEX"))
    for tag, source in (("a", "/runs/u4/snapshot.pt"), ("b", "/elsewhere/ict.pt"), ("c", "")):
        store.write_shard(tag, 0, 1, np.ones((5, 8), np.float32), source=source)
    store.remove_shards_of("/runs/u4/snapshot.pt")
    assert [store.has_shard(tag, 0, 1) for tag in "abc"] == [False, True, True]
    assert store.merge_shards("b", 1, "sum", {}) == 1 and store.has_shard("c", 0, 1)


@pytest.mark.parametrize("field, value, expected", [
    ("index_options", {"out": "/elsewhere"}, r"field index_type/index_options: unknown index option 'out'"),
    ("index_options", {"nlist": 4}, r"field index_type/index_options: option 'nlist' does not apply to index "
                                    r"type 'flat16'"),
    ("index_options", ["nlist"], r"field index_options is \['nlist'\], expected an object of index options"),
    ("index_type", "ivf_sq", r"field index_type/index_options: unknown index type 'ivf_sq'"),
    ("files", {"index.faiss": {"bytes": 1}}, r"field files.index.faiss is \{'bytes': 1\}, expected"),
    ("embeddings_file", "embeddings.npy", r"field files.embeddings.npy is None, expected"),
])
def test_manifest_fields_are_checked_against_the_known_names(tmp_path, field, value, expected):
    store = IndexStore(str(tmp_path / "INDEX"))
    store.commit(np.ones((50, 8), np.float16), "sum", {})
    path = os.path.join(store.version_dir(1), "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    manifest[field] = value
    with open(path, "w") as f:
        json.dump(manifest, f)
    with pytest.raises(ValueError, match=rf"{path}: {expected}"):
        store.load()


# ---------------------------------------------------------------------------------------------- realm-build-index
def tiny_checkpoint(corpus: BlockCorpus, path: str, seed: int) -> str:
    """A refresh snapshot (the document embedder of a fresh realm_tiny model of ``seed``), as
    realm-build-index --checkpoint reads it."""
    args = argparse.Namespace()
    realm_tiny(args)
    torch.manual_seed(seed)
    model = types.SimpleNamespace(cfg=args, doc_embedder=Embedder(RealmConfig(**vars(args)), corpus.dictionary,
                                                                   "cls", 32))
    write_snapshot(snapshot_state(model, seed), path)
    return path


@pytest.fixture(scope="module")
def two_checkpoints(small_corpus, tmp_path_factory):
    """Two snapshots of different weights and the embeddings each gives the small corpus."""
    corpus, root = BlockCorpus(small_corpus), tmp_path_factory.mktemp("checkpoints")
    paths = [tiny_checkpoint(corpus, str(root / f"seed{seed}.pt"), seed) for seed in (1, 2)]
    return {path: embed_blocks(doc_embedder_from_checkpoint(path, corpus), corpus, progress=False)
            for path in paths}


def build_index_command(corpus, checkpoint, index):
    return [os.path.join(BIN, "realm-build-index"), "--corpus", corpus, "--checkpoint", checkpoint, "--out", index,
            "--no-progress"]


def test_two_builds_at_once_commit_two_versions_each_holding_its_own_embeddings(small_corpus, two_checkpoints,
                                                                                tmp_path):
    index = str(tmp_path / "INDEX")
    for trial in range(3):
        builds = [subprocess.Popen(build_index_command(small_corpus, checkpoint, index), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
                  for checkpoint in two_checkpoints]
        outcomes = [b.communicate(timeout=300) for b in builds]
        assert all(b.returncode == 0 for b in builds), [err[-3000:] for _, err in outcomes]
        committed = sorted(int(out.split("/v")[-1]) for out, _ in outcomes)
        assert committed == [2 * trial + 1, 2 * trial + 2]
    store = IndexStore(index)
    assert store.versions() == list(range(1, 7))
    for version in store.versions():
        _, manifest = store.load(version, corpus=BlockCorpus(small_corpus))  # sizes and checksums agree
        expected = two_checkpoints[manifest["encoder"]["path"]]
        np.testing.assert_allclose(store.embeddings(version), expected, atol=2e-3)
        np.testing.assert_allclose(stored_vectors(store, version), expected, atol=2e-3)
    first, second = two_checkpoints.values()
    assert np.abs(first.astype(np.float32) - second).mean() > 0.1  # the two builds are told apart


@contextlib.contextmanager
def unwritable(path):
    """``path`` (a directory) refuses new entries: chmod for a user, the immutable attribute for root
    (whom permissions do not stop)."""
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        undo = ["chmod", "755", path]
    elif subprocess.run(["chattr", "+i", path], capture_output=True).returncode == 0:
        undo = ["chattr", "-i", path]
    else:
        pytest.skip("running as root on a file system without chattr +i: cannot make a directory unwritable")
    try:
        yield
    finally:
        subprocess.run(undo, check=True)


def build_index_error(capsys, argv) -> str:
    """The one-line error realm-build-index stops with; fails if it embedded anything first."""
    with pytest.raises(SystemExit) as stop:
        build_index_main(argv)
    message = str(stop.value.code)
    assert message.startswith("realm-build-index: error: ") and "\n" not in message
    assert "embedded" not in capsys.readouterr().err
    return message


def test_build_index_checks_its_options_and_output_before_embedding(small_corpus, two_checkpoints, tmp_path, capsys):
    checkpoint = next(iter(two_checkpoints))
    common = ["--corpus", small_corpus, "--checkpoint", checkpoint, "--no-progress"]
    out = ["--out", str(tmp_path / "INDEX")]
    for extra, expected in [
        (["--pq-m", "4"], "--pq-m does not apply to --index-type flat16 (its options: none)"),
        (["--index-type", "ivf_pq", "--pq-m", "0"], "--pq-m 0: expected a positive integer"),
        (["--index-type", "ivf_pq", "--pq-m", "5"], "pq_m=5 must divide the embedding dimension 32"),
        (["--index-type", "ivf_flat", "--nlist", "100000"], "nlist=100000 cells need at least 100000 vectors"),
        (["--merge"], "--merge commits the shards of a sharded build"),
        (["--num-shards", "0"], "--num-shards 0: expected at least 1"),
        (["--max-tokens", "0"], "--max-tokens 0: expected a positive number of tokens"),
        (["--device", "tpu:x"], "--device 'tpu:x': not a torch device"),
    ]:
        assert expected in build_index_error(capsys, [*common, *out, *extra]), extra
    assert not os.path.exists(tmp_path / "INDEX")

    (tmp_path / "file").write_text("")
    assert f"{tmp_path}/file: exists and is not a directory" in build_index_error(
        capsys, [*common, "--out", str(tmp_path / "file")])
    message = build_index_error(capsys, [*common, "--out", small_corpus])
    assert f"{small_corpus}: holds " in message and "which are not index versions" in message
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    with unwritable(readonly):
        message = build_index_error(capsys, [*common, "--out", str(readonly)])
    assert re.search(rf"error: {readonly}: (Operation not permitted|Permission denied)$", message), message
