"""Running jobs on a Slurm cluster through submitit (REALM, section 4.3: pre-training on many accelerators
for days, preempted and requeued).

- :mod:`.submit`: ``python slurm/submit.py``: the training job's Slurm options and its submission.
- :mod:`.training_job`: what every task of a training job runs, with requeue on a time limit or preemption.
- :mod:`.graceful_stop`: stopping between two updates with ``checkpoint_last.pt`` saved, on every rank
  together (:func:`realm_fairseq.distributed.any_rank`).
- :mod:`.prepare_corpus_job`: ``python slurm/prepare_corpus.py``: corpus preparation as a Slurm job array.

Index refresh jobs are launched from inside training by :mod:`realm_fairseq.indexing.launchers`.
"""
