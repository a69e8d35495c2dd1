"""Optimizer ``realm_adam``: fairseq's ``adam`` (AdamW's weight decay) with the retriever's learning rate set
apart from the reader's.

REALM trains the retriever (the query and document embedders) and the reader with one objective and one
learning rate (section 4.2 and appendix A). Open-QA fine-tuning (section 3.3) starts a new span head from zero
beside a retriever that already works, and the rate the head needs moves the query embedder away from
what it knew: fine-tuned from MiniLM at the demo's ``--lr 1e-4``, recall@5 on its 1,008 test questions
fell from MiniLM's 85.0 to 82.0, and with the query embedder at 1e-5 it rose to 87.2 (README, Results).
``--retriever-lr-scale s`` trains every parameter tagged with the retriever's ``param_group``
(:data:`realm_fairseq.models.embedder.PARAM_GROUP`; each embedder tags its own) at s times the learning rate
the scheduler sets, and the rest at that rate:

    realm-train ... --optimizer realm_adam --lr 1e-4 --retriever-lr-scale 0.1

Every option of ``adam`` works as there. The parameters form two groups (reader first, then retriever)
whatever s is, so a run can resume with another s. fairseq's ``--fp16`` flattens all parameters into one
and loses the tags: there, add ``--fp16-no-flatten-grads`` (``--bf16`` keeps them). fairseq's ``composite``
optimizer groups by the same tag (it then needs a group ``retriever`` beside ``default``).
"""
from dataclasses import dataclass, field
from typing import Dict, List

import torch
from fairseq.optim import register_optimizer
from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig

from realm_fairseq.models.embedder import PARAM_GROUP


@dataclass
class RealmAdamConfig(FairseqAdamConfig):
    retriever_lr_scale: float = field(
        default=1.0, metadata={"help": "the retriever's (query and document embedders') learning rate as a "
                               "fraction of --lr and its schedule; 0 freezes the retriever"}
    )


def param_groups(params: List[torch.Tensor], retriever_lr_scale: float) -> List[Dict]:
    """The reader's parameters and the retriever's (tagged with its ``param_group``) as torch param groups,
    each with its ``lr_scale``; a group without parameters is left out."""
    if retriever_lr_scale < 0:
        raise ValueError(f"--retriever-lr-scale {retriever_lr_scale}: expected 0 or more")
    reader, retriever = [], []
    for p in params:
        (retriever if getattr(p, "param_group", None) == PARAM_GROUP else reader).append(p)
    if not retriever and retriever_lr_scale != 1:
        raise ValueError(f"--retriever-lr-scale {retriever_lr_scale}: no parameter is tagged as the retriever's "
                         f"(with --fp16, add --fp16-no-flatten-grads: fairseq flattens the parameters into one "
                         f"and the tags are lost; where nothing trains the retriever, e.g. --retrieval bm25, "
                         f"leave --retriever-lr-scale at 1)")
    groups = [{"params": reader, "lr_scale": 1.0}, {"params": retriever, "lr_scale": retriever_lr_scale}]
    groups = [g for g in groups if g["params"]]
    if all(g["lr_scale"] == 0 for g in groups):
        raise ValueError("--retriever-lr-scale 0 with a model that is all retriever leaves nothing to train")
    return groups


@register_optimizer("realm_adam", dataclass=RealmAdamConfig)
class RealmAdam(FairseqAdam):
    def __init__(self, cfg: RealmAdamConfig, params):
        super().__init__(cfg, param_groups(list(params), cfg.retriever_lr_scale))
        self._apply_scales(self.optimizer_config["lr"])

    def _apply_scales(self, lr: float) -> None:
        for group in self.param_groups:
            group["lr"] = lr * group["lr_scale"]

    def get_lr(self):
        """The scheduled learning rate (the reader's; the retriever's times its scale)."""
        group = next(g for g in self.param_groups if g["lr_scale"] > 0)
        return group["lr"] / group["lr_scale"]

    def set_lr(self, lr):
        self._apply_scales(lr)

    def load_state_dict(self, state_dict, optimizer_overrides=None):
        """Adam's moments from the checkpoint; the scales (and the learning rate) of this run's options."""
        lr, scales = self.get_lr(), [g["lr_scale"] for g in self.param_groups]
        super().load_state_dict(state_dict, optimizer_overrides)
        for group, scale in zip(self.param_groups, scales):
            group["lr_scale"] = scale
        self._apply_scales(lr)
