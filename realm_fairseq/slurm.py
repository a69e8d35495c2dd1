"""Slurm resources, named once: what a job asks Slurm for, and the submitit parameters that ask for it.

REALM trains for days on many accelerators and re-embeds the corpus in jobs of its own (section 4.3: 64 TPUs
for pre-training, 16 more for the index refresh). Every Slurm job this plugin submits describes its resources
with :class:`SlurmResources`:

- training jobs (``python slurm/submit.py``): :class:`~realm_fairseq.launch.submit.SlurmConfig` is these
  fields (its ``--nodes``, ``--gpus-per-node``, ... flags) plus how to submit (log folder, requeues, dry run);
  they go to ``submitit.SlurmExecutor`` through :meth:`SlurmResources.sbatch_parameters`;
- corpus preparation arrays (``python slurm/prepare_corpus.py``) use the same ``SlurmConfig``;
- index refresh jobs (``--refresh-launcher submitit``): fairseq flattens a task's nested dataclasses into
  flags without a prefix, so the refresh keeps its flat ``--refresh-slurm-*`` options and
  :func:`~realm_fairseq.indexing.config.slurm_resources` builds a ``SlurmResources`` from them;
  they go to ``submitit.AutoExecutor`` (Slurm, or submitit's local executor) through
  :meth:`SlurmResources.auto_parameters`.

The defaults are those of a training job; other jobs set their own where they build the dataclass.
"""
import shlex
from dataclasses import dataclass, field
from typing import Dict, Optional

from fairseq.dataclass import FairseqDataclass

#: options passed to Slurm only when set (empty: the cluster's default)
OPTIONAL_SBATCH = ("mem", "partition", "account", "constraint", "qos")


def parse_sbatch_options(text: str) -> Dict[str, object]:
    """``'--exclusive --mail-type=END'`` -> ``{"exclusive": True, "mail-type": "END"}``."""
    options = {}
    for token in shlex.split(text):
        if not token.startswith("--"):
            raise ValueError(f"--sbatch {text!r}: expected long options such as --mail-type=END, got {token!r}")
        key, eq, value = token[2:].partition("=")
        options[key] = value if eq else True
    return options


@dataclass
class SlurmResources(FairseqDataclass):
    """What one Slurm job asks for: ``nodes x tasks per node`` tasks with their GPUs, CPUs, memory and time."""

    nodes: int = field(default=1, metadata={"help": "nodes of the job"})
    gpus_per_node: int = field(
        default=1, metadata={"help": "GPUs per node, one training task each; 0: CPU training (the command "
                             "needs --cpu) with --tasks-per-node tasks"}
    )
    tasks_per_node: int = field(
        default=0, metadata={"help": "training tasks (processes) per node; 0: one per GPU, or 1 without GPUs"}
    )
    cpus_per_task: int = field(default=10, metadata={"help": "CPUs of each task (data loading, tokenising)"})
    mem: str = field(default="", metadata={"help": "memory per node as Slurm writes it, e.g. 256G (empty: "
                                            "the partition's default)"})
    time: int = field(default=1440, metadata={"help": "time limit of each run of the job, minutes"})
    partition: Optional[str] = field(default=None, metadata={"help": "Slurm partition"})
    account: Optional[str] = field(default=None, metadata={"help": "Slurm account"})
    constraint: Optional[str] = field(default=None, metadata={"help": "Slurm constraint, e.g. a GPU type"})
    qos: Optional[str] = field(default=None, metadata={"help": "Slurm quality of service"})
    sbatch: str = field(
        default="", metadata={"help": "more sbatch options, as on sbatch's command line, e.g. "
                              "'--exclusive --mail-type=END'"}
    )
    job_name: str = field(default="realm", metadata={"help": "Slurm job name"})

    @property
    def ntasks_per_node(self) -> int:
        """Tasks per node: ``tasks_per_node``, else one per GPU, else 1."""
        return self.tasks_per_node or max(self.gpus_per_node, 1)

    def _optional(self) -> Dict[str, object]:
        """The Slurm-only options that are set: memory, partition, ..., and the extra ``sbatch`` ones."""
        params = {name: getattr(self, name) for name in OPTIONAL_SBATCH if getattr(self, name)}
        extra = parse_sbatch_options(self.sbatch)
        if extra:
            params["additional_parameters"] = extra
        return params

    def sbatch_parameters(self) -> dict:
        """``submitit.SlurmExecutor.update_parameters`` keywords (sbatch options); no ``--gpus-per-node``
        without GPUs."""
        params = dict(job_name=self.job_name, time=self.time, nodes=self.nodes,
                      ntasks_per_node=self.ntasks_per_node, cpus_per_task=self.cpus_per_task)
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        return {**params, **self._optional()}

    def auto_parameters(self) -> dict:
        """``submitit.AutoExecutor.update_parameters`` keywords: submitit's generic ones, which its local
        executor reads too (``gpus_per_node`` even when 0: the local executor then hides the GPUs), and the
        Slurm-only ones prefixed ``slurm_``. On Slurm the sbatch options are those of
        :meth:`sbatch_parameters`, but for ``--gpus-per-node=0`` without GPUs."""
        params = dict(name=self.job_name, timeout_min=self.time, nodes=self.nodes,
                      tasks_per_node=self.ntasks_per_node, gpus_per_node=self.gpus_per_node,
                      cpus_per_task=self.cpus_per_task)
        return {**params, **{f"slurm_{name}": value for name, value in self._optional().items()}}
