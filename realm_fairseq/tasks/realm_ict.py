"""Task ``realm_ict``: Inverse Cloze Task pre-training of the retriever (REALM section 3.4, ORQA).

    fairseq-train CORPUS --task realm_ict --arch realm_tiny --criterion realm_ict ...

Reads the blocks and sentences of a CORPUS (``realm-prepare-corpus``); ``valid`` holds out
``--valid-percent`` of the blocks, chosen by a hash of the block id, ``train`` has the rest. The
checkpoint's ``query_embedder``/``doc_embedder`` initialise ``realm_pretrain``.
"""
from dataclasses import dataclass, field

import numpy as np
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

from realm_fairseq.data.corpus import BlockCorpus
from realm_fairseq.data.ict_dataset import IctDataset
from realm_fairseq.models.realm import resolve_similarity


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


def split_blocks(num_blocks: int, valid_percent: float) -> dict:
    """Block ids of the ``train`` and ``valid`` splits: a multiplicative hash of the id decides, so the
    held-out blocks spread over the whole corpus and stay the same when it grows."""
    ids = np.arange(num_blocks, dtype=np.uint64)
    bucket = ((ids * np.uint64(2654435761)) % np.uint64(1 << 32)).astype(np.float64) / (1 << 32) * 100
    valid = bucket < valid_percent
    return {"train": ids[~valid].astype(np.int64), "valid": ids[valid].astype(np.int64)}


@register_task("realm_ict", dataclass=RealmIctConfig)
class RealmIctTask(FairseqTask):
    def __init__(self, cfg: RealmIctConfig, corpus: BlockCorpus):
        super().__init__(cfg)
        self.corpus = corpus

    @classmethod
    def setup_task(cls, cfg: RealmIctConfig, **kwargs):
        return cls(cfg, BlockCorpus(cfg.data))

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        splits = split_blocks(len(self.corpus), self.cfg.valid_percent)
        if split not in splits:
            raise KeyError(f"realm_ict has the splits {sorted(splits)}, not {split!r}")
        self.datasets[split] = IctDataset(
            self.corpus, splits[split], self.cfg.query_max_len, self.cfg.keep_sentence_prob, self.cfg.seed
        )

    def build_model(self, cfg, from_checkpoint=False):
        resolve_similarity(cfg)  # recorded in the checkpoint: the model and its index agree
        longest = self.corpus.block_size + 2
        if cfg.max_positions < longest:
            raise ValueError(
                f"--max-positions {cfg.max_positions} is shorter than a block with [CLS] and [SEP] "
                f"({longest}) of {self.cfg.data}"
            )
        return super().build_model(cfg, from_checkpoint)

    @property
    def source_dictionary(self):
        return self.corpus.dictionary

    @property
    def target_dictionary(self):
        return self.corpus.dictionary
