"""The options of the asynchronous index refresh (REALM, section 3.3): ``--refresh-*`` of ``realm_pretrain``.

fairseq turns the fields of a task's dataclass into flat command-line flags, so the names users type
(``--refresh-interval-updates``, ``--refresh-slurm-gpus-per-job``, ...) are fields of :class:`RefreshConfig`.
A nested dataclass would be flattened without a prefix (``--refresh-slurm-gpus-per-job`` would become
``--gpus-per-node``), so the resources of a refresh job stay flat ``refresh_slurm_*`` fields here, and
:func:`slurm_resources` is the one place that turns them into the
:class:`~realm_fairseq.slurm.SlurmResources` the submitit launcher submits with.
"""
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from realm_fairseq.slurm import SlurmResources

REFRESH_JOB_NAME = "realm-refresh"  # the Slurm job name of every refresh job


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
        default=3, metadata={"help": "stop training after this many refreshes in a row failed (to build, or to "
                             "load on a rank: e.g. its GPU ran out of memory or was lost)"}
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


def check_config(cfg: RefreshConfig) -> None:
    for name, low in (("refresh_interval_updates", 0), ("refresh_shards", 0), ("refresh_max_failures", 1),
                      ("refresh_keep", 1)):
        if getattr(cfg, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: expected at least {low}")
    devices = [d.strip() for d in cfg.refresh_devices.split(",") if d.strip()]
    if any(not d.isdigit() for d in devices):
        raise ValueError(f"--refresh-devices {cfg.refresh_devices!r}: expected comma-separated GPU ids, e.g. 1,2")


def slurm_resources(cfg: RefreshConfig) -> SlurmResources:
    """What each refresh job asks for, from the ``--refresh-slurm-*`` options: one task on one node with
    ``--refresh-slurm-gpus-per-job`` GPUs (0: CPU), ``--refresh-slurm-cpus-per-job`` CPUs and
    ``--refresh-slurm-mem-gb`` GB (``--mem=<N>GB``, as submitit writes a ``mem_gb``); the partition, account,
    constraint and QOS only apply on Slurm. A function, not a method: fairseq hands the task its config as
    an omegaconf ``DictConfig``, which has the fields but not the dataclass's methods."""
    return SlurmResources(nodes=1, tasks_per_node=1, gpus_per_node=cfg.refresh_slurm_gpus_per_job,
                          cpus_per_task=cfg.refresh_slurm_cpus_per_job, mem=f"{cfg.refresh_slurm_mem_gb}GB",
                          time=cfg.refresh_slurm_time_min, partition=cfg.refresh_slurm_partition,
                          account=cfg.refresh_slurm_account, constraint=cfg.refresh_slurm_constraint,
                          qos=cfg.refresh_slurm_qos, job_name=REFRESH_JOB_NAME)
