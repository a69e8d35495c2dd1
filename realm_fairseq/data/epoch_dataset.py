"""The fairseq dataset plumbing our datasets share: sizes for batching, and a seed and epoch from which
each item's random choices are drawn, so that a run, resumed or not, sees the same items."""
import numpy as np
from fairseq.data import FairseqDataset


class SeededEpochDataset(FairseqDataset):
    """A dataset with per-item sizes (``sizes``: tokens an item takes in a batch) that draws its random
    choices from ``(seed, epoch, index)``."""

    def __init__(self, sizes: np.ndarray, seed: int):
        self._sizes = sizes
        self.seed = seed
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._sizes)

    def num_tokens(self, index: int) -> int:
        return int(self._sizes[index])

    def size(self, index: int) -> int:
        return int(self._sizes[index])

    @property
    def sizes(self) -> np.ndarray:
        return self._sizes
