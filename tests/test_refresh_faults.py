"""Index refresh faults during realm-train (realm_fairseq/indexing/refresh.py), with real training on the
small corpus of test_refresh.py: an INDEX that becomes unwritable, a full disk and a manifest whose index
options are not ones a refresh may pass on are failed refreshes that training survives, each named by its
cause; --refresh-max-failures in a row stop training after a checkpoint is saved. Versions a rank cannot load
(a GPU out of memory or lost) count as failed refreshes too."""
import json
import logging
import os
import re
import subprocess
import uuid

import numpy as np
import pytest
import torch

from realm_fairseq.data import BlockCorpus
from realm_fairseq.indexing.config import RefreshConfig
from realm_fairseq.indexing.launchers import LocalRefreshJob, RefreshPlan
from realm_fairseq.indexing.refresh import IndexRefresher, RefreshFailedError
from realm_fairseq.indexing.scheduler import failure_cause
from realm_fairseq.retrieval.retriever import Retriever
from realm_fairseq.retrieval.versions import IndexStore

from test_index_faults import unwritable
from test_refresh import SWAP, Training, copy_index, first_index, small_corpus, train_args  # noqa: F401

FAILED = r"WARNING .*index refresh of update (\d+) failed \(\d+ in a row; --refresh-max-failures \d+\): (.*)"


def wait_for_update_after(train: Training, update: int) -> None:
    """Training goes on: an update later than ``update`` is logged (any later one: on a slow machine a
    refresh's failure can be logged after several more updates)."""
    while int(train.wait_for(r"\| train_inner \|.*num_updates=(\d+),").group(1)) <= update:
        pass


def test_an_unwritable_index_and_a_bad_manifest_fail_refreshes_that_training_survives(small_corpus, first_index,
                                                                                     tmp_path):
    index = copy_index(first_index, tmp_path / "index")
    train = Training(train_args(small_corpus, index, "--refresh-interval-updates", "2", "--refresh-keep", "5",
                                "--refresh-max-failures", "100", "--max-update", "100000", "--no-save"),
                     cwd=tmp_path)
    train.wait_for(SWAP)  # v2: INDEX/refresh exists
    with unwritable(index), unwritable(os.path.join(index, "refresh")):
        update, cause = train.wait_for(FAILED).groups()
        assert re.search(r"(Operation not permitted|Permission denied)", cause), cause
        wait_for_update_after(train, int(update))

    in_use = os.path.join(index, "v2", "manifest.json")
    with open(in_use) as f:
        good = json.load(f)
    with open(in_use, "w") as f:  # a refresh would pass its index options to realm-build-index as flags
        json.dump({**good, "index_options": {"out": str(tmp_path / "elsewhere")}}, f)
    update, cause = train.wait_for(FAILED).groups()
    assert f"could not start: ValueError: {in_use}: field index_type/index_options: unknown index option 'out'" \
        in cause
    wait_for_update_after(train, int(update))
    with open(in_use, "w") as f:
        json.dump(good, f)

    _, version, _, _, _, _ = train.wait_for(SWAP).groups()  # refreshes work again
    assert int(version) == 3
    assert train.finish(interrupt=True) != 0
    assert "Traceback" not in train.text.split("KeyboardInterrupt")[0]
    assert IndexStore(index).versions() == [1, 2, 3] and not os.path.exists(tmp_path / "elsewhere")


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB file system of its own (tmpfs), unmounted afterwards; skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN) to fill a disk")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk) -> str:
    """Write a file until ``disk`` is full; returns its path."""
    path = os.path.join(disk, f"filler-{uuid.uuid4().hex}")
    fd, chunk = os.open(path, os.O_WRONLY | os.O_CREAT), 1 << 20
    while chunk >= 512:
        try:
            os.write(fd, b"\0" * chunk)
        except OSError:  # full to this chunk size
            chunk //= 2
    os.close(fd)
    return path


def test_a_full_disk_is_named_and_survived(small_corpus, first_index, small_disk):
    index = copy_index(first_index, small_disk / "index")
    train = Training(train_args(small_corpus, index, "--refresh-interval-updates", "2", "--refresh-keep", "1",
                                "--refresh-max-failures", "100", "--max-update", "100000", "--no-save"),
                     cwd=small_disk.parent)
    train.wait_for(SWAP)
    filler = fill(small_disk)
    update, cause = train.wait_for(FAILED).groups()
    assert "disk full (No space left on device)" in cause or "No space left on device" in cause, cause
    wait_for_update_after(train, int(update))
    os.remove(filler)
    train.wait_for(SWAP)
    assert train.finish(interrupt=True) != 0
    assert "unexpected pos" not in train.text


def test_a_refresh_that_could_not_write_even_its_log_is_named_by_the_full_disk(small_corpus, small_disk):
    """A disk that fills up before the refresher writes its error: whatever it died of, its log does not say.
    The trainer names the full disk from outside, and blames such a log on the disk only when it is full."""
    plan = RefreshPlan(update=4, snapshot=str(small_disk / "snapshot.pt"), corpus=small_corpus,
                       index_dir=str(small_disk / "index"), workdir=str(small_disk / "refresh" / "u4"))
    plan.save()
    filler = fill(small_disk)
    job = LocalRefreshJob(plan)
    job.process.wait(timeout=120)
    assert job.poll() is False and os.path.getsize(plan.log_path) == 0
    cause = failure_cause(job.log())
    assert re.fullmatch(rf"disk full \(No space left on device\): {plan.workdir} has \d+ bytes free, too few for "
                        r"the refresh to write its error", cause), cause
    os.remove(filler)
    assert failure_cause(job.log()) == f"[exit code {job.process.returncode}] {plan.log_path}:"
    with open(plan.log_path, "w") as log:  # it wrote lines before the disk filled up, then none
        log.write("INFO | realm_fairseq.indexing.build | embedding 70 blocks\n")
    filler = fill(small_disk)
    assert failure_cause(job.log()).startswith("disk full (No space left on device): ")
    os.remove(filler)


def test_too_many_failed_refreshes_save_a_checkpoint_and_name_the_cause(small_corpus, first_index, tmp_path):
    index = copy_index(first_index, tmp_path / "index")
    save = tmp_path / "ckpt"
    with unwritable(index):  # loading it needs no writes; each refresh fails to make its work directory
        train = Training(train_args(small_corpus, index, "--refresh-interval-updates", "2",
                                    "--refresh-max-failures", "2", "--max-update", "100000", "--save-dir",
                                    str(save), "--no-epoch-checkpoints"), cwd=tmp_path)
        code = train.finish(timeout=240)
    assert code != 0
    stop = re.search(r"ERROR .*index refresh failed 2 times in a row \(--refresh-max-failures\); the refresh of "
                     r"update 4 failed: could not start: permission denied \(.*\): \S+/refresh; stopping training "
                     r"at update 4, after saving a checkpoint", train.text)
    assert stop, train.text[-4000:]
    assert re.search(r"Saved checkpoint \S+checkpoint_last.pt \(epoch 1 @ 4 updates", train.text), train.text[-4000:]
    assert re.search(r"realm-train: error: index refresh failed 2 times in a row", train.text)
    assert "Traceback" not in train.text
    saved = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert saved["optimizer_history"][-1]["num_updates"] == 4
    assert IndexStore(index).versions() == [1]


def test_versions_a_gpu_cannot_load_are_failed_refreshes_counted_in_a_row(small_corpus, first_index, tmp_path,
                                                                         monkeypatch, caplog):
    """A GPU that runs out of memory or is lost while a refreshed version loads onto it: torch raises a
    RuntimeError in the loader's thread. No GPU here, so IndexStore.load raises what torch raises there; the
    loader, the counting and the swap are the real ones. Such a version is skipped and training keeps the one
    in use; a version that loads resets the count; --refresh-max-failures in a row stop training."""
    index = copy_index(first_index, tmp_path / "index")
    store, corpus = IndexStore(index), BlockCorpus(small_corpus)
    retriever = Retriever(corpus, store.load(corpus=corpus)[0], topk=2, null_document=True, version=1,
                          version_update=0)
    refresher = IndexRefresher(RefreshConfig(refresh_interval_updates=10**6, refresh_max_failures=2), small_corpus,
                               store, retriever)
    refresher.loader.poll_s = 0.0
    real_load, lost = IndexStore.load, set()

    def load(self, version=None, **kwargs):
        if version in lost:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 44.00 MiB (GPU 0; 139.81 GiB "
                                         "total capacity)")
        return real_load(self, version, **kwargs)

    monkeypatch.setattr(IndexStore, "load", load)
    embeddings = store.embeddings(1)

    def commit_and_load(fails: bool, update: int) -> int:
        version = store.commit(np.asarray(embeddings), corpus.checksum, {"kind": "refresh", "update": update})
        if fails:
            lost.add(version)
        refresher.after_update(None, update)  # starts the loader thread
        refresher.loader.close()  # waits for it
        refresher.after_update(None, update + 1)  # swaps what loaded, or stops
        return version

    with caplog.at_level(logging.WARNING):
        v2 = commit_and_load(fails=True, update=10)
    assert re.search(rf"could not load {re.escape(store.version_dir(v2))} on cpu: OutOfMemoryError: CUDA out of "
                     r"memory.* \(1 version\(s\) in a row\); training goes on with the version in use", caplog.text)
    assert retriever.version == 1 and refresher.loader.failures == 1

    v3 = commit_and_load(fails=False, update=20)  # loads: swapped in, the count starts again
    assert retriever.version == v3 and refresher.loader.failures == 0

    commit_and_load(fails=True, update=30)
    with pytest.raises(RefreshFailedError, match=r"index refresh failed 2 times in a row \(--refresh-max-failures\); "
                                                 rf"could not load {re.escape(store.version_dir(v3 + 2))} on cpu: "
                                                 r"OutOfMemoryError: CUDA out of memory"):
        commit_and_load(fails=True, update=40)
    assert retriever.version == v3
    refresher.close()
