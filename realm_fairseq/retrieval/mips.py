"""Maximum inner product search over block embeddings: the retriever's top k (REALM, sections 3.2 and 3.3).

REALM scores a block ``z`` for an input ``x`` by an inner product, ``f(x, z) = Embed_input(x) .
Embed_doc(z)`` (section 3.2), and since ``p(z | x)`` is dominated by a few blocks, it marginalises over
only the top k blocks, found by Maximum Inner Product Search (MIPS) over precomputed embeddings of every
block (section 3.3; the paper used ScaNN, this plugin faiss). The index is rebuilt from fresh embeddings
every few hundred steps (section 3.3); the versions on disk are :mod:`realm_fairseq.retrieval.versions`.

    index = MipsIndex.build(embeddings, "ivf_flat")          # embeddings: (n, d) float16/float32
    ids, scores = index.search(queries, k=8, exclude=source)  # (q, k) int64, (q, k) float32

:class:`MipsIndex` wraps one faiss index, always with ``METRIC_INNER_PRODUCT``; ``index_type`` picks it:

============  =========================  ===============================================================
type          faiss                      what it does (bytes a vector at d=128 with the defaults)
============  =========================  ===============================================================
``flat16``    ``IndexScalarQuantizer``   exact: every query scores every block, stored in float16 as an
                                         index version's embeddings are (256). The default.
``flat``      ``IndexFlatIP``            exact, stored in float32 (512)
``ivf_flat``  ``IndexIVFFlat``           k-means cells; a query scans the ``nprobe`` best cells (~525)
``ivf_pq``    ``IndexIVFPQ``             cells, vectors product-quantized to ``pq_m`` bytes (~75-90)
``hnsw``      ``IndexHNSWFlat``          a navigable small-world graph over float32 vectors (~785)
``sq8``       ``IndexScalarQuantizer``   exact scan of vectors quantized to 8 bits a dimension (128)
============  =========================  ===============================================================

``flat16`` gives the top k of ``flat`` over the float16 embeddings a version stores (the scores differ
in float32 rounding), in half the bytes on disk and in the page cache, and on the CPU scans them 2-3x as
fast for batches of up to a few hundred queries, where an exact scan is bound by memory bandwidth (faiss
computes ``flat`` batches as matrix products, which win from about 1,000 queries a call). ``flat`` keeps
float32 vectors, for embeddings that are not float16; :meth:`MipsIndex.build` builds it unless told
otherwise, while an index version gets ``DEFAULT_INDEX_TYPE`` (``flat16``) unless told otherwise. A
``flat16`` file ends with the float16 rows themselves (its codes), so an index version reads its embeddings
from there (:func:`float16_rows`) and keeps no second copy.

The tunable settings are the fields of :class:`IndexOptions`, each with its default and help. Small
collections are handled by shrinking ``nlist`` (down to one cell, i.e. an exact scan) so every cell has
enough training vectors; ``ivf_pq`` needs at least ``2**pq_nbits`` vectors and says so otherwise.
The recall and speed of each type at the defaults are measured by ``bench/search.py``: on CPU, batched
queries against ``flat`` run as one matrix product, so at 100k vectors it is as fast as ``ivf_flat`` or
``hnsw`` and at 1M only 3-4x slower; the others pay off in memory (``ivf_pq``, ``sq8``) and at scale.

On a machine with faiss-gpu, :meth:`MipsIndex.to_gpu` moves ``flat``, ``ivf_flat`` and ``ivf_pq`` to one
GPU or shards them over several; faiss has no GPU version of ``flat16``, ``hnsw`` and ``sq8``, which stay
on CPU (:mod:`.placement` then searches the version's embeddings with torch on the GPUs, exactly).
"""
import logging
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Iterator, List, Optional, Sequence, Tuple

import faiss
import numpy as np

from realm_fairseq.atomic_io import atomic_file, write_faults_named

logger = logging.getLogger(__name__)

INDEX_TYPES = ("flat16", "flat", "ivf_flat", "ivf_pq", "hnsw", "sq8")
DEFAULT_INDEX_TYPE = "flat16"  # what every command, config and function builds unless told otherwise
SEARCH_BATCH = 4096  # queries handed to faiss at a time
ADD_BATCH = 65536  # vectors converted to float32 and added at a time (bounds the extra memory)
MIN_PER_CELL = 39  # faiss k-means warns below 39 training vectors a centroid
MAX_NLIST = 65536
TRAIN_SEED = 0  # the training sample is the same for the same embeddings
GPU_MAX_K = 2048  # faiss-gpu returns at most this many neighbours a query
SQ_TRAIN_SIZE = 1 << 20  # sq8 learns each dimension's range from at most this many vectors
# faiss finds the nearest of 256 centroids ~10x faster in 8 dimensions than in 2 or 4, so PQ codebooks of
# sub-vectors shorter than this are trained with the sub-vectors zero-padded to it (same distances).
PQ_TRAIN_MIN_DIM = 8


@dataclass
class IndexOptions:
    """Settings of the index types; each applies to the types named at the start of its help."""

    nlist: Optional[int] = field(default=None, metadata={"help": (
        "ivf_flat, ivf_pq: number of k-means cells; default round(4 * sqrt(n)), at most n // 39 (faiss "
        "wants >= 39 training vectors a cell), at least 1, at most 65536")})
    nprobe: int = field(default=128, metadata={"help": (
        "ivf_flat, ivf_pq: cells scanned per query (at most nlist); more is slower and closer to exact. "
        "Set at search time too")})
    train_size: Optional[int] = field(default=None, metadata={"help": (
        "ivf_flat, ivf_pq: vectors (a fixed-seed random sample) the quantizers are trained on; default "
        "min(n, max(64 * nlist, 65536))")})
    pq_m: Optional[int] = field(default=None, metadata={"help": (
        "ivf_pq: sub-quantizers, i.e. bytes a code at 8 bits; must divide d; default the largest divisor "
        "of d that is <= d / 2 (64 for d = 128: two dimensions each)")})
    pq_nbits: int = field(default=8, metadata={"help": (
        "ivf_pq: bits of each sub-quantizer code (2**nbits centroids; needs >= 2**nbits vectors)")})
    hnsw_m: int = field(default=32, metadata={"help": (
        "hnsw: graph neighbours a vector (2 * M on the bottom layer); more is more memory, better recall")})
    ef_construction: int = field(default=80, metadata={"help": (
        "hnsw: candidate list size while inserting; more is a slower build and a better graph")})
    ef_search: int = field(default=128, metadata={"help": (
        "hnsw: candidate list size per query (at least k + excluded ids); more is slower and closer to "
        "exact. Set at search time too")})


# which options each type takes; the resolved values are what a manifest records
APPLIES = {
    "flat16": (),
    "flat": (),
    "ivf_flat": ("nlist", "nprobe", "train_size"),
    "ivf_pq": ("nlist", "nprobe", "train_size", "pq_m", "pq_nbits"),
    "hnsw": ("hnsw_m", "ef_construction", "ef_search"),
    "sq8": (),
}
GPU_TYPES = ("flat", "ivf_flat", "ivf_pq")  # the types faiss-gpu can search (MipsIndex.to_gpu)
# the types faiss stores as IndexScalarQuantizer, and its code type for each
SQ_TYPES = {"flat16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}
ROWS_IN_FILE = ("flat16",)  # types whose index file holds the float16 rows themselves (float16_rows)
SEARCH_OPTIONS = ("nprobe", "ef_search")  # may differ between build and search
OPTION_HELP = {f.name: f.metadata["help"] for f in fields(IndexOptions)}


def _check_index_type(index_type: str) -> None:
    if index_type not in APPLIES:
        raise ValueError(f"unknown index type {index_type!r}; expected one of {', '.join(INDEX_TYPES)}")


def check_options(index_type: str, options: dict) -> None:
    """Raise a ValueError unless ``options`` are positive integers (or None) that ``index_type`` takes."""
    _check_index_type(index_type)
    for name, value in options.items():
        if name not in OPTION_HELP:
            raise ValueError(f"unknown index option {name!r}; expected one of {', '.join(OPTION_HELP)}")
        if name not in APPLIES[index_type]:
            takes = ", ".join(APPLIES[index_type]) or "no options"
            raise ValueError(
                f"option {name!r} does not apply to index type {index_type!r} (it takes {takes})"
            )
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"option {name}={value!r}: expected a positive integer")


def default_nlist(n: int) -> int:
    """~4 sqrt(n) cells, with at least ``MIN_PER_CELL`` vectors each (one cell for tiny ``n``)."""
    return int(max(1, min(round(4 * math.sqrt(n)), n // MIN_PER_CELL, MAX_NLIST)))


def default_pq_m(d: int) -> int:
    """The largest divisor of ``d`` that is at most ``d / 2`` (1 for d = 1)."""
    return max([m for m in range(1, max(1, d // 2) + 1) if d % m == 0])


def resolve_options(index_type: str, n: int, d: int, **options) -> dict:
    """The options ``index_type`` takes, defaults filled in for ``n`` vectors of dimension ``d``.

    Raises ``ValueError`` for an option the type does not take, or a setting ``n``/``d`` cannot satisfy.
    """
    check_options(index_type, options)
    given = {k: v for k, v in options.items() if v is not None}
    opts = {**asdict(IndexOptions()), **given}
    if index_type in ("ivf_flat", "ivf_pq"):
        nlist = int(opts["nlist"] or default_nlist(n))
        if nlist > n:
            raise ValueError(f"nlist={nlist} cells need at least {nlist} vectors to train on; got {n}")
        opts["nlist"] = nlist
        opts["nprobe"] = int(min(opts["nprobe"], nlist))
        opts["train_size"] = int(min(n, opts["train_size"] or max(64 * nlist, 65536)))
        if opts["train_size"] < nlist:
            raise ValueError(f"train_size={opts['train_size']} is smaller than nlist={nlist}")
    if index_type == "ivf_pq":
        opts["pq_m"] = int(opts["pq_m"] or default_pq_m(d))
        if d % opts["pq_m"]:
            raise ValueError(f"pq_m={opts['pq_m']} must divide the embedding dimension {d}")
        if opts["pq_nbits"] > 16:
            raise ValueError(f"pq_nbits={opts['pq_nbits']}: expected at most 16")
        need = 2 ** opts["pq_nbits"]
        if opts["train_size"] < need:
            raise ValueError(
                f"ivf_pq with pq_nbits={opts['pq_nbits']} needs at least {need} vectors to train on; got "
                f"{opts['train_size']} (use index type flat16 for a collection this small, or a smaller "
                f"pq_nbits)"
            )
    return {k: int(opts[k]) for k in APPLIES[index_type]}


def min_index_bytes(index_type: str, n: int, d: int, opts: dict) -> int:
    """A lower bound on the size of the index file of ``n`` vectors of dimension ``d`` (``opts`` resolved):
    the vectors or codes alone."""
    if index_type == "ivf_pq":
        return n * -(-opts["pq_m"] * opts["pq_nbits"] // 8)
    return n * d * {"sq8": 1, "flat16": 2}.get(index_type, 4)


def float16_rows(path: str, count: int, dim: int) -> np.ndarray:
    """The (count, dim) float16 rows of a ``flat16`` index file, memory-mapped (no copy). They are its codes,
    which faiss writes last, after their length in bytes (8, little-endian); a ValueError names ``path``
    unless the file ends so. They start at an odd offset (81): numpy and torch read them unaligned."""
    nbytes = count * dim * 2
    offset = os.path.getsize(path) - nbytes
    recorded = None
    if offset >= 8:
        with open(path, "rb") as f:
            f.seek(offset - 8)
            recorded = int.from_bytes(f.read(8), "little")
    if recorded != nbytes:
        raise ValueError(f"{path}: does not end with {count} x {dim} float16 rows (a flat16 index's codes); "
                         f"expected a flat16 index of {count} vectors of dimension {dim}")
    return np.memmap(path, dtype=np.float16, mode="r", offset=offset, shape=(count, dim))


def _new_index(index_type: str, d: int, opts: dict) -> "faiss.Index":
    ip = faiss.METRIC_INNER_PRODUCT
    if index_type == "flat":
        return faiss.IndexFlatIP(d)
    if index_type in SQ_TYPES:
        return faiss.IndexScalarQuantizer(d, SQ_TYPES[index_type], ip)
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(d, opts["hnsw_m"], ip)
        index.hnsw.efConstruction = opts["ef_construction"]
        return index
    quantizer = faiss.IndexFlatIP(d)
    if index_type == "ivf_flat":
        index = faiss.IndexIVFFlat(quantizer, d, opts["nlist"], ip)
    else:
        index = faiss.IndexIVFPQ(quantizer, d, opts["nlist"], opts["pq_m"], opts["pq_nbits"], ip)
        index.do_polysemous_training = False  # only useful for Hamming-distance filtering, slow to train
        index.pq.cp.min_points_per_centroid = 1  # faiss would warn once per sub-quantizer; build() warns once
    index.cp.min_points_per_centroid = 1  # at most n // 39 cells, except the single cell of a tiny set
    return index


def _train(index: "faiss.Index", sample: np.ndarray) -> None:
    """Train ``index`` on ``sample`` (t, d) float32; PQ codebooks k-means in >= PQ_TRAIN_MIN_DIM dims."""
    pq = getattr(index, "pq", None)
    if pq is None or pq.dsub >= PQ_TRAIN_MIN_DIM:
        index.train(sample)
        return
    pad = faiss.RemapDimensionsTransform(pq.dsub, PQ_TRAIN_MIN_DIM, False)  # appends zero dimensions
    assign = faiss.IndexPreTransform(pad, faiss.IndexFlatL2(PQ_TRAIN_MIN_DIM))
    pq.assign_index = assign  # k-means of each sub-quantizer finds nearest centroids with this index
    try:
        index.train(sample)
    finally:
        pq.assign_index = None  # only used for training; `assign` is freed with this frame


def _type_of(index: "faiss.Index") -> str:
    """The index type of a faiss index read from disk (``"unknown (ClassName)"`` if none fits)."""
    if isinstance(index, faiss.IndexIVFPQ):
        return "ivf_pq"
    if isinstance(index, faiss.IndexIVFFlat):
        return "ivf_flat"
    if isinstance(index, faiss.IndexHNSWFlat):
        return "hnsw"
    if isinstance(index, faiss.IndexScalarQuantizer):
        return next((name for name, qtype in SQ_TYPES.items() if qtype == index.sq.qtype),
                    f"unknown (IndexScalarQuantizer, qtype {index.sq.qtype})")
    if isinstance(index, faiss.IndexFlat):
        return "flat"
    return f"unknown ({type(index).__name__})"


def _options_of(index: "faiss.Index", index_type: str) -> dict:
    """The options a faiss index was built with, as far as the index itself records them."""
    if index_type in ("ivf_flat", "ivf_pq"):
        opts = {"nlist": int(index.nlist), "nprobe": int(index.nprobe)}
        if index_type == "ivf_pq":
            opts.update(pq_m=int(index.pq.M), pq_nbits=int(index.pq.nbits))
        return opts
    if index_type == "hnsw":
        return {"ef_construction": int(index.hnsw.efConstruction), "ef_search": int(index.hnsw.efSearch)}
    return {}


def check_finite(rows: np.ndarray, start: int = 0) -> np.ndarray:
    """``rows`` (m, d), rows ``start``.. of the embeddings, unless one holds a NaN or inf (a ValueError naming
    it); checked ``ADD_BATCH`` rows at a time."""
    for offset in range(0, len(rows), ADD_BATCH):
        chunk = rows[offset : offset + ADD_BATCH]
        if not _all_finite(chunk):
            bad = ~np.isfinite(chunk)
            raise ValueError(f"embeddings: row {start + offset + int(np.argwhere(bad)[0, 0])} is not finite "
                             "(NaN or inf)")
    return rows


def _all_finite(chunk: np.ndarray) -> bool:
    """Whether ``chunk`` holds no NaN or inf. float16 is checked by its bits: with the sign cleared, NaN and
    inf are those of 0x7C00 (the exponent all ones) and above; 10x as fast as ``np.isfinite`` on float16."""
    if chunk.dtype == np.float16 and chunk.size:
        return int((np.ascontiguousarray(chunk).view(np.uint16) & 0x7FFF).max()) < 0x7C00
    return bool(np.isfinite(chunk).all())


def _as_float32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_embeddings(embeddings) -> np.ndarray:
    if not isinstance(embeddings, np.ndarray) or embeddings.ndim != 2:
        raise ValueError(f"embeddings: expected a 2-d numpy array (n, d), got {type(embeddings).__name__} "
                         f"with shape {getattr(embeddings, 'shape', None)}")
    if embeddings.dtype not in (np.float16, np.float32):
        raise ValueError(f"embeddings: expected float16 or float32, got {embeddings.dtype}")
    if embeddings.shape[0] < 1 or embeddings.shape[1] < 1:
        raise ValueError(f"embeddings: expected at least one vector of at least one dimension, got "
                         f"shape {embeddings.shape}")
    return embeddings


def _check_parts(embeddings) -> List[np.ndarray]:
    """``embeddings`` (n, d), or a list of parts (n_i, d) that are its rows in order (a sharded build's shards,
    so that they need not be concatenated in memory), as a list of parts, each checked as
    :func:`_check_embeddings` except that a part may be empty; all of one dtype and dimension."""
    if not isinstance(embeddings, (list, tuple)):
        return [_check_embeddings(embeddings)]
    if not embeddings:
        raise ValueError("embeddings: expected at least one part (n_i, d), got an empty list")
    first = embeddings[0]
    for i, part in enumerate(embeddings):
        if not isinstance(part, np.ndarray) or part.ndim != 2 or part.dtype != getattr(first, "dtype", None) \
                or part.shape[1] != first.shape[1]:
            raise ValueError(f"embeddings: part {i} is {getattr(part, 'dtype', type(part).__name__)} "
                             f"{getattr(part, 'shape', None)}; expected 2-d parts (n_i, d) of one dtype and d "
                             f"(part 0: {getattr(first, 'dtype', None)} {getattr(first, 'shape', None)})")
    if not any(len(part) for part in embeddings):
        raise ValueError("embeddings: expected at least one vector, every part is empty")
    _check_embeddings(next(part for part in embeddings if len(part)))
    return list(embeddings)


def row_batches(parts: Sequence[np.ndarray]) -> Iterator[Tuple[int, np.ndarray]]:
    """``(start, rows)``: the rows of ``parts`` in order, at most ``ADD_BATCH`` at a time, ``start`` being
    the first row's number in the whole."""
    start = 0
    for part in parts:
        for offset in range(0, len(part), ADD_BATCH):
            yield start + offset, part[offset : offset + ADD_BATCH]
        start += len(part)


def _train_sample(parts: Sequence[np.ndarray], size: int) -> np.ndarray:
    """A fixed-seed random sample of ``size`` rows of ``parts`` (all rows if there are no more), float32:
    (size, d). The same rows are drawn however the embeddings are split into parts."""
    n = sum(len(part) for part in parts)
    rows = np.arange(n) if size >= n else np.sort(np.random.default_rng(TRAIN_SEED).choice(n, size=size,
                                                                                           replace=False))
    starts = np.cumsum([0] + [len(part) for part in parts])
    return np.concatenate([_as_float32(part[rows[(rows >= lo) & (rows < hi)] - lo])
                           for part, lo, hi in zip(parts, starts[:-1], starts[1:])])


def _copy_codes(index: "faiss.Index", parts: Sequence[np.ndarray]) -> None:
    """Make float16 ``parts`` the codes of an empty ``flat16`` index: faiss encodes float16 to these same
    bytes, so they are copied (once, part by part, each checked finite) instead of encoded."""
    n, d = sum(len(part) for part in parts), parts[0].shape[1]
    index.codes.resize(n * d * 2)
    codes = faiss.rev_swig_ptr(index.codes.data(), n * d * 2)  # a numpy view of the index's codes
    for start, rows in row_batches(parts):
        codes[start * d * 2 : (start + len(rows)) * d * 2] = \
            np.ascontiguousarray(check_finite(rows, start)).view(np.uint8).reshape(-1)
    index.ntotal = n


def _as_queries(queries, dim: int) -> np.ndarray:
    """Queries as float32 C-contiguous (q, d); accepts numpy or torch (any float dtype, any device)."""
    if hasattr(queries, "detach"):  # a torch tensor; torch itself need not be imported here
        queries = queries.detach().float().cpu().numpy()
    queries = np.asarray(queries)
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise ValueError(f"queries: expected shape (q, {dim}), got {queries.shape}")
    if not np.issubdtype(queries.dtype, np.floating):
        raise ValueError(f"queries: expected floats, got {queries.dtype}")
    return _as_float32(queries)


def _exclusion_matrix(exclude, num_queries: int) -> np.ndarray:
    """Per-query excluded ids as (q, m) int64, padded with -1; ``exclude`` is (q,), (q, m) or ragged."""
    if exclude is None:
        return np.empty((num_queries, 0), dtype=np.int64)
    if hasattr(exclude, "detach"):
        exclude = exclude.detach().cpu().numpy()
    if isinstance(exclude, np.ndarray):
        if exclude.ndim not in (1, 2) or not np.issubdtype(exclude.dtype, np.integer):
            raise ValueError(f"exclude: expected an integer array of shape (q,) or (q, m), got "
                             f"{exclude.dtype} {exclude.shape}")
        matrix = exclude.reshape(len(exclude), -1).astype(np.int64)
    else:
        rows = [np.atleast_1d(np.asarray(r, dtype=np.int64)) for r in exclude]
        matrix = np.full((len(rows), max([len(r) for r in rows], default=0)), -1, dtype=np.int64)
        for i, r in enumerate(rows):
            matrix[i, : len(r)] = r
    if len(matrix) != num_queries:
        raise ValueError(f"exclude: expected one entry per query ({num_queries}), got {len(matrix)}")
    return matrix


def _drop_excluded(scores: np.ndarray, ids: np.ndarray, excluded: np.ndarray, k: int, ntotal: int):
    """Keep the first ``k`` results of each row that are neither missing (-1) nor excluded.

    scores, ids: (b, f) sorted by descending score; excluded: (b, m). Returns (b, k) each, padded with
    -inf / -1 where a row has fewer than ``k`` valid results.
    """
    b, f = ids.shape
    if f < k:  # fewer vectors than k
        scores = np.concatenate([scores, np.full((b, k - f), -np.inf, np.float32)], axis=1)
        ids = np.concatenate([ids, np.full((b, k - f), -1, np.int64)], axis=1)
    bad = ids < 0  # (b, max(f, k))
    if excluded.shape[1]:
        # one key per (row, id) pair, so one isin serves every row: (b, f) against (b, m)
        stride = ntotal + 2
        row = np.arange(b, dtype=np.int64)[:, None] * stride
        real = (excluded >= 0) & (excluded < ntotal)  # others (padding, out of range) match nothing
        bad |= np.isin(ids + 1 + row, np.where(real, excluded + 1 + row, -1))
    keep = np.argsort(bad, axis=1, kind="stable")[:, :k]  # valid results first, in score order: (b, k)
    scores = np.take_along_axis(scores, keep, axis=1)
    ids = np.take_along_axis(ids, keep, axis=1)
    bad = np.take_along_axis(bad, keep, axis=1)
    scores[bad] = -np.inf
    ids[bad] = -1
    return scores, ids


class MipsIndex:
    """Top-k inner-product search over ``n`` block embeddings of dimension ``d``; ids are row numbers."""

    def __init__(self, index: "faiss.Index", index_type: str, options: dict):
        _check_index_type(index_type)
        self._cpu = index  # the CPU index: what save() writes
        self._index = index  # what search() uses: the CPU index or its copy on GPUs
        self.index_type = index_type
        self.options = dict(options)  # resolved options (APPLIES[index_type])
        self.devices: List[int] = []  # GPUs the index is on; empty on CPU
        self._bytes_per_vector: Optional[float] = None
        self._apply_search_options()

    @classmethod
    def build(cls, embeddings, index_type: str = "flat", **options) -> "MipsIndex":
        """Index ``embeddings`` (n, d), float16 or float32, or a list of parts whose rows in order are the
        embeddings (built as if concatenated, without concatenating them); row ``i`` gets id ``i``."""
        parts = _check_parts(embeddings)
        n, d = sum(len(part) for part in parts), parts[0].shape[1]
        opts = resolve_options(index_type, n, d, **options)
        index = _new_index(index_type, d, opts)
        if index_type == "ivf_pq" and opts["train_size"] < MIN_PER_CELL * 2 ** opts["pq_nbits"]:
            logger.warning("ivf_pq: %d training vectors for %d centroids a sub-quantizer; faiss advises "
                           "%d or more (codebooks may be poor)", opts["train_size"], 2 ** opts["pq_nbits"],
                           MIN_PER_CELL * 2 ** opts["pq_nbits"])
        if not index.is_trained:
            _train(index, _train_sample(parts, opts.get("train_size", min(n, SQ_TRAIN_SIZE))))
        if index_type == "flat16" and parts[0].dtype == np.float16:
            _copy_codes(index, parts)
        else:
            for start, rows in row_batches(parts):
                index.add(check_finite(_as_float32(rows), start))
        logger.info("built a %s index of %d vectors of dimension %d (%s)", index_type, n, d, opts)
        return cls(index, index_type, opts)

    @property
    def ntotal(self) -> int:
        return int(self._cpu.ntotal)

    @property
    def dim(self) -> int:
        return int(self._cpu.d)

    @property
    def bytes_per_vector(self) -> float:
        """Size of the serialized index divided by the number of vectors (what it costs on disk)."""
        if self._bytes_per_vector is None:
            self._bytes_per_vector = faiss.serialize_index(self._cpu).size / max(1, self.ntotal)
        return self._bytes_per_vector

    def set_search_options(self, nprobe: Optional[int] = None, ef_search: Optional[int] = None) -> None:
        """Change the search-time settings (see :class:`IndexOptions`); others are fixed at build."""
        given = {k: v for k, v in (("nprobe", nprobe), ("ef_search", ef_search)) if v is not None}
        check_options(self.index_type, given)
        if "nprobe" in given:
            given["nprobe"] = min(int(given["nprobe"]), self.options["nlist"])
        self.options.update(given)
        self._apply_search_options()

    def _apply_search_options(self) -> None:
        if "nprobe" in self.options:
            self._cpu.nprobe = self.options["nprobe"]
            if self._index is not self._cpu:  # on GPU, possibly sharded
                faiss.GpuParameterSpace().set_index_parameter(self._index, "nprobe", self.options["nprobe"])
        if "ef_search" in self.options:
            self._cpu.hnsw.efSearch = self.options["ef_search"]  # hnsw never moves to GPU

    def search(
        self, queries, k: int, exclude=None, batch_size: int = SEARCH_BATCH
    ) -> Tuple[np.ndarray, np.ndarray]:
        """The ``k`` highest inner products of each query: ids (q, k) int64 and scores (q, k) float32, the
        contract of :mod:`realm_fairseq.retrieval.contract`.

        ``queries``: (q, d) numpy or torch, any float dtype. ``exclude``: ids each query must not get
        (REALM drops the block a pre-training sentence came from): a (q,) or (q, m) integer array, or a
        list of q lists; negative entries are padding. The index is asked for ``k + m`` neighbours, so
        every row still has ``k`` ids unless fewer exist; missing results are id -1 with score -inf.
        Rows are sorted by descending score.
        """
        if int(k) < 1:
            raise ValueError(f"k: expected a positive integer, got {k!r}")
        k = int(k)
        queries = _as_queries(queries, self.dim)  # (q, d) float32
        excluded = _exclusion_matrix(exclude, len(queries))  # (q, m) int64
        fetch = min(k + excluded.shape[1], self.ntotal)
        if self.devices and fetch > GPU_MAX_K:
            raise ValueError(f"k + excluded ids = {fetch}: faiss on GPU returns at most {GPU_MAX_K}")
        params = None
        if "ef_search" in self.options:  # HNSW finds at most efSearch candidates
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self.options["ef_search"], fetch)
        scores = np.empty((len(queries), k), dtype=np.float32)
        ids = np.empty((len(queries), k), dtype=np.int64)
        for start in range(0, len(queries), batch_size):
            end = start + batch_size
            batch = queries[start:end]  # (b, d)
            found_scores, found_ids = self._index.search(batch, fetch, params=params)  # (b, fetch) each
            scores[start:end], ids[start:end] = _drop_excluded(
                found_scores, found_ids, excluded[start:end], k, self.ntotal
            )
        return ids, scores

    def to_gpu(self, devices: Optional[Sequence[int]] = None) -> "MipsIndex":
        """Move the index to GPU ``devices`` (default: all), sharded when more than one; returns self.

        Without faiss-gpu or a visible GPU, and for types faiss cannot put on a GPU, the index stays on
        CPU (logged). ``ivf_pq`` is copied with float16 lookup tables, which codes of more than 48 bytes
        need on GPU; ``flat`` and ``ivf_flat`` keep float32 vectors, so results equal the CPU ones.
        """
        num_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if num_gpus == 0 or not hasattr(faiss, "GpuMultipleClonerOptions"):
            logger.info("faiss %s sees no GPU (faiss-cpu, or none visible): the %s index stays on CPU",
                        faiss.__version__, self.index_type)
            return self
        devices = list(range(num_gpus)) if devices is None else [int(g) for g in devices]
        if not devices or any(not 0 <= g < num_gpus for g in devices):
            raise ValueError(f"devices={devices}: expected GPU ids in 0..{num_gpus - 1}")
        options = faiss.GpuMultipleClonerOptions()
        options.shard = True  # each GPU holds 1/len(devices) of the vectors; results are merged
        options.useFloat16 = self.index_type == "ivf_pq"
        try:
            index = faiss.index_cpu_to_gpus_list(self._cpu, co=options, gpus=devices)
        except RuntimeError as e:  # faiss has no GPU implementation of this type
            logger.warning("faiss cannot put a %s index on GPU (%s): it stays on CPU",
                           self.index_type, str(e).strip().splitlines()[-1])
            return self
        self._index, self.devices = index, devices
        self._apply_search_options()
        logger.info("%s index of %d vectors on GPU %s", self.index_type, self.ntotal, devices)
        return self

    def save(self, path: str) -> None:
        """Write the (CPU) index to ``path`` through a temporary file flushed to disk, so ``path`` is never
        half-written."""
        with atomic_file(path, force=True) as tmp, write_faults_named(path):  # faiss: a full disk is a RuntimeError
            faiss.write_index(self._cpu, tmp)

    def write_to(self, f) -> None:
        """Write the (CPU) index, as :meth:`save` would, to ``f``: anything with ``write(bytes)`` (faiss hands
        it the file in chunks; an error ``f`` raises reaches the caller as it is)."""
        faiss.write_index(self._cpu, faiss.PyCallbackIOWriter(f.write))

    @classmethod
    def load(cls, path: str, index_type: str, **options) -> "MipsIndex":
        """Read an index saved by :meth:`save`; ``index_type`` must be what it was built as.

        ``options`` may set the search-time settings (``nprobe``, ``ef_search``); build-time settings
        given here (e.g. from a manifest) must agree with the file.
        """
        check_options(index_type, options)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such faiss index file")
        try:
            index = faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC)  # memory-mapped: the ranks of a node share it
        except RuntimeError as e:
            raise ValueError(f"{path}: not a readable faiss index ({str(e).strip().splitlines()[-1]})") from e
        found = _type_of(index)
        if found != index_type:
            raise ValueError(f"{path}: holds a {found} index, expected {index_type}")
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"{path}: the index does not use inner product (faiss metric "
                             f"{index.metric_type})")
        opts = _options_of(index, index_type)
        for name, value in options.items():
            if value is None:
                continue
            if name not in SEARCH_OPTIONS and name in opts and opts[name] != value:
                raise ValueError(f"{path}: built with {name}={opts[name]}, expected {name}={value}")
            opts[name] = int(value)
        if "nprobe" in opts:
            opts["nprobe"] = min(opts["nprobe"], opts["nlist"])
        return cls(index, index_type, opts)

    def __repr__(self) -> str:
        where = f"GPU {self.devices}" if self.devices else "CPU"
        return f"MipsIndex({self.index_type}, ntotal={self.ntotal}, dim={self.dim}, {where}, {self.options})"
