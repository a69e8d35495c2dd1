"""Submit a ``fairseq-train`` / ``realm-train`` command line to Slurm through submitit.

REALM pre-training needs many accelerators for days (section 4.3: 64 TPUs for 200k updates, 16 more
re-embedding the corpus). :func:`submit` turns Slurm resources (:class:`SlurmConfig`: the job's
:class:`~realm_fairseq.slurm.SlurmResources` and how to submit it) and a training
command line into one submitit job of ``nodes x tasks_per_node`` tasks, one per GPU (or per CPU rank
with ``--cpu``): every task runs :class:`~realm_fairseq.launch.training_job.TrainingJob`, which loads this
plugin, takes its rank from ``SLURM_PROCID`` (fairseq's Slurm initialisation) and, warned of a time
limit or a preemption, saves ``checkpoint_last.pt`` and requeues itself (at most ``--max-requeues``
times). ``python slurm/submit.py`` is the command line; ``--dry-run`` prints the sbatch script and the
training command instead of submitting.

Index refreshes (``--refresh-launcher submitit``) are submitted by the training job itself, from inside
its allocation, with their own ``--refresh-slurm-*`` resources.
"""
import argparse
import logging
import os
import random
import shlex
import sys
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from fairseq.dataclass.utils import gen_parser_from_dataclass

from realm_fairseq.launch.training_job import TrainingJob, option_value
from realm_fairseq.slurm import SlurmResources

logger = logging.getLogger(__name__)

TRAINERS = ("fairseq-train", "realm-train")
PORTS = (20000, 60000)  # --distributed-port is drawn from this range when the command has none
# Slurm's warning may come up to a minute early (its timer ticks every 30 s), possibly before a task has
# installed submitit's handler; SIGUSR2's default action would end the task, so tasks start ignoring it
IGNORE_WARNING_AT_START = "bash -c 'trap \"\" USR2; exec \"$0\" \"$@\"'"


@dataclass
class SlurmConfig(SlurmResources):
    """A training job's Slurm resources (:class:`~realm_fairseq.slurm.SlurmResources`) and how to submit it."""

    log_dir: str = field(
        default="slurm_logs", metadata={"help": "folder of submitit's files; each job's logs are in LOG_DIR/JOBID"}
    )
    signal_delay_s: int = field(
        default=120, metadata={"help": "Slurm warns the job this many seconds before its time limit: time "
                               "enough to finish an update and save checkpoint_last.pt"}
    )
    max_requeues: int = field(
        default=3, metadata={"help": "times the job requeues itself after a time limit or a preemption"}
    )
    dry_run: bool = field(default=False, metadata={"help": "print the sbatch script and the training "
                                                   "command; submit nothing"})


def training_argv(cfg: SlurmConfig, command: List[str]) -> Tuple[List[str], int]:
    """The arguments every task trains with (the command's, plus the distributed ones), and the world size."""
    if not command or os.path.basename(command[0]) not in TRAINERS:
        raise ValueError(f"expected a training command line after the Slurm options, starting with one of "
                         f"{', '.join(TRAINERS)}; got {' '.join(command) or 'nothing'!r}")
    argv = command[1:]
    tasks = cfg.ntasks_per_node
    if cfg.gpus_per_node and cfg.tasks_per_node not in (0, cfg.gpus_per_node):
        raise ValueError(f"--tasks-per-node {cfg.tasks_per_node}: with GPUs there is one task per GPU "
                         f"(--gpus-per-node {cfg.gpus_per_node})")
    cpu = "--cpu" in argv
    if cfg.gpus_per_node == 0 and not cpu:
        raise ValueError("--gpus-per-node 0 trains on CPU: add --cpu to the training command")
    if cfg.gpus_per_node and cpu:
        raise ValueError(f"--gpus-per-node {cfg.gpus_per_node} but the training command has --cpu")
    if cfg.max_requeues and "--no-save" in argv:
        raise ValueError("a requeued job resumes from its checkpoint: drop --no-save, or pass --max-requeues 0")
    world = cfg.nodes * tasks
    given = option_value(argv, "--distributed-world-size")
    if given is not None and int(given) != world:
        raise ValueError(f"the command has --distributed-world-size {given}, but the job has {world} tasks "
                         f"(--nodes {cfg.nodes} x {tasks} per node)")
    extra = [] if given is not None else ["--distributed-world-size", str(world)]
    if world > 1 and option_value(argv, "--distributed-port") is None:
        extra += ["--distributed-port", str(random.SystemRandom().randrange(*PORTS))]
    if world > 1 and cpu:  # fairseq's defaults (nccl, pytorch_ddp) fail on CPU
        for name, value in (("--distributed-backend", "gloo"), ("--ddp-backend", "legacy_ddp")):
            if option_value(argv, name) is None:
                extra += [name, value]
    return argv + extra, world


def executor_parameters(cfg: SlurmConfig) -> dict:
    """submitit ``SlurmExecutor.update_parameters`` keywords (sbatch options) for ``cfg``."""
    return dict(cfg.sbatch_parameters(), signal_delay_s=cfg.signal_delay_s,
                srun_args=["--kill-on-bad-exit=1"])  # a failed rank ends the job; the others would wait on it


def python_command() -> str:
    return f"{IGNORE_WARNING_AT_START} {shlex.quote(sys.executable)}"


def dry_run_text(cfg: SlurmConfig, argv: List[str]) -> str:
    """The sbatch script submitit would write and the command every task runs."""
    from submitit.slurm.slurm import _make_sbatch_string  # the text SlurmExecutor writes

    folder = os.path.join(os.path.abspath(cfg.log_dir), "%j")
    script = _make_sbatch_string(command=f"{python_command()} -u -m submitit.core._submit {folder}",
                                 folder=folder, **executor_parameters(cfg))
    return (f"{script}\n# every task runs, in-process (plugin loaded, rank from SLURM_PROCID; requeued at most "
            f"{cfg.max_requeues} times):\nrealm-train {shlex.join(argv)}\n")


def submit(cfg: SlurmConfig, command: List[str]):
    """Submit ``command`` (``realm-train ARGS`` or ``fairseq-train ARGS``) as a Slurm job with the resources
    of ``cfg``; returns the submitit job (None with ``dry_run``)."""
    import submitit

    argv, world = training_argv(cfg, command)
    if cfg.dry_run:
        print(dry_run_text(cfg, argv), end="")
        return None
    executor = submitit.SlurmExecutor(folder=os.path.join(os.path.abspath(cfg.log_dir), "%j"),
                                      max_num_timeout=cfg.max_requeues, python=python_command())
    executor.update_parameters(**executor_parameters(cfg))
    job = executor.submit(TrainingJob(argv, cfg.max_requeues))
    logger.info("submitted job %s: %d task(s) on %d node(s)", job.job_id, world, cfg.nodes)
    return job


def watch_text(job) -> str:
    """Where a submitted job's logs are and how to follow it."""
    return (f"submitted job {job.job_id}\n"
            f"  logs (rank 0): {job.paths.stdout} and {job.paths.stderr}\n"
            f"  watch: squeue -j {job.job_id}; sacct -j {job.job_id}; tail -f {job.paths.stdout}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slurm/submit.py",
        usage="python slurm/submit.py [SLURM OPTIONS] [--] realm-train|fairseq-train TRAINING ARGS",
        description="Submit fairseq-train / realm-train (this plugin loaded) to Slurm through submitit: one "
        "task per GPU, requeued with its checkpoint on a time limit or a preemption.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    gen_parser_from_dataclass(parser, SlurmConfig())
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the training command line")
    return parser


def command_of(args: argparse.Namespace) -> List[str]:
    """The command line given after the Slurm options (and an optional ``--``)."""
    return args.command[1:] if args.command[:1] == ["--"] else args.command


def cli_main(argv: Optional[List[str]] = None) -> None:
    from realm_fairseq.cli import config_from_args
    from realm_fairseq.cli.train import use_fairseq_train_logging

    use_fairseq_train_logging()
    args = build_parser().parse_args(argv)
    cfg = config_from_args(SlurmConfig, args)
    command = command_of(args)
    try:
        job = submit(cfg, command)
    except ValueError as e:
        sys.exit(f"slurm/submit.py: error: {e}")
    if job is not None:
        print(watch_text(job), end="")
