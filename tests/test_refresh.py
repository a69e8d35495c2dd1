"""Asynchronous index refresh during realm-train (realm_fairseq/indexing/refresh.py): real runs on a
small corpus of the shipped articles commit and swap new versions built from weight snapshots, survive a
killed refresher, stop after too many failures, resume with the saved version, swap on 2 ranks at the
same update, and refresh through submitit's local executor."""
import argparse
import os
import queue
import re
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import torch

from realm_fairseq.data import BlockCorpus
from realm_fairseq.data.corpus_builder import CorpusConfig, prepare_corpus
from realm_fairseq.models.config import RealmConfig
from realm_fairseq.models.embedder import Embedder
from realm_fairseq.models.realm import realm_tiny
from realm_fairseq.indexing.embed import embed_blocks
from realm_fairseq.models.loading import EmbedderSource
from realm_fairseq.retrieval.versions import IndexStore

from conftest import BIN, VOCAB, WIKI, free_port, run

ARTICLES = 12  # about 360 blocks: a refresh embeds them in seconds on CPU
# trainers, refreshers and ranks share the 2 cores of CI: one thread each instead of 2 spinning over 2
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1", PATH=BIN + os.pathsep + os.environ["PATH"])


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("small") / "corpus")
    prepare_corpus([WIKI], VOCAB, out, CorpusConfig(workers=1, salient_spans="regex", no_progress=True,
                                                   max_documents=ARTICLES))
    return out


@pytest.fixture(scope="module")
def first_index(small_corpus, tmp_path_factory):
    """INDEX/v1 from the document embedder of a fresh realm_tiny model (32 dimensions, as it trains)."""
    torch.manual_seed(0)
    corpus = BlockCorpus(small_corpus)
    args = argparse.Namespace()
    realm_tiny(args)
    embedder = Embedder(RealmConfig(**vars(args)), corpus.dictionary, "cls", 32)
    embeddings = embed_blocks(EmbedderSource(embedder, {}), corpus, progress=False)
    index = str(tmp_path_factory.mktemp("first") / "index")
    IndexStore(index).commit(embeddings, corpus.checksum, {"kind": "fresh realm_tiny", "update": 0})
    return index


def copy_index(first_index, dest) -> str:
    run(["cp", "-r", first_index, str(dest)])
    return str(dest)


def train_args(corpus, index, *extra):
    return [corpus, "--task", "realm_pretrain", "--index", index, "--arch", "realm_tiny", "--criterion",
            "realm_mlm", "--optimizer", "adam", "--lr", "1e-3", "--lr-scheduler", "fixed", "--batch-size", "4",
            "--retrieval-topk", "2", "--cpu", "--num-workers", "0", "--no-progress-bar", "--log-format", "simple",
            "--log-interval", "1", "--required-batch-size-multiple", "1", "--seed", "1", "--disable-validation",
            *extra]


def ctrl_c_interrupts() -> None:
    """In the child before exec: SIGINT raises KeyboardInterrupt again (shells start background jobs, such
    as a CI run, with SIGINT ignored, which the child would inherit)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Training:
    """A realm-train process whose log is read while it runs."""

    def __init__(self, args, cwd):
        self.proc = subprocess.Popen([f"{BIN}/realm-train", *args], cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1, env=ONE_THREAD,
                                     preexec_fn=ctrl_c_interrupts)
        self.lines, self._queue = [], queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 240) -> re.Match:
        """The first line from now on that matches ``pattern``; fails if the run ends or times out first."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self._queue.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"training ended before /{pattern}/:\n{self.text[-4000:]}")
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no /{pattern}/ within {timeout}s:\n{self.text[-4000:]}")

    def finish(self, interrupt: bool = False, timeout: float = 120) -> int:
        if interrupt:  # Ctrl-C
            self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = None
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        assert code is not None, f"training still ran {timeout}s after Ctrl-C:\n{self.text[-4000:]}"
        return code


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def assert_gone(pids, timeout=20):
    deadline = time.time() + timeout
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.2)
    assert not [p for p in pids if alive(p)], "refresh processes outlived training"


SWAP = r"swapped in (\S+)/v(\d+) at update (\d+) \(weights of update (\d+), refresh took ([\d.]+)s, staleness (\d+)"
LAUNCH = r"index refresh of update (\d+) launched \(pid (\d+)"


def index_versions(log: str):
    """{update: index_version} from the train_inner lines (--log-interval 1)."""
    return {int(u): float(v) for v, u in
            re.findall(r"\| train_inner \|.*?index_version=([\d.]+),.*?num_updates=(\d+)", log)}


@pytest.fixture(scope="module")
def refreshed_run(small_corpus, first_index, tmp_path_factory):
    """Refresh every 3 updates; the first refresh is killed, then two succeed; stopped with Ctrl-C."""
    root = tmp_path_factory.mktemp("refresh")
    index = copy_index(first_index, root / "index")
    save = root / "ckpt"
    train = Training(train_args(small_corpus, index, "--refresh-interval-updates", "3", "--refresh-keep", "3",
                                "--max-update", "100000", "--save-dir", str(save), "--save-interval-updates", "6",
                                "--keep-interval-updates", "1", "--no-epoch-checkpoints"), cwd=root)
    killed_update, pid = map(int, train.wait_for(LAUNCH).groups())
    os.kill(pid, signal.SIGKILL)
    train.wait_for(rf"index refresh of update {killed_update} failed")
    swaps = [train.wait_for(SWAP).groups() for _ in range(2)]
    after_last_swap = int(swaps[-1][2]) + 1  # its batches are the first on the new version
    train.wait_for(rf"\| train_inner \|.*num_updates={after_last_swap},")
    train.wait_for(r"Saved checkpoint ")
    train.finish(interrupt=True)
    return dict(log=train.text, index=index, save=save, swaps=swaps, killed=killed_update, root=root)


def test_refreshes_commit_and_swap_versions_built_from_the_snapshot_weights(refreshed_run, small_corpus, tmp_path):
    log, index, swaps = refreshed_run["log"], refreshed_run["index"], refreshed_run["swaps"]
    versions = index_versions(log)
    for _, version, at, update, took, staleness in swaps:
        version, at, update = int(version), int(at), int(update)
        assert update % 3 == 0 and int(staleness) == at - update and float(took) > 0
        assert versions[at] < version and versions[at + 1] == version  # from the update after the swap on
    assert [int(s[1]) for s in swaps] == [2, 3]
    assert all(v == int(v) for v in versions.values())

    store = IndexStore(index)
    manifest = store.manifest(3)
    assert manifest["encoder"]["update"] == int(swaps[1][3])
    offline = str(tmp_path / "offline")
    run(["realm-build-index", "--corpus", small_corpus, "--checkpoint", manifest["encoder"]["path"], "--out",
         offline, "--no-progress"], env=ONE_THREAD)  # as the refresher ran
    np.testing.assert_array_equal(store.embeddings(3), IndexStore(offline).embeddings())


def test_a_killed_refresh_leaves_training_going_and_no_process_behind(refreshed_run):
    log, killed = refreshed_run["log"], refreshed_run["killed"]
    warning = re.search(rf"WARNING .*index refresh of update {killed} failed \(1 in a row.*", log).group(0)
    assert "killed by signal 9" in warning and f"u{killed}/refresh.log" in warning
    assert int(refreshed_run["swaps"][0][3]) > killed  # the next interval's refresh succeeded
    assert_gone([int(pid) for _, pid in re.findall(LAUNCH, log)])
    assert IndexStore(refreshed_run["index"]).versions() == [1, 2, 3]  # --refresh-keep 3; no half version


def test_resume_goes_on_with_the_saved_version_and_the_schedule(refreshed_run, small_corpus):
    index, save, root = refreshed_run["index"], refreshed_run["save"], refreshed_run["root"]
    last = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    saved_version = last["extra_state"]["RealmPretrainTask"]["index_version"]
    resumed_at = last["optimizer_history"][-1]["num_updates"]
    assert resumed_at % 3 == 0 and saved_version in IndexStore(index).versions()
    # a newer version than the saved one: the run must not jump to it when it resumes
    snapshot = IndexStore(index).manifest()["encoder"]["path"]
    run(["realm-build-index", "--corpus", small_corpus, "--checkpoint", snapshot, "--out", index, "--no-progress"])
    newest = IndexStore(index).latest()

    args = train_args(small_corpus, index, "--refresh-interval-updates", "3", "--refresh-keep", "10",
                      "--save-dir", str(save), "--no-epoch-checkpoints", "--keep-interval-updates", "1")
    cancelled = run(["realm-train", *args, "--max-update", str(resumed_at + 3)], cwd=root, env=ONE_THREAD).stdout
    assert f"resumed with {index}/v{saved_version}, the index version saved in the checkpoint" in cancelled
    assert index_versions(cancelled)[resumed_at + 1] == saved_version
    assert re.findall(r"index refresh of update (\d+)", cancelled) == [str(resumed_at + 3)] * 2
    assert f"cancelling the index refresh of update {resumed_at + 3} (--refresh-at-end cancel)" in cancelled
    assert IndexStore(index).latest() == newest and not os.path.exists(f"{index}/refresh/u{resumed_at + 3}")

    # the saved version pruned meanwhile: the newest one, with a warning; a refresh running at the end is
    # waited for and commits its version
    in_use = torch.load(save / "checkpoint_last.pt", map_location="cpu",
                        weights_only=False)["extra_state"]["RealmPretrainTask"]["index_version"]
    run(["rm", "-r", f"{index}/v{in_use}"])
    newest = IndexStore(index).latest()
    waited = run(["realm-train", *args, "--max-update", str(resumed_at + 6), "--refresh-at-end", "wait"],
                 cwd=root, env=ONE_THREAD).stdout
    assert f"checkpoint was trained with {index}/v{in_use}, which no longer exists" in waited
    assert index_versions(waited)[resumed_at + 4] == newest
    assert f"waiting for the index refresh of update {resumed_at + 6} (--refresh-at-end wait)" in waited
    assert IndexStore(index).latest() == newest + 1
    assert IndexStore(index).manifest()["encoder"]["update"] == resumed_at + 6
    # the snapshot holds the document embedder of its update: the checkpoint saved at that update
    taken = torch.load(f"{index}/refresh/u{resumed_at + 6}/snapshot.pt", weights_only=False)["model"]
    saved = torch.load(save / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]
    assert taken.keys() == {k for k in saved if k.startswith("doc_embedder.")}
    assert all(torch.equal(taken[k], saved[k]) for k in taken)


def test_too_many_failed_refreshes_stop_training_with_the_refresher_log(small_corpus, first_index, tmp_path):
    index = copy_index(first_index, tmp_path / "index")
    train = Training(train_args(small_corpus, index, "--refresh-interval-updates", "2", "--refresh-max-failures",
                                "2", "--max-update", "100000", "--no-save"), cwd=tmp_path)
    for _ in range(2):
        _, pid = train.wait_for(LAUNCH).groups()
        os.kill(int(pid), signal.SIGKILL)
    code = train.finish()
    assert code != 0
    error = re.search(r"realm-train: error: index refresh failed 2 times in a row .*", train.text).group(0)
    assert "Traceback" not in train.text  # one line, naming the cause
    assert "(--refresh-max-failures)" in error and "refresh.log" in error
    assert IndexStore(index).versions() == [1]


def test_two_ranks_swap_at_the_same_update(small_corpus, first_index, tmp_path):
    index = copy_index(first_index, tmp_path / "index")
    args = train_args(small_corpus, index, "--refresh-interval-updates", "3", "--max-update", "100000", "--no-save",
                      "--distributed-world-size", "2", "--distributed-backend", "gloo", "--distributed-no-spawn",
                      "--distributed-init-method", f"tcp://127.0.0.1:{free_port()}", "--ddp-backend", "legacy_ddp")
    ranks = [Training([*args, "--distributed-rank", str(r)], cwd=tmp_path) for r in range(2)]
    ranks[0].wait_for(LAUNCH)
    pid = ranks[1].proc.pid  # only rank 0 launches refreshes
    assert open(f"/proc/{pid}/task/{pid}/children").read().split() == []
    _, version, at, _, _, _ = ranks[0].wait_for(SWAP).groups()
    ranks[0].wait_for(rf"train_inner .*num_updates={int(at) + 2},")
    for rank in ranks:
        rank.proc.send_signal(signal.SIGINT)
    for rank in ranks:
        rank.finish()
    versions = index_versions(ranks[0].text)
    # each logged index_version averages both ranks' batches: a fraction if they had used different indexes
    assert versions[int(at)] == 1 and versions[int(at) + 1] == int(version) == 2
    assert all(v in (1, 2) for v in versions.values())


def test_submitit_local_executor_embeds_shards_then_merges(small_corpus, first_index, tmp_path):
    index = copy_index(first_index, tmp_path / "index")
    train = Training(train_args(small_corpus, index, "--refresh-interval-updates", "3", "--refresh-launcher",
                                "submitit", "--refresh-submitit-cluster", "local", "--refresh-shards", "2",
                                "--refresh-slurm-cpus-per-job", "1", "--max-update", "100000", "--no-save"),
                     cwd=tmp_path)
    update = int(train.wait_for(r"index refresh of update (\d+) launched \(submitit job").group(1))
    train.wait_for(rf"index refresh of update {update}: shards embedded; merge job \S+ submitted")
    _, version, _, weights_of, _, _ = train.wait_for(SWAP).groups()
    committed = rf"index refresh of update {update} committed in"  # the merge job has finished
    if not re.search(committed, train.text):
        train.wait_for(committed)
    train.finish(interrupt=True)
    assert int(weights_of) == update and int(version) == 2
    store = IndexStore(index)
    assert store.manifest(2)["count"] == len(BlockCorpus(small_corpus))
    assert not os.path.exists(os.path.join(index, "shards"))  # merged and removed
    jobs = os.path.join(index, "refresh", f"u{update}", "submitit")
    results = [n for n in os.listdir(jobs) if n.endswith("_result.pkl")]
    assert len(results) == 3  # two embedding jobs and the merge


def finished_submitit_refresh(tmp_path):
    from submitit.local.local import LocalJob

    from realm_fairseq.indexing.launchers import SubmititRefreshJob

    job = SubmititRefreshJob.__new__(SubmititRefreshJob)  # a refresh whose jobs have finished
    job.embed_jobs, job.merge_job = [LocalJob(tmp_path, "1"), LocalJob(tmp_path, "2")], LocalJob(tmp_path, "3")
    return job, LocalJob


def finished_local_refresh(tmp_path):
    from realm_fairseq.indexing.launchers import LocalRefreshJob

    job = LocalRefreshJob.__new__(LocalRefreshJob)  # a refresh whose process has exited
    job.process = subprocess.Popen(["true"])
    job.process.wait()
    return job, subprocess.Popen


@pytest.mark.parametrize("finished", [finished_submitit_refresh, finished_local_refresh])
def test_ctrl_c_while_a_finished_refresh_is_let_go_still_stops_training(finished, tmp_path, monkeypatch):
    """Letting go of a finished refresh runs finalizers (``__del__`` of submitit's jobs, of Popen), and
    Python swallows a KeyboardInterrupt raised in one; a Ctrl-C that lands there must not be lost."""
    job, held_class = finished(tmp_path)
    finalizer = held_class.__del__

    def ctrl_c_inside(obj, *args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        finalizer(obj, *args, **kwargs)

    monkeypatch.setattr(held_class, "__del__", ctrl_c_inside)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            job.release()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the user's handler is back
    finally:
        signal.signal(signal.SIGINT, previous)
