"""What the three REALM tasks share: a CORPUS, its dictionary, its train/valid split, and the model.

``realm_ict`` (REALM section 3.4), ``realm_pretrain`` (sections 2-3) and ``realm_open_qa`` (section 3.3) read
the blocks of one CORPUS (``realm-prepare-corpus``) and its WordPiece dictionary, and build the ``realm``
model with the retriever pooling and score resolved into the config (so that checkpoints record what the
model uses) and with the head each reads with: none (ICT trains the retriever alone), the knowledge-augmented
encoder (pre-training), the span reader (open QA). The task registers the head, as fairseq's
``sentence_prediction`` registers its classification head.
"""
import numpy as np
from fairseq.tasks import FairseqTask

from realm_fairseq.data.corpus import BlockCorpus
from realm_fairseq.models.loading import resolve_similarity


def split_blocks(num_blocks: int, valid_percent: float) -> dict:
    """Block ids of the ``train`` and ``valid`` splits: a multiplicative hash of the id decides, so the
    held-out blocks spread over the whole corpus and stay the same when it grows."""
    ids = np.arange(num_blocks, dtype=np.uint64)
    bucket = ((ids * np.uint64(2654435761)) % np.uint64(1 << 32)).astype(np.float64) / (1 << 32) * 100
    valid = bucket < valid_percent
    return {"train": ids[~valid].astype(np.int64), "valid": ids[valid].astype(np.int64)}


class RealmTask(FairseqTask):
    """A fairseq task over the blocks of a CORPUS that builds the ``realm`` model."""

    def __init__(self, cfg, corpus: BlockCorpus):
        super().__init__(cfg)
        self.corpus = corpus

    def split_blocks(self, split: str) -> np.ndarray:
        """Block ids of ``split``: ``valid`` holds out ``--valid-percent`` of the blocks, ``train`` has the rest."""
        splits = split_blocks(len(self.corpus), self.cfg.valid_percent)
        if split not in splits:
            raise KeyError(f"{self.cfg._name} has the splits {sorted(splits)}, not {split!r}")
        return splits[split]

    def build_model(self, cfg, from_checkpoint=False):
        resolve_similarity(cfg)  # recorded in the checkpoint: the model and its index agree
        model = super().build_model(cfg, from_checkpoint)
        self.register_heads(model)
        return model

    def register_heads(self, model) -> None:
        """Grow the heads this task reads with on the model just built; none: the retriever alone."""

    @property
    def source_dictionary(self):
        return self.corpus.dictionary

    @property
    def target_dictionary(self):
        return self.corpus.dictionary
