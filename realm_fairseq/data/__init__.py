"""Data: corpora, questions and answers, as files and as fairseq datasets (REALM, sections 3.4 and 4).

- CORPUS preparation: :mod:`.input_files` (the Document record, UTF-8 files plain or .gz), :mod:`.documents`
  (reading JSONL, TSV, SQuAD, REALM's blocks), :mod:`.vocab` (WordPiece), :mod:`.sentences`,
  :mod:`.salient_spans`, :mod:`.blocking` (documents -> blocks and examples), :mod:`.corpus_builder` (writes
  a CORPUS), :mod:`.corpus_shards` (a CORPUS prepared in shards), :mod:`.realm_blocks` (REALM's released
  corpus).
- CORPUS reading: :mod:`.corpus` (:class:`BlockCorpus`: blocks, pre-training examples, the dictionary).
- Datasets: :mod:`.epoch_dataset` (seeds and sizes), :mod:`.ict_dataset` (ICT), :mod:`.masking`
  (masked pre-training examples), :mod:`.question_dataset` (open-QA batches).
- Open QA: :mod:`.questions` (question files), :mod:`.answers` (where a block holds an answer: spans S(z, y),
  DPR's hit rule), :mod:`.qa_metrics` (exact match and recall@k, the one home of both).
"""
from realm_fairseq.data.corpus import Block, BlockCorpus, PretrainingExamples
from realm_fairseq.data.input_files import Document
from realm_fairseq.data.vocab import Vocab
from realm_fairseq.errors import InputError

__all__ = ["Block", "BlockCorpus", "Document", "InputError", "PretrainingExamples", "Vocab"]
