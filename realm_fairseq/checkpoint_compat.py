"""Let torch >= 2.6 load fairseq checkpoints.

torch 2.6 made ``torch.load`` default to ``weights_only=True``, which refuses any pickled object not
on its allow-list. fairseq 0.12 calls ``torch.load`` without ``weights_only`` and stores its legacy
``argparse.Namespace`` config in every checkpoint, so resuming training fails with "Unsupported global:
argparse.Namespace". Allowing that one class keeps the safe loader for everything else.
"""
import argparse

import torch


def allow_fairseq_checkpoints() -> None:
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is not None:  # torch < 2.4 loads everything anyway
        add_safe_globals([argparse.Namespace])
