"""Stop a running ``fairseq-train`` between two updates, with ``checkpoint_last.pt`` saved.

REALM pre-training runs for days (section 4.3: 200k updates on 64 TPUs); on a Slurm cluster that is many
jobs, each stopped by a time limit or a preemption. A job warned before it is stopped must leave a
checkpoint of exactly the updates it made, so that the next job resumes after the last one and repeats
none. :class:`StopRequest` is that warning: set it from any thread (or a signal handler) and, inside
:func:`stop_when_requested`, training finishes the update it is in, saves ``checkpoint_last.pt`` (with
the data iterator's position and every task's checkpoint state, the index version of ``realm_pretrain``
included) and returns as if it had reached ``--max-update``.

fairseq calls ``validate_and_save`` on every rank after every update; the wrapper adds one small
all-reduce there, so that all ranks stop after the same update even when only some were told to.
"""
import logging
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

from realm_fairseq.distributed import any_rank

logger = logging.getLogger(__name__)


class StopRequest:
    """Asks a training run to stop at the next update boundary; ``stopped_at`` is the update it saved."""

    def __init__(self):
        self._event = threading.Event()
        self.stopped_at: Optional[int] = None

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


@contextmanager
def stop_when_requested(request: StopRequest) -> Iterator[StopRequest]:
    """Within this block, ``fairseq_cli.train`` stops after the update during which ``request`` was set
    (on any rank), having saved ``checkpoint_last.pt``."""
    from fairseq import checkpoint_utils
    from fairseq_cli import train

    scheduled = train.validate_and_save

    def validate_and_save(cfg, trainer, task, epoch_itr, valid_subsets, end_of_epoch):
        if not any_rank(request.is_set()):
            return scheduled(cfg, trainer, task, epoch_itr, valid_subsets, end_of_epoch)
        num_updates = trainer.get_num_updates()
        logger.info("stop requested: saving the checkpoint of update %d and stopping", num_updates)
        path = checkpoint_utils.save_checkpoint(cfg.checkpoint, trainer, epoch_itr, None)
        if path is not None and hasattr(task, "post_save"):
            task.post_save(path, num_updates)
        request.stopped_at = num_updates
        return [None], True

    train.validate_and_save = validate_and_save
    try:
        yield request
    finally:
        train.validate_and_save = scheduled
