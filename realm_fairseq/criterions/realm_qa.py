"""Criterion ``realm_qa``: open-domain QA fine-tuning loss and metrics (REALM, sections 3.3 and 4).

loss = -log sum_{z in top k} p(z | x) sum_{s in S(z, y)} p(s | z, x)     (the reader's marginal likelihood)
       -log sum_{z in beam, z holds y} p(z | x)                          (the retriever's, as ORQA)

with S(z, y) the spans of block z that spell a gold answer y (:mod:`realm_fairseq.data.answers`), both
computed from what the model's :meth:`~realm_fairseq.models.realm.RealmModel.read` returns. A
question with no answer in its top k (or its beam) adds nothing to that term; how many there were is
logged. Logged per question (percent): ``em`` and, for text answers, ``f1`` (SQuAD's, of the predicted
span; in validation only, as training reads only the blocks that hold an answer), ``recall@k`` (an answer in
the best k blocks, k in 1, 5, 20, 100 up to ``--retriever-beam``), ``no_answer_read`` and ``no_answer_beam``
(questions without an answer in the blocks read / retrieved); and ``blocks_read``, the blocks read per
question (in training only those with a gold span). ``--best-checkpoint-metric em
--maximize-best-checkpoint-metric`` keeps the checkpoint of best validation EM. EM, F1 and recall@k are
:mod:`realm_fairseq.data.qa_metrics`'.
"""
import math
from dataclasses import dataclass

import torch
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from realm_fairseq.data.qa_metrics import RECALL_AT, exact_match, f1, first_hits, recall_counts
from realm_fairseq.models.open_qa import predict

NEG = torch.finfo(torch.float32).min / 4  # log of "no such span"; finite, so gradients stay finite


@dataclass
class RealmQaConfig(FairseqDataclass):
    pass


def masked_logsumexp(log_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log sum of exp(log_probs) where ``mask``, over all but the first dimension: (B, ...) -> (B,)."""
    return torch.logsumexp(log_probs.masked_fill(~mask, NEG).flatten(1), dim=-1)


def answer_scores(predictions, answers, answer_type: str) -> dict:
    """Summed ``em`` (and ``f1``, for text answers) of a batch's predicted spans against its gold answers."""
    texts = [p.text for p in predictions]
    scores = {"em": sum(exact_match(t, gold, answer_type) for t, gold in zip(texts, answers))}
    if answer_type == "text":
        scores["f1"] = sum(f1(t, gold) for t, gold in zip(texts, answers))
    return scores


@register_criterion("realm_qa", dataclass=RealmQaConfig)
class RealmQaCriterion(FairseqCriterion):
    def forward(self, model, sample, reduce=True):
        task = self.task
        # training reads only the blocks with a gold span: the same loss, no predictions
        read = task.read(model, sample["net_input"]["src_tokens"], sample["questions"], answers=sample["answers"],
                         gold_only=model.training)
        gold = read.gold  # (B, K, T, L)
        in_beam = torch.from_numpy(read.holds_answer).to(gold.device)  # (B, beam)
        readable, retrievable = gold.flatten(1).any(1), in_beam.any(1)  # (B,) each

        reader_ll = masked_logsumexp(read.joint_log_probs(), gold)  # (B,)
        log_p_beam = torch.log_softmax(read.retrieval_scores.float(), dim=-1)  # (B, beam)
        retriever_ll = masked_logsumexp(log_p_beam, in_beam)  # (B,)
        reader_loss, retriever_loss = -(reader_ll * readable).sum(), -(retriever_ll * retrievable).sum()
        loss = reader_loss + retriever_loss

        batch = len(sample["answers"])
        logging_output = {
            "loss": loss.data,
            "reader_loss": reader_loss.item(),
            "retriever_loss": retriever_loss.item(),
            "nsentences": batch,
            "ntokens": sample["ntokens"],
            "sample_size": batch,
            "readable": int(readable.sum()),
            "retrievable": int(retrievable.sum()),
            "blocks_read": int(gold.flatten(2).any(2).sum()) if model.training else int(gold[:, :, 0, 0].numel()),
        }
        if not model.training:
            logging_output.update(answer_scores(predict(read, task.finder), sample["answers"], task.cfg.answer_type))
        logging_output.update(recall_counts(first_hits(read.holds_answer), read.holds_answer.shape[1]))
        return loss, batch, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        questions = max(total("nsentences"), 1)
        metrics.log_scalar("loss", total("loss") / questions / math.log(2), questions, round=3)
        for key in ("reader_loss", "retriever_loss"):
            metrics.log_scalar(key, total(key) / questions / math.log(2), questions, round=3)
        for key in ("em", "f1"):
            if any(key in log for log in logging_outputs):
                metrics.log_scalar(key, 100.0 * total(key) / questions, questions, round=2)
        for k in RECALL_AT:
            if any(f"recall@{k}" in log for log in logging_outputs):
                metrics.log_scalar(f"recall@{k}", 100.0 * total(f"recall@{k}") / questions, questions, round=2)
        metrics.log_scalar("no_answer_read", 100.0 * (1 - total("readable") / questions), questions, round=2)
        metrics.log_scalar("no_answer_beam", 100.0 * (1 - total("retrievable") / questions), questions, round=2)
        metrics.log_scalar("blocks_read", total("blocks_read") / questions, questions, round=2)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
