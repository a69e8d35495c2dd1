"""Task ``realm_pretrain``: retrieval-augmented masked-LM pre-training (REALM, sections 2-3).

    fairseq-train CORPUS --task realm_pretrain --index INDEX --arch realm_base --criterion realm_mlm ...

Reads the pre-training examples of a CORPUS (sentences with their salient spans and source block) and
the newest committed version of an INDEX (``realm-build-index``) over the same corpus. Each batch holds
masked sentences (``--masking``: salient spans by default); the model retrieves ``--retrieval-topk``
blocks for each (never its source block) plus the null document, and the criterion maximises the
marginal likelihood of the masked tokens. ``valid`` holds out the sentences of ``--valid-percent`` of
the blocks (the same blocks ``realm_ict`` holds out). ``--refresh-interval-updates N`` re-embeds the
corpus in the background every N updates and swaps the new index in (:mod:`realm_fairseq.indexing.refresh`);
checkpoints record the index version in use, and a resumed run goes on with it.
"""
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from fairseq.dataclass import ChoiceEnum
from fairseq.tasks import register_task
from omegaconf import II, MISSING

from realm_fairseq.data.corpus import BlockCorpus
from realm_fairseq.data.masking import MASKINGS, MaskedExamplesDataset
from realm_fairseq.indexing.config import RefreshConfig, check_config
from realm_fairseq.indexing.refresh import IndexRefresher, restore_version
from realm_fairseq.retrieval import placement
from realm_fairseq.retrieval.retriever import Retriever
from realm_fairseq.retrieval.versions import IndexStore, check_serves
from realm_fairseq.tasks.base import RealmTask


@dataclass
class RealmPretrainConfig(RefreshConfig, placement.PlacementConfig):
    data: str = field(default=MISSING, metadata={"help": "CORPUS directory from realm-prepare-corpus"})
    index: Optional[str] = field(
        default=None, metadata={"help": "INDEX directory from realm-build-index over the same corpus"}
    )
    masking: ChoiceEnum(list(MASKINGS)) = field(
        default="salient_span", metadata={"help": "what to mask: one salient span (REALM), random tokens "
                                          "or random spans"}
    )
    retrieval_topk: int = field(
        default=8, metadata={"help": "blocks retrieved per example (REALM: 8); 0 reads with the null "
                             "document alone, i.e. no retrieval"}
    )
    no_null_document: bool = field(
        default=False, metadata={"help": "do not add the null document to the candidates"}
    )
    valid_percent: float = field(
        default=1.0, metadata={"help": "percent of the blocks whose sentences form the valid split"}
    )
    seed: int = II("common.seed")


@register_task("realm_pretrain", dataclass=RealmPretrainConfig)
class RealmPretrainTask(RealmTask):
    def __init__(self, cfg: RealmPretrainConfig, corpus: BlockCorpus, retriever: Retriever):
        super().__init__(cfg, corpus)
        self.retriever = retriever
        self.store = IndexStore(cfg.index) if cfg.index else None
        self.refresher = (IndexRefresher(cfg, cfg.data, self.store, retriever)
                          if cfg.refresh_interval_updates > 0 else None)

    @classmethod
    def setup_task(cls, cfg: RealmPretrainConfig, **kwargs):
        check_config(cfg)
        corpus = BlockCorpus(cfg.data)
        index, version, update = None, None, None
        devices = placement.resolve(cfg.retrieval_devices, cfg.cpu)
        if cfg.retrieval_topk > 0:
            if not cfg.index:
                raise ValueError(
                    "--index is required with --retrieval-topk > 0 (build one with realm-build-index)"
                )
            store = IndexStore(cfg.index)
            index, manifest = store.load(corpus=corpus, devices=devices, precision=cfg.retrieval_precision)
            # the index was built before this run (from BERT, ICT or an earlier checkpoint): its
            # embeddings are as old as the weights the run starts from, so staleness counts from 0
            version, update = manifest["version"], 0
        elif cfg.refresh_interval_updates > 0:
            raise ValueError("--refresh-interval-updates needs retrieval (--retrieval-topk > 0) and an --index")
        retriever = Retriever(corpus, index, cfg.retrieval_topk, not cfg.no_null_document, version, update, devices,
                              cfg.retrieval_precision)
        return cls(cfg, corpus, retriever)

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        examples = self.corpus.examples
        in_split = np.isin(examples.source_block, self.split_blocks(split))
        self.datasets[split] = MaskedExamplesDataset(
            examples, np.flatnonzero(in_split), self.corpus.dictionary, self.cfg.masking, self.cfg.seed
        )

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        if self.retriever.index is not None:
            check_serves(self.store.manifest(self.retriever.version), self.cfg.index, model.query_embedder)
        return model

    def register_heads(self, model) -> None:
        model.register_reader()  # the knowledge-augmented encoder reads x with each retrieved z

    def optimizer_step(self, optimizer, model, update_num):
        super().optimizer_step(optimizer, model, update_num)
        if self.refresher is not None:  # every rank, once per update: launch, load, swap together
            self.refresher.after_update(model, update_num + 1)

    def get_checkpoint_dict(self):
        return {type(self).__name__: {"index_version": self.retriever.version,
                                      "index_update": self.retriever.version_update}}

    def set_checkpoint_dict(self, state):
        if self.store is not None:
            restore_version(self.store, self.retriever, state.get("index_version"), state.get("index_update"))

    def post_save(self, cp_path, num_updates):
        if self.refresher is not None:  # too many failed refreshes stop training once this checkpoint is saved
            self.refresher.after_save()
