"""One task of a Slurm training job: ``fairseq-train`` in-process, stopped and requeued when warned.

:class:`TrainingJob` is what :mod:`realm_fairseq.launch.submit` hands to submitit; every task of the job
runs it (one per GPU, or per CPU rank with ``--cpu``), and fairseq reads its rank from ``SLURM_PROCID``.
Training runs in a thread of its own, so that the main thread stays free for submitit's signal handler:
when Slurm warns the job (``SIGUSR2``, ``--signal-delay-s`` before the time limit, or on preemption),
submitit calls :meth:`TrainingJob.checkpoint` on rank 0, which asks training to stop
(:mod:`realm_fairseq.launch.graceful_stop`), waits until ``checkpoint_last.pt`` holds the last update, and
returns the same job for submitit to requeue; fairseq resumes from that checkpoint, the index version of
``realm_pretrain`` included. After ``max_requeues`` requeues the job ends instead, with its checkpoint saved.

Long pre-training runs (REALM, section 4.3: 200k updates) need this to survive time limits and preemption.
"""
import logging
import threading
from dataclasses import dataclass
from typing import List, Optional

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from realm_fairseq.launch.graceful_stop import StopRequest, stop_when_requested

logger = logging.getLogger(__name__)


def option_value(argv: List[str], name: str) -> Optional[str]:
    """The value of ``--name V`` or ``--name=V`` in a command line (the last one), else None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1:]
    return value


def cpu_rank_argv(argv: List[str]) -> List[str]:
    """For a distributed CPU run, this task's rank and the rendezvous on the job's first node.

    fairseq's Slurm initialisation reads the rank from ``SLURM_PROCID`` but also picks the GPU
    ``SLURM_LOCALID`` (and fails without CUDA), so CPU ranks get them explicitly."""
    world = int(option_value(argv, "--distributed-world-size") or 1)
    if "--cpu" not in argv or world == 1 or option_value(argv, "--distributed-init-method"):
        return []
    env = submitit.JobEnvironment()
    master = f"tcp://{env.hostnames[0]}:{option_value(argv, '--distributed-port')}"
    return ["--distributed-init-method", master, "--distributed-rank", str(env.global_rank),
            "--distributed-no-spawn"]


@dataclass
class TrainingJob(Checkpointable):
    """``fairseq-train ARGV`` on every task of a submitit job, requeued at most ``max_requeues`` times."""

    argv: List[str]  # fairseq-train arguments, distributed ones included
    max_requeues: int
    requeues: int = 0  # how many times this job was requeued already

    def __call__(self) -> Optional[int]:
        """Train; the update the run stopped at when it was asked to stop, else None."""
        from realm_fairseq.cli.train import use_fairseq_train_logging

        use_fairseq_train_logging()
        logging.getLogger("submitit").propagate = False  # it has a handler of its own: log its lines once
        self._stop = StopRequest()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._train, name="fairseq-train")
        self._thread.start()
        while self._thread.is_alive():  # a join with a timeout lets the signal handler in
            self._thread.join(timeout=1.0)
        if self._error is not None:
            raise self._error
        return self._stop.stopped_at

    def _train(self) -> None:
        from realm_fairseq.cli.train import train

        if self.requeues:
            logger.info("requeued job, run %d of at most %d: resuming from the last checkpoint",
                        self.requeues + 1, self.max_requeues + 1)
        try:
            with stop_when_requested(self._stop):
                train(self.argv + cpu_rank_argv(self.argv))
        except BaseException as e:  # noqa: BLE001 - raised again in the main thread, where submitit sees it
            self._error = e

    def checkpoint(self) -> Optional[DelayedSubmission]:
        """Called by submitit on rank 0 when the job is warned: stop training with its checkpoint saved,
        then requeue (this job again) unless ``max_requeues`` is reached (None: not requeued)."""
        started = getattr(self, "_thread", None)
        if started is not None:
            self._stop.set()
            self._thread.join()
            if self._error is not None:
                logger.error("training failed while stopping: %r", self._error)
                return None
            logger.info("checkpoint saved at update %s", self._stop.stopped_at)
        if self.requeues >= self.max_requeues:
            logger.warning("not requeued: --max-requeues %d reached; the checkpoint is saved, submit the same "
                           "command again to go on", self.max_requeues)
            return None
        return DelayedSubmission(TrainingJob(self.argv, self.max_requeues, self.requeues + 1))
