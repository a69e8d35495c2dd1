"""Criterion ``realm_mlm``: the negative marginal log-likelihood of the masked tokens (REALM, 2.3-3.1).

loss = -sum_j log sum_z p(z | x) p(y_j | x, z) per masked token (the released REALM code), or with
``--joint-marginal`` -sum_x log sum_z p(z | x) prod_j p(y_j | x, z) (the paper's equation). Logged
besides the loss (bits per masked token) and perplexity:

- ``retrieval_utility``: log p(y | x) minus log p(y | x, null document), in bits per masked token: how
  much the retrieved blocks help (REALM section 3.4 calls it the retrieval utility);
- ``null_prob``: the mean p(null document | x); ``entropy``: the mean entropy of p(z | x), in bits;
- ``index_version`` and ``staleness``: the index version in use and how many updates old its embeddings are.

``--retriever-warmup-updates N`` keeps the retriever as it started (an ICT warm start, section 3.4) for
the first N updates: p(z | x) weighs the candidates but passes no gradient to the embedders. REALM's
reader starts from BERT and reads from the first step; a reader that starts untrained gives the
retriever nothing but noise to follow, and the retriever drifts away from the blocks that hold the
answer before the reader has learned to use them. The update number is the model's
(:meth:`~realm_fairseq.models.realm.RealmModel.set_num_updates`, as wav2vec2's ``freeze_finetune_updates``).
"""
import math
from dataclasses import dataclass, field

import torch
from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from realm_fairseq.criterions.marginal_likelihood import marginal_log_likelihood


@dataclass
class RealmMlmConfig(FairseqDataclass):
    joint_marginal: bool = field(
        default=False, metadata={"help": "marginalise all masked tokens of an example jointly (the paper's "
                                 "equation) instead of each token on its own (the released code)"}
    )
    retriever_warmup_updates: int = field(
        default=0, metadata={"help": "for this many updates p(z|x) passes no gradient to the query and "
                             "document embedders, so that a reader that starts untrained learns to read the "
                             "retrieved blocks before the retriever follows its signal"}
    )


@register_criterion("realm_mlm", dataclass=RealmMlmConfig)
class RealmMlmCriterion(FairseqCriterion):
    def __init__(self, task, joint_marginal: bool = False, retriever_warmup_updates: int = 0):
        super().__init__(task)
        self.joint_marginal = joint_marginal
        self.retriever_warmup_updates = retriever_warmup_updates

    def forward(self, model, sample, reduce=True):
        retriever = self.task.retriever
        out = model(**sample["net_input"], target=sample["target"], exclude_blocks=sample["exclude_blocks"],
                    retriever=retriever)
        scores, log_probs, mask = out["retrieval_scores"], out["token_log_probs"], out["token_mask"]
        if model.num_updates < self.retriever_warmup_updates:
            # same p(z|x), zero gradient: the embedders stay put (and still count as used for DDP)
            scores = scores.detach() + 0.0 * scores
        per_token = marginal_log_likelihood(scores, log_probs, mask)  # (B, T)
        if self.joint_marginal:
            loss = -marginal_log_likelihood(scores, log_probs, mask, joint=True).sum()
        else:
            loss = -per_token.sum()
        num_tokens = int(mask.sum())
        p_z = torch.softmax(scores.detach().float(), -1)  # (B, K)
        logging_output = {
            "loss": loss.data,
            "ntokens": num_tokens,
            "nsentences": scores.shape[0],
            "sample_size": num_tokens,
            "entropy": float(-(p_z * torch.log(p_z.clamp(min=1e-30))).sum()),
            # per sentence, so that sums over micro-batches and ranks average to the version in use
            "index_version": (retriever.version or 0) * scores.shape[0],
            "staleness": (model.num_updates - (retriever.version_update or 0)) * scores.shape[0]
            if retriever.version else 0,
        }
        if retriever.null_document:  # the null document is the last candidate
            alone = log_probs[:, -1].masked_fill(~mask, 0.0)  # (B, T) log p(y_t | x, null)
            logging_output["utility"] = float((per_token - alone).detach().sum())
            logging_output["null_prob"] = float(p_z[:, -1].sum())
        return loss, num_tokens, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        tokens, sentences = max(total("sample_size"), 1), max(total("nsentences"), 1)
        metrics.log_scalar("loss", total("loss") / tokens / math.log(2), tokens, round=3)
        metrics.log_derived("ppl", lambda m: utils.get_perplexity(m["loss"].avg))
        metrics.log_scalar("entropy", total("entropy") / sentences / math.log(2), sentences, round=3)
        if any("utility" in log for log in logging_outputs):
            metrics.log_scalar("retrieval_utility", total("utility") / tokens / math.log(2), tokens, round=3)
            metrics.log_scalar("null_prob", total("null_prob") / sentences, sentences, round=3)
        # averaged over sentences: a fraction only over a log interval that saw a swap (ranks swap together)
        metrics.log_scalar("index_version", total("index_version") / sentences, sentences, round=2)
        metrics.log_scalar("staleness", total("staleness") / sentences, sentences, round=0)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
