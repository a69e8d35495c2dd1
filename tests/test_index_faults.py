"""Faults around an INDEX (realm_fairseq/retrieval/versions.py, realm-build-index): writers committing into
one INDEX at once each commit a whole, distinct version and never remove one another's version in
progress; checksums catch a file replaced after the build; realm-build-index checks its options and
output before it embeds anything."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import faiss
import numpy as np
import pytest

from realm_fairseq.retrieval.versions import IndexStore

from conftest import ROOT, run

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

    save = MipsIndex.save

    def save_then_wait(self, path):  # the parent commits (or kills us) while we are here
        save(self, path)
        print("WRITING", flush=True)
        sys.stdin.readline()

    MipsIndex.save = save_then_wait
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


def test_a_replaced_file_is_refused_with_its_name(tmp_path):
    store = IndexStore(str(tmp_path / "INDEX"))
    store.commit(np.ones((50, 8), np.float16), "sum", {})
    manifest = store.manifest()
    assert set(manifest["files"]) == {"embeddings.npy", "index.faiss"}
    path = os.path.join(store.version_dir(1), "embeddings.npy")
    np.save(path, np.full((50, 8), 3, np.float16))  # same shape and size, other values
    with pytest.raises(ValueError, match=r"v1/embeddings.npy: its sha256 is not the one .*v1/manifest.json "
                                         r"records; the file was replaced or damaged after the build"):
        IndexStore(store.root).load()


@pytest.mark.parametrize("field, value, expected", [
    ("index_options", {"out": "/elsewhere"}, r"field index_type/index_options: unknown index option 'out'"),
    ("index_options", {"nlist": 4}, r"field index_type/index_options: option 'nlist' does not apply to index "
                                    r"type 'flat'"),
    ("index_options", ["nlist"], r"field index_options is \['nlist'\], expected an object of index options"),
    ("index_type", "ivf_sq", r"field index_type/index_options: unknown index type 'ivf_sq'"),
    ("files", {"index.faiss": {"bytes": 1}}, r"field files.embeddings.npy is None, expected"),
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
