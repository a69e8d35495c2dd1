"""Where an index refresh runs: a background process on this machine, or submitit jobs (REALM, section 3.3).

REALM re-embeds the corpus "asynchronously" in jobs of their own while training goes on. A refresh is
described by a :class:`RefreshPlan` (the snapshot of the document embedder's weights, the corpus, the
INDEX and how to shard the work) and run by a launcher:

- :class:`LocalLauncher`: one background process (``python -m realm_fairseq.indexing.worker``)
  in a session of its own, which embeds the shards in parallel processes, one per ``--refresh-devices``
  GPU (CPU if none), and commits the version. It dies with the trainer (``PR_SET_PDEATHSIG`` on Linux).
- :class:`SubmititLauncher`: an array of embedding jobs, one per shard, then a merge job that commits
  the version, through submitit (Slurm, or submitit's local executor where there is no Slurm).

Either way each piece of work is a call of :func:`~realm_fairseq.indexing.build.run_build`, the function
``realm-build-index`` calls, with the build its flags would describe (:meth:`RefreshPlan.build_request`),
so a refresh commits exactly what ``realm-build-index --checkpoint SNAPSHOT`` would. Launchers return a
:class:`RefreshJob` that the trainer polls without blocking, or cancels.
"""
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from realm_fairseq.atomic_io import FAULTS, write_json
from realm_fairseq.indexing.build import BuildRequest, run_build
from realm_fairseq.retrieval.mips import DEFAULT_INDEX_TYPE, check_options
from realm_fairseq.slurm import SlurmResources

logger = logging.getLogger(__name__)

LOG_NAME = "refresh.log"
PLAN_NAME = "plan.json"


@dataclass
class RefreshPlan:
    """One refresh: embed ``corpus`` with the document embedder in ``snapshot`` and commit a version of
    ``index_dir`` built like the version in use (``index_type``, ``index_options``)."""

    update: int  # the update the snapshot's weights come from
    snapshot: str
    corpus: str
    index_dir: str
    workdir: str  # plan, log and job files of this refresh
    index_type: str = DEFAULT_INDEX_TYPE
    index_options: Dict[str, int] = field(default_factory=dict)
    num_shards: int = 1
    devices: List[str] = field(default_factory=list)  # CUDA_VISIBLE_DEVICES entries for the shards; [] = CPU

    @property
    def path(self) -> str:
        return os.path.join(self.workdir, PLAN_NAME)

    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, LOG_NAME)

    def save(self) -> str:
        os.makedirs(self.workdir, exist_ok=True)
        write_json(self.path, asdict(self))
        return self.path

    @classmethod
    def load(cls, path: str) -> "RefreshPlan":
        """The plan in ``path``; a ValueError naming the file and field if it is not one."""
        try:
            with open(path, encoding="utf-8") as f:
                fields = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        known = set(cls.__dataclass_fields__)
        if not isinstance(fields, dict) or not set(fields) <= known:
            unknown = sorted(set(fields) - known) if isinstance(fields, dict) else fields
            raise ValueError(f"{path}: unknown field(s) {unknown}; expected {', '.join(sorted(known))}")
        plan = cls(**fields)
        plan.check(path)
        return plan

    def check(self, path: str) -> None:
        """Raise a ValueError naming ``path`` and the field unless the plan can be run."""
        try:
            check_options(self.index_type, self.index_options)
        except (ValueError, AttributeError) as e:
            raise ValueError(f"{path}: field index_type/index_options: {e}") from None
        if isinstance(self.num_shards, bool) or not isinstance(self.num_shards, int) or self.num_shards < 1:
            raise ValueError(f"{path}: field num_shards is {self.num_shards!r}, expected a positive integer")

    def shard_device(self, shard_id: int) -> Optional[str]:
        """The CUDA_VISIBLE_DEVICES entry shard ``shard_id`` runs on (round robin), None for CPU."""
        return self.devices[shard_id % len(self.devices)] if self.devices else None

    def build_request(self, shard_id: Optional[int] = None, merge: bool = False, device: str = "cpu") -> BuildRequest:
        """The build of one piece of this refresh: the whole build (one shard), shard ``shard_id``, or the
        merge; what ``realm-build-index --checkpoint SNAPSHOT`` with the same flags runs."""
        sharded = merge or shard_id is not None
        return BuildRequest(corpus=self.corpus, out=self.index_dir, checkpoint=self.snapshot,
                            index_type=self.index_type, index_options=dict(self.index_options), device=device,
                            shard_id=shard_id or 0, num_shards=self.num_shards if sharded else 1, merge=merge,
                            progress=False)


def log_tail(path: str, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ('' if it does not exist)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except FileNotFoundError:
        return ""


FULL_BELOW_BYTES = 1 << 20  # a file system with less free space than this is taken as full


def silent_failure(log_dir: str) -> str:
    """What a refresh whose log says nothing of its death died of, where that can be seen from outside it: an
    ``error:`` line naming a full disk when ``log_dir``'s file system has (almost) no space left (the refresher
    could not write its last words), else ''."""
    try:
        free = shutil.disk_usage(log_dir).free
    except OSError:
        return ""
    if free >= FULL_BELOW_BYTES:
        return ""
    return (f"error: {FAULTS[errno.ENOSPC]} ({os.strerror(errno.ENOSPC)}): {log_dir} has {free} bytes free, "
            f"too few for the refresh to write its error")


class RefreshJob:
    """A launched refresh. ``poll`` never blocks: None while it runs, then True (committed) or False.
    ``cancel`` ends it and what it started."""

    plan: RefreshPlan

    def poll(self) -> Optional[bool]:
        raise NotImplementedError

    def cancel(self) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        """Where it runs (pid or job ids), for the logs."""
        raise NotImplementedError

    def log(self) -> str:
        """The tail of the refresher's own log."""
        raise NotImplementedError

    def release(self) -> None:
        """Let go of what it holds, once it has finished or been cancelled (then only ``plan`` is left)."""
        raise NotImplementedError


@contextlib.contextmanager
def ctrl_c_held():
    """Hold a Ctrl-C (SIGINT) that comes inside the block and deliver it at the end.

    Objects dropped in the block run their finalizers (``__del__``) there, and Python prints and swallows
    a KeyboardInterrupt raised inside a finalizer: submitit's ``LocalJob.__del__`` would eat the user's
    Ctrl-C and training would go on. Only the main thread runs Python's signal handlers, so elsewhere the
    block needs no help."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    held = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            signal.raise_signal(signal.SIGINT)


# ---------------------------------------------------------------------------------------------- local
def physical_devices(devices: List[str]) -> List[str]:
    """``--refresh-devices`` ids as the trainer sees them -> entries for a child's CUDA_VISIBLE_DEVICES."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if not visible:
        return list(devices)
    entries = [v.strip() for v in visible.split(",")]
    for d in devices:
        if not d.isdigit() or int(d) >= len(entries):
            raise ValueError(f"--refresh-devices {','.join(devices)}: device {d} is not one of the "
                             f"{len(entries)} GPU(s) in CUDA_VISIBLE_DEVICES={visible}")
    return [entries[int(d)] for d in devices]


class LocalRefreshJob(RefreshJob):
    def __init__(self, plan: RefreshPlan):
        self.plan = plan
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(plan.devices))
        with open(plan.log_path, "w", encoding="utf-8") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "realm_fairseq.indexing.worker", plan.save(),
                 "--parent-pid", str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # its own process group: cancel() ends the worker and its shards
            )

    def poll(self) -> Optional[bool]:
        code = self.process.poll()
        return None if code is None else code == 0

    def cancel(self, grace_s: float = 10.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=grace_s)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # shard processes the worker started, if any are left in the group
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def release(self) -> None:
        with ctrl_c_held():  # Popen.__del__
            self.process = None

    def describe(self) -> str:
        return f"pid {self.process.pid}"

    def log(self) -> str:
        code = self.process.poll()
        status = "" if code is None else (f"exit code {code}" if code >= 0 else f"killed by signal {-code}")
        path = self.plan.log_path
        tail = log_tail(path)
        if code and "error: " not in tail:  # it died before it could say why (the disk filled up mid-line?)
            tail = "\n".join(filter(None, [tail.rstrip("\n"), silent_failure(os.path.dirname(path))]))
        return f"[{status}] {path}:\n{tail}"


class LocalLauncher:
    """Refreshes as background processes on this machine."""

    def launch(self, plan: RefreshPlan) -> RefreshJob:
        return LocalRefreshJob(plan)


# ---------------------------------------------------------------------------------------------- submitit
def embed_shard(plan: RefreshPlan, shard_id: int, device: str) -> None:
    """A submitit job: embed one shard of the corpus (``realm-build-index --shard-id``)."""
    run_build(plan.build_request(shard_id=shard_id if plan.num_shards > 1 else None, device=device))


def merge_shards(plan: RefreshPlan) -> None:
    """A submitit job: commit the embedded shards as a version (``realm-build-index --merge``)."""
    run_build(plan.build_request(merge=True))


class SubmititRefreshJob(RefreshJob):
    """The embedding array, then (once every shard succeeded) the merge job."""

    RESULT_GRACE_S = 60.0  # a finished Slurm job's result file may show up late on a network filesystem

    def __init__(self, plan: RefreshPlan, executor, device: str):
        import submitit

        self.plan, self.executor = plan, executor
        with submitit.helpers.clean_env():  # submitted from inside a Slurm job: do not inherit its allocation
            self.embed_jobs = executor.map_array(embed_shard, [plan] * plan.num_shards,
                                                 list(range(plan.num_shards)), [device] * plan.num_shards)
        self.merge_job = None
        self._finished_without_result: Dict[str, float] = {}

    def _outcome(self, job) -> Optional[bool]:
        if not job.done():
            return None
        if job.paths.result_pickle.exists():
            return job.exception() is None
        first_seen = self._finished_without_result.setdefault(job.job_id, time.time())
        return False if job.state == "INTERRUPTED" or time.time() - first_seen > self.RESULT_GRACE_S else None

    def poll(self) -> Optional[bool]:
        if self.merge_job is None:
            outcomes = [self._outcome(j) for j in self.embed_jobs]
            if False in outcomes:
                self.cancel()
                return False
            if None in outcomes:
                return None
            if self.plan.num_shards == 1:
                return True  # the single job committed the version itself
            import submitit

            with submitit.helpers.clean_env():
                self.merge_job = self.executor.submit(merge_shards, self.plan)
            logger.info("index refresh of update %d: shards embedded; merge job %s submitted",
                        self.plan.update, self.merge_job.job_id)
            return None
        return self._outcome(self.merge_job)

    def _jobs(self):
        return self.embed_jobs + ([self.merge_job] if self.merge_job is not None else [])

    def cancel(self) -> None:
        for job in self._jobs():
            if not job.done():
                job.cancel(check=False)

    def release(self) -> None:
        with ctrl_c_held():  # submitit's LocalJob.__del__
            self.embed_jobs, self.merge_job = [], None

    def describe(self) -> str:
        return "submitit job(s) " + ", ".join(j.job_id for j in self._jobs())

    def log(self) -> str:
        parts = []
        for job in self._jobs():
            for path in (job.paths.stderr, job.paths.stdout):
                tail = log_tail(str(path), 20)
                if tail:
                    parts.append(f"{path}:\n{tail}")
        return "\n".join(parts) or silent_failure(self.plan.workdir) or f"(no job logs under {self.plan.workdir})"


class SubmititLauncher:
    """Refreshes as submitit jobs: Slurm where ``sbatch`` exists, else submitit's local executor; each job
    asks for ``resources`` (:func:`~realm_fairseq.indexing.config.slurm_resources`)."""

    def __init__(self, resources: SlurmResources, cluster: Optional[str] = None):
        self.resources, self.cluster = resources, cluster

    def launch(self, plan: RefreshPlan) -> RefreshJob:
        import submitit

        executor = submitit.AutoExecutor(folder=os.path.join(plan.workdir, "submitit"), cluster=self.cluster)
        executor.update_parameters(**self.resources.auto_parameters())
        if executor.cluster == "debug":
            raise ValueError("--refresh-submitit-cluster debug runs jobs inside the trainer; use local or slurm")
        device = "cuda" if self.resources.gpus_per_node > 0 else "cpu"
        job = SubmititRefreshJob(plan, executor, device)
        with open(plan.log_path, "w", encoding="utf-8") as f:
            f.write(f"submitit ({executor.cluster}) jobs {job.describe()}; their logs are in {executor.folder}\n")
        return job
