"""Corpus preparation as a Slurm job array through submitit: one task per shard, then the merge.

    python slurm/prepare_corpus.py --cpus-per-task 16 --mem 32G --time 600 -- \
        realm-prepare-corpus enwiki.jsonl.gz --vocab vocab.txt --out CORPUS --num-shards 64

The ``realm-prepare-corpus`` command line gives ``--num-shards`` (and every other corpus option, once); task i
of the array runs it with ``--shard-id i`` (in-process, ``--workers`` = the task's CPUs unless given), and a
merge job, held by Slurm until every task succeeded (``--dependency=afterok``), runs it with ``--merge``. The
shards are written to CORPUS.shards and a resubmission skips those already written
(:mod:`realm_fairseq.data.corpus_shards`). Slurm resources are :class:`~realm_fairseq.launch.submit.SlurmConfig`'s
(the training jobs' options; ``--nodes`` must be 1 and GPUs are not used), for each task and for the merge.
"""
import argparse
import logging
import os
import shlex
import sys
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from fairseq.dataclass import FairseqDataclass
from fairseq.dataclass.utils import gen_parser_from_dataclass

from realm_fairseq.launch.submit import SlurmConfig, command_of, executor_parameters, python_command

logger = logging.getLogger(__name__)

PROG = "realm-prepare-corpus"
#: SlurmConfig defaults that differ for corpus preparation (CPU tasks, no requeue: a rerun skips written shards)
DEFAULTS = dict(gpus_per_node=0, cpus_per_task=8, mem="16G", time=600, job_name="realm-prepare-corpus",
                max_requeues=0)


@dataclass
class ArrayConfig(FairseqDataclass):
    array_parallelism: int = field(default=256, metadata={"help": "shard tasks Slurm runs at once"})


def shard_argv(command: List[str], cpus: int) -> Tuple[List[str], int]:
    """The arguments of the ``realm-prepare-corpus`` command line (checked by its parser) with ``--workers``
    set to ``cpus`` unless given, and its ``--num-shards``."""
    from realm_fairseq.cli.prepare_corpus import parse

    if not command or os.path.basename(command[0]) != PROG:
        raise ValueError(f"expected a {PROG} command line after the Slurm options; got {' '.join(command) or 'nothing'!r}")
    argv = command[1:]
    try:
        _, cfg = parse(argv)
    except SystemExit:
        raise ValueError(f"the {PROG} command line does not parse (its error is above)") from None
    if cfg.merge or cfg.shard_id:
        raise ValueError("drop --shard-id and --merge: each array task gets its --shard-id, the merge job --merge")
    cfg.validate()
    if not any(a == "--workers" or a.startswith("--workers=") for a in argv):
        argv += ["--workers", str(cpus)]
    return argv + ["--no-progress"], cfg.num_shards


def prepare_shard(argv: List[str], shard_id: int) -> dict:
    """A submitit job: prepare shard ``shard_id`` (``realm-prepare-corpus ... --shard-id``); its record."""
    from realm_fairseq.cli import log_to_stderr
    from realm_fairseq.cli.prepare_corpus import run

    log_to_stderr()
    return run(argv + ["--shard-id", str(shard_id)])["counts"]


def merge_shards(argv: List[str]) -> dict:
    """A submitit job: join the shards into CORPUS (``realm-prepare-corpus ... --merge``); its counts."""
    from realm_fairseq.cli import log_to_stderr
    from realm_fairseq.cli.prepare_corpus import run

    log_to_stderr()
    return run(argv + ["--merge"])["counts"]


def check_resources(cfg: SlurmConfig) -> None:
    if cfg.nodes != 1 or cfg.tasks_per_node not in (0, 1):
        raise ValueError(f"--nodes {cfg.nodes} --tasks-per-node {cfg.tasks_per_node}: each shard is one task on "
                         f"one node (its --workers use --cpus-per-task); give --nodes 1")
    if cfg.gpus_per_node:
        raise ValueError(f"--gpus-per-node {cfg.gpus_per_node}: corpus preparation runs on CPUs; give 0")


def dry_run_text(cfg: SlurmConfig, argv: List[str], num_shards: int) -> str:
    command = shlex.join([PROG, *argv])
    lines = [f"# array of {num_shards} task(s), resources: " + " ".join(
        f"--{k.replace('_', '-')}={v}" for k, v in sorted(executor_parameters(cfg).items()) if k != "srun_args")]
    lines += [f"{command} --shard-id {i}" for i in range(num_shards)]
    if num_shards > 1:
        lines.append(f"# then, once every task succeeded (--dependency=afterok):\n{command} --merge")
    return "\n".join(lines) + "\n"


def submit(cfg: SlurmConfig, command: List[str], array: Optional[ArrayConfig] = None):
    """Submit the array of shard tasks and the merge job; returns (shard jobs, merge job or None), or None with
    ``dry_run``."""
    import submitit

    array = array or ArrayConfig()
    check_resources(cfg)
    argv, num_shards = shard_argv(command, cfg.cpus_per_task)
    if cfg.dry_run:
        print(dry_run_text(cfg, argv, num_shards), end="")
        return None
    executor = submitit.SlurmExecutor(folder=os.path.join(os.path.abspath(cfg.log_dir), "%j"), max_num_timeout=0,
                                      python=python_command())
    executor.update_parameters(**executor_parameters(cfg), array_parallelism=array.array_parallelism)
    with submitit.helpers.clean_env():  # submitted from inside a Slurm job: do not inherit its allocation
        shard_jobs = executor.map_array(prepare_shard, [argv] * num_shards, list(range(num_shards)))
        merge_job = None
        if num_shards > 1:
            array_id = shard_jobs[0].job_id.split("_")[0]
            executor.update_parameters(dependency=f"afterok:{array_id}", job_name=f"{cfg.job_name}-merge")
            merge_job = executor.submit(merge_shards, argv)
    logger.info("submitted %d shard task(s)%s", num_shards,
                f" and merge job {merge_job.job_id}" if merge_job else "")
    return shard_jobs, merge_job


def watch_text(shard_jobs, merge_job) -> str:
    array_id = shard_jobs[0].job_id.split("_")[0]
    lines = [f"submitted array {array_id} ({len(shard_jobs)} shard task(s))"]
    if merge_job is not None:
        lines.append(f"submitted merge job {merge_job.job_id} (after the array succeeds)")
    last = merge_job or shard_jobs[-1]
    lines.append(f"  logs: {os.path.dirname(str(shard_jobs[0].paths.stdout))} and {last.paths.stdout}")
    lines.append(f"  watch: squeue -j {array_id}{',' + merge_job.job_id if merge_job else ''}; sacct -j {array_id}")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slurm/prepare_corpus.py",
        usage="python slurm/prepare_corpus.py [SLURM OPTIONS] [--] realm-prepare-corpus INPUT... --vocab V --out "
              "CORPUS --num-shards N [OPTIONS]",
        description="Prepare a CORPUS as a Slurm job array through submitit: one task per --num-shards shard "
        "(realm-prepare-corpus --shard-id), then a merge job (--merge) once every task succeeded.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    gen_parser_from_dataclass(parser, SlurmConfig())
    gen_parser_from_dataclass(parser, ArrayConfig())
    parser.set_defaults(**DEFAULTS)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the realm-prepare-corpus command line")
    return parser


def cli_main(argv: Optional[List[str]] = None) -> None:
    from realm_fairseq.cli import config_from_args, log_to_stderr

    log_to_stderr()
    args = build_parser().parse_args(argv)
    slurm, array = config_from_args(SlurmConfig, args), config_from_args(ArrayConfig, args)
    try:
        submitted = submit(slurm, command_of(args), array)
    except ValueError as e:
        sys.exit(f"slurm/prepare_corpus.py: error: {e}")
    if submitted is not None:
        print(watch_text(*submitted), end="")
