"""Asynchronous index refresh during pre-training (REALM, section 3.3, "asynchronous MIPS refreshes").

The index proposes candidates from embeddings an older document embedder made; REALM re-embeds the
corpus every few hundred updates in separate jobs while training goes on, and swaps the new index in
(its ablation, section 4.4, shows what a staler index costs). Here, with ``--refresh-interval-updates N``:

- every N updates rank 0 copies the document embedder's weights, writes them in the background as a
  snapshot (a checkpoint ``realm-build-index --checkpoint`` reads) and launches a refresh through
  ``--refresh-launcher`` (:mod:`realm_fairseq.retrieval.refresh_launchers`); at most one is in flight,
  a refresh due meanwhile is skipped and logged;
- every rank watches the INDEX for a newly committed version and loads it in a background thread;
  after each update one small all-reduce tells whether every rank holds the same new version, and if
  so all of them switch to it before the next update;
- a failed or killed refresh leaves training on the current index and logs the refresher's log; after
  ``--refresh-max-failures`` consecutive failures every rank stops with an error. Versions beyond
  ``--refresh-keep`` are pruned, never the one in use. At the end a refresh in flight is cancelled or
  waited for (``--refresh-at-end``).

Training itself never waits for a refresh: the snapshot is written, the job polled and the new index
loaded off the training thread.
"""
import logging
import multiprocessing.util
import os
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional, Tuple

import torch
import torch.distributed as dist
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from omegaconf import DictConfig, OmegaConf

from realm_fairseq.atomic_io import atomic_file, describe_fault, write_faults_named
from realm_fairseq.errors import StoppedError
from realm_fairseq.retrieval.mips import MipsIndex
from realm_fairseq.retrieval.refresh_launchers import (
    LocalLauncher, RefreshJob, RefreshPlan, SlurmResources, SubmititLauncher, physical_devices,
)
from realm_fairseq.retrieval.retriever import Retriever
from realm_fairseq.retrieval.versions import IndexStore

logger = logging.getLogger(__name__)

REFRESH_DIR = "refresh"  # INDEX/refresh/u<update>/: snapshot, plan, log and job files of one refresh
SNAPSHOT = "snapshot.pt"


@dataclass
class RefreshConfig(FairseqDataclass):
    refresh_interval_updates: int = field(
        default=0, metadata={"help": "re-embed the corpus with the current document embedder every N "
                             "updates, in the background, and swap the new index in (0: never)"}
    )
    refresh_launcher: ChoiceEnum(["local", "submitit"]) = field(
        default="local", metadata={"help": "where a refresh runs: local (background processes on this "
                                   "machine) or submitit (Slurm jobs; submitit's local executor without Slurm)"}
    )
    refresh_devices: str = field(
        default="", metadata={"help": "local launcher: comma-separated GPU ids (as the trainer sees them) "
                              "the refresh may use, one embedding process each; empty: CPU"}
    )
    refresh_shards: int = field(
        default=0, metadata={"help": "corpus shards embedded in parallel per refresh, then merged (0: one "
                             "per --refresh-devices GPU, else 1)"}
    )
    refresh_max_failures: int = field(
        default=3, metadata={"help": "stop training after this many refreshes in a row failed"}
    )
    refresh_keep: int = field(
        default=2, metadata={"help": "index versions to keep (the newest ones; the one in use is never "
                             "deleted)"}
    )
    refresh_at_end: ChoiceEnum(["cancel", "wait"]) = field(
        default="cancel", metadata={"help": "a refresh still running when training ends: cancel it, or wait "
                                    "for it to commit its version"}
    )
    refresh_submitit_cluster: ChoiceEnum(["auto", "slurm", "local"]) = field(
        default="auto", metadata={"help": "submitit launcher: slurm, local (processes on this machine) or "
                                  "auto (slurm where sbatch exists)"}
    )
    refresh_slurm_gpus_per_job: int = field(default=0, metadata={"help": "GPUs of each refresh job (0: CPU)"})
    refresh_slurm_cpus_per_job: int = field(default=4, metadata={"help": "CPUs of each refresh job"})
    refresh_slurm_mem_gb: int = field(default=16, metadata={"help": "memory of each refresh job, GB"})
    refresh_slurm_time_min: int = field(default=60, metadata={"help": "time limit of each refresh job, minutes"})
    refresh_slurm_partition: Optional[str] = field(default=None, metadata={"help": "Slurm partition of refresh jobs"})
    refresh_slurm_account: Optional[str] = field(default=None, metadata={"help": "Slurm account of refresh jobs"})
    refresh_slurm_constraint: Optional[str] = field(
        default=None, metadata={"help": "Slurm constraint of refresh jobs"}
    )
    refresh_slurm_qos: Optional[str] = field(default=None, metadata={"help": "Slurm QOS of refresh jobs"})


class RefreshFailedError(StoppedError):
    """Too many refreshes in a row failed (``--refresh-max-failures``)."""


def make_launcher(cfg: RefreshConfig):
    if cfg.refresh_launcher == "local":
        return LocalLauncher()
    resources = SlurmResources(**{name: getattr(cfg, f"refresh_slurm_{name}")
                                  for name in SlurmResources.__dataclass_fields__})
    return SubmititLauncher(resources, None if cfg.refresh_submitit_cluster == "auto" else cfg.refresh_submitit_cluster)


def check_config(cfg: RefreshConfig) -> None:
    for name, low in (("refresh_interval_updates", 0), ("refresh_shards", 0), ("refresh_max_failures", 1),
                      ("refresh_keep", 1)):
        if getattr(cfg, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: expected at least {low}")
    devices = [d.strip() for d in cfg.refresh_devices.split(",") if d.strip()]
    if any(not d.isdigit() for d in devices):
        raise ValueError(f"--refresh-devices {cfg.refresh_devices!r}: expected comma-separated GPU ids, e.g. 1,2")


def unwrap(model):
    """The realm model inside fairseq's distributed wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def snapshot_state(model, num_updates: int) -> dict:
    """A checkpoint of the document embedder alone, on CPU, in the layout ``realm-build-index`` reads."""
    model = unwrap(model)
    if isinstance(model.cfg, DictConfig):
        cfg = OmegaConf.to_container(model.cfg, resolve=True, enum_to_str=True)
    else:
        cfg = {k: v.value if isinstance(v, Enum) else v for k, v in vars(model.cfg).items()}
    weights = {f"doc_embedder.{k}": v.detach().to("cpu", copy=True)
               for k, v in model.doc_embedder.state_dict().items()}
    return {
        "cfg": {"model": cfg},
        "model": weights,
        "optimizer_history": [{"num_updates": num_updates, "optimizer_name": "none", "lr_scheduler_state": {}}],
        "extra_state": {},
    }


def write_snapshot(state: dict, path: str) -> str:
    """Write ``state`` to ``path`` by rename; a failed write raises an OSError naming its cause (torch reports
    a full disk as ``unexpected pos 64 vs 0``, unless it writes through a Python file object)."""
    with atomic_file(path, force=True) as tmp, write_faults_named(path), open(tmp, "wb") as f:
        torch.save(state, f)
    return path


class VersionLoader:
    """Loads the newest committed version of an INDEX in a background thread, once it is newer than the
    one in use. Looks at the directory at most every ``poll_s`` seconds."""

    def __init__(self, store: IndexStore, corpus, poll_s: float = 1.0):
        self.store, self.corpus, self.poll_s = store, corpus, poll_s
        self._lock = threading.Lock()
        self._ready: Optional[Tuple[int, MipsIndex, dict]] = None  # (version, MipsIndex, manifest)
        self._thread: Optional[threading.Thread] = None
        self._looked = 0.0
        self._bad = set()  # versions that failed to load: not retried

    @property
    def ready(self) -> Optional[Tuple[int, MipsIndex, dict]]:
        """The newest version loaded and not swapped in yet: (version, index, manifest), or None."""
        with self._lock:
            return self._ready

    @property
    def busy(self) -> bool:
        """Loading a version, or holding one that is not swapped in yet."""
        return self._loading() or self.ready is not None

    def _loading(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def poll(self, in_use: int) -> None:
        if self._loading() or time.monotonic() - self._looked < self.poll_s:
            return
        self._looked = time.monotonic()
        try:
            latest = self.store.latest() or 0
        except OSError as e:  # the INDEX cannot be read just now: look again at the next poll
            logger.warning("index refresh: cannot list %s: %s", self.store.root, describe_fault(e))
            return
        ready = self.ready
        if latest > max(in_use, ready[0] if ready else 0) and latest not in self._bad:
            self._thread = threading.Thread(target=self._load, args=(latest,), name="realm-index-loader",
                                            daemon=True)
            self._thread.start()

    def _load(self, version: int) -> None:
        try:
            index, manifest = self.store.load(version, corpus=self.corpus)
        except (OSError, ValueError, RuntimeError) as e:  # pruned meanwhile, or not built for this corpus
            logger.warning("index refresh: could not load %s: %s", self.store.version_dir(version), e)
            self._bad.add(version)
            return
        with self._lock:
            self._ready = (version, index, manifest)

    def swapped_in(self, version: int) -> None:
        """Forget what was loaded up to ``version``, which is now in use."""
        with self._lock:
            if self._ready is not None and self._ready[0] <= version:
                self._ready = None

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()


def failure_cause(log: str) -> str:
    """Why a refresh failed, from its log (:meth:`RefreshJob.log`): the message of its last ``error:`` line
    (e.g. ``/INDEX: No space left on device``), else the log's first line (e.g. ``[killed by signal 9] ...``)."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if "error: " in line]
    if errors:
        return errors[-1].rsplit("error: ", 1)[1]
    return lines[0] if lines else "(no log)"


class RefreshScheduler:
    """Rank 0's part: snapshot and launch a refresh every ``interval`` updates, watch the one in flight,
    count failures in a row."""

    POLL_S = 1.0  # look at the job in flight at most this often (on Slurm that may ask sacct)

    def __init__(self, cfg: RefreshConfig, corpus_dir: str, store: IndexStore):
        self.cfg, self.corpus_dir, self.store = cfg, corpus_dir, store
        self.launcher = make_launcher(cfg)
        self.devices = physical_devices([d.strip() for d in cfg.refresh_devices.split(",") if d.strip()])
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="realm-snapshot")
        self.pending: Optional[Tuple[RefreshPlan, Future]] = None  # snapshot being written
        self.job: Optional[RefreshJob] = None
        self.started = {}  # update -> wall time its refresh started (for the swap log)
        self.failures = 0
        self.last_failure = ""
        self._polled = 0.0

    @property
    def in_flight(self) -> Optional[RefreshPlan]:
        return self.pending[0] if self.pending else (self.job.plan if self.job else None)

    def step(self, model, num_updates: int, in_use: int) -> None:
        """After update ``num_updates``: watch the refresh in flight, start one when due. Never raises: a
        fault (unwritable or full INDEX, a launcher that cannot start, a bad plan) is a failed refresh."""
        self._watch_safely(num_updates)
        if num_updates % self.cfg.refresh_interval_updates or self.failed_out:  # training is about to stop
            return
        running = self.in_flight
        if running is not None:
            logger.info("index refresh due at update %d skipped: the refresh of update %d is still running",
                        num_updates, running.update)
            return
        try:
            self._start(model, num_updates, in_use)
        except Exception as e:  # noqa: BLE001 - whatever stops a refresh from starting counts as its failure
            self._failed(num_updates, f"could not start: {describe_fault(e)}")

    def _plan(self, num_updates: int, in_use: int) -> RefreshPlan:
        manifest = self.store.manifest(in_use)  # index_type and index_options checked
        local = self.cfg.refresh_launcher == "local"
        shards = self.cfg.refresh_shards or (max(1, len(self.devices)) if local else 1)
        workdir = os.path.join(self.store.root, REFRESH_DIR, f"u{num_updates}")
        return RefreshPlan(update=num_updates, snapshot=os.path.join(workdir, SNAPSHOT),
                           corpus=os.path.abspath(self.corpus_dir), index_dir=os.path.abspath(self.store.root),
                           workdir=os.path.abspath(workdir), index_type=manifest["index_type"],
                           index_options=manifest["index_options"], num_shards=shards, devices=self.devices)

    def _start(self, model, num_updates: int, in_use: int) -> None:
        plan = self._plan(num_updates, in_use)
        if os.path.isdir(plan.workdir):  # left by a run that was stopped and resumed
            shutil.rmtree(plan.workdir)
        os.makedirs(plan.workdir)
        state = snapshot_state(model, num_updates)  # a copy: training goes on changing the weights
        self.started[num_updates] = time.time()
        self.pending = (plan, self.writer.submit(write_snapshot, state, plan.snapshot))

    def _watch(self, force: bool = False) -> None:
        if self.pending is not None and self.pending[1].done():
            plan, written = self.pending
            self.pending = None
            try:
                written.result()
                self.job = self.launcher.launch(plan)  # from the training thread: children die with it
            except Exception as e:  # noqa: BLE001 - whatever stops a refresh from starting counts as its failure
                self._failed(plan.update, f"could not start: {describe_fault(e)}")
                return
            logger.info("index refresh of update %d launched (%s; log %s)", plan.update, self.job.describe(),
                        plan.log_path)
        if self.job is None or (time.monotonic() - self._polled < self.POLL_S and not force):
            return
        self._polled = time.monotonic()
        done = self.job.poll()
        if done is None:
            return
        job, self.job = self.job, None
        if done:
            self.failures = 0
            logger.info("index refresh of update %d committed in %.1fs", job.plan.update,
                        time.time() - self.started[job.plan.update])
            self._tidy()
        else:
            log = job.log()
            self._failed(job.plan.update, failure_cause(log), log)
        job.release()

    def _watch_safely(self, update: int, force: bool = False) -> None:
        """:meth:`_watch`; a job that cannot be watched is a failure of the refresh of (about) ``update``."""
        try:
            self._watch(force)
        except Exception as e:  # noqa: BLE001 - e.g. a job whose state cannot be read
            self._job_lost(update, e)

    def _job_lost(self, num_updates: int, error: Exception) -> None:
        """The refresh in flight cannot be watched (``error``): cancel what is left of it, count a failure."""
        job, self.job = self.job, None
        if job is not None:
            try:
                job.cancel()
            except Exception as e:  # noqa: BLE001 - it is given up either way
                logger.warning("index refresh of update %d: could not cancel it: %s", job.plan.update,
                               describe_fault(e))
        self._failed(job.plan.update if job else num_updates, f"could not be watched: {describe_fault(error)}")

    def _failed(self, update: int, cause: str, log: str = "") -> None:
        self.failures += 1
        self.last_failure = f"the refresh of update {update} failed: {cause}"
        logger.warning("index refresh of update %d failed (%d in a row; --refresh-max-failures %d): %s; training "
                       "goes on with the index in use and the next interval tries again.%s", update,
                       self.failures, self.cfg.refresh_max_failures, cause, f" Refresher log {log}" if log else "")
        self._remove_shards(update)
        self._tidy()

    def _remove_shards(self, update: int) -> None:
        """Remove the unmerged shards of the refresh of ``update`` (not those of another build of the INDEX)."""
        snapshot = os.path.abspath(os.path.join(self.store.root, REFRESH_DIR, f"u{update}", SNAPSHOT))
        try:
            self.store.remove_shards_of(snapshot)
        except OSError as e:
            logger.warning("index refresh of update %d: could not remove its shards: %s", update, describe_fault(e))

    def _tidy(self) -> None:
        """Remove the work directories of finished refreshes but the newest ``--refresh-keep``."""
        root = os.path.join(self.store.root, REFRESH_DIR)
        running = self.in_flight
        try:
            names = os.listdir(root)
        except OSError:  # none yet, or the INDEX cannot be read: nothing to tidy now
            return
        done = sorted((int(n[1:]) for n in names if n[1:].isdigit()
                       and (running is None or int(n[1:]) != running.update)), reverse=True)
        for update in done[self.cfg.refresh_keep:]:
            shutil.rmtree(os.path.join(root, f"u{update}"), ignore_errors=True)

    @property
    def failed_out(self) -> bool:
        return self.failures >= self.cfg.refresh_max_failures

    def close(self) -> None:
        """At the end of training: cancel the refresh in flight, or wait for it (``--refresh-at-end``)."""
        wait = self.cfg.refresh_at_end == "wait"
        if self.pending is not None:
            self.pending[1].exception()  # let the snapshot be written (or fail)
        running = self.in_flight
        if wait or self.pending is None:  # launch the snapshot's refresh, or notice that the job has finished
            self._watch_safely(running.update if running else 0, force=True)
        self.writer.shutdown()
        running = self.in_flight
        if running is None:
            return
        if wait:
            logger.info("training ended: waiting for the index refresh of update %d (--refresh-at-end wait)",
                        running.update)
            while self.in_flight is not None:
                time.sleep(0.5)
                self._watch_safely(running.update)
            return
        logger.info("training ended: cancelling the index refresh of update %d (--refresh-at-end cancel)",
                    running.update)
        if self.job is not None:
            self.job.cancel()
            self.job.release()
        self.job = self.pending = None
        if self._committed(running):  # its process was still exiting
            logger.info("index refresh of update %d had committed its version already", running.update)
            return
        shutil.rmtree(running.workdir, ignore_errors=True)
        self._remove_shards(running.update)
        logger.info("index refresh of update %d cancelled", running.update)

    def _committed(self, plan: RefreshPlan) -> bool:
        """Whether a version was built from ``plan``'s snapshot (other writers may have committed since)."""
        try:
            versions = self.store.versions()
        except OSError:
            return False
        for version in reversed(versions):
            try:
                if self.store.manifest(version)["encoder"].get("path") == plan.snapshot:
                    return True
            except (OSError, ValueError):  # pruned meanwhile, or not ours to judge
                continue
        return False


def training_config(cfg) -> Optional[DictConfig]:
    """fairseq's whole training config, which the task config ``cfg`` is part of (None outside fairseq)."""
    root = cfg._get_root() if isinstance(cfg, DictConfig) else None
    return root if root is not None and "optimization" in root and "checkpoint" in root else None


def agree(ready: int, abort: bool) -> Tuple[int, bool]:
    """One small all-reduce over the ranks: the version every rank has ready (0 unless all have the same
    one) and whether any rank must stop."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ready, abort
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    both = torch.tensor([ready, -ready, int(abort)], dtype=torch.long, device=device)
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    highest, lowest, abort = both.tolist()
    return (highest if highest == -lowest else 0), bool(abort)


class IndexRefresher:
    """Every rank's part: after each update, launch (rank 0), load in the background and swap together."""

    def __init__(self, cfg: RefreshConfig, corpus_dir: str, store: IndexStore, retriever: Retriever):
        self.cfg, self.store, self.retriever = cfg, store, retriever
        self.loader = VersionLoader(store, retriever.corpus)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.scheduler = RefreshScheduler(cfg, corpus_dir, store) if rank == 0 else None
        self.stopping: Optional[RefreshFailedError] = None  # why training stops, once it must
        # at the end of training, also in processes torch.multiprocessing spawned (atexit does not run there)
        multiprocessing.util.Finalize(self, self.close, exitpriority=10)

    def after_update(self, model, num_updates: int) -> None:
        """Every rank, after each update: launch (rank 0), load and swap together. Never raises for a refresh
        that failed; after ``--refresh-max-failures`` in a row, stops training (see :meth:`_stop`)."""
        if self.stopping is not None:
            return
        in_use = self.retriever.version
        if self.scheduler is not None:
            self.scheduler.step(model, num_updates, in_use)
        self.loader.poll(in_use)
        failed = self.scheduler is not None and self.scheduler.failed_out
        ready = self.loader.ready  # read once: the loader may hold a newer one by the time all agree
        version, abort = agree(ready[0] if ready else 0, failed)
        if abort:
            self._stop(num_updates)
        elif version > in_use:
            self._swap(*ready, num_updates)

    def _stop(self, num_updates: int) -> None:
        """Stop training after this update, for too many failed refreshes in a row: fairseq then saves a
        checkpoint as at ``--max-update``, and :meth:`after_save` raises the error once it is saved. Without
        fairseq's training config (or with ``--no-save``) the error is raised at once."""
        why = self.scheduler.last_failure if self.scheduler else "see the log of rank 0"
        self.stopping = RefreshFailedError(f"index refresh failed {self.cfg.refresh_max_failures} times in a row "
                                           f"(--refresh-max-failures); {why}")
        self.close()
        root = training_config(self.cfg)
        if root is None or root.checkpoint.no_save:
            raise self.stopping
        logger.error("%s; stopping training at update %d, after saving a checkpoint", self.stopping, num_updates)
        root.optimization.max_update = num_updates  # fairseq's loop saves and stops (validate_and_save)

    def after_save(self) -> None:
        """After a checkpoint is saved (rank 0): raise the error that stopped training, if one did."""
        if self.stopping is not None:
            raise self.stopping

    def _swap(self, version: int, index, manifest: dict, num_updates: int) -> None:
        self.loader.swapped_in(version)
        update = embedded_at(self.store, manifest)
        self.retriever.use(index, version, update)
        started = self.scheduler.started.get(update) if self.scheduler else None
        took = ""
        manifest_path = os.path.join(self.store.version_dir(version), "manifest.json")
        if started is not None and os.path.exists(manifest_path):
            took = f", refresh took {os.path.getmtime(manifest_path) - started:.1f}s"
        logger.info("index refresh: swapped in %s at update %d (weights of update %d%s, staleness %d updates)",
                    self.store.version_dir(version), num_updates, update, took, num_updates - update)
        if self.scheduler is not None:
            try:
                self.store.prune(self.cfg.refresh_keep, in_use=version)
            except OSError as e:  # an unwritable INDEX keeps its old versions; training goes on
                logger.warning("index refresh: could not prune old versions of %s: %s", self.store.root,
                               describe_fault(e))

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
            self.scheduler = None
        self.loader.close()


def embedded_at(store: IndexStore, manifest: dict) -> int:
    """The update of this run that a version's embeddings come from: its refresh snapshot's, or 0 for one
    built before the run (from BERT, ICT or another run's checkpoint)."""
    path = manifest["encoder"].get("path") or ""
    refreshed = os.path.dirname(os.path.dirname(path)) == os.path.abspath(os.path.join(store.root, REFRESH_DIR))
    return int(manifest["encoder"].get("update") or 0) if refreshed else 0


def restore_version(store: IndexStore, retriever: Retriever, version: Optional[int], update: Optional[int]) -> None:
    """On resume: use the index version a checkpoint was saved with, or the newest one if it is gone."""
    if not version:
        return
    if version not in store.versions():
        manifest = store.manifest(retriever.version)
        retriever.use(retriever.index, retriever.version, embedded_at(store, manifest))
        logger.warning("the checkpoint was trained with %s, which no longer exists (pruned?); going on with "
                       "v%s, the newest", store.version_dir(version), retriever.version)
        return
    index = retriever.index
    if version != retriever.version:
        index, _ = store.load(version, corpus=retriever.corpus)
    retriever.use(index, version, update or 0)
    logger.info("resumed with %s, the index version saved in the checkpoint", store.version_dir(version))
