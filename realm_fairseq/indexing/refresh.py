"""Asynchronous index refresh during pre-training (REALM, section 3.3, "asynchronous MIPS refreshes").

The index proposes candidates from embeddings an older document embedder made; REALM re-embeds the
corpus every few hundred updates in separate jobs while training goes on, and swaps the new index in
(its ablation, section 4.4, shows what a staler index costs). Here, with ``--refresh-interval-updates N``:

- every N updates rank 0 copies the document embedder's weights, writes them in the background as a
  snapshot (a checkpoint ``realm-build-index --checkpoint`` reads) and launches a refresh through
  ``--refresh-launcher`` (:mod:`realm_fairseq.indexing.launchers`); at most one is in flight,
  a refresh due meanwhile is skipped and logged;
- every rank watches the INDEX for a newly committed version and loads it in a background thread;
  after each update one small all-reduce tells whether every rank holds the same new version, and if
  so all of them switch to it before the next update;
- a failed or killed refresh leaves training on the current index and logs the refresher's log; so does
  a committed version that a rank cannot load (e.g. its GPU ran out of memory or was lost); after
  ``--refresh-max-failures`` consecutive failures of either kind every rank stops with an error.
  Versions beyond ``--refresh-keep`` are pruned, never the one in use. At the end a refresh in flight is
  cancelled or waited for (``--refresh-at-end``).

Training itself never waits for a refresh: the snapshot is written, the job polled and the new index
loaded off the training thread.
"""
import logging
import multiprocessing.util
import os
from typing import Optional, Tuple

from omegaconf import DictConfig

from realm_fairseq.atomic_io import describe_fault
from realm_fairseq.distributed import all_ranks_max, rank
from realm_fairseq.errors import StoppedError
from realm_fairseq.indexing.config import RefreshConfig
from realm_fairseq.indexing.scheduler import REFRESH_DIR, RefreshScheduler
from realm_fairseq.retrieval.retriever import Retriever
from realm_fairseq.retrieval.version_loader import VersionLoader
from realm_fairseq.retrieval.versions import IndexStore

logger = logging.getLogger(__name__)


class RefreshFailedError(StoppedError):
    """Too many refreshes in a row failed (``--refresh-max-failures``)."""


def training_config(cfg) -> Optional[DictConfig]:
    """fairseq's whole training config, which the task config ``cfg`` is part of (None outside fairseq)."""
    root = cfg._get_root() if isinstance(cfg, DictConfig) else None
    return root if root is not None and "optimization" in root and "checkpoint" in root else None


def agree(ready: int, abort: bool) -> Tuple[int, bool]:
    """One small all-reduce over the ranks: the version every rank has ready (0 unless all have the same
    one) and whether any rank must stop."""
    highest, negated_lowest, abort = all_ranks_max([ready, -ready, int(abort)])
    return (highest if highest == -negated_lowest else 0), bool(abort)


class IndexRefresher:
    """Every rank's part: after each update, launch (rank 0), load in the background and swap together."""

    def __init__(self, cfg: RefreshConfig, corpus_dir: str, store: IndexStore, retriever: Retriever):
        self.cfg, self.store, self.retriever = cfg, store, retriever
        self.loader = VersionLoader(store, retriever.corpus, devices=retriever.devices,
                                    precision=retriever.precision)
        self.scheduler = RefreshScheduler(cfg, corpus_dir, store) if rank() == 0 else None
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
        failed = self._failure_here() is not None
        ready = self.loader.ready  # read once: the loader may hold a newer one by the time all agree
        version, abort = agree(ready[0] if ready else 0, failed)
        if abort:
            self._stop(num_updates)
        elif version > in_use:
            self._swap(*ready, num_updates)

    def _failure_here(self) -> Optional[str]:
        """Why ``--refresh-max-failures`` refreshes in a row failed to load here or to build (rank 0), or None."""
        if self.loader.failures >= self.cfg.refresh_max_failures:
            return self.loader.last_failure
        if self.scheduler is not None and self.scheduler.failed_out:
            return self.scheduler.last_failure
        return None

    def _stop(self, num_updates: int) -> None:
        """Stop training after this update, for too many failed refreshes in a row: fairseq then saves a
        checkpoint as at ``--max-update``, and :meth:`after_save` raises the error once it is saved. Without
        fairseq's training config (or with ``--no-save``) the error is raised at once."""
        why = self._failure_here() or "see the logs of the other ranks (rank 0 launches the refreshes)"
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
        index, _ = store.load(version, corpus=retriever.corpus, devices=retriever.devices,
                              precision=retriever.precision)
    retriever.use(index, version, update or 0)
    logger.info("resumed with %s, the index version saved in the checkpoint", store.version_dir(version))
