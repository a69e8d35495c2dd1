"""Corpus preparation and reading: documents -> WordPiece blocks, examples and salient spans."""
from realm_fairseq.data.corpus import Block, BlockCorpus, PretrainingExamples
from realm_fairseq.data.documents import Document, InputError
from realm_fairseq.data.vocab import Vocab

__all__ = ["Block", "BlockCorpus", "Document", "InputError", "PretrainingExamples", "Vocab"]
