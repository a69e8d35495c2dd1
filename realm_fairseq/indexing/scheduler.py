"""Rank 0's part of an index refresh (REALM, section 3.3): snapshot the document embedder, launch, watch.

Every ``--refresh-interval-updates`` updates :class:`RefreshScheduler` copies the document embedder's
weights, writes them in the background as a snapshot (:func:`realm_fairseq.models.loading.snapshot_state`)
and launches a refresh through ``--refresh-launcher`` (:mod:`realm_fairseq.indexing.launchers`); at most
one is in flight, a refresh due meanwhile is skipped and logged. It counts failures in a row and tidies the
work directories of finished refreshes.
"""
import logging
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional, Tuple

import torch

from realm_fairseq.atomic_io import atomic_file, describe_fault, write_faults_named
from realm_fairseq.indexing.config import RefreshConfig, slurm_resources
from realm_fairseq.indexing.launchers import (
    LocalLauncher, RefreshJob, RefreshPlan, SubmititLauncher, physical_devices,
)
from realm_fairseq.models.loading import snapshot_state
from realm_fairseq.retrieval.versions import IndexStore

logger = logging.getLogger(__name__)

REFRESH_DIR = "refresh"  # INDEX/refresh/u<update>/: snapshot, plan, log and job files of one refresh
SNAPSHOT = "snapshot.pt"


def make_launcher(cfg: RefreshConfig):
    if cfg.refresh_launcher == "local":
        return LocalLauncher()
    cluster = None if cfg.refresh_submitit_cluster == "auto" else cfg.refresh_submitit_cluster
    return SubmititLauncher(slurm_resources(cfg), cluster)


def write_snapshot(state: dict, path: str) -> str:
    """Write ``state`` to ``path`` by rename; a failed write raises an OSError naming its cause (torch reports
    a full disk as ``unexpected pos 64 vs 0``, unless it writes through a Python file object)."""
    with atomic_file(path, force=True) as tmp, write_faults_named(path), open(tmp, "wb") as f:
        torch.save(state, f)
    return path


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
