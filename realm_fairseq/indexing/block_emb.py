"""REALM's released block embeddings (``block_emb``) as a version of an INDEX, without re-embedding.

REALM's open-QA checkpoints carry Embed_doc(z) for every block of its Wikipedia corpus (paper, sections
3.2 and 4.2), made by its document embedder. ``block_emb`` is read in chunks (memory-mapped from the
checkpoint), written as the float16 embeddings an index version stores, and the faiss index is built from
that file. Peak memory is the faiss index itself (the embeddings as float16 for ``flat16``, the default; as
float32 for ``flat``). The CORPUS must be REALM's blocks in their order
(:func:`realm_fairseq.data.realm_blocks.check_corpus_for`).
"""
import os

import numpy as np
import torch
from tqdm import tqdm

from realm_fairseq.retrieval.mips import DEFAULT_INDEX_TYPE
from realm_fairseq.retrieval.versions import IndexStore

IMPORT_CHUNK = 1 << 16  # rows of block_emb converted at a time


def import_block_emb(block_emb: torch.Tensor, corpus, index_dir: str, source: str,
                     index_type: str = DEFAULT_INDEX_TYPE,
                     progress: bool = True, **options) -> int:
    """Commit ``block_emb`` (n, d), row i embedding block i of ``corpus``, as the next version of
    ``index_dir`` (see the module docstring); returns the version number."""
    count, dim = block_emb.shape
    os.makedirs(index_dir, exist_ok=True)
    tmp = os.path.join(index_dir, f".block_emb-import-{os.getpid()}.npy")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(count, dim))
        bar = tqdm(total=count, unit=" blocks", desc="block_emb", disable=not progress, mininterval=1.0)
        for start in range(0, count, IMPORT_CHUNK):
            chunk = block_emb[start : start + IMPORT_CHUNK].float().numpy()  # (<= IMPORT_CHUNK, d)
            out[start : start + len(chunk)] = chunk.astype(np.float16)
            bar.update(len(chunk))
        bar.close()
        out.flush()
        del out
        embeddings = np.load(tmp, mmap_mode="r")  # (n, d) float16, read from disk as the index is built
        encoder = {"kind": "realm-block-emb", "path": os.path.abspath(source), "update": 0, "pooling": "cls",
                   "score": "dot"}
        return IndexStore(index_dir).commit(embeddings, corpus.checksum, encoder, index_type, **options)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
