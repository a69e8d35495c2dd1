"""Criterion ``realm_ict``: in-batch softmax over blocks for each pseudo-query (ORQA; REALM 3.4).

For queries q (B, D) and blocks d (B, D), the score matrix is q d^T; query i's positive is block i and
every other block in the batch is a negative. Under data-parallel training the blocks of all ranks are
gathered, so each query is scored against world_size x B blocks, and the gather passes gradients back: every
block gets the gradient of every query it was scored against, on whichever rank the query is, so N ranks
compute the loss and gradients of one process on their N batches together. Logs the loss and the in-batch
top-1 and top-5 accuracy.
"""
import math
from typing import List

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as distributed_nn
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.distributed import utils as distributed_utils


def gather_blocks(blocks: torch.Tensor) -> (torch.Tensor, int):
    """(B, D) blocks of this rank -> (sum of B over ranks, D) blocks of all ranks, and where this
    rank's rows start. Batch sizes may differ between ranks. The result is differentiable: the gradient
    of each rank's rows, summed over the ranks whose queries scored them, returns to its own rank."""
    world = distributed_utils.get_data_parallel_world_size()
    if world == 1:
        return blocks, 0
    group = distributed_utils.get_data_parallel_group()
    rank = distributed_utils.get_data_parallel_rank()
    size = torch.tensor([blocks.shape[0]], device=blocks.device)
    sizes: List[torch.Tensor] = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    sizes = [int(s) for s in sizes]
    padded = F.pad(blocks, (0, 0, 0, max(sizes) - blocks.shape[0]))  # (max B, D)
    gathered = distributed_nn.all_gather(padded, group=group)  # world x (max B, D), with gradient
    return torch.cat([g[:n] for g, n in zip(gathered, sizes)]), sum(sizes[:rank])


@register_criterion("realm_ict", dataclass=FairseqDataclass)
class RealmIctCriterion(FairseqCriterion):
    def forward(self, model, sample, reduce=True):
        queries = model.embed_queries(sample["net_input"]["query_tokens"])  # (B, D)
        blocks = model.embed_blocks(sample["net_input"]["block_tokens"])  # (B, D)
        all_blocks, offset = gather_blocks(blocks)  # (N, D)
        scores = queries @ all_blocks.t()  # (B, N)
        targets = torch.arange(queries.shape[0], device=scores.device) + offset  # (B,)
        loss = F.cross_entropy(scores.float(), targets, reduction="sum")
        top5 = scores.topk(min(5, scores.shape[1]), dim=1).indices  # (B, 5)
        batch_size = queries.shape[0]
        logging_output = {
            "loss": loss.data,
            "nsentences": batch_size,
            "ntokens": sample["ntokens"],
            "sample_size": batch_size,
            "top1": int((top5[:, 0] == targets).sum()),
            "top5": int((top5 == targets[:, None]).any(1).sum()),
            "candidates": scores.shape[1] * batch_size,
        }
        return loss, batch_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        n = total("sample_size")
        metrics.log_scalar("loss", total("loss") / max(n, 1) / math.log(2), n, round=3)
        metrics.log_scalar("top1_acc", total("top1") / max(n, 1), n, round=3)
        metrics.log_scalar("top5_acc", total("top5") / max(n, 1), n, round=3)
        metrics.log_scalar("in_batch", total("candidates") / max(n, 1), n, round=1)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
