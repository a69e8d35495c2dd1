"""Index versions on disk: block embeddings and their MIPS index, written atomically (REALM, section 3.3).

REALM re-embeds every block with the current document encoder and rebuilds the MIPS index every few
hundred training steps, while training goes on with the previous index (section 3.3, "asynchronous
refresh"). An INDEX directory holds those versions side by side:

    INDEX/v1/  embeddings.npy   float16 (count, dim): row i embeds block i of the corpus
               index.faiss      the MipsIndex over those rows (realm_fairseq.retrieval.mips)
               manifest.json    version, corpus_checksum, count, dim, index_type, index_options,
                                encoder (who embedded: e.g. checkpoint path and update number), created
    INDEX/v2/  ...
    INDEX/shards/<tag>/shard-<i>-of-<n>.npy   embeddings of one job of a sharded build, before merging

A version is written into ``INDEX/vN.tmp/`` and renamed to ``INDEX/vN/`` when complete, so a reader sees
a whole version or none: a ``vN.tmp`` left by a killed build is never listed or loaded, and the next
write of version N removes it. Shards are written to a temporary file and renamed the same way, so a
rerun of a job array skips the shards that exist (:meth:`IndexStore.has_shard`). One writer at a time
is assumed (the process that refreshes the index); any number of readers may load meanwhile.
"""
import datetime
import json
import logging
import os
import re
import shutil
from typing import Iterable, List, Optional, Tuple, Union

import numpy as np

from realm_fairseq.atomic_io import atomic_file
from realm_fairseq.retrieval.mips import MipsIndex

logger = logging.getLogger(__name__)

EMBEDDINGS = "embeddings.npy"
INDEX = "index.faiss"
MANIFEST = "manifest.json"
SHARDS = "shards"
MANIFEST_FIELDS = ("version", "corpus_checksum", "count", "dim", "index_type", "index_options", "encoder",
                   "created")
_VERSION_DIR = re.compile(r"^v([1-9][0-9]*)$")
_TAG = re.compile(r"^[A-Za-z0-9_.-]+$")
BUILD_HINT = "build one with realm-build-index"


def check_serves(manifest: dict, index_dir: str, query_embedder) -> None:
    """Raise a ValueError naming the index if its version (``manifest``) cannot serve a model whose query
    embedder is ``query_embedder``: other dimension, or embeddings made for the other retriever score."""
    if manifest["dim"] != query_embedder.dim:
        raise ValueError(f"the index {index_dir} holds {manifest['dim']}-dimensional embeddings but the model's "
                         f"query embedder gives {query_embedder.dim}; build the index with this model's weights")
    built, wanted = manifest["encoder"].get("score", "dot"), "cosine" if query_embedder.norm > 0 else "dot"
    if built != wanted:
        raise ValueError(f"the index {index_dir} holds embeddings for --retriever-score {built} but the model "
                         f"scores with {wanted}; rebuild it with realm-build-index --score {wanted} (--hf) or "
                         "from a checkpoint of this model")


def shard_range(count: int, shard_id: int, num_shards: int) -> Tuple[int, int]:
    """Blocks ``[start, end)`` of shard ``shard_id`` of ``num_shards``: contiguous, sizes differ by <= 1."""
    if num_shards < 1 or not 0 <= shard_id < num_shards:
        raise ValueError(f"shard {shard_id} of {num_shards}: expected 0 <= shard_id < num_shards")
    if count < 0:
        raise ValueError(f"count={count}: expected a non-negative number of blocks")
    return count * shard_id // num_shards, count * (shard_id + 1) // num_shards


def _fsync(path: str) -> None:
    """Flush a file (or a directory entry list) to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object, so numpy does not append ".npy" to a temporary name
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())


def _load_npy(path: str, what: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing ({what})")
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:  # truncated, or not a .npy file
        raise ValueError(f"{path}: not a readable .npy file of {what} ({e})") from e


class IndexStore:
    """The versions of an INDEX directory: commit new ones, load the newest, merge sharded builds."""

    def __init__(self, root: str):
        self.root = root

    # ---------------------------------------------------------------- listing
    def version_dir(self, version: int) -> str:
        return os.path.join(self.root, f"v{int(version)}")

    def versions(self) -> List[int]:
        """Committed versions, ascending (``vN.tmp`` directories of unfinished builds are not versions)."""
        if not os.path.isdir(self.root):
            return []
        found = []
        for name in os.listdir(self.root):
            match = _VERSION_DIR.match(name)
            if match and os.path.isdir(os.path.join(self.root, name)):
                found.append(int(match.group(1)))
        return sorted(found)

    def latest(self) -> Optional[int]:
        versions = self.versions()
        return versions[-1] if versions else None

    # ---------------------------------------------------------------- writing
    def commit(self, embeddings: np.ndarray, corpus_checksum: str, encoder: dict, index_type: str = "flat",
               **options) -> int:
        """Build the index over ``embeddings`` (n, d) and write it as the next version; returns its number.

        ``encoder`` is recorded as given (e.g. ``{"checkpoint": path, "update": 2000}``). Nothing is
        visible under ``INDEX/vN`` until every file is written.
        """
        if not isinstance(encoder, dict):
            raise ValueError(f"encoder: expected a dict describing the encoder, got {type(encoder).__name__}")
        try:
            json.dumps(encoder)
        except (TypeError, ValueError) as e:
            raise ValueError(f"encoder: must be JSON-serializable for {MANIFEST} ({e})") from e
        if not isinstance(corpus_checksum, str) or not corpus_checksum:
            raise ValueError(f"corpus_checksum: expected a non-empty string, got {corpus_checksum!r}")
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.floating):
            raise ValueError(f"embeddings: expected a float array (n, d), got {embeddings.dtype} "
                             f"{embeddings.shape}")
        embeddings = embeddings.astype(np.float16, copy=False)  # what is stored; the index is built from it
        index = MipsIndex.build(embeddings, index_type, **options)  # before any file: bad options fail early
        version = (self.latest() or 0) + 1
        final = self.version_dir(version)
        tmp = final + ".tmp"
        if os.path.lexists(tmp):
            logger.info("removing %s, left by an unfinished build", tmp)
            shutil.rmtree(tmp)
        os.makedirs(tmp)
        try:
            _save_npy(os.path.join(tmp, EMBEDDINGS), embeddings)
            index.save(os.path.join(tmp, INDEX))
            _fsync(os.path.join(tmp, INDEX))
            manifest = {
                "version": version,
                "corpus_checksum": corpus_checksum,
                "count": int(embeddings.shape[0]),
                "dim": int(embeddings.shape[1]),
                "index_type": index_type,
                "index_options": index.options,
                "encoder": encoder,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=2, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            _fsync(tmp)
        except BaseException:  # a killed process leaves vN.tmp behind; the next commit removes it
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        os.rename(tmp, final)  # the commit point
        _fsync(self.root)
        logger.info("committed %s: %d vectors, %s index", final, manifest["count"], index_type)
        return version

    def prune(self, keep: int, in_use: Union[None, int, Iterable[int]] = None) -> List[int]:
        """Delete versions older than the newest ``keep``, except ``in_use``; returns those deleted.

        A version is renamed out of the list before its files are removed, so a reader never finds half
        of one.
        """
        if keep < 1:
            raise ValueError(f"keep={keep}: expected at least 1 (the newest version)")
        if not os.path.isdir(self.root):
            return []
        if in_use is None:
            protected = set()
        elif isinstance(in_use, (int, np.integer)):
            protected = {int(in_use)}
        else:
            protected = {int(v) for v in in_use}
        versions = self.versions()
        doomed = [v for v in versions[: max(0, len(versions) - keep)] if v not in protected]
        for v in doomed:
            os.rename(self.version_dir(v), os.path.join(self.root, f".v{v}.deleting"))
        for name in os.listdir(self.root):  # also what an interrupted prune left
            if name.startswith(".v") and name.endswith(".deleting"):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
        if doomed:
            logger.info("pruned versions %s of %s", doomed, self.root)
        return doomed

    # ---------------------------------------------------------------- reading
    def _require_version(self, version: Optional[int]) -> int:
        versions = self.versions()
        if not versions:
            raise FileNotFoundError(
                f"{self.root} holds no committed index version (v1, v2, ...); {BUILD_HINT}"
            )
        if version is None:
            return versions[-1]
        if int(version) not in versions:
            listed = ", ".join(f"v{v}" for v in versions)
            raise FileNotFoundError(
                f"{self.version_dir(version)}: no such committed version (found {listed})"
            )
        return int(version)

    def manifest(self, version: Optional[int] = None) -> dict:
        """The manifest of ``version`` (default the newest), checked for every field."""
        version = self._require_version(version)
        path = os.path.join(self.version_dir(version), MANIFEST)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: missing (every index version has one)")
        try:
            with open(path, encoding="utf-8") as f:
                manifest = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(manifest, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
        missing = [k for k in MANIFEST_FIELDS if k not in manifest]
        if missing:
            raise ValueError(f"{path}: missing field(s) {', '.join(missing)}")
        if manifest["version"] != version:
            raise ValueError(
                f"{path}: field version is {manifest['version']!r}, expected {version} (the directory)"
            )
        for name in ("count", "dim"):
            if not isinstance(manifest[name], int) or manifest[name] < 1:
                raise ValueError(f"{path}: field {name} is {manifest[name]!r}, expected a positive integer")
        return manifest

    def embeddings(self, version: Optional[int] = None) -> np.ndarray:
        """The block embeddings of ``version`` (default the newest), memory-mapped float16 (count, dim)."""
        return self._embeddings(self.manifest(version))

    def _embeddings(self, manifest: dict) -> np.ndarray:
        path = os.path.join(self.version_dir(manifest["version"]), EMBEDDINGS)
        array = _load_npy(path, "block embeddings")
        expected = (manifest["count"], manifest["dim"])
        if array.shape != expected or array.dtype != np.float16:
            raise ValueError(f"{path}: holds {array.dtype} {array.shape}, expected float16 {expected} "
                             f"(count, dim of {MANIFEST})")
        return array

    def load(self, version: Optional[int] = None, corpus=None) -> Tuple[MipsIndex, dict]:
        """The index of ``version`` (default the newest) and its manifest.

        With ``corpus`` (anything with ``.checksum`` and ``len()``, e.g. a BlockCorpus) the version must
        have been built from that corpus: same ``corpus_checksum`` and ``count``.
        """
        manifest = self.manifest(version)
        vdir = self.version_dir(manifest["version"])
        if corpus is not None:
            for name, expected in (("corpus_checksum", corpus.checksum), ("count", len(corpus))):
                if manifest[name] != expected:
                    raise ValueError(
                        f"{vdir}: {MANIFEST} field {name} is {manifest[name]!r}, but the corpus has "
                        f"{expected!r}; this index was built from another corpus ({BUILD_HINT} for this one)"
                    )
        self._embeddings(manifest)  # the file exists and has the recorded shape
        path = os.path.join(vdir, INDEX)
        index = MipsIndex.load(path, manifest["index_type"], **manifest["index_options"])
        if (index.ntotal, index.dim) != (manifest["count"], manifest["dim"]):
            raise ValueError(f"{path}: holds {index.ntotal} vectors of dimension {index.dim}, expected "
                             f"{manifest['count']} of dimension {manifest['dim']} ({MANIFEST})")
        return index, manifest

    # ---------------------------------------------------------------- sharded builds
    def shard_dir(self, tag: str) -> str:
        if not isinstance(tag, str) or not _TAG.match(tag) or tag in (".", ".."):
            raise ValueError(f"shard tag {tag!r}: expected letters, digits, '.', '_' or '-'")
        return os.path.join(self.root, SHARDS, tag)

    def shard_path(self, tag: str, shard_id: int, num_shards: int) -> str:
        shard_range(0, shard_id, num_shards)  # checks the numbers
        return os.path.join(self.shard_dir(tag), f"shard-{shard_id}-of-{num_shards}.npy")

    def has_shard(self, tag: str, shard_id: int, num_shards: int) -> bool:
        """Whether shard ``shard_id`` of ``num_shards`` is complete (a rerun may skip it)."""
        return os.path.isfile(self.shard_path(tag, shard_id, num_shards))

    def write_shard(self, tag: str, shard_id: int, num_shards: int, embeddings: np.ndarray) -> str:
        """Store the float16 embeddings (rows, d) of one shard through a temporary file; returns its path."""
        path = self.shard_path(tag, shard_id, num_shards)
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.floating):
            raise ValueError(f"shard {shard_id}: expected a float array (rows, d), got {embeddings.dtype} "
                             f"{embeddings.shape}")
        with atomic_file(path, force=True) as tmp:
            _save_npy(tmp, embeddings.astype(np.float16, copy=False))
        return path

    def merge_shards(self, tag: str, num_shards: int, corpus_checksum: str, encoder: dict,
                     index_type: str = "flat", **options) -> int:
        """Concatenate shards 0..num_shards-1 in order, commit them as a version, remove the shards.

        Returns the new version. Raises ``FileNotFoundError`` listing the shard ids that are missing.
        """
        paths = [self.shard_path(tag, i, num_shards) for i in range(num_shards)]
        missing = [i for i, p in enumerate(paths) if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(
                f"{self.shard_dir(tag)}: missing shard(s) {', '.join(map(str, missing))} of {num_shards}; "
                f"run those shard jobs first"
            )
        shards = [_load_npy(p, f"shard {i} embeddings") for i, p in enumerate(paths)]
        dims = {s.shape[1] if s.ndim == 2 else None for s in shards}
        if len(dims) != 1 or None in dims:
            shapes = ", ".join(f"{i}: {s.shape}" for i, s in enumerate(shards))
            raise ValueError(f"{self.shard_dir(tag)}: shards disagree on the embedding dimension ({shapes})")
        embeddings = np.concatenate(shards, axis=0)  # (sum of rows, d) float16
        version = self.commit(embeddings, corpus_checksum, encoder, index_type, **options)
        shutil.rmtree(self.shard_dir(tag))
        shards_root = os.path.join(self.root, SHARDS)
        if not os.listdir(shards_root):
            os.rmdir(shards_root)
        return version
