"""Running training on a Slurm cluster through submitit: :mod:`.submit` (resources and submission),
:mod:`.training_job` (what every task runs, with requeue) and :mod:`.graceful_stop` (stopping between
two updates with the checkpoint saved)."""
