"""Task ``realm_ict``: Inverse Cloze Task pre-training of the retriever (REALM section 3.4, ORQA).

    fairseq-train CORPUS --task realm_ict --arch realm_tiny --criterion realm_ict ...

Reads the blocks and sentences of a CORPUS (``realm-prepare-corpus``); ``valid`` holds out
``--valid-percent`` of the blocks, chosen by a hash of the block id, ``train`` has the rest. The
checkpoint's ``query_embedder``/``doc_embedder`` initialise ``realm_pretrain``.
"""
from dataclasses import dataclass, field

from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import register_task
from omegaconf import II, MISSING

from realm_fairseq.data.corpus import BlockCorpus
from realm_fairseq.data.ict_dataset import IctDataset
from realm_fairseq.tasks.base import RealmTask


@dataclass
class RealmIctConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "CORPUS directory from realm-prepare-corpus"})
    query_max_len: int = field(
        default=64, metadata={"help": "longest pseudo-query in tokens, [CLS] and [SEP] included"}
    )
    keep_sentence_prob: float = field(
        default=0.1, metadata={"help": "probability that the query sentence stays in its block (ORQA: 0.1)"}
    )
    valid_percent: float = field(
        default=1.0, metadata={"help": "percent of the blocks held out as the valid split"}
    )
    seed: int = II("common.seed")


@register_task("realm_ict", dataclass=RealmIctConfig)
class RealmIctTask(RealmTask):
    @classmethod
    def setup_task(cls, cfg: RealmIctConfig, **kwargs):
        return cls(cfg, BlockCorpus(cfg.data))

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        self.datasets[split] = IctDataset(
            self.corpus, self.split_blocks(split), self.cfg.query_max_len, self.cfg.keep_sentence_prob, self.cfg.seed
        )

    def build_model(self, cfg, from_checkpoint=False):
        longest = self.corpus.block_size + 2
        if cfg.max_positions < longest:
            raise ValueError(
                f"--max-positions {cfg.max_positions} is shorter than a block with [CLS] and [SEP] "
                f"({longest}) of {self.cfg.data}"
            )
        return super().build_model(cfg, from_checkpoint)
