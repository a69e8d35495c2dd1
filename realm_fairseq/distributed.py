"""Distributed-training helpers: this process's rank, and the small all-reduces by which all ranks agree.

REALM trains on many accelerators at once (paper, section 4.3: 64 TPUs); every rank must take the same
decisions between two updates (stop, swap in a new index version, section 3.3) or the next collective
operation hangs. :func:`all_ranks_max` is the one all-reduce behind those decisions; outside distributed
training (or with one rank) it returns its input.
"""
from typing import List

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether this process is one of several ranks of an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside distributed training)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_ranks_max(values: List[int]) -> List[int]:
    """The element-wise maximum of ``values`` over every rank (one all-reduce)."""
    if not is_distributed():
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    reduced = torch.tensor(values, dtype=torch.long, device=device)  # (len(values),)
    dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
    return reduced.tolist()


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is set on any rank."""
    return bool(all_ranks_max([int(flag)])[0])

