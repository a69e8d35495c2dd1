"""The ``realm`` fairseq model: REALM's retriever and knowledge-augmented encoder (paper, section 3.2).

The model holds the query embedder Embed_input and the document embedder Embed_doc; the relevance of
block z to input x is f(x, z) = Embed_input(x) . Embed_doc(z). Tasks that read (``realm_pretrain``)
register the reader, which predicts the masked tokens of x from ``[CLS] x [SEP] z [SEP]`` (``forward``);
open-domain QA (``realm_open_qa``) registers the span reader instead, which scores answer spans of z
(``read``). Either way the retriever is handed in. Architectures:

- ``realm_base``: BERT-base towers (12 layers, 768 wide, 12 heads, 3072 feed-forward) projected to 128
  dimensions, as the paper;
- ``realm_minilm``: the sizes of the offline MiniLM weights (6 layers, 384, 12 heads, 1536) and no
  projection, so that the converted sentence embedder retrieves as it was trained to from the start;
- ``realm_tiny``: 2 layers of 64 for tests.

No architecture sets the pooling or the score: they follow the ``--encoder-init`` weights (mean and
cosine for MiniLM, ``[CLS]`` and the inner product for BERT; :mod:`realm_fairseq.models.similarity`),
REALM's ``[CLS]`` and inner product without weights, unless ``--retriever-pooling``/``--retriever-score``
say otherwise. Nor does any set how the towers compute where REALM's released weights differ from our
defaults (``--retriever-head``, ``--doc-segments``, ``--span-head``, ``--activation-fn``): they follow the
weights the model starts from (:mod:`realm_fairseq.models.realm_hf`), else our defaults.

``--encoder-init WEIGHTS.pt`` (from ``realm-convert-hf``) warm-starts every tower, and the reader's
masked-LM head from BERT's when the weights have it; ``--retriever-init CKPT`` then loads both embedders
from a ``realm_ict`` (or earlier ``realm``) checkpoint, REALM's ICT warm start (section 3.4);
``--realm-init CKPT`` loads both embedders and the reader's encoder from a ``realm_pretrain`` (or
``realm_open_qa``) checkpoint, the start of fine-tuning. The readers are built as the retriever's towers
unless ``--reader-encoder`` (or the weights ``--reader-init`` starts them from) gives them sizes or an encoder
of their own. Both also take REALM's released weights as
``realm-convert-hf`` converts them: ``--retriever-init`` their embedders, ``--realm-init`` every part
they hold (embedders, the knowledge-augmented encoder with its masked-LM head, an open-QA reader with its
span head). The options are :class:`~realm_fairseq.models.config.RealmConfig`; resolving them and loading
these weights is :mod:`realm_fairseq.models.loading`'s.
"""
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from fairseq.models import BaseFairseqModel, register_model, register_model_architecture
from fairseq.utils import safe_getattr

from realm_fairseq.data.answers import AnswerFinder
from realm_fairseq.data.corpus import with_cls_sep_batch
from realm_fairseq.models.config import RealmConfig, reader_config
from realm_fairseq.models.embedder import TOWERS, Embedder, retriever_tower
from realm_fairseq.models.loading import resolve_similarity, start_heads, start_towers
from realm_fairseq.models.open_qa import ReadBatch, Reading, retrieve_and_read
from realm_fairseq.models.reader import Reader, join_query_and_blocks
from realm_fairseq.models.span_reader import SpanReader
from realm_fairseq.retrieval.fixed_retriever import FixedIndexRetriever
from realm_fairseq.retrieval.retriever import Retriever


@register_model("realm", dataclass=RealmConfig)
class RealmModel(BaseFairseqModel):
    def __init__(self, cfg: RealmConfig, dictionary, query_embedder: Embedder, doc_embedder: Embedder):
        super().__init__()
        self.cfg = cfg
        self.dictionary = dictionary
        self.query_embedder = query_embedder
        self.doc_embedder = doc_embedder
        self.reader_cfg = reader_config(cfg)  # the readers' encoder: the retriever's unless --reader-encoder
        self.reader: Optional[Reader] = None  # registered by the task that reads (realm_pretrain)
        self.span_reader: Optional[SpanReader] = None  # registered by realm_open_qa
        self.num_updates = 0  # from fairseq's trainer (set_num_updates), for the retriever's warm-up

    @classmethod
    def build_model(cls, cfg: RealmConfig, task):
        """The query and document embedders; the task then registers the head it reads with
        (:meth:`register_reader`, :meth:`register_span_reader`), as fairseq's sentence_prediction registers
        its classification head."""
        resolve_similarity(cfg)
        dictionary = task.source_dictionary
        towers = [retriever_tower(cfg, dictionary, tower) for tower in TOWERS]  # query, doc
        start_towers(cfg, towers, dictionary)
        return cls(cfg, dictionary, *towers)

    def register_reader(self) -> None:
        """Grow the knowledge-augmented encoder (pre-training's reader), started from the ``--encoder-init``
        and ``--realm-init`` weights when given."""
        self.reader = Reader(self.reader_cfg, self.dictionary)
        start_heads(self.cfg, self.dictionary, reader=self.reader)

    def register_span_reader(self) -> None:
        """Grow the span reader (open-domain QA), started from the ``--encoder-init`` and ``--realm-init``
        weights when given."""
        self.span_reader = SpanReader(self.reader_cfg, self.dictionary, self.cfg.span_hidden_dim, self.cfg.span_head)
        start_heads(self.cfg, self.dictionary, span_reader=self.span_reader)

    def set_num_updates(self, num_updates: int) -> None:
        """fairseq's ``train_step`` passes the update number before every forward (and its trainer on resume):
        the retriever's warm-up counts it, as wav2vec2's ``freeze_finetune_updates`` does."""
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    def embed_queries(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) query tokens -> (B, D) Embed_input(x)."""
        return self.query_embedder(tokens)

    def embed_blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) block tokens -> (B, D) Embed_doc(z)."""
        return self.doc_embedder(tokens)

    def forward(self, src_tokens, src_lengths, target, exclude_blocks, retriever: Retriever):
        """Retrieve, score and read. ``src_tokens`` (B, T) are ``[CLS] x [SEP]`` with masks, ``target``
        (B, T) the masked tokens (padding elsewhere). Returns retrieval scores (B, K), the reader's
        log p(y_t | x, z_k) at every position (B, K, T; zero where nothing is masked), the target mask
        (B, T) and the retrieved block ids (B, topk)."""
        d, device = self.dictionary, src_tokens.device
        batch = src_tokens.shape[0]
        queries = self.embed_queries(src_tokens)  # (B, D)
        block_ids, _ = retriever.search(queries, retriever.topk, exclude_blocks)  # (B, topk); rescored below
        blocks, block_lengths = retriever.candidate_tokens(block_ids)  # (B*K, L), (B*K,)
        blocks = blocks.to(device, non_blocking=True)
        block_lengths = block_lengths.to(device, non_blocking=True)
        k = retriever.num_candidates
        docs = self.embed_blocks(with_cls_sep_batch(blocks, block_lengths, d))  # (B*K, D)
        scores = torch.einsum("bd,bkd->bk", queries, docs.view(batch, k, -1))  # (B, K)

        joined, segments = join_query_and_blocks(
            src_tokens, blocks, block_lengths, d.pad(), d.eos(), self.reader_cfg.max_positions
        )  # (B*K, Tj) with Tj >= T
        token_mask = target.ne(d.pad())  # (B, T)
        width = src_tokens.shape[1]
        masked = torch.zeros(joined.shape, dtype=torch.bool, device=device)
        masked[:, :width] = token_mask.repeat_interleave(k, dim=0)  # x comes first in every sequence
        logits = self.reader(joined, segments, masked)  # (masked tokens, V)
        targets = target.repeat_interleave(k, dim=0)[masked[:, :width]]  # (masked tokens,)
        picked = torch.log_softmax(logits.float(), -1).gather(1, targets[:, None]).squeeze(1)
        token_log_probs = logits.new_zeros(batch * k, width, dtype=torch.float)
        token_log_probs[masked[:, :width]] = picked
        return {
            "retrieval_scores": scores,
            "token_log_probs": token_log_probs.view(batch, k, width),
            "token_mask": token_mask,
            "block_ids": block_ids,
        }

    def read(self, src_tokens: torch.Tensor, retriever: FixedIndexRetriever, finder: AnswerFinder, reading: Reading,
             answers: Optional[Sequence[Sequence[str]]] = None, gold_only: bool = False,
             retrieved: Optional[Tuple[np.ndarray, torch.Tensor]] = None) -> ReadBatch:
        """Open-domain QA's retrieve and read (section 3.3): ``src_tokens`` (B, T) are ``[CLS] x [SEP]``
        questions, ``retriever`` the fixed index, ``reading`` how many blocks to retrieve and read; with the
        questions' gold ``answers`` the result carries their gold spans, with ``gold_only`` only the blocks
        holding one are read, and ``retrieved`` (ids, scores) are blocks found by another retriever, read
        instead (:func:`~realm_fairseq.models.open_qa.retrieve_and_read`)."""
        return retrieve_and_read(self, retriever, finder, src_tokens, reading, answers, gold_only, retrieved)


def _set_defaults(args, **defaults) -> None:
    for name, value in defaults.items():
        setattr(args, name, safe_getattr(args, name, value))


@register_model_architecture("realm", "realm_base")
def realm_base(args):
    _set_defaults(args, encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072,
                  encoder_attention_heads=12, retriever_projection_dim=128)


@register_model_architecture("realm", "realm_minilm")
def realm_minilm(args):
    _set_defaults(args, encoder_layers=6, encoder_embed_dim=384, encoder_ffn_embed_dim=1536,
                  encoder_attention_heads=12, retriever_projection_dim=0)


@register_model_architecture("realm", "realm_tiny")
def realm_tiny(args):
    _set_defaults(args, encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128,
                  encoder_attention_heads=2, max_positions=320, retriever_projection_dim=32)
