"""Load a newly committed index version in a background thread, ready to be swapped in (REALM, section 3.3).

Every rank watches the INDEX while training goes on; loading a version (reading and building its MIPS
index) happens off the training thread, so that training never waits for it. A version that fails to load
(pruned meanwhile, built from another corpus, a damaged file, or a GPU that ran out of memory or was lost:
torch raises those as RuntimeError) is logged and skipped, and training goes on with the version in use;
:attr:`VersionLoader.failures` counts such versions in a row, which the refresh's
``--refresh-max-failures`` rule counts as failed refreshes.
"""
import logging
import threading
import time
from typing import Optional, Tuple

from realm_fairseq.atomic_io import describe_fault
from realm_fairseq.retrieval.contract import Searcher
from realm_fairseq.retrieval.torch_search import DEFAULT_PRECISION
from realm_fairseq.retrieval.versions import IndexStore

logger = logging.getLogger(__name__)


class VersionLoader:
    """Loads the newest committed version of an INDEX in a background thread, once it is newer than the
    one in use. Looks at the directory at most every ``poll_s`` seconds."""

    def __init__(self, store: IndexStore, corpus, poll_s: float = 1.0, devices: str = "cpu",
                 precision: str = DEFAULT_PRECISION):
        self.store, self.corpus, self.poll_s = store, corpus, poll_s
        self.devices, self.precision = devices, precision
        self._lock = threading.Lock()
        self._ready: Optional[Tuple[int, Searcher, dict]] = None  # (version, its search, manifest)
        self._thread: Optional[threading.Thread] = None
        self._looked = 0.0
        self._bad = set()  # versions that failed to load: not retried
        self.failures = 0  # versions in a row that failed to load (0 after one loads)
        self.last_failure = ""  # why the latest of them failed

    @property
    def ready(self) -> Optional[Tuple[int, Searcher, dict]]:
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
            index, manifest = self.store.load(version, corpus=self.corpus, devices=self.devices,
                                              precision=self.precision)
        except (OSError, ValueError, RuntimeError) as e:  # pruned, another corpus, a GPU out of memory or lost
            with self._lock:
                self.failures += 1
                self.last_failure = (f"could not load {self.store.version_dir(version)} on {self.devices}: "
                                     f"{describe_fault(e)}")
                self._bad.add(version)
            logger.warning("index refresh: %s (%d version(s) in a row); training goes on with the version in use",
                           self.last_failure, self.failures)
            return
        with self._lock:
            self._ready = (version, index, manifest)
            self.failures = 0

    def swapped_in(self, version: int) -> None:
        """Forget what was loaded up to ``version``, which is now in use."""
        with self._lock:
            if self._ready is not None and self._ready[0] <= version:
                self._ready = None

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()
