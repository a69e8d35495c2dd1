"""Exact maximum inner product search with torch: block embeddings on the GPU(s), matmul + top-k.

REALM retrieves the top k blocks by inner product, ``f(x, z) = Embed_input(x) . Embed_doc(z)``, over
precomputed embeddings of every block, found by Maximum Inner Product Search (section 3.2, "MIPS"; the
paper's corpus is 13,353,718 blocks, section 4.2 and the appendix on the index, embedded in 128
dimensions). faiss-gpu is not always installable; this is the same exact search as faiss ``flat``
(:mod:`realm_fairseq.retrieval.mips`) in plain torch:

    search = TorchMipsSearch.from_array(embeddings, devices=["cuda:0"])    # (n, d) float16/32 array or memmap
    search = TorchMipsSearch.from_store(IndexStore(path), version=3, devices=["cuda:0", "cuda:1"])
    ids, scores = search.search(queries, k=8, exclude=source_blocks)      # (q, k) int64, (q, k) float32

Storage: on a GPU the rows are float16 (13.35M x 128 is 3.2 GiB); with several devices each holds a
contiguous slice of rows (a shard) and the per-shard top k are merged. On the CPU the array is used as
given, without a copy: an index version's memory-mapped embeddings (``embeddings.npy``, or the rows of a
``flat16`` index file) stay in the page cache, shared by every rank of a node (one copy per node), and
are checked finite by their bits (:func:`~realm_fairseq.retrieval.mips.check_finite`). Loading to a GPU
copies ``LOAD_ROWS`` rows at a time, so the host never holds a second full copy. Before loading, the rows plus ``working_bytes`` are checked
against each GPU's free memory; too little raises :class:`IndexTooLargeError` with the sizes and the flags
``--retrieval-devices cuda:0,cuda:1,...`` (shard over more GPUs) and ``--retrieval-devices cpu``.

Search: for each chunk of rows, ``scores = queries @ rows.T`` (b, c) and its top ``k + m`` (``m``
excluded ids per query), merged into a running top list, so the (b, n) score matrix never exists; a
chunk has at most ``working_bytes / (4 * (d + b))`` rows, or ``working_bytes / (4 * b)`` where no float32
copy of it is made (``"fp16"`` on a GPU: 33.5M rows for 8 queries, so 13.35M blocks are one chunk).
``precision="fp32"`` (the default) upcasts each chunk and computes in float32, as faiss does on the same
float16-stored rows: scores equal faiss ``flat``'s up to summation order (unless the process lets CUDA
matmuls use TF32, ``torch.backends.cuda.matmul.allow_tf32``, which rounds like float16). ``"fp16"``
multiplies float16 queries by the float16 rows with float32 accumulation (CUDA only, no float32 copy of a
chunk: a third of the memory traffic): scores within ~1e-3 relative, and near ties may order differently.
Exclusion uses :mod:`~realm_fairseq.retrieval.mips`'s own helpers: ``k + m`` are fetched, the excluded
dropped, missing results are id -1 with score -inf.

Ties, as faiss ``flat`` resolves them (IndexFlatIP with k below 100, whose heap keeps the first of equal
scores): among equal scores at the k-th place the lowest ids are kept, and equal scores are listed in
descending id order. Equal means bit-equal here; torch and faiss may round a score differently in its last
bit, so ids can differ from faiss's where two scores are within ~1e-6 relative (a test checks equality
elsewhere on real text).
"""
import logging
import math
import warnings
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from realm_fairseq.retrieval.mips import _check_embeddings as _check_mips_embeddings
from realm_fairseq.retrieval.mips import _drop_excluded, _exclusion_matrix, check_finite

logger = logging.getLogger(__name__)

GIB = float(1 << 30)
LOAD_ROWS = 1 << 20  # rows copied to a GPU at a time (256 MiB at d = 128 float16)
WORKING_BYTES = 1 << 30  # scratch a device may use for one chunk: upcast rows and scores
QUERY_BATCH = 1024  # queries searched together
PRECISIONS = ("fp32", "fp16")
DEFAULT_PRECISION = "fp32"  # the same scores as faiss flat
FP16_MAX = torch.finfo(torch.float16).max
DEVICES_FLAG = "--retrieval-devices"
_FP16_PRODUCTS: Dict[str, bool] = {}  # device -> whether torch.mm(..., out_dtype=float32) runs there

Devices = Union[str, torch.device, Sequence[Union[str, torch.device]]]


class IndexTooLargeError(ValueError):
    """The block embeddings do not fit the free memory of the devices given."""


# ---------------------------------------------------------------- devices and sizes
def parse_devices(devices: Devices) -> List[torch.device]:
    """``"cpu"``, ``"cuda"`` (every visible GPU), ``"cuda:0,cuda:1"``, or a list of devices.

    The same device may be named twice (two shards on one device; tests use two CPU shards).
    """
    if isinstance(devices, (str, torch.device)):
        text = str(devices).strip()
        if text == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"{DEVICES_FLAG} cuda: no GPU is visible to torch; use {DEVICES_FLAG} cpu")
            return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        devices = [d for d in text.split(",") if d.strip()]
    parsed = []
    for d in devices:
        try:
            device = torch.device(str(d).strip())
        except RuntimeError as e:
            raise ValueError(f"{DEVICES_FLAG}: {d!r} is not a device (expected cpu, cuda or cuda:N)") from e
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"{DEVICES_FLAG}: {device} is neither cpu nor a cuda device")
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            device = torch.device("cuda", 0 if device.index is None else device.index)
            if device.index >= count:
                raise ValueError(f"{DEVICES_FLAG}: {device} is not visible ({count} GPU(s) visible); use "
                                 f"{DEVICES_FLAG} cpu to search on the CPU")
        parsed.append(device)
    if not parsed:
        raise ValueError(f"{DEVICES_FLAG}: expected at least one device, got {devices!r}")
    return parsed


def shard_bounds(n: int, num_shards: int) -> List[Tuple[int, int]]:
    """``num_shards`` contiguous row ranges [start, end) covering 0..n, sizes differing by at most one."""
    edges = [n * i // num_shards for i in range(num_shards + 1)]
    return list(zip(edges[:-1], edges[1:]))


def free_memory(device: torch.device) -> Optional[int]:
    """Free bytes of a GPU; None for the CPU (its rows are the caller's array, not copied)."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.mem_get_info(device)[0])


def check_fits(n: int, d: int, devices: List[torch.device], free: Sequence[Optional[int]],
               itemsize: int = 2, working_bytes: int = WORKING_BYTES) -> None:
    """Raise :class:`IndexTooLargeError` unless each device's shard of ``n`` x ``d`` rows plus
    ``working_bytes`` fits its ``free`` bytes (None: not checked)."""
    bounds = shard_bounds(n, len(devices))
    short = []
    for device, (start, end), free_bytes in zip(devices, bounds, free):
        need = (end - start) * d * itemsize + working_bytes
        if free_bytes is not None and need > free_bytes:
            short.append((device, need, free_bytes))
    if not short:
        return
    total = n * d * itemsize
    smallest_free = min(f for f in free if f is not None)
    per_device = smallest_free - working_bytes
    enough = math.ceil(total / per_device) if per_device > 0 else None
    frees = ", ".join(f"{dev} {f / GIB:.2f} GiB" for dev, f in zip(devices, free) if f is not None)
    needs = ", ".join(f"{dev} {need / GIB:.2f} GiB" for dev, need, _ in short)
    more = (f"shard over at least {enough} such GPUs with {DEVICES_FLAG} cuda:0,cuda:1,..."
            if enough else f"free memory on the GPUs (each needs {working_bytes / GIB:.2f} GiB of working memory)")
    raise IndexTooLargeError(
        f"block embeddings of {n:,} x {d} ({total / GIB:.2f} GiB at {itemsize} bytes a value) do not fit the "
        f"devices given: needed {needs} (its rows + {working_bytes / GIB:.2f} GiB working memory), free "
        f"{frees}. Either {more}, or search on the CPU with {DEVICES_FLAG} cpu"
    )


# ---------------------------------------------------------------- loading
def _check_embeddings(embeddings) -> np.ndarray:
    """A 2-d float16/float32 numpy array (n >= 1, d >= 1); a torch tensor is taken as its numpy view."""
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().numpy()
    return _check_mips_embeddings(embeddings)


def _host_tensor(rows: np.ndarray) -> torch.Tensor:
    """A torch view of ``rows`` without a copy (a read-only memmap too: it is never written)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(np.ascontiguousarray(rows))


def _check_tensor_finite(rows: torch.Tensor, start: int) -> None:
    finite = torch.isfinite(rows).all(dim=1)  # (c,)
    if not bool(finite.all()):
        row = start + int(torch.nonzero(~finite)[0, 0])
        raise ValueError(f"embeddings: row {row} is not finite (NaN or inf)")


def _load_shard(embeddings: np.ndarray, start: int, end: int, device: torch.device,
                load_rows: int = LOAD_ROWS) -> torch.Tensor:
    """Rows [start, end) on ``device``: (end - start, d), checked finite. On the CPU a view of the array (no
    copy: a memmap's pages stay shared page cache); on a GPU float16, copied and checked in chunks of
    ``load_rows``."""
    if device.type == "cpu":  # float16 checked by its bits, a chunk at a time (numpy: 7-10x torch.isfinite)
        return _host_tensor(check_finite(embeddings[start:end], start))
    shard = torch.empty((end - start, embeddings.shape[1]), dtype=torch.float16, device=device)
    for s in range(start, end, load_rows):
        e = min(end, s + load_rows)
        rows = _host_tensor(np.asarray(embeddings[s:e], dtype=np.float16))  # (<= load_rows, d): one chunk
        shard[s - start : e - start].copy_(rows)
        _check_tensor_finite(shard[s - start : e - start], s)
    return shard


# ---------------------------------------------------------------- top k
def _order(scores: torch.Tensor, ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each row sorted by score descending, then id ascending: (b, f) each."""
    ids, by_id = torch.sort(ids, dim=1)
    scores = torch.gather(scores, 1, by_id)
    scores, by_score = torch.sort(scores, dim=1, descending=True, stable=True)
    return scores, torch.gather(ids, 1, by_score)


def _merge(a: Tuple[torch.Tensor, torch.Tensor], b: Tuple[torch.Tensor, torch.Tensor], f: int):
    """The best ``f`` of two ordered lists whose ids are all lower in ``a`` than in ``b``: (b, <= f)."""
    scores, ids = torch.cat([a[0], b[0]], dim=1), torch.cat([a[1], b[1]], dim=1)
    scores, order = torch.sort(scores, dim=1, descending=True, stable=True)  # equal scores: a first, lower ids
    return scores[:, :f], torch.gather(ids, 1, order[:, :f])


def fp16_products(device: torch.device) -> bool:
    """Whether torch multiplies float16 into float32 on ``device`` (``torch.mm(..., out_dtype=)``, which recent
    torch has on CUDA, not on the CPU). Probed once a device, before a chunk is sized for it (a chunk sized
    for fp16 products and then upcast would need 17 times its working memory); without it fp16 searches as
    fp32."""
    key = str(device)
    if key not in _FP16_PRODUCTS:
        probe = torch.ones((1, 1), dtype=torch.float16, device=device)
        try:
            torch.mm(probe, probe, out_dtype=torch.float32)
            _FP16_PRODUCTS[key] = True
        except (TypeError, RuntimeError) as e:  # a torch without mm(..., out_dtype=), or not on this device
            _FP16_PRODUCTS[key] = False
            logger.warning("torch %s cannot multiply float16 into float32 on %s (%s): searching in fp32",
                           torch.__version__, device, str(e).strip().splitlines()[0])
    return _FP16_PRODUCTS[key]


def _in_fp16(rows: torch.Tensor, precision: str) -> bool:
    """Whether ``rows`` are multiplied as float16 (no float32 copy of a chunk): fp16 on a GPU's float16 rows."""
    return (precision == "fp16" and rows.is_cuda and rows.dtype == torch.float16
            and fp16_products(rows.device))


def chunk_rows(b: int, d: int, upcast: bool, working_bytes: int) -> int:
    """Rows of a chunk whose scratch fits ``working_bytes``: scores (b, c) float32, plus the chunk's
    float32 copy (c, d) when it is upcast. Without the copy (fp16 on a GPU) a chunk is ``1 + d / b`` times
    longer (17x for 8 queries at d = 128): fewer top-k selections and merges for the same rows."""
    return max(1, working_bytes // (4 * (b + (d if upcast else 0))))


def chunks(shard: torch.Tensor, b: int, precision: str, working_bytes: int) -> Iterator[Tuple[int, torch.Tensor]]:
    """(first row, rows (c, d)) of each chunk of ``shard`` that a search of ``b`` queries multiplies at once."""
    chunk = chunk_rows(b, shard.shape[1], not _in_fp16(shard, precision), working_bytes)
    for start in range(0, len(shard), chunk):
        yield start, shard[start : start + chunk]


def scores(queries: torch.Tensor, rows: torch.Tensor, precision: str) -> torch.Tensor:
    """queries (b, d) float32 times rows (c, d) float16/32: (b, c) float32, as a search multiplies them."""
    if _in_fp16(rows, precision):
        return torch.mm(queries.half(), rows.T, out_dtype=torch.float32)
    return queries @ rows.to(torch.float32).T


def _chunk_top(queries, rows, offset: int, f: int, precision: str, exact_ties: bool):
    """The top ``f`` of one chunk, ordered (score desc, id asc), and which rows have more than ``f``
    scores reaching the f-th (a tie at the boundary, where torch.topk may keep any of them)."""
    products = scores(queries, rows, precision)  # (b, c)
    f = min(f, products.shape[1])
    if exact_ties:  # a stable sort keeps the lowest ids of equal scores
        top, idx = torch.sort(products, dim=1, descending=True, stable=True)
        top, idx = top[:, :f], idx[:, :f]
        tied = torch.zeros(len(products), dtype=torch.bool, device=products.device)
    else:
        top, idx = torch.topk(products, f, dim=1)  # (b, f)
        tied = (products >= top[:, -1:]).sum(dim=1) > f  # (b,)
    return _order(top, idx + offset), tied


def _shard_top(queries, shard: torch.Tensor, offset: int, f: int, precision: str, working_bytes: int,
               exact_ties: bool):
    """The top ``f`` of one shard (ids offset by its first row) and its boundary-tie flags, chunk by chunk."""
    best, tied = None, torch.zeros(len(queries), dtype=torch.bool, device=shard.device)
    for start, rows in chunks(shard, len(queries), precision, working_bytes):
        top, chunk_tied = _chunk_top(queries, rows, offset + start, f, precision, exact_ties)
        best = top if best is None else _merge(best, top, f)
        tied |= chunk_tied
    return best, tied


class TorchMipsSearch:
    """Exact top-k inner product search over ``n`` block embeddings of dimension ``d``; ids are row numbers."""

    def __init__(self, shards: List[torch.Tensor], offsets: List[int], precision: str = DEFAULT_PRECISION,
                 working_bytes: int = WORKING_BYTES, query_batch: int = QUERY_BATCH):
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.shards = shards  # (rows_i, d) each, on its device
        self.offsets = offsets  # first row of each shard
        self.precision = precision
        self.working_bytes = int(working_bytes)
        self.query_batch = int(query_batch)
        self.version: Optional[int] = None  # the index version, when loaded from an IndexStore

    # ------------------------------------------------------------ construction
    @classmethod
    def from_array(cls, embeddings, devices: Devices = "cpu", free_bytes: Optional[Sequence[Optional[int]]] = None,
                   precision: str = DEFAULT_PRECISION, working_bytes: int = WORKING_BYTES,
                   query_batch: int = QUERY_BATCH, load_rows: int = LOAD_ROWS) -> "TorchMipsSearch":
        """Search ``embeddings`` (n, d) float16/float32, a numpy array or memmap, sharded over ``devices``.

        ``free_bytes``: the free memory of each device (default: what CUDA reports; the CPU is not
        checked, its rows are not copied). Raises :class:`IndexTooLargeError` before copying anything
        when a shard plus ``working_bytes`` does not fit.
        """
        embeddings = _check_embeddings(embeddings)
        devices = parse_devices(devices)
        n, d = embeddings.shape
        if n < len(devices):
            raise ValueError(f"{n} block embeddings cannot be sharded over {len(devices)} devices")
        if free_bytes is None:
            free_bytes = [free_memory(device) for device in devices]
        elif len(free_bytes) != len(devices):
            raise ValueError(f"free_bytes: expected one value per device ({len(devices)}), got {len(free_bytes)}")
        itemsize = 2 if all(dev.type == "cuda" for dev in devices) else embeddings.itemsize
        check_fits(n, d, devices, free_bytes, itemsize, working_bytes)
        bounds = shard_bounds(n, len(devices))
        shards = [_load_shard(embeddings, s, e, dev, load_rows) for dev, (s, e) in zip(devices, bounds)]
        logger.info("torch MIPS over %d x %d on %s", n, d, ", ".join(str(dev) for dev in devices))
        return cls(shards, [s for s, _ in bounds], precision, working_bytes, query_batch)

    @classmethod
    def from_store(cls, store, version: Optional[int] = None, devices: Devices = "cpu",
                   **kwargs) -> "TorchMipsSearch":
        """Search the float16 embeddings of ``version`` (default the newest) of an IndexStore.

        The memory-mapped embeddings (checked against the manifest) are copied to each GPU in chunks; on
        the CPU they are searched in place, through the page cache. ``kwargs``: as :meth:`from_array`.
        """
        manifest = store.manifest(version)
        search = cls.from_array(store.embeddings(manifest["version"]), devices, **kwargs)
        search.version = int(manifest["version"])
        return search

    # ------------------------------------------------------------ properties
    @property
    def ntotal(self) -> int:
        return sum(len(s) for s in self.shards)

    @property
    def dim(self) -> int:
        return int(self.shards[0].shape[1])

    @property
    def devices(self) -> List[torch.device]:
        return [s.device for s in self.shards]

    def device_bytes(self) -> List[int]:
        """Bytes of block embeddings each shard holds (a CPU shard: the caller's array, not a copy)."""
        return [s.numel() * s.element_size() for s in self.shards]

    # ------------------------------------------------------------ search
    def _as_queries(self, queries) -> torch.Tensor:
        """Queries as a float32 CPU or device tensor (q, d); numpy or torch, any float dtype."""
        if not isinstance(queries, torch.Tensor):
            queries = torch.from_numpy(np.asarray(queries))
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries: expected shape (q, {self.dim}), got {tuple(queries.shape)}")
        if not queries.is_floating_point():
            raise ValueError(f"queries: expected floats, got {queries.dtype}")
        queries = queries.detach().float()
        largest = float(queries.abs().max()) if len(queries) else 0.0  # one host sync; inf or nan if any is
        if not math.isfinite(largest):
            raise ValueError("queries: not finite (NaN or inf)")
        if self.precision == "fp16" and largest > FP16_MAX:
            raise ValueError(f"queries: values up to {largest:.4g}, beyond float16's {FP16_MAX:g}; search them "
                             f"with precision fp32 (--retrieval-precision fp32)")
        return queries

    def _top(self, queries: torch.Tensor, f: int, exact_ties: bool):
        """The top ``f`` over every shard: scores, ids (b, f) on the CPU, and boundary-tie flags (b,)."""
        found = [_shard_top(queries.to(shard.device), shard, offset, f, self.precision, self.working_bytes,
                            exact_ties)
                 for shard, offset in zip(self.shards, self.offsets)]  # queued on every device before any sync
        best, tied = None, torch.zeros(len(queries), dtype=torch.bool)
        for (scores, ids), shard_tied in found:  # shards in row order: ids ascend from one to the next
            top = (scores.cpu(), ids.cpu())
            best = top if best is None else _merge(best, top, f)
            tied |= shard_tied.cpu()
        return best[0], best[1], tied

    def _search_batch(self, queries: torch.Tensor, f: int) -> Tuple[np.ndarray, np.ndarray]:
        """(b, d) queries: scores (b, f) float32 and ids (b, f) int64, equal scores in descending id order."""
        scores, ids, tied = self._top(queries, f, exact_ties=False)
        if bool(tied.any()):  # rare: redo those queries keeping the lowest ids of equal scores
            rows = torch.nonzero(tied)[:, 0]
            scores[rows], ids[rows] = self._top(queries[rows], f, exact_ties=True)[:2]
        scores, ids = scores.numpy(), ids.numpy()
        order = np.lexsort((-ids, -scores), axis=1)  # faiss's heap lists equal scores by descending id
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)

    @torch.no_grad()
    def search(self, queries, k: int, exclude=None) -> Tuple[np.ndarray, np.ndarray]:
        """The ``k`` highest inner products of each query: ids (q, k) int64 and scores (q, k) float32.

        ``queries``: (q, d) numpy or torch, any float dtype and device. ``exclude``: ids each query must not
        get, a (q,) or (q, m) integer array or a list of q lists; negative entries are padding. Rows are
        sorted by descending score; missing results (fewer than ``k`` blocks left) are id -1, score -inf.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k: expected a positive integer, got {k!r}")
        k = int(k)
        queries = self._as_queries(queries)  # (q, d) float32
        excluded = _exclusion_matrix(exclude, len(queries))  # (q, m) int64
        fetch = min(k + excluded.shape[1], self.ntotal)
        ids = np.empty((len(queries), k), dtype=np.int64)
        scores = np.empty((len(queries), k), dtype=np.float32)
        for start in range(0, len(queries), self.query_batch):
            end = start + self.query_batch
            found_scores, found_ids = self._search_batch(queries[start:end], fetch)  # (b, fetch) each
            scores[start:end], ids[start:end] = _drop_excluded(found_scores, found_ids, excluded[start:end], k,
                                                               self.ntotal)
        return ids, scores

    def __repr__(self) -> str:
        where = ", ".join(f"{dev}:{len(s)}" for dev, s in zip(self.devices, self.shards))
        return (f"TorchMipsSearch(ntotal={self.ntotal}, dim={self.dim}, {self.precision}, shards [{where}]"
                f"{'' if self.version is None else f', version {self.version}'})")
