"""Embed the blocks of a CORPUS with a document embedder: Embed_doc(z) for every block z.

REALM retrieves with maximum inner product search over Embed_doc(z) precomputed for every block z
(paper, sections 3.2 and 3.3). Blocks are embedded in batches sorted by length (little padding), without
gradients, in bf16/fp16 on a GPU, and written back in corpus order as float16.
"""
import logging
import time
from typing import Optional

import numpy as np
import torch
from fairseq.data import data_utils
from tqdm import tqdm

from realm_fairseq.data.corpus import BlockCorpus, with_cls_sep_batch
from realm_fairseq.models.loading import EmbedderSource

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PENDING_BATCHES = 32  # batches a GPU computes ahead of the copy back, while the next are collated


def embed_blocks(
    source: EmbedderSource,
    corpus: BlockCorpus,
    start: int = 0,
    end: Optional[int] = None,
    max_tokens: int = 16384,
    device: str = "cpu",
    dtype: str = "fp32",
    progress: bool = True,
) -> np.ndarray:
    """(end - start, D) float16 embeddings of blocks ``start..end``, in corpus order."""
    end = len(corpus) if end is None else end
    embedder = source.embedder.to(device).eval()
    dictionary = corpus.dictionary
    ids = np.arange(start, end)
    order = ids[np.argsort(corpus.sizes[start:end], kind="stable")]  # short blocks first
    batches = data_utils.batch_by_size(order, lambda i: int(corpus.sizes[i]) + 2, max_tokens=max_tokens)
    out = np.zeros((end - start, embedder.dim), dtype=np.float16)
    started = time.time()
    bar = tqdm(total=end - start, unit=" blocks", desc="embed blocks", disable=not progress, mininterval=1.0)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[dtype],
                              enabled=dtype != "fp32")
    pending = []  # (rows, embeddings still on the device): copying them back waits for the device
    with torch.inference_mode(), autocast:
        for batch in batches:
            blocks, lengths = corpus.padded_tokens(batch)  # (B, L), (B,)
            tokens = with_cls_sep_batch(blocks.to(device), lengths.to(device), dictionary)  # (B, L + 2)
            pending.append((np.asarray(batch) - start, embedder(tokens)))  # (B, D)
            if len(pending) == PENDING_BATCHES:
                _copy_back(pending, out)
            bar.update(len(batch))
        _copy_back(pending, out)
    bar.close()
    elapsed = time.time() - started
    logger.info("embedded %d blocks in %.1fs (%.0f blocks/s)", end - start, elapsed,
                (end - start) / max(elapsed, 1e-9))
    return out


def _copy_back(pending: list, out: np.ndarray) -> None:
    """Write the pending (rows, (B, D) embeddings) into ``out`` as float16 and empty the list."""
    for rows, embeddings in pending:
        out[rows] = embeddings.float().cpu().numpy()
    pending.clear()
