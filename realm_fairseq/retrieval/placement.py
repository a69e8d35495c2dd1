"""Where retrieval searches: the CPU (faiss) or GPUs (faiss-gpu when importable, else exact search in torch).

REALM searches 13,353,718 block embeddings for every training example (section 3.2, MIPS; section 4.2 and
the appendix on the index). On the CPU a faiss index is read memory-mapped, so the ranks of a node share
one copy in the page cache. On GPUs the search runs next to the model: faiss-gpu when it is installed,
else :class:`~realm_fairseq.retrieval.torch_search.TorchMipsSearch`, exact search over the float16 block
embeddings every index version stores (for every ``--index-type``: on a GPU the search is exact). The
option naming the devices, ``--retrieval-devices``, is the same for training, evaluation and answering:

- ``auto`` (default): this process's GPU when torch sees one and the run is not on the CPU, else ``cpu``.
  In data-parallel training each rank searches on its own GPU (one copy of the index per GPU).
- ``cpu``: faiss on the CPU.
- ``cuda``: every visible GPU, the index split between them; ``cuda:0,cuda:1``: those GPUs.

``--retrieval-precision`` sets how torch multiplies on GPUs: ``fp32`` (default) gives faiss ``flat``'s scores,
``fp16`` multiplies float16 queries into float32 (a third of the memory traffic; 5.7 against 12.2 ms for 8
queries over 13.35M blocks on an H200). A bf16 model's queries lose nothing but float16's subnormal bits
(at most 3e-8) and find the same blocks (``bench/query_precision.py``). faiss on the CPU, and faiss-gpu,
search in float32 whatever it says.
"""
from dataclasses import dataclass, field
from typing import Callable, List

import torch
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from omegaconf import II

from realm_fairseq.retrieval.mips import GPU_TYPES, MipsIndex
from realm_fairseq.retrieval.torch_search import (
    DEFAULT_PRECISION, DEVICES_FLAG, PRECISIONS, TorchMipsSearch, parse_devices,
)

AUTO = "auto"
CPU = "cpu"


@dataclass
class PlacementConfig(FairseqDataclass):
    """The options of every task that retrieves: where it searches and how exact search multiplies on GPUs."""
    retrieval_devices: str = field(default=AUTO, metadata={
        "help": "where retrieval searches the index: auto (this process's GPU when there is one and the run "
                "is not --cpu, else cpu), cpu (faiss, memory-mapped), cuda (every visible GPU, the index split "
                "between them) or a list such as cuda:0,cuda:1; on GPUs faiss-gpu when installed, else exact "
                "search in torch over the version's float16 embeddings"})
    retrieval_precision: ChoiceEnum(list(PRECISIONS)) = field(default=DEFAULT_PRECISION, metadata={
        "help": "how exact search in torch multiplies on GPUs: fp32 (the same scores as faiss flat) or fp16 "
                "(float16 queries, float32 sums: about half the search time at 13M blocks; near ties may "
                "order differently); the CPU and faiss-gpu search in fp32"})
    cpu: bool = II("common.cpu")


def resolve(devices: str, cpu: bool = False) -> str:
    """``auto`` -> ``cuda:N`` (this process's current GPU) or ``cpu``; anything else as given, checked."""
    devices = str(devices).strip()
    if devices == AUTO:
        if cpu or not torch.cuda.is_available():
            return CPU
        return f"cuda:{torch.cuda.current_device()}"
    parse_devices(devices)  # a clear error now, not when the first version loads
    return devices


def beside(device: str) -> str:
    """The retrieval devices for a model on torch ``device``: that GPU (``cuda``: every GPU), or ``cpu``."""
    return str(device) if torch.device(device).type == "cuda" else CPU


def on_gpus(devices: str) -> bool:
    """Whether ``devices`` (resolved) names GPUs; mixing GPUs and the CPU is refused."""
    kinds = {device.type for device in parse_devices(devices)}
    if len(kinds) > 1:
        raise ValueError(f"{DEVICES_FLAG} {devices}: expected cpu or GPUs, not both")
    return kinds == {"cuda"}


def faiss_gpu_count() -> int:
    """GPUs faiss can use: 0 with faiss-cpu."""
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "GpuMultipleClonerOptions") else 0


def gpu_searcher(load_index: Callable[[], MipsIndex], index_type: str, embeddings, devices: str,
                 precision: str = DEFAULT_PRECISION):
    """The search of one index version on the GPUs ``devices``: its faiss index (``load_index()``, read only
    here) moved there by faiss-gpu when it can (a type faiss-gpu has), else exact torch search over
    ``embeddings`` ((n, d) float16, memory-mapped) copied there, multiplying in ``precision``."""
    gpus: List[torch.device] = parse_devices(devices)
    if index_type in GPU_TYPES and faiss_gpu_count() > max(g.index for g in gpus):
        index = load_index().to_gpu([g.index for g in gpus])
        if index.devices:
            return index
    return TorchMipsSearch.from_array(embeddings, gpus, precision=precision)
