"""Index versions on disk: block embeddings and their MIPS index, written atomically (REALM, section 3.3).

REALM re-embeds every block with the current document encoder and rebuilds the MIPS index every few
hundred training steps, while training goes on with the previous index (section 3.3, "asynchronous
refresh"). An INDEX directory holds those versions side by side:

    INDEX/v1/  index.faiss      the MipsIndex over the block embeddings (realm_fairseq.retrieval.mips)
               embeddings.npy   float16 (count, dim): row i embeds block i of the corpus; not written for
                                a flat16 index, whose file holds these rows (mips.float16_rows)
               manifest.json    version, corpus_checksum, count, dim, index_type, index_options,
                                encoder (who embedded: e.g. checkpoint path and update number), created,
                                embeddings_file (which file holds the rows), files (bytes and sha256 of
                                each file)
    INDEX/v2/  ...
    INDEX/.lock                  held (flock) while a writer claims a version number
    INDEX/.tmp-XXXX/             a version being written
    INDEX/shards/<tag>/shard-<i>-of-<n>.npy   embeddings of one job of a sharded build, before merging

A version is written into a directory of its own, ``INDEX/.tmp-XXXX/``, and renamed to ``INDEX/vN/`` when
complete, so a reader sees a whole version or none. Any number of writers (hand-run builds, a training
run's refresher) may commit into one INDEX at once: each writes its own temporary directory and claims
the next free number only at the rename, holding ``INDEX/.lock`` (``flock``) for that moment, so each
commits a whole, distinct version. A writer also holds a lock on ``owner`` inside its temporary
directory until it commits; a temporary directory whose lock nobody holds (its writer was killed) is
removed by the next commit, never one still being written. On a file system without ``flock`` the
claim still cannot collide (a rename never replaces a committed version) and a temporary directory
is removed only when its writer's process, on this host, is gone.

A ``flat16`` version (the default) stores its float16 embeddings once, as the codes of its faiss file, and
reads them from there as a memory-mapped view: at paper scale, 13M blocks of 128 dimensions, that is 3.4 GB
written, hashed and held in the page cache instead of 6.7 GB. Other types keep ``embeddings.npy`` beside
their index, as versions written before this do.

Each manifest records the size and sha256 of each file (field ``files``): loading a version checks them,
so a file replaced or damaged after the build is refused with its name. The hash reads each file once per
process (about 0.6 s a GB at 1.6 GB/s, plus reading the file: some 2 s for a ``flat16`` version at paper
scale, 6 s with a 6.7 GB ``flat`` index beside its embeddings), which the refresher spends in its
background loading thread. Versions written before checksums were recorded load with a warning. Shards
are written to a temporary file and renamed the same way, so a rerun of a job array skips the shards that
exist (:meth:`IndexStore.has_shard`).
"""
import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from realm_fairseq.atomic_io import atomic_file, fsync, make_public, sha256_files, write_faults_named
from realm_fairseq.retrieval import placement
from realm_fairseq.retrieval.mips import (
    DEFAULT_INDEX_TYPE, ROWS_IN_FILE, MipsIndex, check_options, float16_rows, min_index_bytes, row_batches,
)
from realm_fairseq.retrieval.torch_search import shard_bounds

logger = logging.getLogger(__name__)

EMBEDDINGS = "embeddings.npy"
INDEX = "index.faiss"
MANIFEST = "manifest.json"
SHARDS = "shards"
SHARD_SOURCE = "source"  # in INDEX/shards/<tag>/: the weights file its shards were embedded with
MANIFEST_FIELDS = ("version", "corpus_checksum", "count", "dim", "index_type", "index_options", "encoder",
                   "created")
FILES = "files"  # manifest field: {file name: {"bytes": size, "sha256": hex digest}}
EMBEDDINGS_FILE = "embeddings_file"  # manifest field: the file that holds the rows (absent: embeddings.npy)
LOCK = ".lock"
TMP_PREFIX = ".tmp-"
OWNER = "owner"  # inside a version being written: locked by its writer, names its host and pid
_VERSION_DIR = re.compile(r"^v([1-9][0-9]*)$")
_LEGACY_TMP = re.compile(r"^v[1-9][0-9]*\.tmp$")  # what builds before unique temporary names left
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# what an INDEX directory holds besides versions (hidden names, such as .lock and .tmp-*, are not looked at)
_INDEX_ENTRY = re.compile(r"^(v[1-9][0-9]*(\.tmp)?|shards|refresh|lost\+found)$")
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)  # flock on a file system without it
_TAG = re.compile(r"^[A-Za-z0-9_.-]+$")
BUILD_HINT = "build one with realm-build-index"
REBUILD = "rebuild the version with realm-build-index"


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
    return shard_bounds(count, num_shards)[shard_id]



class _HashingFile:
    """A binary file that hashes what is written to it, so a file is read once to write and hash it."""

    def __init__(self, f):
        self.f, self.digest, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.f.write(data)


def _write_hashed(path: str, write: Callable[[_HashingFile], None]) -> dict:
    """Write ``path`` by ``write(f)``, hashed as it is written and flushed to disk; returns its ``files``
    record (bytes, sha256)."""
    with write_faults_named(path), open(path, "wb") as f:
        hashing = _HashingFile(f)
        write(hashing)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": hashing.size, "sha256": hashing.digest.hexdigest()}


def _save_npy(path: str, parts: Sequence[np.ndarray]) -> dict:
    """Write the rows of ``parts`` (n_i, d), in order, as one .npy file of their shared dtype (what
    ``np.save`` of their concatenation writes, without concatenating them), flushed to disk; returns its
    ``files`` record (bytes, sha256)."""
    header = {"descr": np.lib.format.dtype_to_descr(parts[0].dtype), "fortran_order": False,
              "shape": (sum(len(part) for part in parts), parts[0].shape[1])}

    def write(f):
        np.lib.format.write_array_header_1_0(f, header)
        for _, rows in row_batches(parts):  # (<= ADD_BATCH, d) at a time
            f.write(np.ascontiguousarray(rows).tobytes())

    return _write_hashed(path, write)


# ---------------------------------------------------------------- writers of one INDEX
def _flock(fd: int, blocking: bool = True) -> Optional[bool]:
    """Lock ``fd`` exclusively: True if taken, False if another holds it (``blocking=False``), None if the
    file system has no ``flock``."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in NO_LOCKS:
            return None
        raise


@contextlib.contextmanager
def _index_lock(root: str) -> Iterator[None]:
    """Hold ``INDEX/.lock`` in the block: writers claim version numbers, prune and tidy one at a time."""
    fd = os.open(os.path.join(root, LOCK), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if _flock(fd) is None:
            logger.warning("%s: the file system does not lock files (flock); writers of this INDEX are kept "
                           "apart by renames alone", root)
        yield
    finally:
        os.close(fd)  # releases the lock


def _owner_gone(tmp: str) -> bool:
    """Whether nobody writes the version being written in ``tmp`` any more (its writer was killed)."""
    path = os.path.join(tmp, OWNER)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # created with its owner file under the INDEX lock: killed in between
        return True
    try:
        free = _flock(fd, blocking=False)
        if free is not None:
            return free
        with open(path, encoding="utf-8") as f:
            host, pid = (f.read().split() + ["", ""])[:2]
    finally:
        os.close(fd)
    return host == socket.gethostname() and pid.isdigit() and not os.path.exists(f"/proc/{pid}")


def _remove_abandoned(root: str) -> None:
    """Remove versions being written whose writer has gone (call with the INDEX lock held)."""
    for name in os.listdir(root):
        path = os.path.join(root, name)
        abandoned = _LEGACY_TMP.match(name) or (name.startswith(TMP_PREFIX) and _owner_gone(path))
        if abandoned and os.path.isdir(path):
            logger.info("removing %s, left by a build that was killed", path)
            shutil.rmtree(path, ignore_errors=True)


def _begin_version(root: str) -> Tuple[str, int]:
    """A new temporary directory for a version in ``root`` and the descriptor of its locked owner file."""
    os.makedirs(root, exist_ok=True)
    with _index_lock(root):
        _remove_abandoned(root)
        tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=root)
        make_public(tmp, 0o777)  # mkdtemp makes it private; a version should not be
        fd = os.open(os.path.join(tmp, OWNER), os.O_RDWR | os.O_CREAT, 0o644)
        _flock(fd, blocking=False)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
    return tmp, fd


def _write_manifest(directory: str, manifest: dict) -> None:
    path = os.path.join(directory, MANIFEST)
    with write_faults_named(path), open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _load_npy(path: str, what: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing ({what})")
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:  # truncated, or not a .npy file
        raise ValueError(f"{path}: not a readable .npy file of {what} ({e})") from e


def _as_float16(embeddings, what: str = "embeddings") -> np.ndarray:
    """``embeddings`` (n, d) as float16, what a version stores (no copy if they are); a ValueError naming
    ``what`` unless they are a 2-d float array."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.floating):
        raise ValueError(f"{what}: expected a float array (n, d), got {embeddings.dtype} {embeddings.shape}")
    return embeddings.astype(np.float16, copy=False)


def _check_index_fields(manifest: dict, path: str) -> None:
    """``index_type`` and ``index_options`` name a known type and options it takes (they become refresher
    command-line flags)."""
    options = manifest["index_options"]
    if not isinstance(options, dict):
        raise ValueError(f"{path}: field index_options is {options!r}, expected an object of index options")
    try:
        check_options(manifest["index_type"], options)
    except ValueError as e:
        raise ValueError(f"{path}: field index_type/index_options: {e}") from None


def min_version_bytes(index_type: str, count: int, dim: int, options: dict) -> int:
    """A lower bound on the bytes a version of ``count`` rows of ``dim`` takes (``options`` resolved): its
    index, and its float16 embeddings unless the index holds them."""
    rows = 0 if index_type in ROWS_IN_FILE else count * dim * 2
    return rows + min_index_bytes(index_type, count, dim, options)


def embeddings_file(manifest: dict) -> str:
    """The file of a version that holds its float16 rows: ``embeddings.npy``, or ``index.faiss`` (flat16)."""
    return manifest.get(EMBEDDINGS_FILE, EMBEDDINGS)


def _check_files_field(manifest: dict, path: str) -> None:
    """``embeddings_file`` names ``embeddings.npy`` or the index of a type that holds its rows, and ``files``
    records bytes and sha256 of each file (absent in versions built before it was)."""
    rows_in = embeddings_file(manifest)
    if rows_in not in (EMBEDDINGS, INDEX) or (rows_in == INDEX and manifest["index_type"] not in ROWS_IN_FILE):
        raise ValueError(f"{path}: field {EMBEDDINGS_FILE} is {rows_in!r}, expected {EMBEDDINGS!r} or, for "
                         f"index types {', '.join(ROWS_IN_FILE)}, {INDEX!r}")
    files = manifest.get(FILES)
    if files is None:
        return
    for name in sorted({rows_in, INDEX}):
        record = files.get(name) if isinstance(files, dict) else None
        if not (isinstance(record, dict) and isinstance(record.get("bytes"), int)
                and isinstance(record.get("sha256"), str) and _SHA256.match(record["sha256"])):
            raise ValueError(f"{path}: field {FILES}.{name} is {record!r}, expected "
                             '{"bytes": size, "sha256": 64 hex digits}')


_VERIFIED = set()  # (path, size, mtime, inode) of files whose sha256 this process has checked
_UNCHECKED = set()  # versions without checksums, warned about once


def verify_file(path: str, manifest: dict, manifest_path: str) -> None:
    """Raise a ValueError naming ``path`` unless its size and sha256 are those the manifest records;
    the hash is computed once per process for a file left unchanged."""
    record = manifest.get(FILES, {}).get(os.path.basename(path))
    if record is None:
        if manifest_path not in _UNCHECKED:
            _UNCHECKED.add(manifest_path)
            logger.warning("%s records no checksums (built before they were): its files are not verified; "
                           "rebuild the version to have them checked", manifest_path)
        return
    stat = os.stat(path)
    if stat.st_size != record["bytes"]:
        raise ValueError(f"{path}: {stat.st_size} bytes, but {manifest_path} records {record['bytes']}; the "
                         f"file was replaced or damaged after the build ({REBUILD})")
    key = (path, stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key in _VERIFIED:
        return
    if sha256_files(path) != record["sha256"]:
        raise ValueError(f"{path}: its sha256 is not the one {manifest_path} records; the file was replaced or "
                         f"damaged after the build ({REBUILD})")
    _VERIFIED.add(key)


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
    def check_writable(self, need_bytes: int = 0) -> None:
        """Raise unless the INDEX directory is (or can be made) one this process can write a version of
        ``need_bytes`` in: not a file nor another kind of directory, writable, with the space free."""
        if os.path.lexists(self.root) and not os.path.isdir(self.root):
            raise ValueError(f"{self.root}: exists and is not a directory; expected an INDEX directory")
        foreign = sorted(n for n in os.listdir(self.root) if not n.startswith(".") and not _INDEX_ENTRY.match(n)) \
            if os.path.isdir(self.root) else []
        if foreign:
            raise ValueError(f"{self.root}: holds {', '.join(foreign[:3])}, which are not index versions; expected "
                             "an INDEX directory (v1, v2, ...) or a new one")
        os.makedirs(self.root, exist_ok=True)
        try:
            with tempfile.TemporaryFile(dir=self.root):
                pass
        except OSError as e:
            raise OSError(e.errno, e.strerror, self.root) from e
        free = shutil.disk_usage(self.root).free
        if free < need_bytes:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {free / 1e6:.1f} MB free, but the version "
                          f"needs at least {need_bytes / 1e6:.1f} MB", self.root)

    def commit(self, embeddings, corpus_checksum: str, encoder: dict, index_type: str = DEFAULT_INDEX_TYPE,
               **options) -> int:
        """Build the index over ``embeddings`` (n, d) and write it as the next version; returns its number.

        ``embeddings`` may also be a list of parts whose rows in order are the embeddings (a sharded
        build's shards): the version is the same, and they are never concatenated in memory. ``encoder`` is
        recorded as given (e.g. ``{"checkpoint": path, "update": 2000}``). Nothing is visible under
        ``INDEX/vN`` until every file is written.
        """
        if not isinstance(encoder, dict):
            raise ValueError(f"encoder: expected a dict describing the encoder, got {type(encoder).__name__}")
        try:
            json.dumps(encoder)
        except (TypeError, ValueError) as e:
            raise ValueError(f"encoder: must be JSON-serializable for {MANIFEST} ({e})") from e
        if not isinstance(corpus_checksum, str) or not corpus_checksum:
            raise ValueError(f"corpus_checksum: expected a non-empty string, got {corpus_checksum!r}")
        parts = [_as_float16(part) for part in (embeddings if isinstance(embeddings, (list, tuple)) else
                                                [embeddings])]
        index = MipsIndex.build(parts, index_type, **options)  # before any file: bad options fail early
        manifest = {
            "corpus_checksum": corpus_checksum,
            "count": index.ntotal,
            "dim": index.dim,
            "index_type": index_type,
            "index_options": index.options,
            "encoder": encoder,
        }
        rows_in = INDEX if index_type in ROWS_IN_FILE else EMBEDDINGS
        tmp, owner = _begin_version(self.root)
        try:
            files = {} if rows_in == INDEX else {EMBEDDINGS: _save_npy(os.path.join(tmp, EMBEDDINGS), parts)}
            files[INDEX] = _write_hashed(os.path.join(tmp, INDEX), index.write_to)
            version = self._claim(tmp, {**manifest, EMBEDDINGS_FILE: rows_in, FILES: files})
        except BaseException:  # a killed process leaves its directory behind; the next commit removes it
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            os.close(owner)
        logger.info("committed %s: %d vectors, %s index", self.version_dir(version), manifest["count"],
                    index_type)
        return version

    def _claim(self, tmp: str, manifest: dict) -> int:
        """Rename the complete version in ``tmp`` to the next free ``vN``; returns N (the commit point)."""
        with _index_lock(self.root):
            version = self.latest() or 0
            while True:
                version += 1
                created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
                _write_manifest(tmp, {**manifest, "version": version, "created": created})
                fsync(tmp)
                try:
                    os.rename(tmp, self.version_dir(version))
                    break
                except OSError as e:  # taken meanwhile by a writer on a file system without flock
                    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
            fsync(self.root)
        os.unlink(os.path.join(self.version_dir(version), OWNER))
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
        with _index_lock(self.root):  # another writer's prune may be renaming the same versions
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
        _check_index_fields(manifest, path)
        _check_files_field(manifest, path)
        return manifest

    def embeddings(self, version: Optional[int] = None) -> np.ndarray:
        """The block embeddings of ``version`` (default the newest), memory-mapped float16 (count, dim)."""
        return self._embeddings(self.manifest(version))

    def _embeddings(self, manifest: dict) -> np.ndarray:
        vdir = self.version_dir(manifest["version"])
        path = os.path.join(vdir, embeddings_file(manifest))
        if embeddings_file(manifest) == INDEX:  # a flat16 index: its codes are the rows
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: missing (the index and the block embeddings it holds)")
            verify_file(path, manifest, os.path.join(vdir, MANIFEST))
            return float16_rows(path, manifest["count"], manifest["dim"])
        array = _load_npy(path, "block embeddings")
        expected = (manifest["count"], manifest["dim"])
        if array.shape != expected or array.dtype != np.float16:
            raise ValueError(f"{path}: holds {array.dtype} {array.shape}, expected float16 {expected} "
                             f"(count, dim of {MANIFEST})")
        verify_file(path, manifest, os.path.join(vdir, MANIFEST))
        return array

    def load(self, version: Optional[int] = None, corpus=None, devices: str = placement.CPU,
             precision: str = placement.DEFAULT_PRECISION):
        """The search over ``version`` (default the newest) and its manifest.

        With ``corpus`` (anything with ``.checksum`` and ``len()``, e.g. a BlockCorpus) the version must
        have been built from that corpus: same ``corpus_checksum`` and ``count``. ``devices`` (resolved
        ``--retrieval-devices``): ``cpu`` gives the memory-mapped :class:`MipsIndex`; GPUs give it moved
        there by faiss-gpu, or exact torch search over the version's embeddings in ``precision``
        (``--retrieval-precision``; :mod:`.placement`).
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
        embeddings = self._embeddings(manifest)  # the file exists, has the recorded shape and checksum
        if placement.on_gpus(devices):  # the faiss file is read only if faiss-gpu will search it
            return placement.gpu_searcher(lambda: self._load_index(manifest), manifest["index_type"], embeddings,
                                          devices, precision), manifest
        return self._load_index(manifest), manifest

    def _load_index(self, manifest: dict) -> MipsIndex:
        """The faiss index of a version, its file checked against the manifest (checksum, count, dim)."""
        vdir = self.version_dir(manifest["version"])
        path = os.path.join(vdir, INDEX)
        if os.path.isfile(path):
            verify_file(path, manifest, os.path.join(vdir, MANIFEST))
        index = MipsIndex.load(path, manifest["index_type"], **manifest["index_options"])
        if (index.ntotal, index.dim) != (manifest["count"], manifest["dim"]):
            raise ValueError(f"{path}: holds {index.ntotal} vectors of dimension {index.dim}, expected "
                             f"{manifest['count']} of dimension {manifest['dim']} ({MANIFEST})")
        return index

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

    def write_shard(self, tag: str, shard_id: int, num_shards: int, embeddings: np.ndarray, source: str = "") -> str:
        """Store the float16 embeddings (rows, d) of one shard through a temporary file; returns its path.
        ``source``, the weights file they were embedded with, is noted for :meth:`remove_shards_of`."""
        path = self.shard_path(tag, shard_id, num_shards)
        embeddings = _as_float16(embeddings, f"shard {shard_id}")
        with atomic_file(path, force=True) as tmp:
            _save_npy(tmp, [embeddings])
        if source:
            with atomic_file(os.path.join(self.shard_dir(tag), SHARD_SOURCE), force=True) as tmp, \
                    open(tmp, "w", encoding="utf-8") as f:
                f.write(source)
        return path

    def remove_shards_of(self, source: str) -> None:
        """Remove the unmerged shards embedded with the weights file ``source`` (a failed or cancelled
        build's), never those of another build."""
        root = os.path.join(self.root, SHARDS)
        for tag in os.listdir(root) if os.path.isdir(root) else []:
            try:
                with open(os.path.join(root, tag, SHARD_SOURCE), encoding="utf-8") as f:
                    ours = f.read() == source
            except OSError:  # no note: not ours to judge
                continue
            if ours:
                shutil.rmtree(os.path.join(root, tag), ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(root)  # only if empty

    def merge_shards(self, tag: str, num_shards: int, corpus_checksum: str, encoder: dict,
                     index_type: str = DEFAULT_INDEX_TYPE, *, count: Optional[int] = None, **options) -> int:
        """Commit shards 0..num_shards-1, their rows in order, as one version, and remove the shards. The
        shards are read memory-mapped and never concatenated: the merge holds one copy of the embeddings,
        the index's (a ``flat16`` index's codes are the float16 rows themselves).

        Returns the new version. Raises ``FileNotFoundError`` listing the shard ids that are missing, and,
        given the corpus's ``count`` of blocks, a ``ValueError`` naming each shard whose rows are not its
        share of them (:func:`shard_range`).
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
        wrong = [f"shard {i} has {len(shard)} rows, expected {end - start} (blocks {start}..{end - 1})"
                 for i, shard in enumerate(shards) for start, end in [shard_range(count, i, num_shards)]
                 if len(shard) != end - start] if count is not None else []
        if wrong:
            raise ValueError(f"{self.shard_dir(tag)}: the shards do not split a corpus of {count} blocks into "
                             f"{num_shards}: {'; '.join(wrong)}; remove those shard files and run their jobs again")
        version = self.commit(shards, corpus_checksum, encoder, index_type, **options)  # not concatenated
        shutil.rmtree(self.shard_dir(tag))
        with contextlib.suppress(OSError):  # only if empty: another build's shards may be there
            os.rmdir(os.path.join(self.root, SHARDS))
        return version
